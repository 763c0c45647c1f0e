#!/usr/bin/env bash
# Engine benchmark for edgebuild: full build, no-op plan and no-op build of generated pipelines,
# and file-hashing throughput compared with `openssl dgst -sha256`.
#
# Usage (from the repo root):   bash bench/engine.sh
#
# Environment:
#   SIZES="300 10000"   pipeline sizes (number of stages)
#   JOBS=2              -j for the full build
#   BUILD_RUNS=3        full-build repetitions per size (fresh workspace state and cache each time)
#   NOOP_RUNS=10        no-op plan / no-op build repetitions
#   HASH_RUNS=3         repetitions of each hashing measurement (best is reported)
#   HASH_SIZE=1G        size of the random file for the hashing benchmark (head -c syntax)
#   SKIP_HASH=1         skip the hashing benchmark
#   NO_HYPERFINE=1      time with bash instead of hyperfine even when hyperfine is installed
#
# Targets (reported pass/fail, nothing is tuned):
#   no-op plan of 10,000 stages < 200 ms; full build of 300 stages < 5 s; hashing >= 90% of openssl.
set -euo pipefail

SIZES=${SIZES:-"300 10000"}
JOBS=${JOBS:-2}
BUILD_RUNS=${BUILD_RUNS:-3}
NOOP_RUNS=${NOOP_RUNS:-10}
HASH_RUNS=${HASH_RUNS:-3}
HASH_SIZE=${HASH_SIZE:-1G}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

