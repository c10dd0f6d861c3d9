# shellcheck shell=bash
# Shared by the provision scripts (sourced, never run). Every script takes a
# mode, so the steps that set up a VM also serve a local run and the tests:
#
#   systemd     install under /usr/local and /etc, run as a systemd service
#               (what Vagrant does in each VM; needs root)
#   foreground  run in this process (exec), state under $TREECACHE_STATE_DIR;
#               touches nothing outside it (what tests/netns.rs does)
#   background  the same, detached; pid and log in the state dir
#   stop        stop what `background` started
#
# Every step checks before it changes anything, so running a script twice
# changes nothing the second time.

PROVISION_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The source tree: the synced folder (/vagrant) in a VM, the checkout here.
SRC_DIR=$(cd "$PROVISION_DIR/.." && pwd)
PROG=$(basename "$0" .sh)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# The mode from the first argument, or a usage message.
parse_mode() {
    case "${1:-}" in
        systemd | foreground | background | stop) printf '%s\n' "$1" ;;
        *) die "usage: $0 systemd|foreground|background|stop (see the top of $0)" ;;
    esac
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "$* needs root (run it with sudo)"
}

# write_if_changed PATH PERM < CONTENT: replaces PATH atomically when the
# content differs; succeeds only if it changed something.
write_if_changed() {
    local path=$1 perm=$2 tmp
    mkdir -p "$(dirname "$path")"
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chmod "$perm" "$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$path"
}

# apt_install PACKAGE...: installs those not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    need_root "installing ${missing[*]}"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# systemd_unit NAME CHANGED: reloads units, enables NAME, and restarts it when
# CHANGED is 1 (config or binary changed), else starts it if it is stopped.
systemd_unit() {
    local name=$1 changed=$2
    systemctl daemon-reload
    systemctl enable --quiet "$name"
    if [ "$changed" = 1 ]; then
        log "(re)starting $name"
        systemctl restart "$name"
    else
        systemctl start "$name"
    fi
}

# state_dir NAME: $TREECACHE_STATE_DIR, or target/deploy/NAME in the checkout.
state_dir() {
    local dir=${TREECACHE_STATE_DIR:-$SRC_DIR/target/deploy/$1}
    mkdir -p "$dir"
    (cd "$dir" && pwd)
}

