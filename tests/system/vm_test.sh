#!/usr/bin/env bash
# shellcheck disable=SC2317  # the helpers are called indirectly, through check and trap
# System test of systemd/talkbox.service under a REAL systemd as PID 1: boots a throwaway
# Debian 12 VM with qemu in software emulation (TCG, no KVM needed) and checks, inside it,
# what only PID 1 shows: Type=notify readiness, the status text, capture on a real ALSA card
# through the sandbox, LoadCredential= and the network sandbox (a conversation against the fake
# Realtime service over verified TLS), reload, the watchdog, exit 78 without restarts, a clean
# stop, the live `systemd-analyze security` score, and that the API key stays secret.
#
#   sudo tests/system/vm_test.sh
#
# Run as root on a Debian 12 x86_64 machine that reaches the package registries (Debian and
# PyPI); it installs what it needs (qemu-system-x86, debootstrap, e2fsprogs, socat). Needs the
# checkout's .venv (./install.sh --dev) for the fake service. How it works:
#   1. debootstrap a minimal Debian 12 tree with systemd, a kernel and ALSA (cached in
#      $TALKBOX_VM_CACHE, default /var/cache/talkbox-vm-test; delete it to start cold), then run
#      this checkout's ./install.sh inside it with chroot, as an owner would on a Pi;
#   2. give the guest an Azure config pointing at https://10.0.2.100:8080, a fake API key, and
#      a throwaway CA in its system trust store; make an ext4 image of the tree (no loop mount);
#   3. serve tests/support/fake_realtime.py with TLS on 127.0.0.1; qemu's user network forwards
#      the guest's 10.0.2.100:8080, and nothing else, to it;
#   4. boot; tests/system/vm/guest_checks.sh runs inside after multi-user.target, writes its
#      results to a 9p share and powers off; the whole VM run is bounded ($TALKBOX_VM_TIMEOUT s);
#   5. print the guest's results and check what the fake service recorded.
# Set TALKBOX_VM_KEEP=1 to keep the scratch directory (logs, journal, image) for a look, and
# TALKBOX_VM_MIRROR to debootstrap from another Debian mirror than the one apt uses here.
#
# Last line: "N passed, M failed"; the exit status is non-zero if anything failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO
readonly VM_DIR=$REPO/tests/system/vm
readonly PYTHON=$REPO/.venv/bin/python
readonly CACHE=${TALKBOX_VM_CACHE:-/var/cache/talkbox-vm-test}
# Under software emulation the wake model's first inference alone takes 80-120 s (measured in
# this test: XNNPACK ready 15 s after the start, READY=1 not within 90 s), so the guest's
# start timeout and this budget leave room for the five starts and reloads the checks make.
readonly VM_TIMEOUT=${TALKBOX_VM_TIMEOUT:-1500}
readonly SERVICE_IP=10.0.2.100
readonly SERVICE_PORT=8080
# An obviously fake key, new for each run: it must reach the fake service, and nowhere else.
SENTINEL="sk-FAKE-talkbox-vmtest-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
readonly SENTINEL
readonly HOST_PACKAGES=(qemu-system-x86 debootstrap e2fsprogs socat)
# The guest: systemd as init, a kernel, ALSA, and what install.sh would otherwise fetch with
# apt-get (python3-dev gcc libc6-dev pkg-config portaudio19-dev libsystemd-dev), so the
# chroot needs no apt run of its own.
readonly GUEST_PACKAGES=(systemd systemd-sysv udev dbus kmod procps ca-certificates
                         linux-image-amd64 initramfs-tools alsa-utils
                         python3 python3-venv python3-dev gcc libc6-dev pkg-config
                         portaudio19-dev libsystemd-dev)
# Bump when finish_guest_tree changes, so old caches are rebuilt.
readonly TREE_RECIPE=1
readonly TREE=$CACHE/rootfs

# shellcheck source=tests/system/checks.sh
source "$REPO/tests/system/checks.sh"
preconditions() {
    if [[ $EUID -ne 0 ]]; then
        echo "vm_test.sh must run as root (debootstrap, chroot, mkfs)" >&2
        return 1
    fi
    if [[ $(uname -m) != x86_64 ]]; then
        echo "vm_test.sh builds an amd64 guest and needs an x86_64 host" >&2
        return 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "vm_test.sh is for a Debian 12 host (no apt-get here)" >&2
        return 1
    fi
    if ! "$PYTHON" -c 'import trustme, websockets, openai' 2>/dev/null; then
        echo "the fake service needs $PYTHON with the dev extras; run ./install.sh --dev" >&2
        return 1
    fi
}
if ! preconditions; then
    fail "preconditions"
    finish
