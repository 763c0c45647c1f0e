#!/usr/bin/env bash
# The int8 firmware next to TFLite Micro and the MLPerf Tiny reference int8 models, in one run:
# edgebuild's arena and total RAM against TFLM's arena plan (the `tflite-micro` package), its
# flash (model + runtime + board code, as linked) against the reference `.tflite` file alone,
# instructions per MAC on QEMU's Cortex-M7 (icount: exact, not timed), and agreement with the
# float model on the same held-out inputs against the reference `.tflite` (ai-edge-litert).
# Usage (from the repo root): bash bench/firmware.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check tflite-micro ai-edge-litert numpy 2>/dev/null || true
cargo build --release --locked >/dev/null
./target/release/edgebuild build digits-int8 kws-int8 resnet8-int8 vww-int8 >/dev/null
python3 bench/firmware_compare.py
