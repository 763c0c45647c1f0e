#!/usr/bin/env bash
# Remote cache benchmark: the digits pipeline built cold (empty caches, no remote) versus built in
# a fresh workspace with an empty local cache from a remote that holds every entry (nginx with
# WebDAV PUT on loopback, as in the tests).
#
# Usage (from the repo root):   bash bench/remote.sh        Environment: RUNS=5
set -euo pipefail

RUNS=${RUNS:-5}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d)
NGINX_PID=
cleanup() {
    [[ -n $NGINX_PID ]] && kill -TERM "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    rm -rf -- "$WORK"
}
trap cleanup EXIT

(cd "$REPO" && cargo build --release --locked >&2)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
cp "$TARGET_DIR/release/edgebuild" "$WORK/edgebuild"
BIN="$WORK/edgebuild"

# nginx on a free loopback port, files under $WORK/nginx.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp" "$WORK/nginx/data/cache"
cat >"$WORK/nginx/nginx.conf" <<CONF
$([[ $(id -u) == 0 ]] && echo "user root;")
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi; uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    types { }
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$PORT;
        root data;
        location /cache/ { dav_methods PUT; create_full_put_path on; client_max_body_size 0; }
    }
}
CONF
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e logs/error.log -g 'daemon off;' &
NGINX_PID=$!
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
URL="http://127.0.0.1:$PORT/cache/"

# A fresh digits workspace in $1.
fresh() {
    rm -rf "$1" && mkdir -p "$1"
    (cd "$REPO" && cp --parents examples/digits/mlp.yaml examples/digits/mlp.safetensors \
        examples/digits/calibration.npz examples/digits/heldout.npz devices/profiles.yaml \
        pipelines/digits.yaml "$1")
}

# seconds COMMAND... -> wall seconds of one run
seconds() {
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e9 }'
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

fresh "$WORK/writer"
"$BIN" -C "$WORK/writer" build --remote "$URL" --remote-upload >/dev/null 2>&1
BLOBS=$(find "$WORK/nginx/data/cache" -type f | wc -l)
BYTES=$(du -sb "$WORK/nginx/data/cache" | cut -f1)

cold=() remote=()
for ((i = 0; i < RUNS; i++)); do
    fresh "$WORK/ws"
    cold+=("$(seconds "$BIN" -C "$WORK/ws" build --no-remote)")
    fresh "$WORK/ws"
    remote+=("$(seconds "$BIN" -C "$WORK/ws" build --remote "$URL")")
done
COLD=$(printf '%s\n' "${cold[@]}" | median)
REMOTE=$(printf '%s\n' "${remote[@]}" | median)

echo "edgebuild $(cd "$REPO" && git rev-parse --short HEAD), $(nproc) CPUs, nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), remote: $BLOBS files, $BYTES bytes"
echo
echo "| digits pipeline, fresh workspace | median of $RUNS | runs |"
echo "|---|---:|---|"
echo "| cold: empty caches, every stage runs | ${COLD} s | ${cold[*]} |"
echo "| from the remote: empty local cache, every stage but \`measure\` restored | ${REMOTE} s | ${remote[*]} |"
