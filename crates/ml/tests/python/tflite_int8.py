#!/usr/bin/env python3
"""tflite_int8.py MODEL.tflite INPUTS.npy OUTPUTS.npy: runs each row of INPUTS (int8 values in
the model input's memory order, stored as float32) through a .tflite with LiteRT's reference
kernels (ai-edge-litert, BUILTIN_REF), and saves the raw int8 outputs (as float32)."""
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

model, inp, out = sys.argv[1:4]
it = Interpreter(
    model_path=model,
    num_threads=1,
    experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
)
it.allocate_tensors()
i, o = it.get_input_details()[0], it.get_output_details()[0]
assert i["dtype"] == np.int8 and o["dtype"] == np.int8, (i["dtype"], o["dtype"])
x = np.load(inp)
ys = []
for k in range(x.shape[0]):
    it.set_tensor(i["index"], x[k].astype(np.int8).reshape(i["shape"]))
    it.invoke()
    ys.append(it.get_tensor(o["index"]).astype(np.float32).reshape(-1))
np.save(out, np.stack(ys))
