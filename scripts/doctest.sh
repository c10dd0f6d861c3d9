#!/usr/bin/env bash
# The doc tests, run against a real local tree: the example in
# src/client.rs talks to the node named by TREECACHE_URL and fails when it
# is unset, so it never passes without having run. Builds the binary,
# brings up a 3-node tree (`treecache up`: a private ZooKeeper from the
# installed package, a root and two nodes on free loopback ports), waits
# for a non-root node's /health, exports its URL as TREECACHE_URL, runs
# `cargo test --doc --locked`, and stops the tree on any exit.
# Unattended (no stdin); anything missing fails it. Needs ZooKeeper, curl
# and jq (scripts/install-test-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh source-path=SCRIPTDIR
. scripts/lib.sh

for tool in cargo curl jq; do
    command -v "$tool" >/dev/null || { echo "doctest: $tool is missing" >&2; exit 1; }
done

echo "== cargo build --bin treecache"
cargo build --locked --bin treecache </dev/null
bin="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/treecache"
[ -x "$bin" ] || { echo "doctest: no binary at $bin" >&2; exit 1; }

echo "== treecache up --nodes 3"
tree_up "$bin" --nodes 3 --cluster "doctest-$$"

url=$(awk '$1 == "node" && $4 != "root" && $3 ~ /^http/ {print $3; exit}' "$tree_out")
[ -n "$url" ] || { cat "$tree_out"; echo "doctest: treecache up printed no non-root node" >&2; exit 1; }

# Ready means its /health answers 200.
ready=""
for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null --max-time 2 "$url/health"; then
        ready=yes
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || { cat "$tree_out"; echo "doctest: $url/health never answered 200" >&2; exit 1; }

echo "== cargo test --doc (TREECACHE_URL=$url)"
export TREECACHE_URL="$url"
cargo test --doc --locked </dev/null
