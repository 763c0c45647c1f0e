#!/usr/bin/env bash
# Fleet load run: a fresh fleet server (SQLite, loopback) and DEVICES simulated devices that
# enroll, take release 1 of digits in one stage, download and verify its artifacts, run the model
# for their health check and report (downloaded, installed, confirmed, telemetry). Prints the
# simulator's throughput and latency percentiles over every request, and checks that the server
# holds every report the devices saw acknowledged.
#
# Usage (from the repo root):   bash bench/fleet.sh     Environment: DEVICES=10000 CONCURRENCY=64
set -euo pipefail

DEVICES=${DEVICES:-10000}
CONCURRENCY=${CONCURRENCY:-64}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf -- "$WORK"
}
trap cleanup EXIT

(cd "$REPO" && cargo build --release --locked >&2)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN="$TARGET_DIR/release/edgebuild"

# A workspace with the digits pipeline, built and released.
mkdir -p "$WORK/ws"
(cd "$REPO" && git ls-files examples/digits devices pipelines/digits.yaml | tar cf - -T -) | (cd "$WORK/ws" && tar xf -)
cd "$WORK/ws"
"$BIN" build >/dev/null 2>&1
"$BIN" keygen "$WORK/keys/release.key" 2>/dev/null
"$BIN" release digits --version 1.0.0 --key "$WORK/keys/release.key" 2>/dev/null
cat >"$WORK/all.yaml" <<'YAML'
version: 1
stages:
  - {percent: 100}
abort: {min_reports: 100, max_failure_rate: 0.05, confirm_timeout: 10m, max_confidence_drop: 0.02}
YAML

export EDGEBUILD_FLEET_TOKEN
EDGEBUILD_FLEET_TOKEN=$("$BIN" fleet init --db "$WORK/fleet.sqlite" 2>/dev/null)
"$BIN" fleet serve --db "$WORK/fleet.sqlite" --listen 127.0.0.1:0 --key "$WORK/keys/release.key.pub" \
    --tick 500ms >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
for _ in $(seq 100); do [[ -s $WORK/server.out ]] && break; sleep 0.05; done
export EDGEBUILD_FLEET_SERVER
EDGEBUILD_FLEET_SERVER=$(awk '{print $NF}' "$WORK/server.out")

"$BIN" rollout start digits --release 1 --policy "$WORK/all.yaml" >/dev/null 2>&1
"$BIN" device simulate --devices "$DEVICES" --concurrency "$CONCURRENCY" --poll 200ms \
    --key "$WORK/keys/release.key.pub" --data examples/digits/heldout.npz \
    --state "$WORK/sim.json" --until-settled --timeout 10m --json >"$WORK/summary.json"

python3 - "$WORK/summary.json" <<'PY'
import json, os, subprocess, sys, urllib.request
summary = json.load(open(sys.argv[1]))
request = urllib.request.Request(os.environ["EDGEBUILD_FLEET_SERVER"] + "/v1/admin/stats",
                                 headers={"Authorization": "Bearer " + os.environ["EDGEBUILD_FLEET_TOKEN"]})
stats = json.load(urllib.request.urlopen(request))
print(f"devices               {summary['devices']} ({summary['running']})")
print(f"requests              {summary['requests']} in {summary['elapsed_s']:.2f} s "
      f"= {summary['requests_per_s']:.0f} requests/s")
print(f"latency               p50 {summary['latency_p50_ms']:.2f} ms, p99 {summary['latency_p99_ms']:.2f} ms, "
      f"max {summary['latency_max_ms']:.2f} ms")
print(f"reports acknowledged  {summary['reports_acknowledged']}, on the server {stats['reports']}")
print(f"telemetry             {summary['telemetry_acknowledged']} acknowledged, {stats['telemetry']} on the server")
lost = summary["reports_acknowledged"] - stats["reports"]
expected = 3 * summary["devices"]
if lost != 0 or stats["reports"] != expected:
    sys.exit(f"LOST REPORTS: expected {expected}, server holds {stats['reports']}")
print("no report lost")
PY
