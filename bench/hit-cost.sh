#!/usr/bin/env bash
# Leaf-hit throughput before/after (same window, interleaved).
# usage: bench/hit-cost.sh OLD_BIN NEW_BIN [ROUNDS]   (needs jq; each round starts a 7-node tree with `up`)
set -euo pipefail
OLD=$1; NEW=$2; ROUNDS=${3:-2}
WORK=$(mktemp -d)
one() {
    local label=$1 bin=$2
    "$bin" up --nodes 7 >"$WORK/up-$label.log" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 90))
    until grep -q 'Ctrl-C stops the tree' "$WORK/up-$label.log" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { tail "$WORK/up-$label.log"; kill $pid; exit 1; }
        sleep 0.2
    done
    local root
    root=$(grep -E '^node .* root ' "$WORK/up-$label.log" | grep -oE 'http://[0-9.:]+' | head -1)
    local h
    h=$("$bin" bench hit --root "$root" -c 16 -d 8s --warmup 1s --value-size 100 --keys 10000 --json --quiet | jq -r '.total.throughput_rps')
    echo "$label leaf hit (16 conns) $h req/s"
    kill -TERM $pid; wait $pid 2>/dev/null || true
}
for _ in $(seq "$ROUNDS"); do
    one before "$OLD"
    one after "$NEW"
done
rm -rf "$WORK"
