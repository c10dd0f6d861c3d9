#!/usr/bin/env bash
# Write throughput before/after issue 9 (same machine, same window, interleaved).
# usage: bench/write-cost.sh OLD_BIN NEW_BIN [ROUNDS]   (needs jq; each round starts a 7-node tree with `up`)
set -euo pipefail
OLD=$1; NEW=$2; ROUNDS=${3:-2}
WORK=$(mktemp -d)
one() {
    local label=$1 bin=$2
    "$bin" up --nodes 7 >"$WORK/up-$label.log" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 60))
    until grep -q 'Ctrl-C stops the tree' "$WORK/up-$label.log"; do
        [ $SECONDS -lt $deadline ] || { tail "$WORK/up-$label.log"; kill $pid; exit 1; }
        sleep 0.2
    done
    local root
    root=$(grep -E '^node .* root ' "$WORK/up-$label.log" | grep -oE 'http://[0-9.:]+' | head -1)
    local p r
    p=$("$bin" bench write --root "$root" --ack parent -c 16 -d 8s --value-size 100 --json --quiet | jq -r '.total.throughput_rps')
    r=$("$bin" bench write --root "$root" --ack root -c 64 -d 8s --value-size 100 --json --quiet | jq -r '.total.throughput_rps')
    echo "$label ack=parent(16 conns) $p req/s   ack=root(64 writers) $r req/s"
    kill -TERM $pid; wait $pid 2>/dev/null || true
}
for _ in $(seq "$ROUNDS"); do
    one before "$OLD"
    one after "$NEW"
done
rm -rf "$WORK"