TMPDIRS=()
cleanup() {
    local d
    for d in "${TMPDIRS[@]}"; do
        rm -rf -- "$d"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '==> %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Build the release binary.
log "cargo build --release --locked"
(cd "$REPO" && cargo build --release --locked)
TARGET_DIR=${CARGO_TARGET_DIR:-$(cd "$REPO" && cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
BIN="$TARGET_DIR/release/edgebuild"
[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 1; }
# Copy the binary so that a concurrent `cargo build` replacing it cannot skew the figures.
BINDIR=$(mktemp -d); TMPDIRS+=("$BINDIR")
cp "$BIN" "$BINDIR/edgebuild"
BIN="$BINDIR/edgebuild"
BINREV="$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo "?")$(cd "$REPO" && [[ -n $(git status --porcelain -- src 2>/dev/null) ]] && echo " + uncommitted src changes" || true)"

LOAD_START=$(cut -d" " -f1 /proc/loadavg)
USE_HYPERFINE=0
if [[ -z ${NO_HYPERFINE:-} ]] && command -v hyperfine >/dev/null; then
    USE_HYPERFINE=1
fi

# ---------------------------------------------------------------------------------------------
# Timing. measure RUNS PREPARE COMMAND -> prints "median min" in seconds on stdout.
# PREPARE ("" for none) runs before every timed run and is not timed.
measure() {
    local runs=$1 prepare=$2 cmd=$3
    if ((USE_HYPERFINE)); then
        local csv
        csv=$(mktemp)
        local args=(--style basic --shell=none --runs "$runs" --export-csv "$csv")
        [[ -n $prepare ]] && args+=(--prepare "$prepare")
        hyperfine "${args[@]}" "$cmd" </dev/null >&2
        # command,mean,stddev,median,user,system,min,max
        awk -F, 'NR == 2 { print $4, $7 }' "$csv"
        rm -f "$csv"
    else
        local i t0 t1 times=()
        for ((i = 0; i < runs; i++)); do
            [[ -n $prepare ]] && bash -c "$prepare" </dev/null >/dev/null 2>&1
            t0=$(date +%s%N)
            bash -c "$cmd" </dev/null >/dev/null 2>&1
            t1=$(date +%s%N)
            times+=("$((t1 - t0))")
        done
        printf '%s\n' "${times[@]}" | sort -n | awk '
            { t[NR] = $1 / 1e9 }
            END {
                med = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
                printf "%.6f %.6f\n", med, t[1]
            }'
    fi
}

ms() { awk -v s="$1" 'BEGIN { printf "%.1f", s * 1000 }'; }
secs() { awk -v s="$1" 'BEGIN { printf "%.2f", s }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
verdict() { if "$@"; then echo PASS; else echo FAIL; fi; }

# ---------------------------------------------------------------------------------------------
# Pipeline generation: N stages, 10 roots reading data/src.txt, stage i reads stage i-10's output.
generate() {
    local ws=$1 n=$2
    mkdir -p "$ws/pipelines" "$ws/data"
    echo "benchmark source" >"$ws/data/src.txt"
    awk -v n="$n" 'BEGIN {
        print "version: 1"
        print "stages:"
        for (i = 0; i < n; i++) {
            printf "  s%d:\n", i
            if (i < 10) {
                printf "    cmd: \"mkdir -p out && cat data/src.txt > out/s%d.txt\"\n", i
                print  "    inputs: [data/src.txt]"
            } else {
                printf "    cmd: \"cat out/s%d.txt > out/s%d.txt\"\n", i - 10, i
                printf "    inputs: [out/s%d.txt]\n", i - 10
            }
            printf "    outputs: [out/s%d.txt]\n", i
        }
    }' >"$ws/pipelines/bench.yaml"
}

declare -A FULL NOOP_PLAN NOOP_BUILD FULL_MIN NOOP_PLAN_MIN NOOP_BUILD_MIN
for n in $SIZES; do
    ws=$(mktemp -d); TMPDIRS+=("$ws")
    generate "$ws" "$n"
    fresh="rm -rf '$ws/out' '$ws/cache' '$ws/.edgebuild' '$ws/pipelines/bench.lock'"

    log "N=$n: full build (-j $JOBS), $BUILD_RUNS runs, fresh workspace state and cache each"
    read -r med min < <(measure "$BUILD_RUNS" "$fresh" "'$BIN' -C '$ws' build -j $JOBS")
    FULL[$n]=$med FULL_MIN[$n]=$min
    # Sanity: the last build left a complete, up-to-date workspace.
    "$BIN" -C "$ws" plan --check >/dev/null || { echo "N=$n: plan is not clean after build" >&2; exit 1; }

    # Outputs written < 2 s ago are "racy" and never enter the stat cache: wait, then warm it.
    sleep 3
    "$BIN" -C "$ws" plan >/dev/null

    log "N=$n: no-op plan, $NOOP_RUNS runs"
    read -r med min < <(measure "$NOOP_RUNS" "" "'$BIN' -C '$ws' plan")
    NOOP_PLAN[$n]=$med NOOP_PLAN_MIN[$n]=$min

    log "N=$n: no-op build, $NOOP_RUNS runs"
    read -r med min < <(measure "$NOOP_RUNS" "" "'$BIN' -C '$ws' build -j $JOBS")
    NOOP_BUILD[$n]=$med NOOP_BUILD_MIN[$n]=$min

    rm -rf -- "$ws"
done

# ---------------------------------------------------------------------------------------------
# Hashing throughput: openssl vs a one-stage pipeline whose input is the big file, planned with
# the stat cache deleted before every run so that the input is hashed.
if [[ -z ${SKIP_HASH:-} ]]; then
    hws=$(mktemp -d); TMPDIRS+=("$hws")
    mkdir -p "$hws/pipelines"
    log "creating $HASH_SIZE of random bytes in $hws/big.bin"
    head -c "$HASH_SIZE" /dev/urandom >"$hws/big.bin"
    bytes=$(stat -c %s "$hws/big.bin")
    sleep 3 # let the file age past the 2 s racy window so that a warm stat cache can keep it
    cat >"$hws/pipelines/hash.yaml" <<'EOF'
version: 1
stages:
  h:
    cmd: "true"
    inputs: [big.bin]
EOF
    # Prime the page cache so both tools read from memory.
    cat "$hws/big.bin" >/dev/null
    "$BIN" -C "$hws" plan >/dev/null

    log "hashing: openssl dgst -sha256, $HASH_RUNS runs"
    read -r _ OPENSSL_T < <(measure "$HASH_RUNS" "" "openssl dgst -sha256 '$hws/big.bin'")
    log "hashing: edgebuild plan (stat cache deleted), $HASH_RUNS runs"
    read -r _ EB_T < <(measure "$HASH_RUNS" "rm -f '$hws/.edgebuild/stat-cache.json'" "'$BIN' -C '$hws' plan")
    # Fixed cost of a plan that does not hash (stat cache warm), for reference.
    "$BIN" -C "$hws" plan >/dev/null
    read -r _ EB_WARM_T < <(measure "$HASH_RUNS" "" "'$BIN' -C '$hws' plan")

    OPENSSL_MBS=$(awk -v b="$bytes" -v t="$OPENSSL_T" 'BEGIN { printf "%.0f", b / t / 1e6 }')
    EB_MBS=$(awk -v b="$bytes" -v t="$EB_T" 'BEGIN { printf "%.0f", b / t / 1e6 }')
    RATIO=$(awk -v a="$EB_MBS" -v b="$OPENSSL_MBS" 'BEGIN { printf "%.2f", a / b }')
    rm -f -- "$hws/big.bin"
    rm -rf -- "$hws"
fi

# ---------------------------------------------------------------------------------------------
echo
echo "## edgebuild engine benchmark"
echo
echo "Machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)," \
    "$(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo);" \
    "timer: $( ((USE_HYPERFINE)) && hyperfine --version || echo 'bash date +%s%N')"
echo "Binary: built from $BINREV"
echo "Load average (1 min) at start / end: $LOAD_START / $(cut -d" " -f1 /proc/loadavg) (other work on the machine inflates the figures; the min columns are the least disturbed)"
echo
echo "| stages | full build -j $JOBS, median (min) of $BUILD_RUNS | no-op plan, median (min) of $NOOP_RUNS | no-op build, median (min) of $NOOP_RUNS |"
echo "|---:|---:|---:|---:|"
for n in $SIZES; do
    echo "| $n | $(secs "${FULL[$n]}") s ($(secs "${FULL_MIN[$n]}")) | $(ms "${NOOP_PLAN[$n]}") ms ($(ms "${NOOP_PLAN_MIN[$n]}")) | $(ms "${NOOP_BUILD[$n]}") ms ($(ms "${NOOP_BUILD_MIN[$n]}")) |"
done
if [[ -z ${SKIP_HASH:-} ]]; then
    echo
    echo "| hashing $HASH_SIZE (best of $HASH_RUNS) | time | throughput |"
    echo "|---|---:|---:|"
    echo "| openssl dgst -sha256 | $(secs "$OPENSSL_T") s | $OPENSSL_MBS MB/s |"
    echo "| edgebuild plan, stat cache cleared | $(secs "$EB_T") s | $EB_MBS MB/s |"
    echo "| edgebuild plan, stat cache warm (fixed cost) | $(ms "$EB_WARM_T") ms | |"
    echo "| ratio edgebuild / openssl | $RATIO | |"
fi
echo
echo "| target | measured | result |"
echo "|---|---:|---|"
if [[ -n ${NOOP_PLAN[10000]:-} ]]; then
    echo "| no-op plan, 10,000 stages < 200 ms | $(ms "${NOOP_PLAN[10000]}") ms | $(verdict lt "${NOOP_PLAN[10000]}" 0.2) |"
fi
if [[ -n ${FULL[300]:-} ]]; then
    echo "| full build, 300 stages < 5 s | $(secs "${FULL[300]}") s | $(verdict lt "${FULL[300]}" 5) |"
fi
if [[ -z ${SKIP_HASH:-} ]]; then
    echo "| hashing >= 90% of openssl | $(awk -v r="$RATIO" 'BEGIN { printf "%.0f%%", r * 100 }') | $(verdict ge "$RATIO" 0.9) |"
fi
