"""Independent check of an edgebuild GGUF with the `gguf` Python package (llama.cpp's reader).

Usage: check_gguf.py MODEL.gguf WEIGHTS.safetensors EXPECTED.json
EXPECTED maps tensor name -> {"type": "Q8_0" | "Q4_K" | "F32" | ..., "shape": [rows, cols]}.
Prints one line per tensor and exits non-zero on the first mismatch.
"""
import json
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

# Largest error of a dequantized weight, relative to the tensor's largest magnitude.
TOLERANCE = {"F32": 0.0, "F16": 1e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_K": 0.05, "Q4_K": 0.1,
             "Q4_0": 0.1, "Q3_K": 0.2, "Q2_K": 0.35}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"])
    return out


def main():
    model, weights_path, expected_path = sys.argv[1:4]
    expected = json.load(open(expected_path))
    weights = read_safetensors(weights_path)
    reader = GGUFReader(model)
    field = reader.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    assert arch == "edgebuild", arch
    names = [t.name for t in reader.tensors]
    assert sorted(names) == sorted(expected), (names, list(expected))
    for t in reader.tensors:
        want = expected[t.name]
        qtype = t.tensor_type.name
        assert qtype == want["type"], (t.name, qtype, want["type"])
        shape = [int(d) for d in reversed(list(t.shape))]  # GGUF stores dims innermost first
        assert shape == want["shape"], (t.name, shape, want["shape"])
        values = dequantize(t.data, t.tensor_type).reshape(shape)
        reference = weights[t.name].reshape(shape)
        err = float(np.max(np.abs(values - reference)))
        scale = float(np.max(np.abs(reference))) or 1.0
        assert err <= TOLERANCE[qtype] * scale, (t.name, qtype, err, scale)
        print(f"{t.name} {qtype} {shape} max_abs_err={err:.6f} ok")


if __name__ == "__main__":
    main()
