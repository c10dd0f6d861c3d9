#!/usr/bin/env bash
# The quick start, the README's first command: installs ZooKeeper if it is
# missing, builds treecache, brings up a local tree of 7 nodes on loopback,
# shows a write at one leaf read at a leaf of the other branch, and keeps
# the tree up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

provision/install-zookeeper.sh
cargo build --release --locked
bin="${CARGO_TARGET_DIR:-target}/release/treecache"
out=$(mktemp)
trap 'kill "$up" 2>/dev/null; wait "$up" 2>/dev/null; rm -f "$out"' EXIT INT TERM

"$bin" up --nodes "${NODES:-7}" >"$out" 2>&1 &
up=$!
for _ in $(seq 1 600); do
    grep -q 'Ctrl-C' "$out" && break
    kill -0 "$up" 2>/dev/null || { cat "$out"; exit 1; }
    sleep 0.1
done
cat "$out"
first=$(grep -m1 '^node ' "$out" | awk '{print $3}')
leaves=$(grep '^node ' "$out" | grep ' leaf ' | awk '{print $3}')
a=$(echo "$leaves" | head -n1)
b=$(echo "$leaves" | tail -n1)
echo
echo "== PUT at $a (ack=root), then GET at $b"
"$bin" put --node "$a" --ack root hello "world"
"$bin" get --node "$b" hello
echo "== the same key again at $b: now a hit"
"$bin" get --node "$b" hello
echo "== /health of the root ($first)"
curl -s "$first/health"; echo
echo
echo "Tree is up; try: $bin get --node $a hello   (Ctrl-C to stop)"
wait "$up"
