"""Quantization throughput of the `gguf` Python package (llama.cpp's gguf-py) on the tensor that
examples/bench_quantize.rs uses: 4096 x 4096 f32. Prints CSV: type,seconds,mb_per_s."""
import time

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize

n = 4096
i = np.arange(n * n, dtype=np.uint64)
values = ((i * np.uint64(2654435761)) % np.uint64(1_000_003)).astype(np.float32) / np.float32(500_001.5) - np.float32(1.0)
tensor = values.reshape(n, n)
print("type,seconds,mb_per_s")
for name in ["Q8_0", "Q4_0"]:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        quantize(tensor, GGMLQuantizationType[name])
        best = min(best, time.perf_counter() - start)
    print(f"{name.lower()},{best:.4f},{n * n * 4 / 1e6 / best:.1f}")
