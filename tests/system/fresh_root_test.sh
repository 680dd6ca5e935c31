#!/usr/bin/env bash
# shellcheck disable=SC2317  # the helpers are called indirectly, through check and trap
# System test of the README's quick start, as a new owner meets it: a fresh Debian 12 root
# with nothing but git, sudo and ca-certificates, a `git clone`, then the README's two
# commands exactly as written:
#
#   sudo ./install.sh        (must exit 0)
#   ./install.sh --test      (as root, like CI; must exit 0 with passed tests and no failures)
#
#   sudo tests/system/fresh_root_test.sh
#
# Run as root on a Debian 12 machine that reaches the package registries (Debian and PyPI):
# install.sh itself installs everything talkbox needs into the fresh root, Debian's Python
# included. It installs debootstrap on the host if missing. How it works:
#   1. debootstrap --variant=minbase a Debian 12 tree with git, sudo and ca-certificates only
#      (cached in $TALKBOX_FRESH_CACHE, default /var/cache/talkbox-fresh-root-test; delete it
#      to start cold; TALKBOX_FRESH_MIRROR picks another Debian mirror than the one apt uses
#      here), and copy it for this run, so every run starts from a fresh root;
#   2. `git clone` the committed HEAD of this checkout into /root/talkbox of the copy (what is
#      tested is what is committed; uncommitted changes are not);
#   3. chroot into the copy with /proc, /sys, /dev, /dev/pts and /dev/shm mounted (unmounted
#      again whatever happens); apt uses the Debian mirror above, pip trusts this host's CA
#      bundle (a proxy's CA, say) through the copy's /etc/pip.conf;
#   4. run the two commands there, each bounded by $TALKBOX_FRESH_TIMEOUT s (default 3600),
#      with their output in one log, and print the wall time of each;
#   5. with TALKBOX_FRESH_LOOPBACK_AGAIN=1, run the second command once more in a network
#      namespace with nothing but loopback: with everything installed it must fetch nothing,
#      and the tests must need no network (a whole second test run, so not done by default).
# The log is kept in the cache directory (its path is printed); its tail is shown on failure.
#
# Last line: "N passed, M failed"; the exit status is non-zero if anything failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO
readonly CACHE=${TALKBOX_FRESH_CACHE:-/var/cache/talkbox-fresh-root-test}
readonly COMMAND_TIMEOUT=${TALKBOX_FRESH_TIMEOUT:-3600}
# What a new owner has besides a minimal Debian: the tools to fetch the repository and to
# become root. Nothing of talkbox's own dependencies: install.sh must install those.
readonly NEW_OWNER_PACKAGES=(git sudo ca-certificates)
readonly HOST_PACKAGES=(debootstrap git)
# Bump when the way the cached tree is built changes, so old caches are rebuilt.
readonly TREE_RECIPE=1
readonly TREE=$CACHE/rootfs
readonly CHECKOUT_IN_ROOT=/root/talkbox
LOG=$CACHE/logs/run-$(date -u +%Y%m%dT%H%M%SZ)-$$.log
readonly LOG

# shellcheck source=tests/system/checks.sh
source "$REPO/tests/system/checks.sh"

preconditions() {
    if [[ $EUID -ne 0 ]]; then
        echo "fresh_root_test.sh must run as root (debootstrap, chroot, mount)" >&2
        return 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "fresh_root_test.sh is for a Debian 12 host (no apt-get here)" >&2
        return 1
    fi
}
if ! preconditions; then
    fail "preconditions"
    finish
fi

