#!/usr/bin/env bash
# shellcheck disable=SC2317  # the helpers are called indirectly, through check and trap
# System test on arm64, the Raspberry Pi's architecture, as someone preparing a Pi's SD card
# meets it: a Debian 12 arm64 root entered with chroot (under qemu-user emulation on an x86_64
# host), `./install.sh` run in a clone there, then the installed daemon run in that root with
# the echo provider on a sound card of FIFOs: READY=1, the wake word, the echo heard.
#
#   sudo tests/system/arm64_test.sh
#
# Run as root on a Debian 12 machine that reaches the package registries (Debian and PyPI);
# it installs qemu-user-static, binfmt-support and debootstrap on the host if missing. Needs
# the checkout's .venv (./install.sh --dev): the host side speaks into the microphone and
# listens to the speaker (tests/system/arm64/echo_run.py, with tests/support). How it works:
#   1. register qemu-aarch64 with binfmt_misc (mounting it if needed); with its F flag the
#      kernel runs arm64 programs inside the root without a qemu binary in it;
#   2. debootstrap --arch=arm64 --variant=minbase a Debian 12 tree with git, sudo,
#      ca-certificates and systemd (installed, as on a Raspberry Pi OS image, not running),
#      cached in $TALKBOX_ARM64_CACHE (default /var/cache/talkbox-arm64-test; delete it to
#      start cold; TALKBOX_ARM64_MIRROR picks another Debian mirror than the one apt uses here),
#      and copy it for this run, so every run starts from a fresh root;
#   3. `git clone` the committed HEAD of this checkout into /root/talkbox of the copy and run
#      ./install.sh there as root (no systemd as PID 1: it enables the unit for the first boot
#      and says how to run talkbox in the foreground). pip's cache lives in the cache directory
#      too, under a key of the pinned requirements, install.sh and the tree, so a change to
#      any of them starts it empty and cannot hide a build that no longer works;
#   4. check the install from inside (an aarch64 Python, every compiled module loads, the
#      echo canceller cancels: tests/system/arm64/in_root_checks.py), print which packages
#      came as aarch64 wheels and which were compiled here, and the installed size;
#   5. run /opt/talkbox/venv/bin/talkbox run as user talkbox, as install.sh says to without
#      systemd, with the echo provider on ALSA file devices (FIFOs the host feeds and drains)
#      and a notify socket: READY=1, "hey jarvis" heard, the words after it played back, idle
#      again, exit status 0 on SIGTERM. The microphone runs at a twentieth of real time
#      (TALKBOX_ARM64_SPEED, default 0.05): emulated, the wake model is slower than real time.
# Emulated timings say nothing about a Pi (they are printed to size CI's budget); correctness
# does. Set TALKBOX_ARM64_KEEP=1 to keep the scratch directory (root, logs) for a look.
#
# Last line: "N passed, M failed"; the exit status is non-zero if anything failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO
readonly PYTHON=$REPO/.venv/bin/python
readonly CACHE=${TALKBOX_ARM64_CACHE:-/var/cache/talkbox-arm64-test}
readonly INSTALL_TIMEOUT=${TALKBOX_ARM64_TIMEOUT:-3600}
# Besides a minimal Debian: the tools to fetch the repository and become root, and systemd,
# which every Raspberry Pi OS image has (install.sh enables the unit with it). Nothing of
# talkbox's own dependencies: install.sh must install those.
readonly ROOT_PACKAGES=(git sudo ca-certificates systemd)
readonly HOST_PACKAGES=(qemu-user-static binfmt-support debootstrap git)
# Bump when the way the cached tree is built changes, so old caches are rebuilt.
readonly TREE_RECIPE=1
readonly TREE=$CACHE/rootfs
readonly CHECKOUT_IN_ROOT=/root/talkbox
readonly PIP_CACHE_IN_ROOT=/var/cache/talkbox-pip
readonly AUDIO_IN_ROOT=/tmp/talkbox-arm64
readonly TEST_CONFIG=/etc/talkbox/arm64-test.toml
readonly ROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# shellcheck source=tests/system/checks.sh
source "$REPO/tests/system/checks.sh"
DEBIAN_ARCH=arm64

preconditions() {
    if [[ $EUID -ne 0 ]]; then
        echo "arm64_test.sh must run as root (binfmt_misc, debootstrap, chroot, mount)" >&2
        return 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "arm64_test.sh is for a Debian 12 host (no apt-get here)" >&2
        return 1
    fi
    if ! "$PYTHON" -c 'import numpy, soxr, talkbox' 2>/dev/null ||
        ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
        echo "the host side needs $PYTHON with the dev extras, espeak-ng and sox;" \
            "run ./install.sh --dev" >&2
        return 1
    fi
}
if ! preconditions; then
    fail "preconditions"
    finish
