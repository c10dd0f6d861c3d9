#!/usr/bin/env bash
# ZooKeeper for the tree: Debian's `zookeeper` package, one standalone server
# listening on the private network only, admin server off.
#
#   provision/zookeeper.sh systemd     the zk VM: /etc/treecache/zoo.cfg, data in
#                                      /var/lib/zookeeper/treecache, zookeeper.service, and
#                                      /usr/local/bin/zkCli.sh aimed at it
#   provision/zookeeper.sh foreground  config, data and zkCli.sh under the state dir;
#                                      the server runs in this process
#   provision/zookeeper.sh background  the same, detached (pid, log in the state dir)
#   provision/zookeeper.sh stop        stops the background server
#
# Environment:
#   ZOOKEEPER_LISTEN     ADDRESS:PORT to serve on (default 127.0.0.1:2181);
#                        Vagrant passes the zk VM's private address
#   ZOOKEEPER_HEAP       JVM heap (default 256m)
#   ZOOKEEPER_START_WAIT seconds systemd mode waits for the server to answer
#                        (default 300: a JVM in a slow or emulated VM takes minutes)
#   ZOOKEEPER_TLS_LISTEN ADDRESS:PORT of a secure client port (TLS, client
#                        certificates required), off when unset; Vagrant sets it
#                        with TREECACHE_TLS=1. The CA is made in the synced
#                        folder (target/vagrant/tls, or TREECACHE_TLS_DIR), the
#                        server's certificate from it (provision/lib.sh)
#   TREECACHE_STATE_DIR  state dir for foreground/background
#                        (default target/deploy/zookeeper-PORT in the checkout)
#
# The server and the CLI run `java` with the package's jars plus an SLF4J
# binding: Debian's zkServer.sh fixes a classpath without one, so the server
# would log nothing and the CLI would print SLF4J warnings.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