fi

SCRATCH=$(mktemp -d)
readonly SCRATCH
QEMU_PID=""
FAKE_PID=""
PROC_MOUNT=""
cleanup() {
    [[ -n $QEMU_PID ]] && kill "$QEMU_PID" 2>/dev/null
    [[ -n $FAKE_PID ]] && kill "$FAKE_PID" 2>/dev/null
    [[ -n $PROC_MOUNT ]] && mountpoint -q "$PROC_MOUNT" && umount -l "$PROC_MOUNT"
    rm -f "$TREE/tmp/api-key" "$TREE/tmp/host-ca.pem" 2>/dev/null
    if [[ ${TALKBOX_VM_KEEP:-} == 1 ]]; then
        echo "kept $SCRATCH" >&2
    else
        rm -rf "$SCRATCH"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the host's tools --------------------------------------------------------------------------

phase "host packages"
install_host_packages "$SCRATCH/apt.log" "${HOST_PACKAGES[@]}"
for tool in qemu-system-x86_64 debootstrap mkfs.ext4 socat; do
    command -v "$tool" >/dev/null || { fail "host tool $tool is there"; finish; }
done

# --- 1. the guest's root filesystem (cached) ------------------------------------------------

if ! lock_cache "$CACHE"; then
    fail "no other vm_test.sh holds $CACHE"
    finish
fi
# A small initramfs: only what finds the root disk (virtio) and mounts it (ext4).
finish_guest_tree() {
    local tree=$1
    printf 'MODULES=list\n' >"$tree/etc/initramfs-tools/conf.d/talkbox-vmtest.conf"
    printf '%s\n' virtio_pci virtio_blk ext4 >>"$tree/etc/initramfs-tools/modules"
    run_logged "$SCRATCH/initramfs.log" chroot "$tree" update-initramfs -u -k all || return 1
    echo talkbox-vm >"$tree/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 talkbox-vm\n' >"$tree/etc/hosts"
}
cached_debian_tree "$CACHE" "$TREE_RECIPE" "${TALKBOX_VM_MIRROR:-}" finish_guest_tree \
    "${GUEST_PACKAGES[@]}" || finish

# --- install talkbox into the tree, as its owner would: ./install.sh (every run) -------------

phase "install.sh in the guest tree (chroot)"
install_in_tree() {
    local source=$TREE/tmp/talkbox-src
    rm -rf "$source"
    mkdir -p "$source"
    local -a copied=(install.sh pyproject.toml requirements daemon config systemd)
    [[ -f $REPO/README.md ]] && copied+=(README.md)
    (cd "$REPO" && tar --exclude='*.egg-info' --exclude=__pycache__ -cf - "${copied[@]}") |
        tar -xf - -C "$source" || return 1
    (umask 077 && printf '%s\n' "$SENTINEL" >"$TREE/tmp/api-key")
    local -a environment=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
                          HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive)
    local bundle
    # pip inside the chroot must trust what this host trusts: the host's bundle, for the
    # length of the install.
    bundle=$(host_ca_bundle)
    if [[ -n $bundle ]]; then
        cp "$bundle" "$TREE/tmp/host-ca.pem"
        environment+=(PIP_CERT=/tmp/host-ca.pem)
    fi
    mapfile -t -O "${#environment[@]}" environment < <(registry_environment)
    PROC_MOUNT=$TREE/proc
    mountpoint -q "$PROC_MOUNT" || mount -t proc proc "$PROC_MOUNT" || return 1
    local status=0
    chroot "$TREE" /usr/bin/env -i "${environment[@]}" \
        /tmp/talkbox-src/install.sh --api-key-file /tmp/api-key </dev/null || status=$?
    umount "$PROC_MOUNT"
    rm -rf "$source" "$TREE/tmp/api-key" "$TREE/tmp/host-ca.pem"
    return "$status"
}
check "./install.sh --api-key-file runs in the guest tree (chroot, no systemd)" \
    run_logged "$SCRATCH/install.log" install_in_tree
key_kept_out_of_install_log() {
    ! grep -qF "$SENTINEL" "$SCRATCH/install.log" &&
        grep -qF "/etc/talkbox/api-key" "$SCRATCH/install.log"
}
check "install.sh said where the key went, not what it is" key_kept_out_of_install_log
if ! chroot "$TREE" test -x /opt/talkbox/venv/bin/talkbox; then
    fail "talkbox is installed in the guest tree"
    finish
