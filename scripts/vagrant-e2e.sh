#!/usr/bin/env bash
# The Vagrant deployment end to end, on libvirt, with every packet kept on
# this machine (issue 25):
#
#   scripts/vagrant-e2e.sh          the whole run: box, tree of VMs, checks, tear-down
#   scripts/vagrant-e2e.sh box      only build the box (kept in target/vagrant-e2e-box/)
#   scripts/vagrant-e2e.sh clean    remove what an interrupted run left behind
#   scripts/vagrant-e2e.sh stage    only build treecache and stage it with the
#                                   secret in target/vagrant/ (for a libvirt
#                                   `vagrant up` by hand, docs/deploy.md)
#
# 1. Builds a Debian 12 box with mmdebstrap, from Debian's packages only:
#    systemd, sshd, sudo, ZooKeeper and a JRE, rsync, the vagrant user with
#    Vagrant's insecure key; the kernel and initrd boot directly (no boot
#    loader). Kept between runs while its recipe (this file's box part) is
#    unchanged.
# 2. Builds treecache (cargo build --release) and puts the binary where the
#    VMs look for the shared build (target/vagrant/), with the cluster
#    secret: the VMs have no network beyond this machine, so none of them
#    can install Rust.
# 3. Creates a network namespace and, inside it (and inside a mount
#    namespace of its own, so that nothing of the host's libvirt is used or
#    touched), starts virtlogd and libvirtd. Every VM network (libvirt's
#    bridges, dnsmasq, NAT rules) lives in that namespace, which has no link
#    to anything else: VM traffic cannot leave it.
# 4. `vagrant up` with the repository's Vagrantfile through
#    deploy/Vagrantfile.libvirt (VAGRANT_VAGRANTFILE), from inside the namespace.
# 5. Checks that the namespace has no link out (only its loopback, libvirt's
#    bridges, the VMs' taps) and, from inside it: every VM's node is registered; a
#    write at one node VM is read at another; `zkCli.sh ls -R` on the zk VM
#    shows every node; `virsh destroy` of an inner node VM, and the tree
#    heals (its child re-attaches, the value is still read there).
# 6. `vagrant destroy -f`, then checks that nothing is left: no domain, no
#    network, no volume but the box's base image (which vagrant-libvirt
#    keeps; removed here with the rest), then no libvirt process, no mount,
#    no namespace.
# Prints the time of each step and the total. Exits non-zero on any failure,
# after tearing everything down (set E2E_KEEP=1 to keep a failed run's VMs
# for a look; `scripts/vagrant-e2e.sh clean` removes them).
#
# Needs root, /dev/kvm, and the packages scripts/install-test-deps.sh
# --vagrant-e2e installs (it runs it). Environment:
#   E2E_NODES     node VMs (default 3: the root's two children and one grandchild)
#   E2E_ACCEL     auto (default: KVM if it boots the box's kernel, else TCG), kvm, tcg
#   E2E_KEEP      1: leave the VMs up after a failure
#   E2E_BOX_DIR   where the box is kept (default target/vagrant-e2e-box)
#   E2E_DIR       this run's state and logs (default target/vagrant-e2e)
#   E2E_NETNS     the namespace's name (default treecache-e2e)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

NETNS=${E2E_NETNS:-treecache-e2e}
NODES=${E2E_NODES:-3}
BOX_DIR=${E2E_BOX_DIR:-$here/target/vagrant-e2e-box}
DIR=${E2E_DIR:-$here/target/vagrant-e2e}
BOX_NAME=treecache/debian12-e2e
LOGS=$DIR/logs
HOLDER_PID_FILE=$DIR/holder.pid
START=$SECONDS
STEP_START=$SECONDS
STEPS=()

