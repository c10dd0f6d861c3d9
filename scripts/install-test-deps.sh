#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: ZooKeeper (through
# provision/install-zookeeper.sh), the tools the deployment and baseline
# tests call (vagrant, shellcheck, iproute2, redis, jq, curl), schemathesis
# for tests/openapi.rs and prometheus-client (its OpenMetrics parser) for
# tests/metrics.rs (PyPI, pinned, in a venv at .venv-tests/ so Debian's pip
# need not touch the system Python), and the cargo components for the lint
# steps. Then checks that every one of them is there, and fails naming what
# is missing. Needs root only to install.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

# openssl: the provisioning's CA and certificates (TREECACHE_TLS=1, tests/netns.rs).
packages=(vagrant shellcheck iproute2 redis-server redis-tools jq curl python3 python3-venv openssl)
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

install_packages() {
    local missing=()
    for p in "${packages[@]}"; do
        installed "$p" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-deps: missing ${missing[*]}; installing needs root" >&2
        exit 1
    fi
    # Refresh the lists only when apt cannot place a candidate for one of them.
    for p in "${missing[@]}"; do
        if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            apt-get update -q
            break
        fi
    done
    apt-get install -y -q "${missing[@]}" </dev/null
}

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
    for t in java /usr/share/zookeeper/bin/zkCli.sh vagrant shellcheck ip redis-server redis-cli redis-benchmark jq curl openssl cargo; do
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
install_packages
install_components
install_python_tools
check_tools