# running PIDFILE: the pid in PIDFILE is alive.
running() {
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# start_background PIDFILE LOG COMMAND...: starts COMMAND detached, in its own
# session, unless the one recorded in PIDFILE still runs.
start_background() {
    local pidfile=$1 logfile=$2
    shift 2
    if running "$pidfile"; then
        log "already running (pid $(cat "$pidfile"), log $logfile)"
        return 0
    fi
    setsid "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
    log "started (pid $!, log $logfile)"
}

# stop_background PIDFILE: SIGTERM (a node leaves the tree cleanly), then
# SIGKILL after 15 s.
stop_background() {
    local pidfile=$1 pid i
    if ! running "$pidfile"; then
        log "not running"
        rm -f "$pidfile"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        [ "$i" -eq 150 ] && kill -KILL "$pid" 2>/dev/null
        sleep 0.1
    done
    rm -f "$pidfile"
    log "stopped (pid $pid)"
}

# wait_started PIDFILE LOG SECONDS DESCRIPTION COMMAND...: after
# start_background, polls COMMAND until it succeeds. Dies with the log's tail
# if the process exits (say, its port was taken); fails after SECONDS.
wait_started() {
    local pidfile=$1 logfile=$2 secs=$3 what=$4 deadline
    shift 4
    deadline=$((SECONDS + secs))
    until "$@"; do
        if ! running "$pidfile"; then
            tail -n 20 "$logfile" >&2
            die "$what: the process exited (log above, $logfile)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "gave up after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
    running "$pidfile" || die "$what: the process exited, yet something answers: is another one using its address?"
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every half second
# until it succeeds; fails after SECONDS.
wait_for() {
    local what=$1 secs=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "gave up after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

# Where provision/build-treecache.sh leaves the binary for every VM (the
# synced folder), with the hash of the sources it was built from.
SHARED_BUILD=$SRC_DIR/target/vagrant

# source_hash: a hash of what the binary is built from.
source_hash() {
    (
        cd "$SRC_DIR" || exit 1
        find Cargo.toml Cargo.lock src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
    )
}

# The cluster secret every node of the Vagrant tree shares (the synced
# folder): made once, by the zk VM's provisioning or the first node's.
# shellcheck disable=SC2034 # used by the scripts that source this file
SHARED_SECRET=$SHARED_BUILD/cluster-secret

# ensure_secret FILE: FILE holds a cluster secret; if there is none, makes
# one (256 random bits as hex), readable by its owner only. Created with
# O_EXCL (noclobber), so two machines racing to make it keep the first.
ensure_secret() {
    local file=$1
    [ -s "$file" ] && return 0
    mkdir -p "$(dirname "$file")"
    if (
        umask 077
        set -C
        od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file"
        echo >>"$file"
    ) 2>/dev/null; then
        log "made a new cluster secret in $file"
    fi
    [ -s "$file" ] || die "no cluster secret in $file and cannot make one"
}

# shared_build_current: the shared binary exists and matches the sources.
shared_build_current() {
    [ -x "$SHARED_BUILD/treecache" ] && [ "$(cat "$SHARED_BUILD/treecache.src" 2>/dev/null)" = "$(source_hash)" ]
}

# TLS (TREECACHE_TLS=1): one CA for the tree in the synced folder, made by
# the zk VM (it comes up first) or the first machine that needs it; each
# machine then makes its own certificate with it. OpenSSL's command line
# makes them (Debian's openssl, which ca-certificates already depends on);
# the treecache binary itself uses rustls.
# shellcheck disable=SC2034 # used by the scripts that source this file
SHARED_TLS=${TREECACHE_TLS_DIR:-$SHARED_BUILD/tls}

# tls_on: TREECACHE_TLS asks for TLS (1, true, yes, on).
tls_on() {
    case "${TREECACHE_TLS:-}" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

# ensure_ca DIR: DIR/ca.pem and DIR/ca-key.pem (0600), a P-256 CA made once.
# A lock directory keeps two machines from making two CAs.
ensure_ca() {
    local dir=$1 i
    [ -s "$dir/ca.pem" ] && [ -s "$dir/ca-key.pem" ] && return 0
    command -v openssl >/dev/null || apt_install openssl
    mkdir -p "$dir"
    if mkdir "$dir/.making-ca" 2>/dev/null; then
        if [ ! -s "$dir/ca.pem" ]; then
            (
                umask 077
                openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 3650 \
                    -subj "/CN=treecache deployment CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem.tmp" 2>/dev/null
            )
            chmod 0644 "$dir/ca.pem.tmp"
            mv -f "$dir/ca.pem.tmp" "$dir/ca.pem"
            log "made a new CA in $dir/ca.pem (its key: $dir/ca-key.pem)"
        fi
        rmdir "$dir/.making-ca"
    else
        for i in $(seq 1 100); do
            [ -s "$dir/ca.pem" ] && return 0
            sleep 0.2
        done
        die "another machine is making the CA in $dir and has not finished (remove $dir/.making-ca if it died)"
    fi
}

# issue_cert CADIR OUTDIR NAME ADDRESS [DNSNAME]: OUTDIR/NAME.pem and
# OUTDIR/NAME-key.pem (0600), a certificate for both server and client use
# naming ADDRESS and DNSNAME (default NAME), signed by CADIR's CA;
# OUTDIR/ca.pem beside them. Kept while it names ADDRESS and the CA still
# signs it; made again otherwise.
issue_cert() {
    local cadir=$1 out=$2 name=$3 address=$4 dns=${5:-$3} ext
    command -v openssl >/dev/null || apt_install openssl
    mkdir -p "$out"
    if [ -s "$out/$name.pem" ] && [ -s "$out/$name-key.pem" ] &&
        openssl verify -CAfile "$cadir/ca.pem" "$out/$name.pem" >/dev/null 2>&1 &&
        openssl x509 -in "$out/$name.pem" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$address\$\|IP Address:$address,"; then
        cmp -s "$cadir/ca.pem" "$out/ca.pem" || install -m 0644 "$cadir/ca.pem" "$out/ca.pem"
        return 0
    fi
    ext=$(mktemp)
    printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' \
        "$address" "$dns" >"$ext"
    (
        umask 077
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -subj "/CN=$dns" \
            -keyout "$out/$name-key.pem" -out "$out/$name.csr" 2>/dev/null
    )
    # A random serial: machines signing at once share no serial file.
    openssl x509 -req -in "$out/$name.csr" -CA "$cadir/ca.pem" -CAkey "$cadir/ca-key.pem" \
        -set_serial "0x$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" \
        -days 825 -extfile "$ext" -out "$out/$name.pem" 2>/dev/null
    rm -f "$ext" "$out/$name.csr"
    chmod 0644 "$out/$name.pem"
    install -m 0644 "$cadir/ca.pem" "$out/ca.pem"
    log "made a certificate for $dns ($address) in $out/$name.pem"
}
