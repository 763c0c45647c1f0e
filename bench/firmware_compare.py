"""The table of bench/firmware.sh: edgebuild's device.json and metrics next to TFLite Micro's
arena plan (of the reference int8 .tflite, and of edgebuild's own model exported as .tflite)
and the reference int8 .tflite's agreement with float on the same held-out inputs."""
import json
import re
import subprocess
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

MODELS = [  # pipeline, reference .tflite
    ("kws", "examples/mlperf-tiny/kws_dscnn_int8.tflite"),
    ("resnet8", "examples/mlperf-tiny/ic_resnet8_int8.tflite"),
    ("vww", "examples/mlperf-tiny/vww_mobilenet_v1_int8.tflite"),
]


def tflm_arena(path):
    """TFLM's arena (total, head = non-persistent) for the model, as its recording allocator
    prints it (from C++, so in a child process whose output is read)."""
    code = ("from tflite_micro.python.tflite_micro import runtime; "
            f"runtime.Interpreter.from_file({path!r}, arena_size=1 << 20).print_allocations()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    total = int(re.search(r"Arena allocation total (\d+) bytes", text).group(1))
    head = int(re.search(r"Arena allocation head (\d+) bytes", text).group(1))
    return total, head


def tflite_agreement(path, npz):
    """Top-1 of the reference int8 .tflite against the float model's labels."""
    data = np.load(npz)
    x, y = data["x"], data["y"]
    interp = Interpreter(model_path=path)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    scale, zp = inp["quantization"]
    ok = 0
    for i in range(len(x)):
        s = x[i]
        if s.ndim == 3:
            s = np.transpose(s, (1, 2, 0))
        q = np.clip(np.round(s / scale) + zp, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q.reshape(inp["shape"]))
        interp.invoke()
        ok += int(np.argmax(interp.get_tensor(out["index"])) == y[i])
    return ok / len(x)


rows = []
for name, tflite in MODELS:
    device = json.load(open(f"out/{name}-int8/device.json"))
    runtime_json = json.load(open(f"out/{name}-int8/runtime.json"))
    metrics = json.load(open(f"out/{name}-int8/metrics.json"))
    total = tflm_arena(tflite)
    ours = tflm_arena(f"out/{name}-int8/model.tflite")
    rows.append((name, device, runtime_json, metrics, total, ours,
                 len(open(tflite, "rb").read()), tflite_agreement(tflite, f"out/{name}/heldout.npz")))

print("| model | arena (B) | TFLM non-persistent (B) | TFLM on edgebuild's .tflite (B) | RAM total (B) | TFLM arena total (B) | flash (B) | reference .tflite (B) | instructions / inference | MACs | instructions / MAC | agreement with float: edgebuild | reference .tflite |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, d, r, m, total, ours, tflite_bytes, ref in rows:
    print(f"| {name} | {d['ram']['arena']:,} | {total[1]:,} | {ours[1]:,} | {d['ram']['bytes']:,} | {total[0]:,} | "
          f"{d['flash']['bytes']:,} | {tflite_bytes:,} | {d['instructions']['per_inference']:,} | {d['macs']:,} | "
          f"{d['instructions_per_mac']:.2f} | {m['top1_agreement']:.3f} | {ref:.3f} |")

# Where the instructions go: device.json's per-node profile, summed by kind of node.
print()
print("| model | kind of node | MACs | instructions | share | instructions / MAC |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for name, d, *_ in rows:
    kinds = {}
    for n in d["nodes"]:
        k = kinds.setdefault(n["op"], [0, 0])
        k[0] += n["macs"]
        k[1] += n["instructions"]
    total_insns = sum(v[1] for v in kinds.values())
    for op, (macs, insns) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        per = f"{insns / macs:.2f}" if macs else "–"
        print(f"| {name} | {op} | {macs:,} | {insns:,} | {100 * insns / total_insns:.1f}% | {per} |")
