#!/usr/bin/env bash
# Build times of the workspace of crates (SPEC.md, "Source layout") beside the flat `src/` it
# replaced (commit 7e504bc, the last before the split), each in its own cold target directory:
#   - a cold `cargo build` and then `cargo test --no-run` (what `.ci/run` compiles);
#   - the incremental `cargo build` and `cargo test --no-run` after a one-line edit of one op
#     file, then of one CLI command (old layout: its one `cli.rs`).
# Run it on an idle machine: it prints one table and keeps cargo's --timings reports.
#   bash bench/layout_timings.sh            # about 40 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
old_commit=${OLD_COMMIT:-7e504bc}
work=${WORK:-/tmp/edgebuild-layout-timings}
mkdir -p "$work"
unset CARGO_INCREMENTAL # the dev profile's default (on), as a developer builds
export CARGO_TERM_COLOR=never

rm -rf "$work/old" "$work/new"
git worktree prune
git worktree add --detach "$work/old" "$old_commit" >/dev/null
git worktree add --detach "$work/new" HEAD >/dev/null
trap 'cd "$repo"; git worktree remove --force "$work/old"; git worktree remove --force "$work/new"' EXIT

# seconds of one command
secs() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >>"$work/log" 2>&1
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}

# measure <layout> <op file> <cli file>
measure() {
    local layout=$1 op=$2 cli=$3
    cd "$work/$layout"
    export CARGO_TARGET_DIR="$work/target-$layout"
    rm -rf "$CARGO_TARGET_DIR"
    cargo fetch --locked >>"$work/log" 2>&1
    local cold_build cold_test
    cold_build=$(secs cargo build --locked --timings)
    cp "$CARGO_TARGET_DIR"/cargo-timings/cargo-timing.html "$work/$layout-cold-build.html"
    cold_test=$(secs cargo test --locked --no-run)
    echo "| $layout | cold | $cold_build | $cold_test |"
    for f in "$op" "$cli"; do
        echo "// a one-line edit" >>"$f"
        local b t
        b=$(secs cargo build --locked --timings)
        cp "$CARGO_TARGET_DIR"/cargo-timings/cargo-timing.html "$work/$layout-$(basename "$f" .rs).html"
        t=$(secs cargo test --locked --no-run)
        git checkout -- "$f"
        cargo build --locked >>"$work/log" 2>&1
        cargo test --locked --no-run >>"$work/log" 2>&1
        echo "| $layout | edit $f | $b | $t |"
    done
}

: >"$work/log"
echo "| layout | build | cargo build (s) | cargo test --no-run (s) |"
echo "| --- | --- | --- | --- |"
measure old src/ops/prune.rs src/cli.rs
measure new crates/ml/src/ops/prune.rs crates/cli/src/commands/gc.rs
echo "(cargo's --timings reports: $work/*.html; the build log: $work/log)"
