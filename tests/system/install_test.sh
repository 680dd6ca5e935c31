#!/usr/bin/env bash
# shellcheck disable=SC2317  # the helpers are called indirectly, through check and trap
# System test of install.sh: installs talkbox for real, checks what it made, re-runs it,
# uninstalls and purges. Run as root on a throwaway machine where systemd is not PID 1
# (CI): it creates the user talkbox, /opt/talkbox, /etc/talkbox and the unit file, and
# removes them all again at the end (also when it stops early).
#
# The checkout is copied to a scratch directory first, so the test can change the shipped
# default config and the source there without touching the real tree.
#
# Last line: "N passed, M failed"; the exit status is non-zero if anything failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO
readonly KEY="sk-installtest-DO-NOT-PRINT-0123456789abcdef"
readonly UNIT=/etc/systemd/system/talkbox.service
readonly BOOT_LINK=/etc/systemd/system/multi-user.target.wants/talkbox.service

# shellcheck source=tests/system/checks.sh
source "$REPO/tests/system/checks.sh"

# Refuses to run where it could damage something; returns non-zero with the reason.
preconditions() {
    if [[ $EUID -ne 0 ]]; then
        echo "install_test.sh must run as root (it installs a system service)" >&2
        return 1
    fi
    if [[ -d /run/systemd/system ]]; then
        echo "systemd is PID 1 here; this test is for a machine without it" \
            "(it would start the service)" >&2
        return 1
    fi
    if getent passwd talkbox >/dev/null || [[ -e /opt/talkbox || -e /etc/talkbox || -e $UNIT ]]
    then
        echo "talkbox is already installed here; run './install.sh --purge' first" >&2
        return 1
    fi
}
if ! preconditions; then
    fail "preconditions"
    finish
fi