SCRATCH=$(mktemp -d "${TMPDIR:-/var/tmp}/talkbox-fresh-root.XXXXXX")
readonly SCRATCH
readonly ROOT=$SCRATCH/root
# Any process still running inside the throwaway root (started by this run) is ended, then
# everything mounted in it is unmounted before it is removed.
cleanup() {
    end_processes_in_root "$ROOT"
    remove_tree "$ROOT"
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. a fresh Debian 12 root -------------------------------------------------------------------

phase "host packages"
install_host_packages "$SCRATCH/apt.log" "${HOST_PACKAGES[@]}"
for tool in debootstrap git chroot; do
    command -v "$tool" >/dev/null || { fail "host tool $tool is there"; finish; }
done

if ! lock_cache "$CACHE"; then
    fail "no other fresh_root_test.sh holds $CACHE"
    finish
fi
cached_debian_tree "$CACHE" "$TREE_RECIPE" "${TALKBOX_FRESH_MIRROR:-}" : \
    "${NEW_OWNER_PACKAGES[@]}" || finish
phase "fresh root: a copy of the cached tree"
check "copied the cached tree to a throwaway root" cp -a "$TREE" "$ROOT"
flock -u 9  # the cached tree is no longer read; another run may use it
[[ -d $ROOT ]] || finish

# What the network here needs, and a new owner's machine has already: names resolve, the
# host's name is known (sudo looks it up), and pip trusts the CA bundle this host trusts.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' \
    "$(hostname)" >"$ROOT/etc/hosts"
bundle=$(host_ca_bundle)
if [[ -n $bundle ]]; then
    install -D -m 644 "$bundle" "$ROOT/etc/ssl/host-ca.pem"
    printf '[global]\ncert = /etc/ssl/host-ca.pem\n' >"$ROOT/etc/pip.conf"
fi
no_python_yet() { ! chroot "$ROOT" /bin/sh -c 'command -v python3' >/dev/null; }
check "the fresh root has no python3 (install.sh must bring it)" no_python_yet

# --- 2. git clone, as a new owner would ------------------------------------------------------

phase "git clone of the committed HEAD"
head_commit=$(git -C "$REPO" rev-parse HEAD)
branch=$(git -C "$REPO" symbolic-ref -q HEAD || true)
if [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no) ]]; then
    echo "note: the checkout has uncommitted changes; they are not tested"
fi
# A bundle of HEAD stands in for the remote: the root's own git clones it.
git -C "$REPO" bundle create "$ROOT/tmp/talkbox.bundle" HEAD ${branch:+"$branch"} 2>/dev/null
check "git clone into $CHECKOUT_IN_ROOT (chroot)" run_logged "$SCRATCH/clone.log" \
    chroot "$ROOT" git clone --quiet /tmp/talkbox.bundle "$CHECKOUT_IN_ROOT"
rm -f "$ROOT/tmp/talkbox.bundle"
check "the clone is at HEAD $head_commit" \
    test "$(chroot "$ROOT" git -C "$CHECKOUT_IN_ROOT" rev-parse HEAD 2>/dev/null)" = "$head_commit"
chroot "$ROOT" test -x "$CHECKOUT_IN_ROOT/install.sh" || finish

# --- 3. the chroot's file systems ---------------------------------------------------------------

check "mounted /proc, /sys, /dev, /dev/pts and /dev/shm in the root" \
    mount_system_filesystems "$ROOT"

# --- 4. the README's two commands ------------------------------------------------------------------

