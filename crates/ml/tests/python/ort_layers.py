#!/usr/bin/env python3
"""ort_layers.py QDQ.onnx VALUES.npz NODES.json REPORT.json: every int8 node of an edgebuild
int8 model, run alone in ONNX Runtime on edgebuild's own int8 inputs to it.

VALUES holds edgebuild's int8 value of every activation tensor (float-graph layout, batch 1),
keyed by tensor name; NODES lists the int8 nodes as {"name", "inputs", "output"}. For each
node the QDQ graph is cut from the QuantizeLinear outputs of its inputs to the one of its
output (onnx.utils.Extractor), run with edgebuild's input values, and compared with
edgebuild's output: REPORT gets, per node, the largest difference in LSB and the fraction of
values that differ at all."""
import json
import sys

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

model_path, values_path, nodes_path, report_path = sys.argv[1:5]
model = onnx.shape_inference.infer_shapes(onnx.load(model_path))
values = np.load(values_path)
nodes = json.load(open(nodes_path))
# The QuantizeLinear output standing for each int8 tensor: named `{tensor}.q#N`.
qname = {}
for n in model.graph.node:
    if n.op_type == "QuantizeLinear":
        base = n.output[0].rsplit(".q#", 1)[0]
        qname.setdefault(base, n.output[0])
extractor = onnx.utils.Extractor(model)
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
report = []
for node in nodes:
    ins = [t for t in node["inputs"] if t in values]
    sub = extractor.extract_model([qname[t] for t in ins], [qname[node["output"]]])
    s = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {}
    for t, i in zip(ins, s.get_inputs()):
        assert i.name == qname[t], (i.name, qname[t])
        feed[i.name] = values[t].astype(np.int8).reshape([d if isinstance(d, int) else 1 for d in i.shape])
    theirs = s.run(None, feed)[0].astype(np.int32).reshape(-1)
    ours = values[node["output"]].astype(np.int32).reshape(-1)
    d = np.abs(ours - theirs)
    report.append({"name": node["name"], "max_diff": int(d.max()), "differ": float((d > 0).mean())})
json.dump(report, open(report_path, "w"), indent=1)