fi

SCRATCH=$(mktemp -d "${TMPDIR:-/var/tmp}/talkbox-arm64.XXXXXX")
readonly SCRATCH
readonly ROOT=$SCRATCH/root
# Any process still running inside the throwaway root (started by this run) is ended, then
# everything mounted in it is unmounted before it is removed (or kept, unmounted).
cleanup() {
    end_processes_in_root "$ROOT"
    findmnt -rn -o TARGET | grep -F "$ROOT/" | sort -r | while IFS= read -r target; do
        umount -l "$target"
    done
    if [[ ${TALKBOX_ARM64_KEEP:-} == 1 ]]; then
        echo "kept $SCRATCH" >&2
    else
        remove_tree "$ROOT"
        rm -rf "$SCRATCH"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# forward_results WHAT COMMAND...: runs COMMAND, counting its "ok NAME" / "FAILED NAME" lines
# as checks and showing its other lines; a non-zero exit status with no FAILED line fails too.
forward_results() {
    local what=$1 line status failed_before=$failed
    shift
    while IFS= read -r line; do
        case $line in
            "ok "*) pass "${line#ok }" ;;
            "FAILED "*) fail "${line#FAILED }" ;;
            *) printf '%s\n' "$line" ;;
        esac
    done < <("$@" 2>&1)
    wait $!
    status=$?
    if ((status != 0 && failed == failed_before)); then
        fail "$what ran to its end (exit status $status)"
    fi
}

# --- 1. the host: arm64 programs run here --------------------------------------------------------

phase "host packages"
install_host_packages "$SCRATCH/apt.log" "${HOST_PACKAGES[@]}"
for tool in debootstrap git chroot update-binfmts; do
    command -v "$tool" >/dev/null || { fail "host tool $tool is there"; finish; }
done

phase "arm64 emulation (binfmt_misc)"
# F ("fix binary"): the kernel opens qemu when it is registered, so it works inside a chroot.
emulation_registered() {
    [[ $(uname -m) == aarch64 ]] && return 0  # an arm64 host runs them natively
    if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || return 1
    fi
    update-binfmts --enable qemu-aarch64 2>/dev/null  # "already enabled" is fine
    grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 &&
        grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64
}
check "qemu-aarch64 is registered with binfmt_misc, with the F flag" emulation_registered
((failed == 0)) || finish

# --- 2. a fresh Debian 12 arm64 root ----------------------------------------------------------

# The lock is held to the end: the pip cache below is shared between runs too.
if ! lock_cache "$CACHE"; then
    fail "no other arm64_test.sh holds $CACHE"
    finish
fi
cached_debian_tree "$CACHE" "$TREE_RECIPE" "${TALKBOX_ARM64_MIRROR:-}" : \
    "${ROOT_PACKAGES[@]}" || finish
tree_runs_arm64() {
    [[ $(chroot "$TREE" dpkg --print-architecture) == arm64 &&
        $(chroot "$TREE" uname -m) == aarch64 ]]
}
check "the Debian tree is arm64 and its programs run here (chroot: dpkg, uname -m)" \
    tree_runs_arm64
phase "fresh root: a copy of the cached tree"
copy_started=$SECONDS
check "copied the cached tree to a throwaway root" cp -a "$TREE" "$ROOT"
copy_took=$((SECONDS - copy_started))
((failed == 0)) || finish

# What the network here needs, and an SD card being prepared has already: names resolve, the
# host's name is known (sudo looks it up), and pip trusts the CA bundle this host trusts.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' \
    "$(hostname)" >"$ROOT/etc/hosts"
bundle=$(host_ca_bundle)
[[ -n $bundle ]] && install -D -m 644 "$bundle" "$ROOT/etc/ssl/host-ca.pem"

phase "git clone of the committed HEAD"
head_commit=$(git -C "$REPO" rev-parse HEAD)
if [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no) ]]; then
    echo "note: the checkout has uncommitted changes; they are not tested"
fi
git -C "$REPO" bundle create "$ROOT/tmp/talkbox.bundle" HEAD 2>/dev/null
check "git clone into $CHECKOUT_IN_ROOT (chroot)" run_logged "$SCRATCH/clone.log" \
    chroot "$ROOT" git clone --quiet /tmp/talkbox.bundle "$CHECKOUT_IN_ROOT"