log() { printf '[%4ds] vagrant-e2e: %s\n' "$((SECONDS - START))" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

# step NAME: closes the previous step's timing, opens NAME's.
step_name=""
step() {
    step_done
    step_name=$1
    STEP_START=$SECONDS
    log "== $1"
}
step_done() {
    [ -n "$step_name" ] && STEPS+=("$(printf '%5ds  %s' "$((SECONDS - STEP_START))" "$step_name")")
    step_name=""
}

# ---------------------------------------------------------------------------
# The box.

# What goes into the box. Part of the box's cache key, with box_recipe.
BOX_PACKAGES=(
    systemd-sysv udev dbus openssh-server sudo
    linux-image-cloud-amd64 initramfs-tools
    zookeeper default-jre-headless
    curl ca-certificates openssl rsync iproute2 procps netcat-openbsd
)
BOX_MIRRORS=(
    "deb http://deb.debian.org/debian bookworm main"
    "deb http://deb.debian.org/debian bookworm-updates main"
    "deb http://deb.debian.org/debian-security bookworm-security main"
)
# No Recommends, no manuals, translations or docs but the copyright files.
# update-alternatives needs the manual directories that hold its links.
# shellcheck disable=SC2016 # "$1" is mmdebstrap's hook argument
BOX_MMDEBSTRAP_OPTS=(
    --variant=minbase --mode=root
    --aptopt='APT::Install-Recommends "false"'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --essential-hook='mkdir -p "$1"/usr/share/man/man1 "$1"/usr/share/man/man8'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
)
# The kernel command line: the image is one ext4 file system, no partitions.
BOX_CMDLINE="root=/dev/vda rw console=ttyS0 net.ifnames=0"

vagrant_gem_dir() {
    ruby -e 'puts Gem::Specification.find_by_name("vagrant").gem_dir'
}

# box_customize ROOTFS: what makes a Debian tree a Vagrant box.
box_customize() {
    local r=$1 key
    key="$(vagrant_gem_dir)/keys/vagrant.pub"
    [ -s "$key" ] || die "no Vagrant insecure key at $key"
    chroot "$r" useradd --create-home --shell /bin/bash --user-group vagrant
    echo 'vagrant:vagrant' | chroot "$r" chpasswd
    install -d -m 0700 -o 1000 -g 1000 "$r/home/vagrant/.ssh"
    [ "$(chroot "$r" id -u vagrant)" = 1000 ] || die "the vagrant user is not uid 1000"
    install -m 0600 -o 1000 -g 1000 "$key" "$r/home/vagrant/.ssh/authorized_keys"
    echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$r/etc/sudoers.d/vagrant"
    chmod 0440 "$r/etc/sudoers.d/vagrant"
    printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$r/etc/fstab"
    echo debian12 >"$r/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 debian12\n::1 localhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
    # The first NIC is libvirt's management network (DHCP); Vagrant writes
    # systemd-networkd files for the private network itself.
    printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' >"$r/etc/systemd/network/80-eth0.network"
    chroot "$r" systemctl enable systemd-networkd.service >/dev/null 2>&1
    : >"$r/etc/resolv.conf"
    # Every VM makes its own machine id (DHCP's client id comes from it)
    # and its own ssh host keys at first boot.
    : >"$r/etc/machine-id"
    rm -f "$r"/etc/ssh/ssh_host_*
    mkdir -p "$r/etc/systemd/system/ssh.service.d"
    printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
        >"$r/etc/systemd/system/ssh.service.d/host-keys.conf"
    printf 'UseDNS no\n' >"$r/etc/ssh/sshd_config.d/vagrant.conf"
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin
}

# The box's own Vagrantfile: direct kernel boot from files in the box.
box_vagrantfile() {
    cat <<EOF
# treecache's e2e box (scripts/vagrant-e2e.sh): Debian 12, kernel booted directly.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.driver = "kvm"
    lv.kernel = File.join(__dir__, "vmlinuz")
    lv.initrd = File.join(__dir__, "initrd.img")
    lv.cmd_line = "$BOX_CMDLINE"
  end
end
EOF
}

box_key() {
    {
        printf '%s\n' "${BOX_PACKAGES[@]}" "${BOX_MIRRORS[@]}" "${BOX_MMDEBSTRAP_OPTS[@]}" "$BOX_CMDLINE"
        declare -f box_customize box_vagrantfile
    } | sha256sum | cut -c1-12
}

box_file() {
    echo "$BOX_DIR/treecache-debian12-$(box_key).box"
}

build_box() {
    local box work rootfs
    box=$(box_file)
    if [ -s "$box" ]; then
        log "box $box is up to date"
        return 0
    fi
    mkdir -p "$BOX_DIR"
    work=$(mktemp -d "$BOX_DIR/build.XXXXXX")
    rootfs=$work/rootfs
    log "building the box with mmdebstrap (Debian 12, ${#BOX_PACKAGES[@]} packages and their dependencies)"
    local include
    include=$(
        IFS=,
        echo "${BOX_PACKAGES[*]}"
    )
    mmdebstrap "${BOX_MMDEBSTRAP_OPTS[@]}" --include="$include" \
        bookworm "$rootfs" "${BOX_MIRRORS[@]}" >"$BOX_DIR/mmdebstrap.log" 2>&1 ||
        {
            tail -n 30 "$BOX_DIR/mmdebstrap.log" >&2
            rm -rf "$work"
            die "mmdebstrap failed (log above, all of it in $BOX_DIR/mmdebstrap.log)"
        }
    box_customize "$rootfs"
    local kernels initrds
    kernels=("$rootfs"/boot/vmlinuz-*)
    initrds=("$rootfs"/boot/initrd.img-*)
    if [ ${#kernels[@]} -ne 1 ] || [ ! -f "${kernels[0]}" ] || [ ${#initrds[@]} -ne 1 ] || [ ! -f "${initrds[0]}" ]; then
        die "expected one kernel and one initrd in the box's /boot: ${kernels[*]} ${initrds[*]}"
    fi
    cp "${kernels[0]}" "$work/vmlinuz"
    cp "${initrds[0]}" "$work/initrd.img"
    mkfs.ext4 -q -F -L root -d "$rootfs" "$work/root.raw" 4G
    rm -rf "$rootfs"
    qemu-img convert -c -O qcow2 "$work/root.raw" "$work/box.img"
    rm -f "$work/root.raw"
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": 4}\n' >"$work/metadata.json"
    box_vagrantfile >"$work/Vagrantfile"
    tar -cf "$work/box.tmp" -C "$work" metadata.json Vagrantfile box.img vmlinuz initrd.img
    # Older boxes are of no use any more.
    rm -f "$BOX_DIR"/treecache-debian12-*.box
    mv "$work/box.tmp" "$box"
    rm -rf "$work"
    log "built $box ($(du -h "$box" | cut -f1))"
}

# ---------------------------------------------------------------------------
# KVM or QEMU's emulator.

# choose_driver: LIBVIRT_DRIVER for deploy/Vagrantfile.libvirt. kvm when
# KVM boots the box's kernel (it prints its banner within seconds), else
# qemu (TCG, emulated, several times slower) with the reason. E2E_ACCEL=kvm
# or tcg skips the probe.
choose_driver() {
    local accel=${E2E_ACCEL:-auto} work out
    case "$accel" in
        kvm) LIBVIRT_DRIVER=kvm ;;
        tcg) LIBVIRT_DRIVER=qemu ;;
        auto)
            work=$(mktemp -d)
            tar -xf "$(box_file)" -C "$work" vmlinuz
            # No disk and no network: the kernel stops at "no root" (panic).
            out=$(timeout 30 qemu-system-x86_64 -accel kvm -cpu host -m 256 -display none -nic none \
                -serial "file:$work/console" -kernel "$work/vmlinuz" -append "console=ttyS0 panic=-1" \
                -no-reboot </dev/null 2>&1) || true
            if grep -aq 'Linux version' "$work/console"; then
                LIBVIRT_DRIVER=kvm
                log "KVM boots the box's kernel: the VMs run on KVM"
            else
                LIBVIRT_DRIVER=qemu
                log "KVM does not boot the box's kernel here: the VMs run on QEMU's emulator (TCG), several times slower"
                log "  the probe: qemu-system-x86_64 -accel kvm -cpu host -kernel <the box's vmlinuz> ..., 30 s:"
                log "  it printed: ${out:-nothing}; the kernel printed $(wc -c <"$work/console") bytes"
            fi
            rm -rf "$work"
            ;;
        *) die "E2E_ACCEL=$accel: expected auto, kvm or tcg" ;;
    esac
    export LIBVIRT_DRIVER
}

