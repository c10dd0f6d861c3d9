#!/usr/bin/env bash
# The quick start, the README's first command: installs ZooKeeper if it is
# missing, builds treecache, brings up a local tree of 7 nodes on loopback
# (`treecache up`: a private ZooKeeper, a root and 6 nodes), shows a write
# at one leaf read at a leaf of the other branch, and keeps the tree up
# until Ctrl-C, which stops every process it started.
#   NODES=15 ./scripts/up.sh     a bigger tree
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib.sh source-path=SCRIPTDIR
. scripts/lib.sh

provision/install-zookeeper.sh
cargo build --release --locked
bin="${CARGO_TARGET_DIR:-target}/release/treecache"

tree_up "$bin" --nodes "${NODES:-7}"
cat "$tree_out"

zk=$(awk '$1 == "ZooKeeper" {print $2; exit}' "$tree_out")
root=$(awk '$1 == "node" && $4 == "root" {print $3; exit}' "$tree_out")
a=$(awk '$1 == "node" && $4 == "leaf" {print $3}' "$tree_out" | head -n1)
b=$(awk '$1 == "node" && $4 == "leaf" {print $3}' "$tree_out" | tail -n1)
a=${a:-$root}
b=${b:-$root}

show_get() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -i "$1/kv/hello"
        echo
    else
        "$bin" get --node "$1" hello
        echo
    fi
}

echo
echo "== PUT hello=world at $a (ack=root: returns once the root committed it)"
"$bin" put --node "$a" --ack root hello world
echo
echo "== GET hello at $b: a miss, filled through its parent from the root"
show_get "$b"
echo "== GET hello at $b again: a hit"
show_get "$b"
echo "== PUT hello=again at $b, then GET at $a: the root pushed it down"
"$bin" put --node "$b" --ack root hello again
show_get "$a"
echo "Tree is up. Try:"
echo "  $bin get --node $a hello"
echo "  $bin tree --zk $zk"
echo "Ctrl-C stops it."
wait "$tree_pid"
