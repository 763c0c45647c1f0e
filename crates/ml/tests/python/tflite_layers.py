#!/usr/bin/env python3
"""tflite_layers.py MODEL.tflite VALUES.npz NODES.json REPORT.json: the whole .tflite export
run in LiteRT's reference kernels (BUILTIN_REF, every intermediate tensor kept) on edgebuild's
int8 input, each node's output compared with edgebuild's.

VALUES and NODES are those of ort_layers.py (edgebuild's int8 values in the float graph's
layout, batch 1, keyed by tensor name; the nodes as {"name", "inputs", "output"}). The .tflite
names its tensors after edgebuild's, in NHWC where edgebuild's plain layout is NCHW. REPORT gets,
per node in order, the LiteRT operator that wrote its output, the largest difference in LSB and
the number of values that differ; a node LiteRT has no tensor for (a view folded away) gets
null."""
import json
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

model_path, values_path, nodes_path, report_path = sys.argv[1:5]
values = np.load(values_path)
nodes = json.load(open(nodes_path))
it = Interpreter(
    model_path=model_path,
    num_threads=1,
    experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
    experimental_preserve_all_tensors=True,
)
it.allocate_tensors()
by_name = {t["name"]: t for t in it.get_tensor_details()}
writer = {}
for op in it._get_ops_details():
    for o in op["outputs"]:
        writer[o] = op["op_name"]


def nhwc(a):
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


inp = it.get_input_details()[0]
x = nhwc(values[inp["name"]]).astype(np.int8).reshape(inp["shape"])
it.set_tensor(inp["index"], x)
it.invoke()
report = []
for node in nodes:
    t = by_name.get(node["output"])
    if t is None or t["index"] not in writer:
        report.append({"name": node["name"], "op": None, "max_diff": None, "differ": None})
        continue
    theirs = it.get_tensor(t["index"]).astype(np.int32).reshape(-1)
    ours = nhwc(values[node["output"]]).astype(np.int32).reshape(-1)
    assert theirs.size == ours.size, (node["name"], theirs.shape, ours.shape)
    d = np.abs(theirs - ours)
    report.append({"name": node["name"], "op": writer[t["index"]],
                   "max_diff": int(d.max()), "differ": int((d > 0).sum())})
json.dump(report, open(report_path, "w"))
