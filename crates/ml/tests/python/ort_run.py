#!/usr/bin/env python3
"""Runs an ONNX model in onnxruntime on one thread: ort_run.py MODEL INPUT.npy OUTPUT.npy.

The independent float reference for edgebuild's importer and forward pass (SPEC.md, "`import`").
"""
import sys

import numpy as np
import onnxruntime as ort

model, inp, out = sys.argv[1:4]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
x = np.load(inp)
name = session.get_inputs()[0].name
y = session.run(None, {name: x})[0]
np.save(out, y.astype(np.float32))