mode=$(parse_mode "${1:-}")
listen=${ZOOKEEPER_LISTEN:-127.0.0.1:2181}
host=${listen%:*}
port=${listen##*:}
heap=${ZOOKEEPER_HEAP:-256m}
[[ $port =~ ^[0-9]+$ && -n $host && $host != "$listen" ]] || die "ZOOKEEPER_LISTEN=$listen: expected ADDRESS:PORT"
tls_listen=${ZOOKEEPER_TLS_LISTEN:-}
tls_host=${tls_listen%:*}
tls_port=${tls_listen##*:}
if [ -n "$tls_listen" ]; then
    [[ $tls_port =~ ^[0-9]+$ && -n $tls_host && $tls_host != "$tls_listen" ]] ||
        die "ZOOKEEPER_TLS_LISTEN=$tls_listen: expected ADDRESS:PORT"
fi

JARS=/usr/share/java
SERVER_CP=/etc/zookeeper/conf:$JARS/zookeeper.jar:$JARS/slf4j-log4j12.jar:$JARS/log4j-1.2.jar
if [ -n "$tls_listen" ]; then
    # The secure port runs on Netty (Debian's libnetty-java, a dependency
    # of the zookeeper package).
    for jar in buffer codec common handler resolver transport transport-native-epoll transport-native-unix-common; do
        SERVER_CP=$SERVER_CP:$JARS/netty-$jar.jar
    done
fi
CLI_CP=/etc/zookeeper/conf:$JARS/zookeeper.jar:$JARS/slf4j-nop.jar

# zoo_tls_cfg TLSDIR: the secure client port's lines (TLSDIR holds
# keystore.pem, the server's certificate then its key, and ca.pem).
zoo_tls_cfg() {
    cat <<EOF
# The secure client port: TLS, client certificates from the CA required.
secureClientPortAddress=$tls_host
secureClientPort=$tls_port
serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory
ssl.keyStore.location=$1/keystore.pem
ssl.keyStore.type=PEM
ssl.trustStore.location=$1/ca.pem
ssl.trustStore.type=PEM
ssl.clientAuth=need
EOF
}

# zoo_tls_files TLSDIR [OWNER]: the server's certificate for its secure
# address, as the key store and trust store in TLSDIR (OWNER may read them).
zoo_tls_files() {
    local dir=$1 owner=${2:-}
    ensure_ca "$SHARED_TLS"
    issue_cert "$SHARED_TLS" "$dir" zk "$tls_host"
    cat "$dir/zk.pem" "$dir/zk-key.pem" | write_if_changed "$dir/keystore.pem" 0600 || true
    if [ -n "$owner" ]; then
        chown "$owner" "$dir/keystore.pem" "$dir/zk-key.pem"
    fi
}

# zoo_cfg DATADIR [TLSDIR]: the server's configuration.
zoo_cfg() {
    cat <<EOF
# Written by provision/zookeeper.sh; edit that script, not this file.
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$1
clientPortAddress=$host
clientPort=$port
# Sessions from 4 s to 40 s; treecache nodes ask for 6 s.
minSessionTimeout=4000
maxSessionTimeout=40000
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
autopurge.snapRetainCount=3
autopurge.purgeInterval=24
EOF
    if [ -n "$tls_listen" ]; then
        zoo_tls_cfg "$2"
    fi
}

# server_cmd CFG: the command line of the server.
server_cmd() {
    printf '%s\n' "$(command -v java)" "-Xmx$heap" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
        -Dzookeeper.root.logger=INFO,CONSOLE -Dzookeeper.console.threshold=INFO \
        -cp "$SERVER_CP" org.apache.zookeeper.server.quorum.QuorumPeerMain "$1"
}

# zkcli_wrapper: `zkCli.sh ARGS` against this server unless ARGS has -server.
zkcli_wrapper() {
    cat <<EOF
#!/bin/sh
# zkCli.sh aimed at treecache's ZooKeeper ($listen); written by provision/zookeeper.sh.
# Usage: zkCli.sh [-server HOST:PORT] ls -R /treecache/default/tree
case " \$* " in
    *" -server "*) exec java -cp "$CLI_CP" org.apache.zookeeper.ZooKeeperMain "\$@" ;;
esac
exec java -cp "$CLI_CP" org.apache.zookeeper.ZooKeeperMain -server "$listen" "\$@"
EOF
}

# ruok: the server answers "imok" (it sends no newline, so read fails at EOF
# but still fills `reply`).
ruok() {
    (
        exec 3<>"/dev/tcp/$host/$port" || exit 1
        printf 'ruok' >&3
        reply=""
        IFS= read -r -t 5 reply <&3 || true
        [ "$reply" = imok ]
    ) 2>/dev/null
}

# configure_local DIR: config, data dir and CLI under DIR (fore/background).
configure_local() {
    local dir=$1
    mkdir -p "$dir/data" "$dir/bin"
    if [ -n "$tls_listen" ]; then
        zoo_tls_files "$dir/tls"
    fi
    zoo_cfg "$dir/data" "$dir/tls" | write_if_changed "$dir/zoo.cfg" 0644 || true
    zkcli_wrapper | write_if_changed "$dir/bin/zkCli.sh" 0755 || true
}

install_systemd() {
    need_root "$0 systemd"
    "$PROVISION_DIR/install-zookeeper.sh"
    local changed=0 cmd
    # A data directory of its own: the package's /var/lib/zookeeper holds a
    # myid linked to /etc/zookeeper/conf/myid, whose placeholder text
    # ("replace this text with ...") a standalone 3.8 server refuses to
    # start with ("serverid ... is not a number").
    install -d -o zookeeper -g zookeeper -m 0750 /var/lib/zookeeper /var/lib/zookeeper/treecache
    if [ -n "$tls_listen" ]; then
        install -d -m 0755 /etc/treecache/zk-tls
        zoo_tls_files /etc/treecache/zk-tls zookeeper:zookeeper
    fi
    zoo_cfg /var/lib/zookeeper/treecache /etc/treecache/zk-tls | write_if_changed /etc/treecache/zoo.cfg 0644 && changed=1
    cmd=$(server_cmd /etc/treecache/zoo.cfg | tr '\n' ' ')
    write_if_changed /etc/systemd/system/zookeeper.service 0644 <<EOF && changed=1
# Written by provision/zookeeper.sh.
[Unit]
Description=ZooKeeper for treecache ($listen)
Documentation=file:///vagrant/docs/deploy.md
After=network-online.target
Wants=network-online.target

[Service]
User=zookeeper
Group=zookeeper
ExecStart=$cmd
Restart=always
RestartSec=2
SuccessExitStatus=143

[Install]
WantedBy=multi-user.target
EOF
    zkcli_wrapper | write_if_changed /usr/local/bin/zkCli.sh 0755 || true
    systemd_unit zookeeper.service "$changed"
    wait_for "ZooKeeper on $listen" "${ZOOKEEPER_START_WAIT:-300}" ruok ||
        die "ZooKeeper does not answer on $listen: journalctl -u zookeeper"
    log "ZooKeeper answers on $listen; try: zkCli.sh ls -R /treecache"
}

case "$mode" in
    systemd)
        install_systemd
        ;;
    foreground)
        "$PROVISION_DIR/install-zookeeper.sh"
        dir=$(state_dir "zookeeper-$port")
        configure_local "$dir"
        mapfile -t cmd < <(server_cmd "$dir/zoo.cfg")
        log "ZooKeeper on $listen, data in $dir/data, CLI $dir/bin/zkCli.sh"
        exec "${cmd[@]}"
        ;;
    background)
        "$PROVISION_DIR/install-zookeeper.sh"
        dir=$(state_dir "zookeeper-$port")
        configure_local "$dir"
        mapfile -t cmd < <(server_cmd "$dir/zoo.cfg")
        start_background "$dir/zookeeper.pid" "$dir/zookeeper.log" "${cmd[@]}"
        wait_started "$dir/zookeeper.pid" "$dir/zookeeper.log" 120 "ZooKeeper on $listen" ruok ||
            die "ZooKeeper does not answer on $listen: see $dir/zookeeper.log"
        log "ZooKeeper answers on $listen; CLI: $dir/bin/zkCli.sh ls -R /treecache"
        ;;
    stop)
        dir=$(state_dir "zookeeper-$port")
        stop_background "$dir/zookeeper.pid"
        ;;
esac
