#!/usr/bin/env bash
# One treecache node (or the root), configured by the TREECACHE_* variables
# that `treecache node` reads (src/config.rs). Vagrant passes each VM its own
# (deploy/topology.rb); so does tests/netns.rs, in a network namespace.
#
#   provision/treecache.sh systemd     a VM: /usr/local/bin/treecache,
#                                      /etc/treecache/treecache.env, treecache.service
#   provision/treecache.sh foreground  run the node in this process
#   provision/treecache.sh background  run it detached (pid, log in the state dir)
#   provision/treecache.sh stop        stop the background node (SIGTERM: it leaves the tree)
#
# Environment, besides TREECACHE_ZK, TREECACHE_LISTEN, TREECACHE_ADVERTISE,
# TREECACHE_ID, TREECACHE_ROOT, TREECACHE_ROOT_URL, ... for the node:
#   TREECACHE_BIN        the binary to run. Default: in systemd mode the shared
#                        build (target/vagrant/treecache, from build-treecache.sh),
#                        otherwise target/release/treecache, built if missing
#   TREECACHE_STATE_DIR  foreground/background state (default
#                        target/deploy/node-ADDRESS-PORT in the checkout)
#   TREECACHE_BUILD_WAIT seconds a VM waits for the shared build (default 1800)
#   TREECACHE_CLUSTER_SECRET_FILE  the cluster secret every node shares. Default:
#                        target/vagrant/cluster-secret in the synced folder, made
#                        once (by build-treecache.sh on the zk VM, or here) unless
#                        TREECACHE_CLUSTER_SECRET gives the secret itself. In a VM
#                        it is copied to /etc/treecache/cluster-secret (0600) and
#                        handed to the service as a systemd credential.
#   TREECACHE_TLS        1: serve HTTPS and talk TLS to the other nodes. The
#                        node gets a certificate for the host of its URL (and
#                        TREECACHE_TLS_NAME, default the short host name),
#                        signed by the tree's CA in target/vagrant/tls (or
#                        TREECACHE_TLS_DIR), made there once if missing. In a VM
#                        the files go to /etc/treecache/tls/ (the key as a
#                        systemd credential); `systemctl reload treecache`
#                        makes the node reload them (SIGHUP).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