SCRATCH=$(mktemp -d)
readonly SCRATCH
readonly COPY=$SCRATCH/talkbox
cleanup() {
    "$COPY/install.sh" --purge >/dev/null 2>&1 || true
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

mkdir -p "$COPY"
copied=(install.sh pyproject.toml requirements daemon config systemd)
[[ -f $REPO/README.md ]] && copied+=(README.md)
(cd "$REPO" && tar --exclude='*.egg-info' --exclude=__pycache__ -cf - "${copied[@]}") |
    tar -xf - -C "$COPY"
printf '%s\n' "$KEY" >"$SCRATCH/key"
chmod 600 "$SCRATCH/key"

# run_install NAME LOG ARGS...: runs the copy's install.sh with no terminal on stdin and
# checks that it exits 0 (showing its output when it does not).
run_install() {
    local name=$1 log=$2
    shift 2
    if "$COPY/install.sh" "$@" </dev/null >"$log" 2>&1; then
        pass "$name"
    else
        fail "$name (exit status $?)"
        cat "$log"
    fi
}
owner_mode() { stat -c '%U:%G %a' "$1"; }
# Every file and directory the install makes, with its mtime: a re-run must change none.
snapshot() {
    find /opt/talkbox /etc/talkbox /var/lib/talkbox /run/talkbox "$UNIT" /etc/passwd /etc/group \
        /etc/shadow /etc/gshadow -printf '%p %T@ %m %u %g\n' 2>/dev/null | LC_ALL=C sort
}
# quietly COMMAND...: runs it, showing its output only when it fails.
quietly() {
    local output
    if output=$("$@" 2>&1); then return 0; fi
    printf '%s\n' "$output"
    return 1
}
key_not_in() { ! grep -qF "$KEY" "$@"; }
said() { grep -qF -- "$2" "$1"; }
last_line_is() { [[ $(tail -n 1 "$1") == "$2" ]]; }

echo "== first install, no API key, no terminal"
run_install "install exits 0" "$SCRATCH/1.log"
check "config.toml is the shipped default" cmp -s "$COPY/config/talkbox.toml" /etc/talkbox/config.toml
check "config.toml is root:talkbox 640" test "$(owner_mode /etc/talkbox/config.toml)" = "root:talkbox 640"
check "/etc/talkbox is root:talkbox 750" test "$(owner_mode /etc/talkbox)" = "root:talkbox 750"
check "no API key file without --api-key-file or a terminal" test ! -e /etc/talkbox/api-key
check "it says there is no API key" said "$SCRATCH/1.log" "no API key"
check "unit installed as shipped" cmp -s "$COPY/systemd/talkbox.service" "$UNIT"
check "unit is root:root 644" test "$(owner_mode "$UNIT")" = "root:root 644"
verify_output=$(systemd-analyze verify "$UNIT" 2>&1)
check "systemd-analyze verify of the installed unit prints nothing" test -z "$verify_output"
[[ -z $verify_output ]] || printf '%s\n' "$verify_output"
check "user talkbox exists" quietly getent passwd talkbox
check "talkbox is in group audio" bash -c "id -nG talkbox | tr ' ' '\n' | grep -qx audio"
check "talkbox has no login shell" test "$(getent passwd talkbox | cut -d: -f7)" = /usr/sbin/nologin
check "talkbox's home is /var/lib/talkbox" test "$(getent passwd talkbox | cut -d: -f6)" = /var/lib/talkbox
check "talkbox is a system user" test "$(id -u talkbox)" -lt 1000
check "/var/lib/talkbox is talkbox:talkbox 750" test "$(owner_mode /var/lib/talkbox)" = "talkbox:talkbox 750"
check "/opt/talkbox/venv/bin/talkbox exists" test -x /opt/talkbox/venv/bin/talkbox
check "talkbox --help runs" quietly /opt/talkbox/venv/bin/talkbox --help
check "talkbox is on PATH as /usr/local/bin/talkbox" \
    test "$(readlink /usr/local/bin/talkbox)" = /opt/talkbox/venv/bin/talkbox
check "root can check the installed config by the short name" \
    quietly /usr/local/bin/talkbox check --config /etc/talkbox/config.toml
check "the user talkbox can read and validate the installed config" \
    quietly runuser -u talkbox -- /opt/talkbox/venv/bin/talkbox check --config /etc/talkbox/config.toml
check "the package imports from the venv (not an editable checkout)" \
    /opt/talkbox/venv/bin/python -c \
    'import sys, talkbox; sys.exit(not talkbox.__file__.startswith("/opt/talkbox/venv/lib/"))'
check "the venv is built on Debian's /usr/bin/python3" \
    /opt/talkbox/venv/bin/python -c 'import sys; sys.exit(sys.base_prefix != "/usr")'
check "the user talkbox can import the package" runuser -u talkbox -- /opt/talkbox/venv/bin/python -c 'import talkbox'
check "source hash recorded" test -s /opt/talkbox/.source-hash
# The venv holds the pinned packages and nothing else (talkbox aside): not even pip, which
# only installs (read without it: importlib.metadata).
installed_packages() {
    /opt/talkbox/venv/bin/python -c 'import importlib.metadata as m, re
for d in m.distributions():
    name = re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
    if name != "talkbox": print(f"{name}=={d.version}")' | LC_ALL=C sort
}
pinned_packages() {
    grep -v '^#' "$COPY/requirements/daemon.txt" | tr '[:upper:]' '[:lower:]' | LC_ALL=C sort
}
check "the venv holds exactly requirements/daemon.txt" \
    test "$(installed_packages)" = "$(pinned_packages)"
check "pip and setuptools are not left in the venv" \
    test -z "$(ls -d /opt/talkbox/venv/lib/python3.*/site-packages/{pip,setuptools} 2>/dev/null)"
echo "   installed size: /opt/talkbox $(du -sm /opt/talkbox | cut -f1) MB"
check "openwakeword's ONNX runtime, SciPy and scikit-learn are not installed" \
    test -z "$(ls -d /opt/talkbox/venv/lib/python3.*/site-packages/{onnxruntime,scipy,sklearn} 2>/dev/null)"
check "the wake model loads and scores in the installed venv, as the user talkbox" \
    quietly runuser -u talkbox -- /opt/talkbox/venv/bin/python -c \
    'import numpy; from talkbox.audio.wake import WakeWordDetector as D; d = D(["hey_jarvis"]); d.process(numpy.zeros(1280, numpy.int16)); print(d.last_scores)'
check "pip printed no deprecation warning (sdists are built as wheels)" \
    bash -c "! grep -qi deprecat '$SCRATCH/1.log'"
check "it says systemd is not running" said "$SCRATCH/1.log" "systemd is not running"
check "the unit is enabled all the same (an SD image built in a chroot starts it at boot)" \
    test "$(readlink "$BOOT_LINK")" = "$UNIT"
check "it prints the foreground command" \
    said "$SCRATCH/1.log" "sudo -u talkbox /opt/talkbox/venv/bin/talkbox run --config /etc/talkbox/config.toml"
check "/run/talkbox made for the control socket" test "$(owner_mode /run/talkbox)" = "talkbox:talkbox 750"
check "it explains how to switch provider" said "$SCRATCH/1.log" 'provider = "azure"'

echo "== second install, with --api-key-file"
run_install "install with key exits 0" "$SCRATCH/2.log" --api-key-file "$SCRATCH/key"
check "api-key is root:root 600" test "$(owner_mode /etc/talkbox/api-key)" = "root:root 600"
check "api-key holds the key" cmp -s "$SCRATCH/key" /etc/talkbox/api-key
check "only the key step changed" said "$SCRATCH/2.log" "Done: 1 change(s) made."

echo "== third install: nothing to do"
before=$(snapshot)
run_install "re-run exits 0" "$SCRATCH/3.log" --api-key-file "$SCRATCH/key"
check "re-run says nothing changed" last_line_is "$SCRATCH/3.log" "Nothing changed: talkbox is already installed and up to date."
check "re-run says 'nothing to do' for each step" test "$(grep -c 'nothing to do' "$SCRATCH/3.log")" -ge 8
check "re-run changed no file, owner, mode or mtime" test "$before" = "$(snapshot)"
run_install "re-run without --api-key-file exits 0" "$SCRATCH/3b.log"
check "an existing key is kept" said "$SCRATCH/3b.log" "/etc/talkbox/api-key is present (kept)"
check "re-run without key changed nothing" test "$before" = "$(snapshot)"

echo "== an edited config survives"
printf '\n# edited by the install test\n' >>/etc/talkbox/config.toml
edited=$(sha256sum </etc/talkbox/config.toml)
run_install "re-run after edit exits 0" "$SCRATCH/4.log"
check "edited config kept byte for byte" test "$edited" = "$(sha256sum </etc/talkbox/config.toml)"
check "it says the edited config is kept" said "$SCRATCH/4.log" "kept as you edited it"
check "no config.toml.dist while the default is unchanged" test ! -e /etc/talkbox/config.toml.dist

echo "== the shipped default changes"
printf '\n# a newer shipped default\n' >>"$COPY/config/talkbox.toml"
run_install "re-run with a new default exits 0" "$SCRATCH/5.log"
check "edited config still kept" test "$edited" = "$(sha256sum </etc/talkbox/config.toml)"
check "new default dropped as config.toml.dist" cmp -s "$COPY/config/talkbox.toml" /etc/talkbox/config.toml.dist
check "it says so" said "$SCRATCH/5.log" "config.toml.dist"
before=$(snapshot)
run_install "next re-run exits 0" "$SCRATCH/5b.log"
check "next re-run changes nothing" test "$before" = "$(snapshot)"

echo "== the source changes"
old_hash=$(</opt/talkbox/.source-hash)
printf '\n# changed by the install test\n' >>"$COPY/daemon/talkbox/__init__.py"
# A package an older install needed and the pins no longer list: the update removes it.
leftover_wheel=$SCRATCH/leftover_from_an_old_install-1-py3-none-any.whl
/opt/talkbox/venv/bin/python - "$leftover_wheel" <<'PY'
import sys, zipfile
info = "leftover_from_an_old_install-1.dist-info"
with zipfile.ZipFile(sys.argv[1], "w") as wheel:
    wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: leftover-from-an-old-install\nVersion: 1\n")
    wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: install_test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    wheel.writestr(f"{info}/RECORD", "")
PY
quietly /opt/talkbox/venv/bin/python -m ensurepip --default-pip
quietly /opt/talkbox/venv/bin/python -m pip install --quiet --no-deps "$leftover_wheel"
run_install "re-run with new source exits 0" "$SCRATCH/6.log"
check "a package the pins no longer list is removed" said "$SCRATCH/6.log" \
    "removed packages no longer needed: leftover-from-an-old-install"
check "the venv holds exactly requirements/daemon.txt again" \
    test "$(installed_packages)" = "$(pinned_packages)"
check "the package is reinstalled" said "$SCRATCH/6.log" "installed talkbox from"
check "the new source is what is installed" \
    grep -qF "# changed by the install test" /opt/talkbox/venv/lib/python3.*/site-packages/talkbox/__init__.py
check "the source hash is updated" test "$old_hash" != "$(</opt/talkbox/.source-hash)"

check "no output ever showed the API key" key_not_in "$SCRATCH"/*.log

echo "== uninstall"
run_install "--uninstall exits 0" "$SCRATCH/7.log" --uninstall
check "unit removed" test ! -e "$UNIT"
check "its boot symlink removed" test ! -L "$BOOT_LINK"
check "/opt/talkbox removed" test ! -e /opt/talkbox
check "/usr/local/bin/talkbox removed" test ! -e /usr/local/bin/talkbox -a ! -L /usr/local/bin/talkbox
check "/var/lib/talkbox removed" test ! -e /var/lib/talkbox
check "/run/talkbox removed" test ! -e /run/talkbox
check "user talkbox removed" bash -c '! getent passwd talkbox'
check "group talkbox removed" bash -c '! getent group talkbox'
check "config kept" test -f /etc/talkbox/config.toml
check "API key kept, still root-only" test "$(owner_mode /etc/talkbox/api-key)" = "root:root 600"
check "no file in /etc/talkbox left with a group that no longer exists" \
    test -z "$(find /etc/talkbox -nogroup)"
run_install "second --uninstall exits 0" "$SCRATCH/7b.log" --uninstall
check "second --uninstall says nothing changed" last_line_is "$SCRATCH/7b.log" "Nothing changed: talkbox is not installed."

echo "== purge"
run_install "--purge exits 0" "$SCRATCH/8.log" --purge
check "/etc/talkbox removed" test ! -e /etc/talkbox
check "nothing left in /opt, /etc, /var/lib, /run or the unit path" \
    test -z "$(ls -d /opt/talkbox /etc/talkbox /var/lib/talkbox /run/talkbox "$UNIT" /usr/local/bin/talkbox 2>/dev/null)"

finish
