#!/usr/bin/env bash
# The peak memory of a root writing snapshots: for each build, a fresh root
# with --data-dir (--fsync everysec, --snapshot-bytes as given) takes
# 200,000 writes of 100 B (ack=root, sequential keys, 16 connections);
# then its peak RSS (VmHWM), its RSS now (VmRSS) and the snapshots it wrote.
# With --snapshot-bytes 1GiB none is written: the store's own RSS.
#
# usage: bench/snapshot-peak.sh ZK SNAPSHOT_BYTES BIN...
#   ZK: a ZooKeeper to use (host:port; each root gets a cluster of its own)
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: bench/snapshot-peak.sh ZK SNAPSHOT_BYTES BIN..." >&2; exit 2; }
ZK=$1; SNAPSHOT_BYTES=$2; shift 2
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for bin in "$@"; do
    work=$(mktemp -d)
    port=$(free_port)
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secret")
    "$bin" node --zk "$ZK" --cluster "snapshot-peak-$RANDOM" --root --listen "127.0.0.1:$port" \
        --cluster-secret-file "$work/secret" --data-dir "$work/data" --fsync everysec \
        --snapshot-bytes "$SNAPSHOT_BYTES" >"$work/log" 2>&1 &
    pid=$!
    for _ in $(seq 150); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
    "$bin" bench write --root "http://127.0.0.1:$port" --ack root --popularity sequential --keys 200000 \
        -n 200000 --value-size 100 -c 16 --quiet >/dev/null
    snapshots=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 == "treecache_log_snapshots_total" {print $2 + 0}')
    echo "$bin --snapshot-bytes $SNAPSHOT_BYTES: $snapshots snapshots, peak RSS $(awk '/^VmHWM/ {print $2}' "/proc/$pid/status") kB, RSS $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") kB"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$work"
done
