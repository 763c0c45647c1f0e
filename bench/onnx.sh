#!/usr/bin/env bash
# ONNX import and evaluation speed on the MLPerf Tiny models, one thread, side by side with ONNX
# Runtime in the same run: VWW's import time (ORT: session creation), float and quantized (GGUF
# q8_0, as the pipelines build it) throughput in samples/s at batch 1 and 64, ORT at batch 1 (the
# ONNX files' batch) on the same inputs, and how far edgebuild's float outputs are from ORT's.
# Usage (from the repo root): bash bench/onnx.sh. PROFILE=dev uses the dev profile, in which the
# ML crate and every dependency are optimized too (Cargo.toml): the same kernels, a faster build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check onnxruntime numpy 2>/dev/null || true
profile="${PROFILE:-release}"
bin="${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")"
cargo build --profile "$profile" --locked -p edgebuild -p edgebuild-ml --example bench_onnx >/dev/null
export RAYON_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The three pipelines as committed, built in a scratch workspace up to their GGUFs.
mkdir -p "$work/ws/pipelines" "$work/ws/examples/mlperf-tiny" "$work/ws/devices" "$work/out"
cp pipelines/kws.yaml pipelines/resnet8.yaml pipelines/vww.yaml "$work/ws/pipelines/"
cp examples/mlperf-tiny/*.onnx "$work/ws/examples/mlperf-tiny/"
cp devices/profiles.yaml "$work/ws/devices/"
"$bin/edgebuild" -C "$work/ws" build kws:quantize resnet8:quantize vww:quantize >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
echo "== edgebuild (1 thread)"
"$bin/examples/bench_onnx" "$work/ws" "$work/out" | tee "$work/edgebuild.csv"
echo "== ONNX Runtime $(python3 -c 'import onnxruntime; print(onnxruntime.__version__)') (1 thread)"
python3 bench/onnx_ort.py "$work/ws" "$work/out" | tee "$work/ort.csv"
echo "== summary"
python3 - "$work" <<'PY'
import csv, sys
work = sys.argv[1]
ours = {(r["model"], r["what"], int(r["batch"])): r for r in csv.DictReader(open(f"{work}/edgebuild.csv"))}
ort = {(r["model"], r["what"]): r for r in csv.DictReader(open(f"{work}/ort.csv"))}
imp, sess = ours[("vww", "import", 1)], ort[("vww", "ort-session")]
print(f"VWW import: edgebuild {1e3 * float(imp['seconds']):.1f} ms; ORT session creation {1e3 * float(sess['seconds']):.1f} ms")
print()
print("| model | ORT float, batch 1 | edgebuild float, batch 1 | ORT / edgebuild | edgebuild float, batch 64 | edgebuild q8_0 GGUF, batch 1 | q8_0, batch 64 | max abs diff / range |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for m in ["kws", "resnet8", "vww"]:
    o = float(ort[(m, "ort")]["samples_per_s"])
    f1, f64 = (float(ours[(m, "float", b)]["samples_per_s"]) for b in (1, 64))
    q1, q64 = (float(ours[(m, "gguf", b)]["samples_per_s"]) for b in (1, 64))
    print(f"| {m} | {o:.0f}/s | {f1:.0f}/s | {o / f1:.2f}x | {f64:.0f}/s | {q1:.0f}/s | {q64:.0f}/s | {ort[(m, 'ort')]['max_abs_diff_over_range']} |")
PY
