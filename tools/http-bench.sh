#!/usr/bin/env bash
# Raw-stream HTTP figures of a real `bunker serve`: ingest of a new SAN-like
# image, re-upload of the same image (all chunks known), restore, and the
# server's peak RSS, next to BLAKE3 of the same file on all cores.
#
#   tools/http-bench.sh [SIZE]      (default 4G; needs curl)
set -euo pipefail
size=${1:-4G}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml" --workspace --all-targets # as tools/bench
bin=$root/target/release
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin/bunker-gen" --seed 7 --size "$size" "$work/img" 2>/dev/null
bytes=$(stat -c %s "$work/img")
"$bin/bunker" serve --data "$work/data" --listen 127.0.0.1:0 > "$work/out" 2> "$work/log" &
pid=$!
until [ -s "$work/out" ]; do sleep 0.1; done
url=$(sed 's/bunker listening on //' "$work/out")
token=$(cat "$work/data/admin.token")
put() { curl -sf -o /dev/null -w '%{time_total}' -T "$work/img" -H "Authorization: Bearer $token" "$url/v1/snapshots/$1"; }
get() { curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $token" "$url/v1/snapshots/vol/latest/data"; }
cat "$work/img" > /dev/null   # page cache: measure the server, not the disk
t_new=$(put vol)
t_same=$(put vol)
peak_ingest=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
t_get=$(get)
peak=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
gbps() { awk -v b="$bytes" -v t="$1" 'BEGIN { printf "%.2f", b / t / 1e9 }'; }
echo "| measurement ($size SAN-like image, curl over loopback) | seconds | GB/s |"
echo "|---|---|---|"
echo "| raw upload, new image | $t_new | $(gbps "$t_new") |"
echo "| raw upload, unchanged re-upload | $t_same | $(gbps "$t_same") |"
echo "| restore (GET data, every chunk verified) | $t_get | $(gbps "$t_get") |"
echo "server peak RSS: $((peak_ingest / 1024)) MiB during the two uploads, $((peak / 1024)) MiB including the restore"
