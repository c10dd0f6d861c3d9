#!/usr/bin/env bash
# Installs ZooKeeper from Debian's package (and the Java it needs), once.
# Idempotent: does nothing when it is already installed. Needs root.
set -euo pipefail

if [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-zookeeper: ZooKeeper is missing and installing it needs root (sudo $0)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show zookeeper >/dev/null 2>&1; then
    apt-get update -qq
fi
apt-get install -y -qq zookeeper default-jre-headless >/dev/null
echo "install-zookeeper: installed $(dpkg-query -W -f='${Version}' zookeeper)"