fi

# --- 2. this run's guest settings ----------------------------------------------------------------

phase "guest settings, CA, image"
"$PYTHON" "$VM_DIR/fake_service.py" make-ca "$SCRATCH/tls" "$SERVICE_IP" || {
    fail "made a throwaway CA and a certificate for $SERVICE_IP"
    finish
}
install -D -m 644 "$SCRATCH/tls/ca.pem" "$TREE/usr/local/share/ca-certificates/talkbox-vmtest.crt"
check "the throwaway CA is in the guest's system trust store (update-ca-certificates)" \
    run_logged "$SCRATCH/ca.log" chroot "$TREE" update-ca-certificates --fresh
cat >"$TREE/tmp/talkbox-vmtest.toml" <<EOF
# Written by tests/system/vm_test.sh: the fake Realtime service on the host, reached through
# qemu's forward of $SERVICE_IP:$SERVICE_PORT. The key comes from /etc/talkbox/api-key through
# the unit's LoadCredential=; the certificate is checked against the system trust store.
[realtime]
provider = "azure"
endpoint = "https://$SERVICE_IP:$SERVICE_PORT"
deployment = "gpt-realtime"
api_version = ""
# Python under software emulation is slow to set up TLS.
connect_timeout_seconds = 30.0

[audio]
input_device = "default"
output_device = "default"

[conversation]
# Short, so the silent test conversation ends soon.
follow_up_seconds = 3.0
EOF
chroot "$TREE" install -m 640 -o root -g talkbox /tmp/talkbox-vmtest.toml /etc/talkbox/config.toml
rm -f "$TREE/tmp/talkbox-vmtest.toml"
# Emulation only: a start may take minutes here (see VM_TIMEOUT); the shipped unit keeps
# systemd's 90 s, of which a Pi needs a few seconds.
mkdir -p "$TREE/etc/systemd/system/talkbox.service.d"
printf '[Service]\nTimeoutStartSec=15min\n' >"$TREE/etc/systemd/system/talkbox.service.d/emulation.conf"
install -m 644 "$VM_DIR/talkbox-vmtest.target" "$VM_DIR/talkbox-vmtest.service" \
    "$TREE/etc/systemd/system/"
install -D -m 644 "$VM_DIR/10-vmtest.network" "$TREE/etc/systemd/network/10-vmtest.network"
run_logged "$SCRATCH/enable.log" chroot "$TREE" systemctl enable systemd-networkd.service
# An SD card image built in a chroot must start the speaker at its first boot.
check "install.sh enabled talkbox.service in the chroot (it starts at boot)" \
    test "$(chroot "$TREE" systemctl is-enabled talkbox.service 2>/dev/null)" = enabled
# A user in group talkbox, for `talkbox ctl` without root.
chroot "$TREE" getent passwd vmtester >/dev/null ||
    chroot "$TREE" useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --groups talkbox vmtester

if findmnt -rn -o TARGET | grep -qF "$TREE/"; then
    fail "nothing is mounted inside the guest tree before making the image"
    finish
