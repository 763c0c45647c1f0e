#!/usr/bin/env python3
"""ONNX Runtime on one thread, on the inputs bench_onnx wrote: onnx_ort.py REPO OUT_DIR.

Per MLPerf Tiny model: session creation time of VWW (ORT's counterpart of `import`), then
batch-1 throughput (the ONNX files have a batch of 1) over OUT_DIR/NAME.inputs.npy, best of 3
after a warm-up, with ORT's default graph optimizations (how it is normally run), and the max
abs difference between edgebuild's float outputs (OUT_DIR/NAME.float.npy) and ORT's, relative
to ORT's output range. CSV rows like bench_onnx's, plus that difference."""
import sys
import time

import numpy as np
import onnxruntime as ort

REPEATS = 3
MODELS = [("kws", "kws_dscnn"), ("resnet8", "ic_resnet8"), ("vww", "vww_mobilenet_v1")]
repo, out = sys.argv[1:3]


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


print("model,what,batch,samples,seconds,samples_per_s,max_abs_diff_over_range")
vww = f"{repo}/examples/mlperf-tiny/vww_mobilenet_v1.onnx"
session(vww)
times = []
for _ in range(REPEATS):
    t = time.perf_counter()
    session(vww)
    times.append(time.perf_counter() - t)
best = min(times)
print(f"vww,ort-session,1,1,{best:.6f},{1 / best:.1f},")
for pipeline, name in MODELS:
    s = session(f"{repo}/examples/mlperf-tiny/{name}.onnx")
    x = np.load(f"{out}/{pipeline}.inputs.npy")
    feed = s.get_inputs()[0].name
    run = lambda: [s.run(None, {feed: x[i : i + 1]})[0] for i in range(x.shape[0])]
    y = np.concatenate(run()).reshape(x.shape[0], -1)
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    ours = np.load(f"{out}/{pipeline}.float.npy").reshape(y.shape)
    diff = float(np.max(np.abs(ours - y))) / float(np.max(y) - np.min(y))
    best = min(times)
    print(f"{pipeline},ort,1,{x.shape[0]},{best:.6f},{x.shape[0] / best:.1f},{diff:.2e}")
