#!/usr/bin/env python3
"""make_onnx.py OUT.onnx [static|dynamic|detector]: a small ONNX classifier for `edgebuild init
--onnx` tests, built with onnx.helper and weights from a fixed seed (the same bytes every run).

static:   input [1, 3, 16, 16]; Conv 3x3 (+ BatchNormalization), Relu, depthwise Conv 3x3, Relu,
          pointwise Conv 1x1 to 32 channels, GlobalAveragePool, Flatten, Gemm to 4 classes,
          Softmax. Opset 13.
dynamic:  the same with the input [N, 3, H, W] (dynamic height and width).
detector: outputs [1, 8, 16, 16] per sample: not a classifier.
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out, kind = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "static")
rng = np.random.default_rng(15)


def init(name, *shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


inits = [
    init("c1.w", 8, 3, 3, 3),
    init("c1.b", 8),
    numpy_helper.from_array((1.0 + 0.1 * rng.standard_normal(8)).astype(np.float32), "bn.scale"),
    init("bn.bias", 8, scale=0.1),
    init("bn.mean", 8, scale=0.1),
    numpy_helper.from_array((0.5 + rng.random(8)).astype(np.float32), "bn.var"),
    init("dw.w", 8, 1, 3, 3),
    init("pw.w", 32, 8, 1, 1),
    init("pw.b", 32, scale=0.1),
    init("fc.w", 4, 32, scale=0.5),
    init("fc.b", 4, scale=0.1),
]
nodes = [
    helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"]),
    helper.make_node("Relu", ["bn"], ["r1"]),
]
if kind == "detector":
    nodes.append(helper.make_node("Conv", ["r1", "dw.w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8))
    inits = [i for i in inits if i.name not in ("pw.w", "pw.b", "fc.w", "fc.b")]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])
else:
    nodes += [
        helper.make_node("Conv", ["r1", "dw.w"], ["dw"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["dw"], ["r2"]),
        helper.make_node("Conv", ["r2", "pw.w", "pw.b"], ["pw"], kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["pw"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
shape = ["N", 3, "H", "W"] if kind == "dynamic" else [1, 3, 16, 16]
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
model = helper.make_model(graph, producer_name="edgebuild-tests", opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, out)