# ---------------------------------------------------------------------------
# The namespace and libvirt.

holder_pid() {
    local pid
    pid=$(cat "$HOLDER_PID_FILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# in_ns COMMAND...: runs COMMAND in the namespace's network and mount namespaces.
in_ns() {
    local pid
    pid=$(holder_pid) || die "the namespace holder is not running"
    nsenter --target "$pid" --mount --net --wd="$here" -- "$@"
}

# libvirt's configuration for this run: qemu runs as root without a
# security driver or cgroups (no systemd here), the socket is root's only.
libvirt_config() {
    local etc=$1
    mkdir -p "$etc/qemu/networks" "$etc/storage"
    cat >"$etc/libvirtd.conf" <<'EOF'
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
    cat >"$etc/qemu.conf" <<'EOF'
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
EOF
    echo 'firewall_backend = "iptables"' >"$etc/network.conf"
    : >"$etc/virtlogd.conf"
    : >"$etc/libvirt.conf"
}

ns_up() {
    local d=$DIR/libvirt
    mkdir -p "$d/etc" "$d/lib" "$d/cache" "$LOGS/libvirt" "$LOGS/console"
    libvirt_config "$d/etc"
    ip netns add "$NETNS"
    ip -n "$NETNS" link set lo up
    mkdir -p /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
    # The holder keeps a mount namespace in which libvirt's directories and
    # /run are this run's own; it sleeps until the tear-down kills it.
    # shellcheck disable=SC2016 # $1 and $2 are the inner shell's
    ip netns exec "$NETNS" unshare --mount --propagation private -- bash -c '
        set -e
        mount -t tmpfs -o mode=0755 treecache-e2e-run /run
        mkdir -p /run/libvirt /run/lock
        mount --bind "$1/etc" /etc/libvirt
        mount --bind "$1/lib" /var/lib/libvirt
        mount --bind "$1/cache" /var/cache/libvirt
        mount --bind "$2" /var/log/libvirt
        exec sleep infinity' holder "$d" "$LOGS/libvirt" </dev/null >"$LOGS/holder.log" 2>&1 &
    echo $! >"$HOLDER_PID_FILE"
    local i
    for i in $(seq 1 50); do
        # Ready once its /run is the private one.
        if in_ns test -d /run/libvirt 2>/dev/null && ! in_ns test -d /run/netns 2>/dev/null; then
            break
        fi
        [ "$i" = 50 ] && die "the namespace holder did not start: $(cat "$LOGS/holder.log")"
        sleep 0.1
    done
    in_ns virtlogd --daemon
    in_ns libvirtd --daemon
    for i in $(seq 1 100); do
        in_ns virsh -c qemu:///system version >/dev/null 2>&1 && break
        [ "$i" = 100 ] && {
            tail -n 30 "$LOGS/libvirt/libvirtd.log" >&2 || true
            die "libvirtd did not answer within 20 s (log above)"
        }
        sleep 0.2
    done
    log "libvirtd runs in namespace $NETNS: $(in_ns virsh -c qemu:///system version | grep -i 'running hypervisor' || true)"
}

# teardown: stops everything the run started, in any state it is in.
teardown() {
    local pid pids
    if pid=$(holder_pid); then
        # Whatever Vagrant left: domains, networks, volumes, the pool.
        local v
        for v in $(nsenter --target "$pid" --mount --net -- virsh -q -c qemu:///system list --all --name 2>/dev/null); do
            nsenter --target "$pid" --mount --net -- virsh -q -c qemu:///system destroy "$v" >/dev/null 2>&1 || true
            nsenter --target "$pid" --mount --net -- virsh -q -c qemu:///system undefine "$v" --nvram >/dev/null 2>&1 || true
        done
        for v in $(nsenter --target "$pid" --mount --net -- virsh -q -c qemu:///system net-list --all --name 2>/dev/null); do
            nsenter --target "$pid" --mount --net -- virsh -q -c qemu:///system net-destroy "$v" >/dev/null 2>&1 || true
            nsenter --target "$pid" --mount --net -- virsh -q -c qemu:///system net-undefine "$v" >/dev/null 2>&1 || true
        done
        for v in $(nsenter --target "$pid" --mount --net -- virsh -q -c qemu:///system pool-list --all --name 2>/dev/null); do
            nsenter --target "$pid" --mount --net -- virsh -q -c qemu:///system pool-destroy "$v" >/dev/null 2>&1 || true
            nsenter --target "$pid" --mount --net -- virsh -q -c qemu:///system pool-undefine "$v" >/dev/null 2>&1 || true
        done
    fi
    # Every process in the namespace is this script's: the holder, libvirtd,
    # virtlogd, dnsmasq, qemu.
    if ip netns list 2>/dev/null | grep -qw "^$NETNS"; then
        pids=$(ip netns pids "$NETNS" 2>/dev/null || true)
        # check_gone looks for these again.
        if [ -n "$pids" ]; then
            echo "$pids" >>"$DIR/stopped.pids"
            # shellcheck disable=SC2086 # one pid per word
            kill -TERM $pids 2>/dev/null || true
            for _ in $(seq 1 50); do
                [ -z "$(ip netns pids "$NETNS" 2>/dev/null)" ] && break
                sleep 0.2
            done
            pids=$(ip netns pids "$NETNS" 2>/dev/null || true)
            # shellcheck disable=SC2086
            [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        fi
        ip netns delete "$NETNS"
    fi
    rm -f "$HOLDER_PID_FILE"
    [ "${1:-}" = keep-pids ] || rm -f "$DIR/stopped.pids"
    # The run's state: Vagrant's home and machines, libvirt's disks. The
    # logs stay for a look.
    rm -rf "$DIR/vagrant.d" "$DIR/machines" "$DIR/libvirt"
}

# ---------------------------------------------------------------------------
# Vagrant.

vagrant_env() {
    export VAGRANT_VAGRANTFILE=deploy/Vagrantfile.libvirt
    export VAGRANT_HOME=$DIR/vagrant.d
    export VAGRANT_DOTFILE_PATH=$DIR/machines
    export VAGRANT_DEFAULT_PROVIDER=libvirt
    export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
    export E2E_CONSOLE_DIR=$LOGS/console
    export BOX=$BOX_NAME NODES
    export ZK_MEMORY=1024 ZK_CPUS=1 VM_MEMORY=384 VM_CPUS=1
    unset TREECACHE_TLS
}

# vagrant_run LOGNAME ARGS...: vagrant in the namespace, its output in
# $LOGS/LOGNAME.log (and its last lines on failure).
vagrant_run() {
    local name=$1
    shift
    if ! in_ns vagrant "$@" </dev/null >"$LOGS/$name.log" 2>&1; then
        tail -n 40 "$LOGS/$name.log" >&2
        die "vagrant $* failed (log above, all of it in $LOGS/$name.log)"
    fi
}

# The binary and the secret every VM takes from the synced folder.
stage_build() {
    local target
    cargo build --release --locked --bin treecache
    target=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
    mkdir -p target/vagrant
    # Without debug info (the release profile keeps it): a smaller copy to
    # send to every VM, like provision/build-treecache.sh's.
    objcopy --strip-debug "$target/release/treecache" target/vagrant/treecache.tmp
    chmod 0755 target/vagrant/treecache.tmp
    mv -f target/vagrant/treecache.tmp target/vagrant/treecache
    # The hash provision/build-treecache.sh compares (provision/lib.sh).
    bash -c '. provision/lib.sh && source_hash && ensure_secret "$SHARED_SECRET"' vagrant-e2e \
        >target/vagrant/treecache.src
    log "staged $(target/vagrant/treecache --version) in target/vagrant/"
}

# ---------------------------------------------------------------------------
# The checks.

# ip_of NAME: the VM's private address, from deploy/hosts.
ip_of() {
    awk -v n="$1" '$1 == "vm" && $2 == n { print $3 }' deploy/hosts
}
id_of() {
    awk -v n="$1" '$1 == "vm" && $2 == n { print $4 }' deploy/hosts
}
node_names() {
    awk '$1 == "vm" && $5 == "node" { print $2 }' deploy/hosts | head -n "$NODES"
}

ns_curl() {
    in_ns curl -sS --max-time 5 "$@"
}

health() {
    ns_curl -f "http://$(ip_of "$1"):8080/health"
}

zk_tree() {
    in_ns vagrant ssh zk -c "zkCli.sh ls -R /treecache/default/tree" </dev/null 2>/dev/null |
        tr -d '\r' | grep '^/treecache/default/tree'
}

# wait_until SECONDS DESCRIPTION COMMAND...
wait_until() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && die "gave up after ${secs}s waiting for $what"
        sleep 1
    done
}

# check_isolated: the namespace has no link but its loopback, libvirt's
# bridges and the VMs' taps (no veth, no device of the host), and no
# default route: nothing a VM sends can leave it.
check_isolated() {
    local links other
    links=$(ip -n "$NETNS" -d -o link show | awk '{
        name = $2; sub(":$", "", name); sub("@.*", "", name); kind = "other"
        if (name == "lo") kind = "loopback"
        for (i = 3; i <= NF; i++) { if ($i == "bridge") kind = "bridge"; if ($i == "tun") kind = "tap" }
        print name "(" kind ")" }')
    other=$(grep -o '[^ ]*(other)' <<<"$links" | tr '\n' ' ' || true)
    [ -z "$other" ] || die "namespace $NETNS has links that could lead out: $other"
    [ -z "$(ip -n "$NETNS" route show default)" ] || die "namespace $NETNS has a default route"
    log "namespace $NETNS: $(tr '\n' ' ' <<<"$links")and no default route"
}

all_registered() {
    local n
    for n in root $(node_names); do
        health "$n" | jq -e '.status == "ok"' >/dev/null || return 1
    done
}

check_write_read() {
    local nodes writer reader key value got
    mapfile -t nodes < <(node_names)
    writer=${nodes[0]}
    reader=${nodes[${#nodes[@]} - 1]}
    key=e2e-$(date +%s)
    value="written at $writer, $(date -u +%FT%TZ)"
    ns_curl -f -X PUT --data-binary "$value" "http://$(ip_of "$writer"):8080/kv/$key?ack=root" >/dev/null ||
        die "PUT /kv/$key at $writer failed"
    got=$(ns_curl -f "http://$(ip_of "$reader"):8080/kv/$key") || die "GET /kv/$key at $reader failed"
    [ "$got" = "$value" ] || die "GET /kv/$key at $reader gave '$got', not '$value'"
    log "written at $writer ($(ip_of "$writer")), read at $reader ($(ip_of "$reader")): '$got'"
    E2E_KEY=$key E2E_VALUE=$value
}

# zk_has_paths PATH...: the zk VM's zkCli.sh lists every PATH under the tree.
zk_has_paths() {
    local tree p
    tree=$(zk_tree) || return 1
    for p in "$@"; do
        grep -qx "/treecache/default/tree$p" <<<"$tree" || return 1
    done
}

# tree_paths [SKIP]: each registered node's path from the root, /1/2/4
# style, from every node's /health (parent), but the VM named SKIP's.
tree_paths() {
    local n id parent
    declare -A parent_of=()
    for n in root $(node_names); do
        [ "$n" = "${1:-}" ] && continue
        read -r id parent < <(health "$n" | jq -r '"\(.id) \(.parent // "-")"') || return 1
        parent_of[$id]=$parent
    done
    for id in "${!parent_of[@]}"; do
        local path="" cur=$id
        while [ "$cur" != "-" ]; do
            path=/$cur$path
            cur=${parent_of[$cur]:-?}
            [ "$cur" = "?" ] && return 1
        done
        echo "$path"
    done
}

check_zk_tree() {
    local paths
    mapfile -t paths < <(tree_paths | sort)
    [ ${#paths[@]} -eq $((NODES + 1)) ] || die "the nodes' /health gives ${#paths[@]} paths: ${paths[*]}"
    # zkCli.sh starts a JVM: seconds on KVM, half a minute emulated.
    wait_until 120 "zkCli.sh ls -R on the zk VM to show ${paths[*]}" zk_has_paths "${paths[@]}"
    log "zkCli.sh ls -R /treecache/default/tree on the zk VM:"
    zk_tree | sed 's/^/    /' >&2
}

# The VM whose node is an inner node (a child of the root with children).
inner_vm() {
    local n
    for n in $(node_names); do
        health "$n" | jq -e '.parent == 1 and (.children | length) > 0' >/dev/null && {
            echo "$n"
            return 0
        }
    done
    return 1
}

check_heal() {
    local victim vid children c id domain
    victim=$(inner_vm) || die "no inner node in the tree: $(tree_paths | tr '\n' ' ')"
    vid=$(id_of "$victim")
    mapfile -t children < <(health "$victim" | jq -r '.children[]')
    domain=$(cat "$DIR/machines/machines/$victim/libvirt/id")
    log "virsh destroy $victim (node $vid, children ${children[*]})"
    in_ns virsh -q -c qemu:///system destroy "$domain" >/dev/null
    # Every other node answers with a parent other than the victim...
    reattached() {
        local n
        for n in root $(node_names); do
            [ "$n" = "$victim" ] && continue
            health "$n" | jq -e --argjson v "$vid" '.status == "ok" and .parent != $v' >/dev/null || return 1
        done
    }
    # ...and ZooKeeper's tree has the victim's children but not the victim.
    zk_healed() {
        local tree c
        tree=$(zk_tree) || return 1
        grep -q "/$vid\$\|/$vid/" <<<"$tree" && return 1
        for c in "${children[@]}"; do
            grep -q "/$c\$" <<<"$tree" || return 1
        done
        printf '%s\n' "$tree" >"$DIR/healed-tree"
    }
    wait_until 90 "node $vid's children to re-attach" reattached
    log "re-attached after $((SECONDS - STEP_START)) s: $(tree_paths "$victim" | sort | tr '\n' ' ')"
    wait_until 120 "ZooKeeper's tree to drop node $vid and keep its children" zk_healed
    log "healed: node $vid gone from ZooKeeper, its children re-attached (zkCli.sh ls -R):"
    sed 's/^/    /' "$DIR/healed-tree" >&2
    # Each orphan still reads the value written before.
    for n in $(node_names); do
        id=$(id_of "$n")
        for c in "${children[@]}"; do
            [ "$c" = "$id" ] || continue
            [ "$(ns_curl -f "http://$(ip_of "$n"):8080/kv/$E2E_KEY")" = "$E2E_VALUE" ] ||
                die "node $id ($n) does not read $E2E_KEY after re-attaching"
            log "node $id ($n) reads $E2E_KEY after re-attaching"
        done
    done
}

# After `vagrant destroy`: no domain, no network; of the volumes, only the
# box's base image (vagrant-libvirt keeps it for the next `vagrant up`).
check_destroyed() {
    local doms nets vols
    doms=$(in_ns virsh -q -c qemu:///system list --all --name | sed '/^$/d')
    nets=$(in_ns virsh -q -c qemu:///system net-list --all --name | sed '/^$/d')
    vols=$(in_ns virsh -q -c qemu:///system vol-list default 2>/dev/null | awk '{print $1}' | sed '/^$/d')
    [ -z "$doms" ] || die "domains left after vagrant destroy: $doms"
    [ -z "$nets" ] || die "networks left after vagrant destroy: $nets"
    if grep -qv '_vagrant_box_image_' <<<"$vols"; then
        die "volumes left after vagrant destroy: $vols"
    fi
    log "after vagrant destroy: no domain, no network; volumes: ${vols:-none} (the box's base image)"
}

# After the tear-down: nothing of the run on the machine.
check_gone() {
    ip netns list | grep -qw "^$NETNS" && die "namespace $NETNS is still there"
    [ -z "$(holder_pid || true)" ] || die "the namespace holder still runs"
    # The processes the tear-down stopped (libvirtd, virtlogd, dnsmasq,
    # qemu, the holder): gone, or zombies waiting for init to reap them.
    local pid state left=()
    # shellcheck disable=SC2013 # one pid per word
    for pid in $(cat "$DIR/stopped.pids" 2>/dev/null); do
        state=$(ps -o stat= -p "$pid" 2>/dev/null) || continue
        [[ $state == Z* ]] || left+=("$pid:$(ps -o comm= -p "$pid")")
    done
    [ ${#left[@]} -eq 0 ] || die "processes of the run are left: ${left[*]}"
    ! grep -q treecache-e2e /proc/mounts || die "mounts left: $(grep treecache-e2e /proc/mounts)"
    [ ! -e "$DIR/libvirt" ] || die "$DIR/libvirt is left"
    log "after the tear-down: no namespace, none of its $(wc -w <"$DIR/stopped.pids") processes, no mount, no disk"
    rm -f "$DIR/stopped.pids"
}

# ---------------------------------------------------------------------------

on_exit() {
    local rc=$?
    trap - EXIT
    step_done
    if [ "$rc" -ne 0 ] && [ "${E2E_KEEP:-}" = 1 ]; then
        log "E2E_KEEP=1: the VMs stay up (namespace $NETNS); scripts/vagrant-e2e.sh clean removes them"
        exit "$rc"
    fi
    if [ "$rc" -ne 0 ]; then
        log "tearing down after the failure; logs in $LOGS"
    fi
    teardown
    exit "$rc"
}

preflight() {
    [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, libvirtd)"
    [ -c /dev/kvm ] || die "no /dev/kvm: libvirt would run the VMs without KVM, far too slowly"
    case "$NODES" in
        [1-9] | [1-5][0-9] | 6[0-4]) ;;
        *) die "E2E_NODES=$NODES: expected 1 to 64" ;;
    esac
}

run() {
    preflight
    step "install the test dependencies (scripts/install-test-deps.sh --vagrant-e2e)"
    scripts/install-test-deps.sh --vagrant-e2e </dev/null
    step "clean what an earlier run left"
    teardown
    rm -rf "$LOGS"
    mkdir -p "$LOGS"
    trap on_exit EXIT
    trap 'exit 130' INT TERM
    step "build treecache (release) and stage it in target/vagrant/"
    stage_build
    step "build the box"
    build_box
    step "KVM or emulation"
    choose_driver
    step "namespace $NETNS with virtlogd and libvirtd"
    ns_up
    vagrant_env
    step "vagrant box add"
    vagrant_run box-add box add --force --name "$BOX_NAME" "$(box_file)"
    step "vagrant up zk"
    vagrant_run up-zk up zk
    step "vagrant up (root and $NODES nodes, in parallel)"
    vagrant_run up up
    in_ns vagrant status </dev/null 2>&1 | grep -E '^(zk|root|node)' | sed 's/^/    /' >&2
    step "check: the VMs' networks stay in the namespace"
    check_isolated
    step "check: every node registered"
    wait_until 60 "every node to answer /health with status ok" all_registered
    log "every node registered; the tree from /health: $(tree_paths | sort | tr '\n' ' ')"
    step "check: a write at one node VM is read at another"
    check_write_read
    step "check: zkCli.sh ls -R on the zk VM shows the tree"
    check_zk_tree
    step "check: virsh destroy of an inner node VM, the tree heals"
    check_heal
    step "vagrant destroy -f"
    vagrant_run destroy destroy -f
    check_destroyed
    step "tear down (libvirtd, namespace) and check nothing is left"
    trap - EXIT
    teardown keep-pids
    check_gone
    step_done
    log "all checks passed. Steps:"
    printf '%s\n' "${STEPS[@]}" >&2
    log "total: $((SECONDS - START)) s"
}

case "${1:-run}" in
    run) run ;;
    box)
        preflight
        build_box
        ;;
    stage) stage_build ;;
    clean)
        teardown
        log "cleaned"
        ;;
    *)
        echo "usage: $0 [run|box|stage|clean] (see the top of $0)" >&2
        exit 2
        ;;
esac
