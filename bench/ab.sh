#!/usr/bin/env bash
# Two builds side by side on one machine, interleaved round by round so
# that load from anything else falls on both alike. Each round starts a
# 7-node tree with `up` for each build, measures, and stops it.
#
# usage: bench/ab.sh write|hit|memory OLD_BIN NEW_BIN [ROUNDS]   (needs jq)
#   write: ack=parent (16 conns) and ack=root (64 writers) at the deepest node;
#          each with the tree's CPU per write (node processes' utime+stime
#          over the run, divided by the writes)
#   hit:   leaf hits, 16 conns, 10k keys; then the tree's CPU per hit: the
#          node processes' utime+stime (/proc) over 200k hits of keys the
#          leaves hold, divided by the hits (steadier than throughput on a
#          shared machine: a neighbour's load slows a run, it does not add
#          to our processes' CPU time)
#   memory: a 1-node tree; 100,000 keys of 100 B written once each
#          (ack=root, sequential keys, 16 conns) at the root; its RSS
#          growth (VmRSS) and its own accounting (treecache_bytes) per
#          entry: compare.sh's memory rows, without the rest of compare.sh
# AB_CLIENT=BIN: the load generator for both builds (default: each build's
# own `treecache bench`, which then differs too).
set -euo pipefail
SCENARIO=$1; OLD=$2; NEW=$3; ROUNDS=${4:-2}
case "$SCENARIO" in write|hit|memory) ;; *) echo "bench/ab.sh: scenario is write, hit or memory, not '$SCENARIO'" >&2; exit 2;; esac
WORK=$(mktemp -d)
UP_PID=
cleanup() {
    if [ -n "$UP_PID" ]; then kill -TERM "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
TICKS=$(getconf CLK_TCK)
# utime+stime, in clock ticks, of the tree's node processes (children of up).
node_ticks() {
    local total=0 p
    for p in $(ps --ppid "$1" -o pid=); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = treecache ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}
measure() {
    local bin=$1 root=$2 client=${AB_CLIENT:-$1}
    rps() { "$client" bench "$@" --root "$root" -d 8s --value-size 100 --json --quiet | jq -r '.total.throughput_rps'; }
    case "$SCENARIO" in
        write)
            # Throughput, and the tree's CPU per write (utime+stime of the
            # node processes over the run, divided by the writes made).
            local ack conns json t0 t1 line=""
            for ack in parent root; do
                conns=16; [ $ack = root ] && conns=64
                t0=$(node_ticks "$UP_PID")
                json=$("$client" bench write --ack $ack -c $conns --root "$root" -d 8s --value-size 100 --json --quiet)
                t1=$(node_ticks "$UP_PID")
                line+="ack=$ack($conns conns) $(jq -r '.total.throughput_rps' <<<"$json") req/s cpu/write $(awk -v t=$((t1 - t0)) -v hz="$TICKS" -v n="$(jq -r '.total.ok' <<<"$json")" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}') us   "
            done
            echo "$line"
            ;;
        hit)
            local rate t0 t1 hits
            rate=$(rps hit -c 16 --warmup 1s --keys 10000)
            # The first 1000 keys, held at every leaf already: every request a hit
            # (the 4 leaves' warm-up reads included in the count).
            t0=$(node_ticks "$UP_PID")
            hits=$("$client" bench hit --root "$root" -c 16 --keys 1000 --no-prefill -n 200000 --value-size 100 --json --quiet | jq -r '.total.ok')
            t1=$(node_ticks "$UP_PID")
            echo "leaf hit(16 conns) $rate req/s   cpu/hit $(awk -v t=$((t1 - t0)) -v hz="$TICKS" -v n="$hits" 'BEGIN {printf "%.2f", t / hz * 1e6 / (n + 4000)}') us"
            ;;
        memory)
            local pid rss0 rss1 metrics bytes entries
            pid=$(ps --ppid "$UP_PID" -o pid=,comm= | awk '$2 == "treecache" {print $1; exit}')
            rss0=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
            "$client" bench write --root "$root" --ack root --popularity sequential --keys 100000 -n 100000 \
                --value-size 100 -c 16 --quiet >/dev/null
            rss1=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
            metrics=$(curl -s "$root/metrics")
            bytes=$(awk '$1 == "treecache_bytes" {print $2 + 0}' <<<"$metrics")
            entries=$(awk '$1 == "treecache_entries" {print $2 + 0}' <<<"$metrics")
            echo "100k x 100 B: $entries entries, RSS +$(( (rss1 - rss0) * 1024 / entries )) B/entry, accounting $((bytes / entries)) B/entry"
            ;;
    esac
}
# Starts a tree with `up`; true once it is up (within 90 s).
start_tree() {
    local label=$1 bin=$2
    local nodes=7
    [ "$SCENARIO" = memory ] && nodes=1
    "$bin" up --nodes "$nodes" >"$WORK/up-$label.log" 2>&1 &
    UP_PID=$!
    local deadline=$((SECONDS + 90))
    until grep -q 'Ctrl-C stops the tree' "$WORK/up-$label.log" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$UP_PID" 2>/dev/null; then
            tail "$WORK/up-$label.log" >&2
            kill -TERM "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true
            UP_PID=
            return 1
        fi
        sleep 0.2
    done
}
one() {
    local label=$1 bin=$2
    # A private ZooKeeper's JVM sometimes starts too slowly on a loaded
    # machine: one more try before giving up.
    start_tree "$label" "$bin" || { echo "bench/ab.sh: $label: up failed, trying again" >&2; start_tree "$label" "$bin"; } || exit 1
    # The root's URL: its "node N URL root" line, or, when up could not
    # reach its /health in time (a busy machine), the tree's heading.
    local root
    root=$(grep -E '^node .* root ' "$WORK/up-$label.log" | grep -oE 'http://[0-9.:]+' | head -1 || true)
    [ -n "$root" ] || root=$(grep -oE 'root [0-9]+ at http://[0-9.:]+' "$WORK/up-$label.log" | grep -oE 'http://[0-9.:]+' | head -1 || true)
    [ -n "$root" ] || { cat "$WORK/up-$label.log" >&2; exit 1; }
    echo "$label $(measure "$bin" "$root")"
    kill -TERM "$UP_PID"; wait "$UP_PID" 2>/dev/null || true
    UP_PID=
}
for _ in $(seq "$ROUNDS"); do
    one before "$OLD"
    one after "$NEW"
done
