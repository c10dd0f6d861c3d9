#!/usr/bin/env bash
# Builds treecache once for every VM: a release build of the synced source
# tree, left in the synced folder at target/vagrant/treecache, where
# provision/treecache.sh picks it up in each VM. Vagrant runs this in the zk
# VM, which comes up first; the nodes only copy the result.
#
#   provision/build-treecache.sh
#
# It rebuilds only when the sources (Cargo.toml, Cargo.lock, src/) differ from
# those of the binary there (target/vagrant/treecache.src holds their hash).
# Installs what a build needs: a C toolchain (apt) and Rust (rustup, into
# /opt/rust). The compile happens on the VM's own disk (/var/cache/treecache-build);
# only the finished binary goes to the synced folder. It also makes the
# cluster secret, target/vagrant/cluster-secret, once (see treecache.sh).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

out=$SHARED_BUILD
export RUSTUP_HOME=/opt/rust/rustup CARGO_HOME=/opt/rust/cargo
export PATH=$CARGO_HOME/bin:$PATH

# A small VM links a large binary: make sure there is room to swap.
ensure_swap() {
    local mem_kb swap_kb
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    swap_kb=$(awk '/^SwapTotal:/ {print $2}' /proc/meminfo)
    if [ $((mem_kb + swap_kb)) -ge 3000000 ]; then
        return 0
    fi
    if [ ! -f /swapfile ]; then
        log "adding 2 GiB of swap for the build"
        fallocate -l 2G /swapfile
        chmod 600 /swapfile
        mkswap /swapfile >/dev/null
    fi
    swapon --show=NAME --noheadings | grep -qx /swapfile || swapon /swapfile
    grep -q '^/swapfile ' /etc/fstab || echo '/swapfile none swap sw 0 0' >>/etc/fstab
}

ensure_rust() {
    if [ -x "$CARGO_HOME/bin/cargo" ]; then
        return 0
    fi
    log "installing Rust (rustup, stable, minimal profile) into /opt/rust"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --default-toolchain stable --no-modify-path >/dev/null
}

# The secret every node gets, made here once (the zk VM comes up first).
ensure_secret "$SHARED_SECRET"

want=$(source_hash)
if shared_build_current; then
    log "target/vagrant/treecache is up to date"
    exit 0
fi

need_root "$0"
apt_install build-essential pkg-config curl ca-certificates
ensure_swap
ensure_rust
log "building treecache (release) from $SRC_DIR; the first build takes several minutes"
CARGO_TARGET_DIR=/var/cache/treecache-build CARGO_PROFILE_RELEASE_DEBUG=0 \
    cargo build --release --locked --bin treecache --manifest-path "$SRC_DIR/Cargo.toml"
mkdir -p "$out"
# Copy, then rename: a VM polling for the binary never sees half of it.
install -m 0755 /var/cache/treecache-build/release/treecache "$out/treecache.tmp"
mv -f "$out/treecache.tmp" "$out/treecache"
printf '%s\n' "$want" >"$out/treecache.src"
log "built $out/treecache ($("$out/treecache" --version))"
