#!/usr/bin/env bash
# Executor benchmark: the generated 300-stage pipeline (10 roots, stage i reads stage i-10's
# output and appends its name, so that no two outputs are equal) built from scratch locally, in the sandbox, and through buildbox-casd (REAPI on
# loopback, actions run by buildbox-run under bubblewrap): cold (an empty server), and from the
# server's action cache in a fresh workspace. Reports the median of RUNS full builds and the
# per-stage overhead over the local build.
#
# Usage (from the repo root):   bash bench/remote_exec.sh
# Environment: STAGES=300 RUNS=3 JOBS=2 REMOTE_JOBS=8
#   EDGEBUILD_BUILDBOX_DIR (default ~/.cache/edgebuild-ci/buildbox, where .ci/run installs it)
set -euo pipefail

STAGES=${STAGES:-300}
RUNS=${RUNS:-3}
JOBS=${JOBS:-2}
REMOTE_JOBS=${REMOTE_JOBS:-8}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILDBOX=${EDGEBUILD_BUILDBOX_DIR:-$HOME/.cache/edgebuild-ci/buildbox}
WORK=$(mktemp -d)
CASD_PID=
stop_casd() {
    if [[ -n $CASD_PID ]]; then kill "$CASD_PID" 2>/dev/null || true; wait "$CASD_PID" 2>/dev/null || true; fi
    CASD_PID=
}
cleanup() { stop_casd; rm -rf -- "$WORK"; }
trap cleanup EXIT

[[ -x $BUILDBOX/buildbox-casd ]] || { echo "no buildbox-casd in $BUILDBOX: run .ci/run once" >&2; exit 1; }
(cd "$REPO" && cargo build --release --locked >&2)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
cp "$TARGET_DIR/release/edgebuild" "$WORK/edgebuild"
BIN="$WORK/edgebuild"

# Each cold run gets a new server: a new port and a new cache directory (a stopping casd may
# still touch its old one).
SERVERS=0
start_casd() {
    SERVERS=$((SERVERS + 1))
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$WORK/casd-$SERVERS"
    "$BUILDBOX/buildbox-casd" --bind="127.0.0.1:$PORT" --buildbox-run="$BUILDBOX/buildbox-run" \
        --jobs="$REMOTE_JOBS" \
        --runner-arg=--ro-bind-mount=/usr:/usr --runner-arg=--ro-bind-mount=/usr/bin:/bin \
        --runner-arg=--ro-bind-mount=/usr/lib:/lib --runner-arg=--ro-bind-mount=/usr/lib64:/lib64 \
        --runner-arg=--ro-bind-mount=/etc:/etc --log-level=warning "$WORK/casd-$SERVERS" >>"$WORK/casd.log" 2>&1 &
    CASD_PID=$!
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return; sleep 0.05; done
    echo "buildbox-casd did not start" >&2; exit 1
}

workspace() {
    local ws=$1
    rm -rf "$ws"; mkdir -p "$ws/pipelines" "$ws/data"
    echo "benchmark source" >"$ws/data/src.txt"
    awk -v n="$STAGES" 'BEGIN {
        print "version: 1"
        print "stages:"
        for (i = 0; i < n; i++) {
            printf "  s%d:\n", i
            if (i < 10) {
                printf "    cmd: \"mkdir -p out && { cat data/src.txt; echo s%d; } > out/s%d.txt\"\n", i, i
                print  "    inputs: [data/src.txt]"
            } else {
                printf "    cmd: \"{ cat out/s%d.txt; echo s%d; } > out/s%d.txt\"\n", i - 10, i, i
                printf "    inputs: [out/s%d.txt]\n", i - 10
            }
            printf "    outputs: [out/s%d.txt]\n", i
        }
    }' >"$ws/pipelines/bench.yaml"
}

# One timed full build in a fresh workspace: sets LAST to its seconds. (No command
# substitution: the server's pid and port must stay in this shell.)
LAST=
timed() {
    local ws="$WORK/ws"
    workspace "$ws"
    local start end
    start=$(date +%s.%N)
    (cd "$ws" && "$BIN" build "$@" >/dev/null 2>"$WORK/err") || {
        tail -n 5 "$WORK/err" >&2
        [[ -s $WORK/casd.log ]] && { echo "--- buildbox-casd:" >&2; tail -n 20 "$WORK/casd.log" >&2; }
        exit 1
    }
    end=$(date +%s.%N)
    LAST=$(echo "$end - $start" | bc)
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

declare -A TIME
run_mode() {
    local name=$1; shift
    local times=()
    for _ in $(seq "$RUNS"); do "$@"; times+=("$LAST"); done
    TIME[$name]=$(median "${times[@]}")
}

local_build() { timed -j "$JOBS"; }
sandbox_build() { timed -j "$JOBS" --sandbox; }
remote_cold() { stop_casd; start_casd; timed --remote-exec "grpc://127.0.0.1:$PORT" --remote-jobs "$REMOTE_JOBS"; }
remote_cached() { timed --remote-exec "grpc://127.0.0.1:$PORT" --remote-jobs "$REMOTE_JOBS"; }

run_mode local local_build
run_mode sandbox sandbox_build
run_mode remote_cold remote_cold
# The server still holds the last cold run's results: fresh workspaces hit its action cache.
run_mode remote_cached remote_cached

printf '%s stages, median of %s full builds (local and sandbox -j %s; remote --remote-jobs %s)\n' "$STAGES" "$RUNS" "$JOBS" "$REMOTE_JOBS"
printf '%-28s %10s %12s %22s\n' mode "build (s)" "per stage" "overhead vs local"
for mode in local sandbox remote_cold remote_cached; do
    t=${TIME[$mode]}
    per=$(echo "scale=3; $t * 1000 / $STAGES" | bc)
    over=$(echo "scale=3; ($t - ${TIME[local]}) * 1000 / $STAGES" | bc)
    printf '%-28s %10.2f %9.2f ms %19.2f ms\n' "$mode" "$t" "$per" "$over"
done
