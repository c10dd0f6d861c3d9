#!/usr/bin/env bash
# Installs ZooKeeper from Debian's `zookeeper` package (it pulls in a JRE).
# Idempotent: does nothing when the package and java are already there.
# Needs root to install. The `zookeeper` package ships no service (that is
# `zookeeperd`), so nothing system-wide starts: treecache's tools run their
# own private server from the package's jars.
set -euo pipefail

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

if installed zookeeper && command -v java >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-zookeeper: ZooKeeper is missing and installing it needs root (sudo $0)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt does not know the package yet.
if ! apt-cache policy zookeeper 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -q
fi
apt-get install -y -q --no-install-recommends zookeeper </dev/null
if ! command -v java >/dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends default-jre-headless </dev/null
fi
echo "install-zookeeper: installed zookeeper $(dpkg-query -W -f='${Version}' zookeeper)"
