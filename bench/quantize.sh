#!/usr/bin/env bash
# Quantization throughput: edgebuild (candle kernels, parallel by row chunks) per type with 1 and
# 2 threads, next to the `gguf` Python package's quantizer on the same 4096 x 4096 f32 tensor.
# Usage (from the repo root): bash bench/quantize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check 'gguf>=0.10' 2>/dev/null || true
cargo build --release --locked -p edgebuild-ml --example bench_quantize >/dev/null
echo "== edgebuild"
./target/release/examples/bench_quantize | tee /tmp/edgebuild-quantize.csv
echo "== gguf (Python)"
python3 bench/quantize_gguf.py | tee /tmp/gguf-quantize.csv
echo "== summary"
python3 - <<'PY'
import csv
ours = {(r["type"], int(r["threads"])): float(r["mb_per_s"]) for r in csv.DictReader(open("/tmp/edgebuild-quantize.csv"))}
theirs = {r["type"]: float(r["mb_per_s"]) for r in csv.DictReader(open("/tmp/gguf-quantize.csv"))}
print("| type | edgebuild 1 thread MB/s | edgebuild 2 threads MB/s | 1→2 speed-up | gguf-py MB/s | edgebuild (2 threads) / gguf-py |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for t in sorted({t for t, _ in ours}, key=lambda t: (not t.endswith("_k"), t)):
    one, two = ours[(t, 1)], ours[(t, 2)]
    py = theirs.get(t)
    print(f"| {t} | {one:.0f} | {two:.0f} | {two / one:.2f}x | {py:.0f} | {two / py:.1f}x |" if py else f"| {t} | {one:.0f} | {two:.0f} | {two / one:.2f}x | | |")
PY