rm -f "$ROOT/tmp/talkbox.bundle"
check "the clone is at HEAD $head_commit" \
    test "$(chroot "$ROOT" git -C "$CHECKOUT_IN_ROOT" rev-parse HEAD 2>/dev/null)" = "$head_commit"
((failed == 0)) || finish

# pip's cache: kept while what pip builds from and with is the same (see the top).
pip_key=$(cat "$REPO/requirements/daemon.txt" "$REPO/requirements/build.txt" "$REPO/install.sh" \
    "$CACHE/rootfs.key" | sha256sum | cut -c1-16)
readonly PIP_CACHE=$CACHE/pip-$pip_key
find "$CACHE" -maxdepth 1 -name 'pip-*' ! -name "pip-$pip_key" -exec rm -rf {} +
if [[ -d $PIP_CACHE ]]; then
    echo "pip cache: kept from an earlier run ($(du -sm "$PIP_CACHE" | cut -f1) MB)"
else
    echo "pip cache: empty (new key $pip_key)"
fi
mkdir -p "$PIP_CACHE" "$ROOT$PIP_CACHE_IN_ROOT"

mount_root_filesystems() {
    mount_system_filesystems "$ROOT" && mount --bind "$PIP_CACHE" "$ROOT$PIP_CACHE_IN_ROOT"
}
check "mounted /proc, /sys, /dev, /dev/pts, /dev/shm and pip's cache in the root" \
    mount_root_filesystems
((failed == 0)) || finish

# --- 3. ./install.sh in the root -------------------------------------------------------------

phase "./install.sh in the arm64 root (chroot, emulated)"
mapfile -t registry < <(registry_environment)
# pip's verbose log (PIP_LOG) says what was downloaded, built or taken from the cache.
install_started=$SECONDS
install_status=0
timeout --kill-after=30 "$INSTALL_TIMEOUT" chroot "$ROOT" /usr/bin/env -i \
    PATH=$ROOT_PATH HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive PIP_CACHE_DIR=$PIP_CACHE_IN_ROOT PIP_LOG=/tmp/pip.log \
    ${bundle:+PIP_CERT=/etc/ssl/host-ca.pem} "${registry[@]}" \
    /bin/bash -c "cd $CHECKOUT_IN_ROOT && ./install.sh" </dev/null >"$SCRATCH/install.log" 2>&1 ||
    install_status=$?
install_took=$((SECONDS - install_started))
check "./install.sh exits 0 (exit status $install_status, took $(minutes "$install_took"))" \
    test "$install_status" -eq 0
if ((install_status != 0)); then
    tail -n 60 "$SCRATCH/install.log"
    finish
fi
check "install.sh says systemd is not running and how to run talkbox in the foreground" \
    grep -qF "sudo -u talkbox /opt/talkbox/venv/bin/talkbox run" "$SCRATCH/install.log"
check "install.sh enabled talkbox.service (it starts when the Pi first boots)" \
    test "$(chroot "$ROOT" systemctl is-enabled talkbox.service 2>/dev/null)" = enabled

# --- 4. what was installed ---------------------------------------------------------------------

phase "the install, from inside the root"
cp "$REPO/tests/system/arm64/in_root_checks.py" "$ROOT/tmp/"
forward_results in_root_checks.py \
    chroot "$ROOT" /opt/talkbox/venv/bin/python /tmp/in_root_checks.py
check "talkbox check of the installed config (as root) exits 0" run_logged "$SCRATCH/check.log" \
    chroot "$ROOT" /usr/bin/env -i PATH=$ROOT_PATH LANG=C.UTF-8 \
    /opt/talkbox/venv/bin/talkbox check --config /etc/talkbox/config.toml

