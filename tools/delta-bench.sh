#!/usr/bin/env bash
# Delta restore against a full restore, same run: a SAN-like image's day 1
# and day 2 are backed up to a real `bunker serve`; day 2 is restored in full
# to a new file, then with --delta over a copy of day 1 (bytes read,
# fetched and written from its --json report). Both results are compared
# with day 2.
#
#   tools/delta-bench.sh [SIZE]      (default 1G)
set -euo pipefail
size=${1:-1G}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml" --workspace --all-targets # as tools/bench
bin=${CARGO_TARGET_DIR:-$root/target}/release
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin/bunker-gen" --seed 1 --size "$size" "$work/day1" 2>/dev/null
"$bin/bunker-gen" --seed 1 --size "$size" --day 1 "$work/day2" 2>/dev/null
"$bin/bunker" serve --data "$work/data" --listen 127.0.0.1:0 > "$work/out" 2> "$work/log" &
pid=$!
until [ -s "$work/out" ]; do sleep 0.1; done
export BUNKER_SERVER=$(sed 's/bunker listening on //' "$work/out")
export BUNKER_TOKEN=$(cat "$work/data/admin.token")
"$bin/bunker" backup vol "$work/day1" >/dev/null 2>&1
"$bin/bunker" backup vol "$work/day2" >/dev/null 2>&1
cp "$work/day1" "$work/target"
sync
full=$("$bin/bunker" --json restore vol@2 "$work/full" 2>&1)
delta=$("$bin/bunker" --json restore --delta vol@2 "$work/target" 2>&1)
cmp "$work/full" "$work/day2"
cmp "$work/target" "$work/day2"
field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<< "$1"; }
echo "| $size SAN-like image, day 1 -> day 2 (loopback) | seconds | bytes read | bytes fetched | bytes written |"
echo "|---|---|---|---|---|"
echo "| full restore of day 2 | $(field "$full" seconds) | 0 | at most $(field "$full" bytes) (zero runs are not fetched) | at most $(field "$full" bytes) (zero runs left as holes) |"
echo "| delta restore over day 1 | $(field "$delta" seconds) | $(field "$delta" bytes_read) | $(field "$delta" bytes_fetched) | $(field "$delta" bytes_written) |"
echo "chunks: $(field "$delta" chunks_differing) differing, $(field "$delta" chunks_same) same"
