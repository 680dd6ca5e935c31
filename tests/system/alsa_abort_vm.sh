#!/usr/bin/env bash
# Experiment, not a check: counts alsa-lib's assertion aborts (issue 14, item 6:
# "snd_pcm_plugin_status: Assertion `status->appl_ptr == *pcm->appl.ptr' failed") in PyAudio
# playback through ALSA's `default` (plug -> dmix on qemu's emulated HDA card) at talkbox's
# 24000 Hz mono and at the card's native 48000 Hz, under CPU load, in the Debian 12 VM of
# tests/system/vm_test.sh (software emulation, real kernel and alsa-lib).
#
#   sudo tests/system/alsa_abort_vm.sh
#
# Needs the guest tree a run of vm_test.sh left in $TALKBOX_VM_CACHE (talkbox installed under
# /opt/talkbox, with PyAudio). It boots that tree with talkbox.service masked and runs
# tests/system/vm/alsa_abort_guest.sh inside; settings (see alsa_abort_guest.py) pass through:
# ALSA_ABORT_CONFIGS ("24000:1 48000:1 48000:2"), ALSA_ABORT_SLOT_S (300), ALSA_ABORT_ROUNDS
# (2), ALSA_ABORT_PLAYERS (3), ALSA_ABORT_LOAD (2), and ALSA_ABORT_CHAIN=plug-dmix for plug
# straight over dmix (as a USB card has) instead of the HDA card's plug -> softvol -> dmix.
# Prints the guest's counts; the scratch directory (players' stderr, guest log) is kept when
# TALKBOX_VM_KEEP=1.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO
readonly VM_DIR=$REPO/tests/system/vm
readonly CACHE=${TALKBOX_VM_CACHE:-/var/cache/talkbox-vm-test}
readonly TREE=$CACHE/rootfs
# shellcheck source=tests/system/checks.sh
source "$REPO/tests/system/checks.sh"

slot=${ALSA_ABORT_SLOT_S:-300}
rounds=${ALSA_ABORT_ROUNDS:-2}
configs=${ALSA_ABORT_CONFIGS:-24000:1 48000:1 48000:2}
read -ra config_list <<<"$configs"
# Boot and setup (minutes under emulation) plus the slots, with room to spare.
budget=$((900 + rounds * ${#config_list[@]} * (${slot%.*} + 90)))

if [[ $EUID -ne 0 ]] || ! [[ -x $TREE/opt/talkbox/venv/bin/python ]]; then
    echo "run as root, after tests/system/vm_test.sh left its guest tree in $CACHE" >&2
    exit 2
fi
SCRATCH=$(mktemp -d)
readonly SCRATCH
QEMU_PID=""
cleanup() {
    [[ -n $QEMU_PID ]] && kill "$QEMU_PID" 2>/dev/null
    if [[ ${TALKBOX_VM_KEEP:-} == 1 ]]; then echo "kept $SCRATCH" >&2; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

phase "image of the cached guest tree"
lock_cache "$CACHE" || { echo "another run holds $CACHE" >&2; exit 1; }
kernel=$(find "$TREE/boot" -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$TREE/boot" -name 'initrd.img-*' | sort -V | tail -n 1)
if ! cp "$kernel" "$SCRATCH/vmlinuz" || ! cp "$initrd" "$SCRATCH/initrd.img" ||
    ! run_logged "$SCRATCH/mkfs.log" mkfs.ext4 -q -F -L talkbox-vm -d "$TREE" "$SCRATCH/rootfs.ext4" 4G; then
    echo "could not make the image" >&2
    exit 1
fi
flock -u 9
# The guest's check unit (from vm_test.sh) runs run.sh; here it may take as long as it needs.
install -m 644 "$VM_DIR/talkbox-vmtest.target" "$VM_DIR/talkbox-vmtest.service" "$SCRATCH/"
printf '[Service]\nTimeoutStartSec=infinity\n' >"$SCRATCH/no-timeout.conf"
debugfs -w -f - "$SCRATCH/rootfs.ext4" >"$SCRATCH/debugfs.log" 2>&1 <<EOT
cd /etc/systemd/system
rm talkbox-vmtest.target
rm talkbox-vmtest.service
write $SCRATCH/talkbox-vmtest.target talkbox-vmtest.target
write $SCRATCH/talkbox-vmtest.service talkbox-vmtest.service
mkdir talkbox-vmtest.service.d
write $SCRATCH/no-timeout.conf talkbox-vmtest.service.d/no-timeout.conf
EOT

readonly SHARE=$SCRATCH/share
mkdir -p "$SHARE"
install -m 755 "$VM_DIR/alsa_abort_guest.sh" "$SHARE/run.sh"
install -m 644 "$VM_DIR/alsa_abort_guest.py" "$VM_DIR/alsa_abort_play.py" "$SHARE/"
{
    printf 'ALSA_ABORT_CONFIGS=%q\n' "$configs"
    printf 'ALSA_ABORT_SLOT_S=%q\n' "$slot"
    printf 'ALSA_ABORT_ROUNDS=%q\n' "$rounds"
    printf 'ALSA_ABORT_PLAYERS=%q\n' "${ALSA_ABORT_PLAYERS:-3}"
    printf 'ALSA_ABORT_LOAD=%q\n' "${ALSA_ABORT_LOAD:-2}"
    printf 'ALSA_ABORT_CHAIN=%q\n' "${ALSA_ABORT_CHAIN:-}"
} >"$SHARE/env"

phase "VM run (TCG, at most $budget s)"
timeout --kill-after=15 "$budget" qemu-system-x86_64 \
    -name talkbox-alsa-abort -nodefaults -no-user-config -display none -monitor none -no-reboot \
    -accel tcg,thread=multi -cpu max -smp 2 -m 1024 \
    -kernel "$SCRATCH/vmlinuz" -initrd "$SCRATCH/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rw panic=5 systemd.unit=talkbox-vmtest.target systemd.mask=talkbox.service" \
    -drive "file=$SCRATCH/rootfs.ext4,if=virtio,format=raw,snapshot=on" \
    -serial "file:$SCRATCH/console.log" \
    -virtfs "local,path=$SHARE,mount_tag=share,security_model=none,id=share" \
    -audiodev none,id=snd0 -device intel-hda -device hda-duplex,audiodev=snd0 \
    >"$SCRATCH/qemu.log" 2>&1 &
QEMU_PID=$!
wait "$QEMU_PID"
echo "qemu exit status $?"
QEMU_PID=""

phase "results"
cat "$SHARE/run.log" 2>/dev/null || tail -n 40 "$SCRATCH/console.log"