# Each installed distribution's wheel tag says where it came from: a binary wheel from the
# index (manylinux_*_aarch64), pure Python (none-any), or compiled here (plain linux_aarch64).
echo "how each package came (wheel tags; 'compiled here' = built from its sdist on arm64):"
for wheel_file in "$ROOT"/opt/talkbox/venv/lib/python3*/site-packages/*.dist-info/WHEEL; do
    dist=$(basename "$(dirname "$wheel_file")" .dist-info)
    tags=$(awk '/^Tag:/ { print $2 }' "$wheel_file" | paste -sd ' ')
    case $dist:$tags in
        talkbox-*) how="built from the clone" ;;
        *-linux_aarch64*) how="compiled here" ;;
        *none-any) how="pure Python wheel" ;;
        *aarch64*) how="aarch64 binary wheel" ;;
        *) how="?" ;;
    esac
    printf '    %-36s %-22s %s\n' "$dist" "$how" "$tags"
done
cp "$ROOT/tmp/pip.log" "$SCRATCH/pip.log" 2>/dev/null
echo "pip built these wheels in this run:"
grep -oE 'Created wheel for [^:]+' "$SCRATCH/pip.log" | sed 's/^/    /'
echo "pip took these from its wheel cache (built by an earlier run with the same key):"
grep -oE 'Using cached wheel link: .*\.whl' "$SCRATCH/pip.log" | sed -E 's|.*/|    |' | sort -u
# Its lines start with a time stamp: from the first to the last is pip's share of install.sh.
pip_time() { date -u -d "$(sed -n "$1" "$SCRATCH/pip.log" | cut -c1-19 | tr T ' ')" +%s; }
pip_took="?"
if [[ -s $SCRATCH/pip.log ]] && first=$(pip_time 1p) && last=$(pip_time "\$p"); then
    pip_took=$((last - first))
fi
echo "installed size: /opt/talkbox $(du -sm "$ROOT/opt/talkbox" | cut -f1) MB," \
    "of which the venv $(du -sm "$ROOT/opt/talkbox/venv" | cut -f1) MB;" \
    "the root grew from $(du -smx "$TREE" | cut -f1) MB to" \
    "$(du -smx --exclude="$ROOT$PIP_CACHE_IN_ROOT" "$ROOT" | cut -f1) MB (apt's packages too)"

# --- 5. the daemon, as its owner runs it without systemd -------------------------------------

phase "talkbox run in the arm64 root: echo provider, file sound card (emulated)"
cat >"$ROOT/tmp/arm64-test.toml" <<'EOF'
# Written by tests/system/arm64_test.sh: the shipped settings (the echo provider), on the
# test sound card (tests/system/arm64/echo_run.py).
[audio]
input_device = "mic"
output_device = "speaker"
# This microphone does not hear the speaker (no room), so there is nothing to cancel, and the
# echo is compared with what was said sample for sample; the canceller is checked on its own.
echo_cancellation = false

[conversation]
# The microphone runs many times slower than real time (see echo_run.py), but this timer
# counts real seconds: the words after the wake phrase must come within it.
follow_up_seconds = 30.0
EOF
chroot "$ROOT" install -m 640 -o root -g talkbox /tmp/arm64-test.toml "$TEST_CONFIG"
run_started=$SECONDS
# As user talkbox, like install.sh's foreground command (setpriv: no sudo in between, so the
# daemon itself gets the signals and its exit status comes back).
forward_results echo_run.py \
    "$PYTHON" "$REPO/tests/system/arm64/echo_run.py" \
    "$ROOT$AUDIO_IN_ROOT" "$AUDIO_IN_ROOT" "$SCRATCH/daemon.log" -- \
    chroot "$ROOT" /usr/bin/env -i PATH=$ROOT_PATH HOME=/var/lib/talkbox LANG=C.UTF-8 \
    ALSA_CONFIG_PATH=$AUDIO_IN_ROOT/asound.conf NOTIFY_SOCKET=$AUDIO_IN_ROOT/notify.sock \
    setpriv --reuid=talkbox --regid=talkbox --init-groups \
    /opt/talkbox/venv/bin/talkbox run --config "$TEST_CONFIG"
run_took=$((SECONDS - run_started))
# alsa-lib has aborted other processes on an assertion (snd_pcm_plugin_status, say).
no_assertion() { [[ -f $1 ]] && ! grep -q 'Assertion' "$1"; }
check "no assertion failed in the daemon (its output)" no_assertion "$SCRATCH/daemon.log"

phase "done"
if [[ -n $debootstrap_seconds ]]; then
    echo "time of debootstrap --arch=arm64 (cold): $(minutes "$debootstrap_seconds")"
else
    echo "time of debootstrap: none (the cached tree was used)"
fi
echo "time of copying the tree: $(minutes "$copy_took")"
echo "time of ./install.sh: $(minutes "$install_took"), of which pip $pip_took s"
echo "time of the daemon run (start to exit, with the microphone slowed): $(minutes "$run_took")"
echo "time of the whole test: $(minutes $((SECONDS - STARTED)))"
if ((failed > 0)); then
    echo "---- the daemon's output (last 60 lines)"
    tail -n 60 "$SCRATCH/daemon.log" 2>/dev/null
fi
finish