mode=$(parse_mode "${1:-}")
listen=${TREECACHE_LISTEN:-127.0.0.1:8080}
if tls_on; then
    url=${TREECACHE_ADVERTISE:-https://$listen}
else
    url=${TREECACHE_ADVERTISE:-http://$listen}
fi
# Variables for this script, not for the node (the secret reaches a VM's
# node as a credential file, never through the environment file).
PROVISION_ONLY='^TREECACHE_(BIN|STATE_DIR|BUILD_WAIT|CLUSTER_SECRET|CLUSTER_SECRET_FILE|TLS|TLS_NAME|TLS_DIR|TLS_KEY)='

# secret_file: the file with the cluster secret, made if needed.
secret_file() {
    local file=${TREECACHE_CLUSTER_SECRET_FILE:-$SHARED_SECRET}
    if [ -n "${TREECACHE_CLUSTER_SECRET:-}" ]; then
        # Given as a value: keep it in a private file of our own.
        file=$(state_dir "node-${listen//[:.]/-}")/cluster-secret
        (umask 077 && printf '%s\n' "$TREECACHE_CLUSTER_SECRET" >"$file")
    else
        ensure_secret "$file"
    fi
    printf '%s\n' "$file"
}

describe() {
    local what="node ${TREECACHE_ID:-(id from the root)}"
    [ "${TREECACHE_ROOT:-}" = true ] && what="root${TREECACHE_ID:+ $TREECACHE_ID}"
    printf '%s at %s, ZooKeeper %s' "$what" "$url" "${TREECACHE_ZK:-(unset)}"
}

# tls_files DIR: the node's certificate, key and the CA in DIR (made or
# kept, see issue_cert), exported as TREECACHE_TLS_CERT, _KEY and _CA.
tls_files() {
    local dir=$1 host
    host=${url#*://}
    host=${host%%/*}
    host=${host%:*}
    ensure_ca "$SHARED_TLS"
    issue_cert "$SHARED_TLS" "$dir" node "$host" "${TREECACHE_TLS_NAME:-$(hostname -s)}"
    export TREECACHE_TLS_CERT=$dir/node.pem TREECACHE_TLS_KEY=$dir/node-key.pem TREECACHE_TLS_CA=$dir/ca.pem
    CURL_TLS=(--cacert "$dir/ca.pem")
}
CURL_TLS=()

# health: the node answers /health with 200 (it is registered).
health() {
    curl -sf --max-time 3 "${CURL_TLS[@]}" "$url/health" >/dev/null
}

# local_binary: TREECACHE_BIN, or the checkout's release build (built once).
local_binary() {
    if [ -n "${TREECACHE_BIN:-}" ]; then
        [ -x "$TREECACHE_BIN" ] || die "TREECACHE_BIN=$TREECACHE_BIN is not an executable"
        printf '%s\n' "$TREECACHE_BIN"
        return
    fi
    local bin=$SRC_DIR/target/release/treecache
    if [ ! -x "$bin" ]; then
        command -v cargo >/dev/null || die "no $bin and no cargo to build it: set TREECACHE_BIN"
        log "building $bin"
        cargo build --release --locked --bin treecache --manifest-path "$SRC_DIR/Cargo.toml" >&2
    fi
    printf '%s\n' "$bin"
}

# shared_binary: TREECACHE_BIN, or the shared build once it matches the sources.
shared_binary() {
    if [ -n "${TREECACHE_BIN:-}" ]; then
        local_binary
        return
    fi
    if ! shared_build_current; then
        log "waiting for the zk VM to build target/vagrant/treecache (provision/build-treecache.sh)"
        wait_for "the shared build" "${TREECACHE_BUILD_WAIT:-1800}" shared_build_current ||
            die "no up-to-date $SHARED_BUILD/treecache: is /vagrant a two-way synced folder (see docs/deploy.md)? run: vagrant provision zk"
    fi
    printf '%s\n' "$SHARED_BUILD/treecache"
}

install_systemd() {
    need_root "$0 systemd"
    if [ -z "${TREECACHE_ZK:-}" ] || [ -z "${TREECACHE_LISTEN:-}" ]; then
        die "TREECACHE_ZK and TREECACHE_LISTEN must be set (Vagrant sets them from deploy/hosts)"
    fi
    apt_install curl ca-certificates
    local bin changed=0
    bin=$(shared_binary)
    if ! cmp -s "$bin" /usr/local/bin/treecache; then
        install -m 0755 "$bin" /usr/local/bin/treecache.new
        mv -f /usr/local/bin/treecache.new /usr/local/bin/treecache
        changed=1
    fi
    local secret tls_unit=""
    secret=$(secret_file)
    write_if_changed /etc/treecache/cluster-secret 0600 <"$secret" && changed=1
    if tls_on; then
        local before
        before=$(cat /etc/treecache/tls/node.pem 2>/dev/null || true)
        tls_files /etc/treecache/tls
        [ "$before" = "$(cat /etc/treecache/tls/node.pem)" ] || changed=1
        # The key reaches the service as a credential, like the secret.
        tls_unit="LoadCredential=tls-key:/etc/treecache/tls/node-key.pem
Environment=TREECACHE_TLS_KEY=%d/tls-key
# systemctl reload: the node reads its certificate, key and CA again.
ExecReload=/bin/kill -HUP \$MAINPID"
    fi
    # 0600: it may hold TREECACHE_API_TOKEN. systemd reads it as root.
    {
        echo "# Written by provision/treecache.sh from the environment Vagrant gave it."
        env | grep -E '^(TREECACHE_[A-Z_]+|RUST_LOG)=' | grep -Ev "$PROVISION_ONLY" | LC_ALL=C sort
    } | write_if_changed /etc/treecache/treecache.env 0600 && changed=1
    write_if_changed /etc/systemd/system/treecache.service 0644 <<EOF && changed=1
# Written by provision/treecache.sh.
[Unit]
Description=treecache node
Documentation=file:///vagrant/docs/deploy.md
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/treecache/treecache.env
# The cluster secret, readable by this service's dynamic user only.
LoadCredential=cluster-secret:/etc/treecache/cluster-secret
Environment=TREECACHE_CLUSTER_SECRET_FILE=%d/cluster-secret
$tls_unit
ExecStart=/usr/local/bin/treecache node
# SIGTERM: the node leaves the tree (its children re-attach at once).
KillSignal=SIGTERM
TimeoutStopSec=20
Restart=always
RestartSec=2
DynamicUser=yes
StateDirectory=treecache
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
EOF
    systemd_unit treecache.service "$changed"
    if wait_for "$(describe) to register" 60 health; then
        log "$(describe): $(curl -sf --max-time 3 "${CURL_TLS[@]}" "$url/health")"
    elif systemctl is-active --quiet treecache.service; then
        log "$(describe) runs but has not registered yet (is the root up?): journalctl -u treecache"
    else
        die "treecache.service is not running: journalctl -u treecache"
    fi
}

case "$mode" in
    systemd)
        install_systemd
        ;;
    foreground)
        bin=$(local_binary)
        if tls_on; then
            tls_files "$(state_dir "node-${listen//[:.]/-}")/tls"
        fi
        TREECACHE_CLUSTER_SECRET_FILE=$(secret_file)
        export TREECACHE_CLUSTER_SECRET_FILE
        unset TREECACHE_CLUSTER_SECRET
        log "$(describe)"
        exec "$bin" node
        ;;
    background)
        bin=$(local_binary)
        if tls_on; then
            tls_files "$(state_dir "node-${listen//[:.]/-}")/tls"
        fi
        TREECACHE_CLUSTER_SECRET_FILE=$(secret_file)
        export TREECACHE_CLUSTER_SECRET_FILE
        unset TREECACHE_CLUSTER_SECRET
        dir=$(state_dir "node-${listen//[:.]/-}")
        start_background "$dir/treecache.pid" "$dir/treecache.log" "$bin" node
        if ! command -v curl >/dev/null; then
            log "$(describe): no curl here to check it registered; see $dir/treecache.log"
        elif wait_started "$dir/treecache.pid" "$dir/treecache.log" 60 "$(describe)" health; then
            log "$(describe): registered"
        else
            log "$(describe): not registered yet (is the root up?); see $dir/treecache.log"
        fi
        ;;
    stop)
        dir=$(state_dir "node-${listen//[:.]/-}")
        stop_background "$dir/treecache.pid"
        ;;
esac
