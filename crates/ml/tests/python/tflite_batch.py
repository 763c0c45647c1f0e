#!/usr/bin/env python3
"""tflite_batch.py MODEL.tflite INPUTS.npy OUTPUTS.npy: runs each NCHW float sample of INPUTS
through a full-integer .tflite (ai-edge-litert): transposed to NHWC, quantized with the model's
input scale and zero point; the int8 outputs are dequantized."""
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter

model, inp, out = sys.argv[1:4]
it = Interpreter(model_path=model, num_threads=1)
it.allocate_tensors()
i, o = it.get_input_details()[0], it.get_output_details()[0]
(si, zi), (so, zo) = i["quantization"], o["quantization"]
x = np.load(inp)
if x.ndim == 4:
    x = x.transpose(0, 2, 3, 1)
ys = []
for k in range(x.shape[0]):
    q = np.clip(np.round(x[k : k + 1] / si) + zi, -128, 127).astype(np.int8)
    q = q.reshape(i["shape"])
    it.set_tensor(i["index"], q)
    it.invoke()
    ys.append((it.get_tensor(o["index"]).astype(np.float32) - zo) * so)
np.save(out, np.concatenate(ys).reshape(x.shape[0], -1).astype(np.float32))