mkdir -p "$(dirname "$LOG")"
# Older logs go; the last ten stay.
find "$(dirname "$LOG")" -name 'run-*.log' | sort | head -n -9 | xargs -r rm -f
mapfile -t registry < <(registry_environment)
# run_command COMMAND [loopback-only]: runs the shell command line COMMAND as root in the
# clone inside the root, with a login's plain environment, its output appended to the log;
# sets $took. With loopback-only, in a new network namespace where only lo is up.
took=0
run_command() {
    local command=$1 network=${2:-} started=$SECONDS status=0
    local -a enter=()
    if [[ $network == loopback-only ]]; then
        enter=(unshare --net -- /bin/sh -c 'ip link set lo up && exec "$@"' sh)
    fi
    printf '\n===== # %s%s\n' "$command" "${network:+ ($network)}" >>"$LOG"
    timeout --kill-after=30 "$COMMAND_TIMEOUT" "${enter[@]}" chroot "$ROOT" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 "${registry[@]}" \
        /bin/bash -c "cd $CHECKOUT_IN_ROOT && $command" </dev/null >>"$LOG" 2>&1 || status=$?
    took=$((SECONDS - started))
    printf '===== exit status %s after %s s\n' "$status" "$took" >>"$LOG"
    return "$status"
}
# check_test_run FIRST_LINE WHAT: checks the output of `./install.sh --test` from line
# FIRST_LINE of the log on: pytest passed tests and failed none, and all checks passed.
check_test_run() {
    local output summary
    output=$(tail -n "+$1" "$LOG")
    # pytest's last summary line, like "=== 312 passed, 2 warnings in 301.15s (0:05:01) ===".
    summary=$(grep -E '^=+ .*[0-9]+ (passed|failed|errors?)\b.* in [0-9.]+s' <<<"$output" |
        tail -n 1)
    echo "pytest ($2): ${summary:-no summary line}"
    check "pytest ($2) reports passed tests and no failures or errors" \
        passed_and_nothing_else "$summary"
    check "./install.sh --test ($2) says all checks passed" \
        grep -qxF 'All checks passed.' <<<"$output"
}
passed_and_nothing_else() {
    [[ $1 =~ [0-9]+\ passed ]] && ! [[ $1 =~ [0-9]+\ (failed|errors?) ]]
}

: >"$LOG"
echo "log: $LOG"
phase "first command: sudo ./install.sh"
first_status=0
run_command "sudo ./install.sh" || first_status=$?
first_took=$took
check "\`sudo ./install.sh\` exits 0 (exit status $first_status, took $(minutes "$first_took"))" \
    test "$first_status" -eq 0
echo "Python in the root: $(chroot "$ROOT" python3 --version 2>&1)"
check "talkbox is installed in the root (/opt/talkbox/venv/bin/talkbox --help)" \
    run_logged "$SCRATCH/help.log" chroot "$ROOT" /opt/talkbox/venv/bin/talkbox --help

phase "second command: ./install.sh --test"
second_start_line=$(($(wc -l <"$LOG") + 1))
second_status=0
run_command "./install.sh --test" || second_status=$?
second_took=$took
check "\`./install.sh --test\` exits 0 (exit status $second_status, took $(minutes "$second_took"))" \
    test "$second_status" -eq 0
check_test_run "$second_start_line" "the second command"

again_took=""
if [[ ${TALKBOX_FRESH_LOOPBACK_AGAIN:-} == 1 ]]; then
    phase "the second command again, with loopback only: ./install.sh --test"
    again_start_line=$(($(wc -l <"$LOG") + 1))
    again_status=0
    run_command "./install.sh --test" loopback-only || again_status=$?
    again_took=$took
    check "\`./install.sh --test\` again, with loopback only, exits 0 (exit status $again_status, took $(minutes "$again_took"))" \
        test "$again_status" -eq 0
    check "the run with loopback only installed nothing (it found all in place)" \
        grep -q 'nothing to do: .venv is up to date' <(tail -n "+$again_start_line" "$LOG")
    check_test_run "$again_start_line" "again, with loopback only"
fi

phase "done"
if [[ -n $debootstrap_seconds ]]; then
    echo "time of debootstrap (cold): $(minutes "$debootstrap_seconds")"
else
    echo "time of debootstrap: none (the cached tree was used)"
fi
echo "time of \`sudo ./install.sh\`: $(minutes "$first_took")"
echo "time of \`./install.sh --test\`: $(minutes "$second_took")"
[[ -n $again_took ]] &&
    echo "time of \`./install.sh --test\` again, with loopback only: $(minutes "$again_took")"
echo "time of the whole test: $(minutes $((SECONDS - STARTED)))"
if ((failed > 0)); then
    echo "---- the log's last 80 lines ($LOG)"
    tail -n 80 "$LOG"
fi
finish
