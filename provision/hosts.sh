#!/usr/bin/env bash
# Names every machine of deploy/hosts in /etc/hosts (zk, root, node1, ...),
# so `curl http://node3:8080/health` works from any VM. Rewrites only its
# own block, and only when deploy/hosts changed.
#
#   provision/hosts.sh [HOSTS_FILE]    (default /etc/hosts; needs root for it)
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

target=${1:-/etc/hosts}
begin="# BEGIN treecache (provision/hosts.sh, from deploy/hosts)"
end="# END treecache"

block() {
    echo "$begin"
    awk '$1 == "vm" { printf "%-16s %s\n", $3, $2 }' "$SRC_DIR/deploy/hosts"
    echo "$end"
}

[ -w "$target" ] || [ ! -e "$target" ] || need_root "writing $target"
touch "$target"
{
    awk -v b="$begin" -v e="$end" '$0 == b { skip = 1 } !skip { print } $0 == e { skip = 0 }' "$target"
    block
} >"$target.treecache.new"
if cmp -s "$target.treecache.new" "$target"; then
    rm -f "$target.treecache.new"
else
    # Rewrite in place (not a rename): /etc/hosts may be a bind mount.
    cat "$target.treecache.new" >"$target"
    rm -f "$target.treecache.new"
    log "named $(grep -c '^vm ' "$SRC_DIR/deploy/hosts") machines in $target"
fi