fi
kernel=$(find "$TREE/boot" -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$TREE/boot" -name 'initrd.img-*' | sort -V | tail -n 1)
if ! cp "$kernel" "$SCRATCH/vmlinuz" || ! cp "$initrd" "$SCRATCH/initrd.img"; then
    fail "the guest tree has a kernel and an initramfs"
    finish
fi
check "made the guest's ext4 image from the tree (mkfs.ext4 -d)" \
    run_logged "$SCRATCH/mkfs.log" mkfs.ext4 -q -F -L talkbox-vm -d "$TREE" "$SCRATCH/rootfs.ext4" 4G
flock -u 9  # the cached tree is no longer read; another run may use it

# --- 3. the fake Realtime service on the host --------------------------------------------------

phase "fake Realtime service"
(umask 077 && printf '%s\n' "$SENTINEL" >"$SCRATCH/api-key")
"$PYTHON" "$VM_DIR/fake_service.py" serve --tls "$SCRATCH/tls/server.pem" \
    --key-file "$SCRATCH/api-key" --port-file "$SCRATCH/port" --record "$SCRATCH/record.json" \
    >"$SCRATCH/fake.log" 2>&1 &
FAKE_PID=$!
for _ in $(seq 60); do
    [[ -s $SCRATCH/port ]] && break
    kill -0 "$FAKE_PID" 2>/dev/null || break
    sleep 0.5
done
if [[ ! -s $SCRATCH/port ]]; then
    fail "the fake Realtime service listens on 127.0.0.1"
    cat "$SCRATCH/fake.log"
    finish
fi
port=$(<"$SCRATCH/port")
echo "fake Realtime service with TLS on 127.0.0.1:$port"

# --- 4. boot the VM -----------------------------------------------------------------------------

readonly SHARE=$SCRATCH/share
mkdir -p "$SHARE"
install -m 755 "$VM_DIR/guest_checks.sh" "$SHARE/run.sh"
printf 'SENTINEL=%q\n' "$SENTINEL" >"$SHARE/env"
phase "VM run (TCG, at most $VM_TIMEOUT s)"
vm_started=$SECONDS
# Each guest connection to $SERVICE_IP:$SERVICE_PORT starts one socat, bridging it to the fake.
timeout --kill-after=15 "$VM_TIMEOUT" qemu-system-x86_64 \
    -name talkbox-vmtest -nodefaults -no-user-config -display none -monitor none -no-reboot \
    -accel tcg,thread=multi -cpu max -smp 2 -m 1024 \
    -kernel "$SCRATCH/vmlinuz" -initrd "$SCRATCH/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rw panic=5 systemd.unit=talkbox-vmtest.target" \
    -drive "file=$SCRATCH/rootfs.ext4,if=virtio,format=raw,snapshot=on" \
    -serial "file:$SCRATCH/console.log" \
    -virtfs "local,path=$SHARE,mount_tag=share,security_model=none,id=share" \
    -audiodev none,id=snd0 -device intel-hda -device hda-duplex,audiodev=snd0 \
    -netdev "user,id=net0,restrict=on,guestfwd=tcp:$SERVICE_IP:$SERVICE_PORT-cmd:socat -lf /dev/null - TCP:127.0.0.1:$port" \
    -device virtio-net-pci,netdev=net0,romfile= \
    >"$SCRATCH/qemu.log" 2>&1 &
QEMU_PID=$!
wait "$QEMU_PID"
qemu_status=$?
QEMU_PID=""
vm_seconds=$((SECONDS - vm_started))
check "the VM booted, ran the checks and powered off by itself within $VM_TIMEOUT s (took ${vm_seconds} s)" \
    test "$qemu_status" -eq 0
[[ $qemu_status -eq 0 ]] || cat "$SCRATCH/qemu.log"

kill -TERM "$FAKE_PID" 2>/dev/null
wait "$FAKE_PID"
fake_status=$?
FAKE_PID=""

# --- 5. results --------------------------------------------------------------------------------

phase "results from inside the VM"
if [[ -s $SHARE/results ]]; then
    while IFS= read -r line; do
        case $line in
            "ok "*) pass "guest: ${line#ok }" ;;
            "FAILED "*) fail "guest: ${line#FAILED }" ;;
        esac
    done <"$SHARE/results"
else
    fail "the guest wrote results"
fi
check "the guest's check script ran to its end" test -f "$SHARE/journal.txt"

phase "what the fake Realtime service recorded"
if [[ $fake_status -eq 0 && -s $SCRATCH/record.json ]]; then
    while IFS= read -r line; do
        case $line in
            "ok "*) pass "service: ${line#ok }" ;;
            "FAILED "*) fail "service: ${line#FAILED }" ;;
        esac
    done < <("$PYTHON" "$VM_DIR/fake_service.py" verify "$SCRATCH/record.json")
else
    fail "the fake service wrote its record (exit status $fake_status)"
    cat "$SCRATCH/fake.log"
fi
key_nowhere() {
    local file
    for file in "$SCRATCH/console.log" "$SCRATCH/fake.log" "$SCRATCH/install.log" \
        "$SHARE/run.log" "$SHARE/journal.txt" "$SCRATCH/record.json"; do
        [[ -f $file ]] || continue
        if grep -qF "$SENTINEL" "$file"; then
            echo "the key is in ${file#"$SCRATCH"/}"
            return 1
        fi
    done
}
check "the key is in neither the serial console, the guest's journal and log, nor the fake's log" \
    key_nowhere

if [[ -f $SHARE/score ]]; then
    echo "systemd-analyze security talkbox.service (live, in the VM): $(<"$SHARE/score")"
fi
if ((failed > 0)); then
    echo "---- guest log (run.log)"
    cat "$SHARE/run.log" 2>/dev/null
    echo "---- serial console (last 60 lines)"
    tail -n 60 "$SCRATCH/console.log" 2>/dev/null
fi
phase "done"
finish
