#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: ZooKeeper, and the
# tools the deployment tests call (vagrant, shellcheck, iproute2), plus the
# cargo components for the lint steps. Needs root for apt.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

"$here/provision/install-zookeeper.sh"

missing=()
command -v vagrant >/dev/null 2>&1 || missing+=(vagrant)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-deps: missing ${missing[*]}; installing needs root" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
