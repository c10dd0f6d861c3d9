#!/usr/bin/env bash
# bench/failover-locust.sh: the failover run of issue 20 with locust, as a
# user would try it. A 7-node tree (a durable leader root, 6 caches) and a
# durable standby root; 40 locust users, each writing its keys with ack=root
# at a random cache and reading each back with a consistent read
# (use_cache=false) at another; the leader killed -9 at 15 s and restarted
# 5 s later (it comes back as a standby); 45 s in all. Prints locust's
# failures and the latency of the requests begun in the 15 s after the kill.
#
# Usage: bench/failover-locust.sh [--users N] [--duration SECS] [--bin PATH]
#                                 [--failover-wait DUR] [--keep DIR]
# Needs the Debian zookeeper package and python3-venv (installs them when
# missing, as root) and locust from PyPI (in a venv at .venv-bench/).
# All traffic stays on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
USERS=40
DURATION=45
KILL_AT=15
RESTART_AFTER=5
WAIT=""
BIN=""
KEEP=""
LOCUST_VERSION=2.32.0
while [ $# -gt 0 ]; do
    case $1 in
        --users) USERS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --failover-wait) WAIT=$2; shift 2 ;;
        --keep) KEEP=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if ! [ -x /usr/share/zookeeper/bin/zkServer.sh ] || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends zookeeper python3-venv >/dev/null
fi
venv="$here/.venv-bench"
if ! "$venv/bin/locust" --version 2>/dev/null | grep -q "$LOCUST_VERSION"; then
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q "locust==$LOCUST_VERSION"
fi
if [ -z "$BIN" ]; then
    (cd "$here" && cargo build --release -q)
    BIN="${CARGO_TARGET_DIR:-$here/target}/release/treecache"
fi

dir=${KEEP:-$(mktemp -d /tmp/treecache-failover-XXXXXX)}
mkdir -p "$dir"
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "$KEEP" ] || rm -rf "$dir"
}
trap stop_all EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ZooKeeper, private.
zk_port=$(free_port)
mkdir -p "$dir/zk/data"
cat >"$dir/zk/zoo.cfg" <<CFG
tickTime=500
dataDir=$dir/zk/data
clientPort=$zk_port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
CFG
cp /etc/zookeeper/conf/log4j.properties "$dir/zk/" 2>/dev/null || true
ZOOCFGDIR="$dir/zk" ZOO_LOG_DIR="$dir/zk" /usr/share/zookeeper/bin/zkServer.sh start-foreground "$dir/zk/zoo.cfg" \
    >"$dir/zk.log" 2>&1 &
pids+=($!)
zk="127.0.0.1:$zk_port"
head -c 32 /dev/urandom | base64 >"$dir/secret"
chmod 600 "$dir/secret"

common=(--zk "$zk" --cluster locust --cluster-secret-file "$dir/secret")
[ -z "$WAIT" ] || common+=(--failover-wait "$WAIT")
declare -A args pid
start() { # NAME ARGS...: starts a node, records its pid in pid[NAME]
    local name=$1
    shift
    args[$name]="$*"
    "$BIN" node "${common[@]}" "$@" >>"$dir/$name.log" 2>&1 &
    pids+=($!)
    pid[$name]=$!
}
wait_health() { # URL
    for _ in $(seq 1 600); do
        curl -sf "$1/health" >/dev/null && return 0
        sleep 0.1
    done
    echo "$1 did not answer /health within 60 s" >&2
    exit 1
}

leader_port=$(free_port)
start leader --root --data-dir "$dir/leader" --listen "127.0.0.1:$leader_port"
wait_health "http://127.0.0.1:$leader_port"
standby_port=$(free_port)
start standby --root --data-dir "$dir/standby" --listen "127.0.0.1:$standby_port"
nodes=()
for k in 1 2 3 4 5 6; do
    port=$(free_port)
    start "cache$k" --listen "127.0.0.1:$port"
    nodes+=("http://127.0.0.1:$port")
done
for url in "http://127.0.0.1:$standby_port" "${nodes[@]}"; do wait_health "$url"; done
echo "tree up: leader :$leader_port, standby :$standby_port, caches ${nodes[*]}"

: >"$dir/requests.log"
TREECACHE_NODES=$(IFS=,; echo "${nodes[*]}") LOCUST_LOG="$dir/requests.log" \
    "$venv/bin/locust" -f "$here/bench/locustfile.py" --headless -u "$USERS" -r "$USERS" -t "${DURATION}s" \
    --host "${nodes[0]}" --csv "$dir/locust" --only-summary >"$dir/locust.out" 2>&1 &
locust_pid=$!
pids+=("$locust_pid")
sleep "$KILL_AT"
kill_time=$(date +%s.%N)
kill -9 "${pid[leader]}"
echo "leader killed -9 at $(date +%T.%N | cut -c1-12)"
sleep "$RESTART_AFTER"
# shellcheck disable=SC2086
start leader ${args[leader]}
echo "leader restarted at $(date +%T.%N | cut -c1-12)"
wait "$locust_pid" || true

echo
sed -n '/Type     Name/,$p' "$dir/locust.out" | head -20
python3 - "$dir/requests.log" "$kill_time" <<'PY'
import sys
log, kill = sys.argv[1], float(sys.argv[2])
rows = [l.split() for l in open(log) if l.strip()]
fails = [r for r in rows if r[2] == "fail"]
# In flight at the kill (begun before, answered after) or begun within 15 s after it.
window = sorted(float(r[1]) for r in rows if float(r[0]) + float(r[1]) / 1000 > kill and float(r[0]) < kill + 15)
def pct(p):
    return window[min(len(window) - 1, int(p / 100 * len(window)))] if window else float("nan")
print(f"requests: {len(rows)}, failed: {len(fails)}")
print(f"in flight at the kill or begun within 15 s after it: {len(window)}, p50 {pct(50):.0f} ms, p99 {pct(99):.0f} ms, "
      f"max {window[-1] if window else float('nan'):.0f} ms")
PY
grep -h 'took over\|root: node' "$dir"/standby.log | tail -2 || true
