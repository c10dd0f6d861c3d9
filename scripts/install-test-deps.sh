#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: ZooKeeper (through
# provision/install-zookeeper.sh), the tools the deployment and baseline
# tests call (vagrant with its libvirt provider for `vagrant validate`,
# iproute2, redis, nginx and wrk (baselines of bench/compare.sh), jq, curl,
# ShellCheck, and valgrind for tests/store_valgrind.rs), schemathesis for tests/openapi.rs and prometheus-client (its OpenMetrics parser) for
# tests/metrics.rs (PyPI, pinned, in a venv at .venv-tests/ so Debian's pip
# need not touch the system Python), and the cargo components for the lint
# steps. Then checks that every one of them is there, and fails naming what
# is missing. Needs root only to install.
#
#   scripts/install-test-deps.sh                 what scripts/test.sh needs
#   scripts/install-test-deps.sh --vagrant-e2e   only what scripts/vagrant-e2e.sh
#                                                needs (libvirt, QEMU, mmdebstrap, ...)
#
# Debian packages go in without their Recommends (--no-install-recommends):
# vagrant recommends vagrant-libvirt, which recommends an NFS server and
# libguestfs (a kernel image, GTK: 132 packages in all). None of it is used:
# `vagrant validate` needs vagrant and a provider plugin, and the e2e run's
# synced folder is rsync (deploy/Vagrantfile.libvirt).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

# openssl: the provisioning's CA and certificates (TREECACHE_TLS=1, tests/netns.rs).
packages=(vagrant vagrant-libvirt shellcheck iproute2 redis-server redis-tools nginx wrk jq curl python3 python3-venv openssl valgrind)
# The version tests/openapi.rs was written against; its CLI changes between majors.
schemathesis_version=4.32.5
# The Prometheus project's Python client; tests/metrics.rs uses its parser.
prometheus_client_version=0.26.0
# redis-py, the Redis client tests/resp.rs drives against a live tree.
redis_py_version=5.2.1
venv="$here/.venv-tests"

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# install_packages [APT-OPTION...] -- PACKAGE...: installs those missing,
# without Recommends.
install_packages() {
    local opts=() missing=() p
    while [ "$1" != -- ]; do
        opts+=("$1")
        shift
    done
    shift
    for p in "$@"; do
        installed "$p" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-deps: missing ${missing[*]}; installing needs root" >&2
        exit 1
    fi
    # Refresh the lists only when apt cannot place a candidate for one of them.
    for p in "${missing[@]}"; do
        if ! apt-cache "${opts[@]}" policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            apt-get update -q
            break
        fi
    done
    apt-get install -y -q --no-install-recommends "${opts[@]}" "${missing[@]}" </dev/null
}

# scripts/vagrant-e2e.sh's packages: libvirt's daemon with the QEMU, network
# and storage drivers (no libvirt-daemon-system: no service starts on the
# host, the script runs libvirtd in its own namespace), QEMU, dnsmasq and
# iptables for libvirt's networks, mmdebstrap for the box, rsync for the
# synced folder.
e2e_packages=(vagrant vagrant-libvirt mmdebstrap rsync dnsmasq-base iptables e2fsprogs jq curl)
# bookworm's libvirt 9 has the network and storage drivers and virtlogd in
# libvirt-daemon; bookworm-backports' 11 splits them out.
virt_packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils)
virt_packages_bpo=("${virt_packages[@]}" libvirt-daemon-driver-network libvirt-daemon-driver-storage)

# QEMU's packages must come from one release: where qemu-utils is
# bookworm-backports' (a machine image may bring it), qemu-system-x86 and
# libvirt come from there too (it Breaks bookworm's qemu-system-common).
install_virt() {
    local version
    version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ $version != *~bpo12* ]]; then
        install_packages -- "${virt_packages[@]}"
        return
    fi
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "install-test-deps: qemu-utils $version is from bookworm-backports; adding that suite (pinned low by Debian: nothing else moves)" >&2
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            >/etc/apt/sources.list.d/bookworm-backports.sources
        apt-get update -q
    fi
    install_packages -t bookworm-backports -- "${virt_packages_bpo[@]}"
}

check_e2e_tools() {
    local missing=() t
    for t in vagrant libvirtd virtlogd virsh qemu-system-x86_64 qemu-img dnsmasq iptables mmdebstrap \
        mkfs.ext4 rsync jq curl nsenter unshare ip cargo; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [ -d /usr/lib/x86_64-linux-gnu/libvirt/connection-driver ] &&
        ls /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so >/dev/null 2>&1 ||
        missing+=("libvirt's QEMU driver")
    # From /: vagrant makes .vagrant/ in a project directory it runs in.
    (cd / && vagrant plugin list 2>/dev/null) | grep -q vagrant-libvirt || missing+=("the vagrant-libvirt plugin")
    if [ ${#missing[@]} -gt 0 ]; then
        echo "install-test-deps: still missing for the Vagrant e2e run: ${missing[*]}" >&2
        exit 1
    fi
}

if [ "${1:-}" = --vagrant-e2e ]; then
    install_packages -- "${e2e_packages[@]}"
    install_virt
    check_e2e_tools
    exit 0
fi

install_components() {
    local c
    for c in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
            rustup component add "$c"
        fi
    done
}

version_in_venv() {
    "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null
}

# Debian's python3 (not a pyenv or other shim on PATH), so the venv lives
# as long as the package does.
install_python_tools() {
    if [ -x "$venv/bin/schemathesis" ] &&
        [ "$(version_in_venv schemathesis)" = "$schemathesis_version" ] &&
        [ "$(version_in_venv prometheus-client)" = "$prometheus_client_version" ] &&
        [ "$(version_in_venv redis)" = "$redis_py_version" ]; then
        return 0
    fi
    if [ ! -x "$venv/bin/python" ]; then
        /usr/bin/python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check --no-input \
        "schemathesis==$schemathesis_version" "prometheus-client==$prometheus_client_version" \
        "redis==$redis_py_version" </dev/null
}

check_tools() {
    local missing=() t
    for t in java /usr/share/zookeeper/bin/zkCli.sh vagrant shellcheck ip redis-server redis-cli redis-benchmark /usr/sbin/nginx wrk jq curl openssl valgrind cargo; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [ -x "$venv/bin/schemathesis" ] || missing+=("$venv/bin/schemathesis")
    [ "$(version_in_venv prometheus-client)" = "$prometheus_client_version" ] || missing+=("prometheus-client in $venv")
    [ "$(version_in_venv redis)" = "$redis_py_version" ] || missing+=("redis (redis-py) in $venv")
    cargo fmt --version >/dev/null 2>&1 || missing+=("cargo fmt")
    cargo clippy --version >/dev/null 2>&1 || missing+=("cargo clippy")
    if [ ${#missing[@]} -gt 0 ]; then
        echo "install-test-deps: still missing: ${missing[*]}" >&2
        exit 1
    fi
}

"$here/provision/install-zookeeper.sh"
install_packages -- "${packages[@]}"
install_components
install_python_tools
check_tools
