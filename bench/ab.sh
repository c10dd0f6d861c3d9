#!/usr/bin/env bash
# Two builds side by side on one machine, interleaved round by round so
# that load from anything else falls on both alike. Each round starts a
# 7-node tree with `up` for each build, measures, and stops it.
#
# usage: bench/ab.sh write|hit OLD_BIN NEW_BIN [ROUNDS]   (needs jq)
#   write: ack=parent (16 conns) and ack=root (64 writers) at the deepest node
#   hit:   leaf hits, 16 conns, 10k keys
set -euo pipefail
SCENARIO=$1; OLD=$2; NEW=$3; ROUNDS=${4:-2}
case "$SCENARIO" in write|hit) ;; *) echo "bench/ab.sh: scenario is write or hit, not '$SCENARIO'" >&2; exit 2;; esac
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
measure() {
    local bin=$1 root=$2
    rps() { "$bin" bench "$@" --root "$root" -d 8s --value-size 100 --json --quiet | jq -r '.total.throughput_rps'; }
    case "$SCENARIO" in
        write) echo "ack=parent(16 conns) $(rps write --ack parent -c 16) req/s   ack=root(64 writers) $(rps write --ack root -c 64) req/s" ;;
        hit) echo "leaf hit(16 conns) $(rps hit -c 16 --warmup 1s --keys 10000) req/s" ;;
    esac
}
one() {
    local label=$1 bin=$2
    "$bin" up --nodes 7 >"$WORK/up-$label.log" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 90))
    until grep -q 'Ctrl-C stops the tree' "$WORK/up-$label.log" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { tail "$WORK/up-$label.log" >&2; kill $pid; exit 1; }
        sleep 0.2
    done
    local root
    root=$(grep -E '^node .* root ' "$WORK/up-$label.log" | grep -oE 'http://[0-9.:]+' | head -1)
    echo "$label $(measure "$bin" "$root")"
    kill -TERM $pid; wait $pid 2>/dev/null || true
}
for _ in $(seq "$ROUNDS"); do
    one before "$OLD"
    one after "$NEW"
done
