#!/usr/bin/env python3
"""ort_batch.py MODEL INPUTS.npy OUTPUTS.npy [as-written|optimized]: runs each sample of INPUTS
(N, ...) through an ONNX model of batch 1 in onnxruntime on one thread and stacks the outputs.

as-written (the default) runs the graph as it is: a QDQ model's DequantizeLinear, float op and
QuantizeLinear, the QDQ semantics exactly. optimized lets onnxruntime fuse them into its own
int8 kernels, whose requantization rounds differently."""
import sys

import numpy as np
import onnxruntime as ort

model, inp, out = sys.argv[1:4]
mode = sys.argv[4] if len(sys.argv) > 4 else "as-written"
options = ort.SessionOptions()
if mode == "as-written":
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
x = np.load(inp)
name = session.get_inputs()[0].name
ys = [session.run(None, {name: x[i : i + 1]})[0] for i in range(x.shape[0])]
np.save(out, np.concatenate(ys).astype(np.float32))
