#!/usr/bin/env bash
# talkbox installer for Debian 12 / Raspberry Pi OS Bookworm.
#
#   sudo ./install.sh [--api-key-file FILE]   install or update the system service
#   sudo ./install.sh --uninstall             remove it, keep /etc/talkbox (config and key)
#   sudo ./install.sh --purge                 remove it and /etc/talkbox too
#   ./install.sh --dev                        .venv in this checkout for development
#   ./install.sh --test                       --dev, then ruff, mypy, lint-imports and pytest
#
# Every step checks before it changes anything, so running it again is safe and says
# "nothing to do" for each step that is already done.
set -euo pipefail

CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly CHECKOUT
readonly APP_USER=talkbox
readonly PREFIX=/opt/talkbox
readonly VENV=$PREFIX/venv
readonly SOURCE_HASH_FILE=$PREFIX/.source-hash
readonly ETC_DIR=/etc/talkbox
readonly CONFIG=$ETC_DIR/config.toml
# The hash of the shipped default that config.toml was made from; it tells a changed default
# apart from the user's own edits.
readonly CONFIG_DEFAULT_HASH_FILE=$ETC_DIR/.config.toml.default-sha256
readonly KEY_FILE=$ETC_DIR/api-key
readonly STATE_DIR=/var/lib/talkbox
readonly RUN_DIR=/run/talkbox
readonly UNIT_NAME=talkbox.service
readonly UNIT_DEST=/etc/systemd/system/$UNIT_NAME
# `talkbox check`, `talkbox ask`, `talkbox ctl` for the owner at a shell, without the venv path.
readonly COMMAND_LINK=/usr/local/bin/talkbox
# A system service must not depend on an interpreter under someone's home directory (the
# unit's ProtectHome=yes hides /home and /root), so the venv uses Debian's python3.
readonly SYSTEM_PYTHON=/usr/bin/python3
readonly FOREGROUND_COMMAND="sudo -u $APP_USER $VENV/bin/talkbox run --config $CONFIG"

# Debian packages: to build PyAudio and systemd-python, and to run with ALSA.
readonly SYSTEM_PACKAGES=(python3 python3-venv python3-dev gcc libc6-dev pkg-config
                          portaudio19-dev libsystemd-dev alsa-utils)
# For the test suite: speech synthesis for wake-word clips, systemd-analyze, strace for the
# system-call filter check, mosquitto (a real MQTT broker the tests start on loopback; its
# system service is never used).
readonly DEV_PACKAGES=(python3-venv python3-dev gcc libc6-dev pkg-config portaudio19-dev
                       libsystemd-dev espeak-ng sox alsa-utils systemd strace mosquitto)

changes=0

say() { printf '%s\n' "$*"; }
step() { printf '\n==> %s\n' "$*"; }
did() { printf '    %s\n' "$*"; changes=$((changes + 1)); }
unchanged() { printf '    nothing to do: %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage:
  sudo ./install.sh [--api-key-file FILE]
      Install or update talkbox as a system service: Debian packages it needs, the user
      '$APP_USER', a venv at $VENV, $CONFIG (never overwritten), the API key at
      $KEY_FILE (from FILE, or asked for on a terminal, or none), and the systemd unit,
      enabled and started. Safe to run again: it changes only what is out of date.
  sudo ./install.sh --uninstall
      Stop and remove the service, $PREFIX, $STATE_DIR and the user; keep $ETC_DIR.
  sudo ./install.sh --purge
      Like --uninstall, and remove $ETC_DIR (config and API key) too.
  ./install.sh --dev
      Development set-up in this checkout: .venv with 'pip install -e .[dev]'. As root (or
      with password-less sudo) it also installs the Debian packages the tests need;
      otherwise it prints the apt-get command to run.
  ./install.sh --test
      --dev, then ruff check, mypy, lint-imports (the layering) and pytest; exits
      non-zero if any of them fails.
  ./install.sh --help
      This text.
EOF
}

# --- helpers ------------------------------------------------------------------------------

missing_packages() {
    local package
    for package in "$@"; do
        if [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) != "install ok installed" ]]
        then
            printf '%s\n' "$package"
        fi
    done
}

# Installs the missing ones among "$@" with apt-get; `$1` is the command prefix ("" or "sudo -n").
apt_install_missing() {
    local prefix=$1
    shift
    local -a missing
    mapfile -t missing < <(missing_packages "$@")
    if ((${#missing[@]} == 0)); then
        unchanged "Debian packages already installed: $*"
        return
    fi
    note "installing: ${missing[*]}"
    $prefix apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $prefix apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    did "installed Debian packages: ${missing[*]}"
}

require_python() {
    local python=$1
    command -v "$python" >/dev/null || die "no $python found; install it with: sudo apt-get install python3"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        die "talkbox needs Python 3.11 or newer; $python is $("$python" -c 'import platform; print(platform.python_version())')"
    fi
}

# sha256 of everything pip builds the package from, so the venv is rebuilt exactly when
# the source or the pinned dependencies changed.
source_hash() {
    (
        cd "$CHECKOUT"
        local -a roots=(pyproject.toml requirements daemon)
        [[ -f README.md ]] && roots+=(README.md)
        find "${roots[@]}" -type f \
            ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -name '*.pyc' |
            LC_ALL=C sort | while IFS= read -r file; do
                printf '%s\n' "$file"
                sha256sum <"$file"
            done | sha256sum | cut -d' ' -f1
    )
}

file_hash() { sha256sum <"$1" | cut -d' ' -f1; }

# Installs exactly the pinned dependencies in LOCK, then the package PACKAGE (a directory,
# or "-e DIR"), into VENV, and removes whatever else an older install left there. --no-deps:
# the lock already holds every package needed, and leaves out what openwakeword declares but
# talkbox never runs (see requirements/lock.py). --use-pep517 builds the sdists (PyAudio,
# systemd-python) as wheels, which pip caches, instead of the deprecated `setup.py install`,
# with the build tools pinned in requirements/build.txt.
pip_install_locked() {
    local venv=$1 lock=$2
    shift 2
    local -a pip=(env "PIP_CONSTRAINT=$CHECKOUT/requirements/build.txt" "$venv/bin/python" -m pip
                  --no-input --disable-pip-version-check)
    "${pip[@]}" install --quiet --no-deps --use-pep517 -r "$lock"
    "${pip[@]}" install --quiet --no-deps --use-pep517 "$@"
    local -a stale
    mapfile -t stale < <(LC_ALL=C comm -23 \
        <("${pip[@]}" list --format=freeze --exclude pip --exclude setuptools \
              --exclude talkbox | canonical_names) \
        <(grep -v '^#' "$lock" | canonical_names))
    if ((${#stale[@]} > 0)); then
        "${pip[@]}" uninstall --quiet --yes "${stale[@]}"
        note "removed packages no longer needed: ${stale[*]}"
    fi
}

# "Foo_Bar.baz==1.0" -> "foo-bar-baz" (PEP 503 names), sorted, for comparing package lists.
canonical_names() { sed -E 's/[=<>!~;[ ].*//; s/[-_.]+/-/g' | tr '[:upper:]' '[:lower:]' | LC_ALL=C sort -u; }

# Makes a directory with the given owner and mode, or says it already is so.
ensure_dir() {
    local path=$1 owner=$2 mode=$3
    if [[ -d $path && $(stat -c '%U:%G %a' "$path") == "$owner $mode" ]]; then
        unchanged "$path exists ($owner, $mode)"
    else
        install -d -o "${owner%%:*}" -g "${owner##*:}" -m "$mode" "$path"
        did "made $path ($owner, $mode)"
    fi
}

systemd_running() { [[ -d /run/systemd/system ]]; }

# --- system install -----------------------------------------------------------------------

install_packages() {
    step "Debian packages"
    apt_install_missing "" "${SYSTEM_PACKAGES[@]}"
}

install_user() {
    step "User $APP_USER"
    if ! getent group audio >/dev/null; then
        groupadd --system audio
        did "made group audio"
    fi
    if getent passwd "$APP_USER" >/dev/null; then
        unchanged "user $APP_USER exists"
    else
        useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --groups audio --comment "talkbox smart speaker" "$APP_USER"
        did "made system user $APP_USER (no login, home $STATE_DIR, groups audio)"
    fi
    if id -nG "$APP_USER" | tr ' ' '\n' | grep -qx audio; then
        unchanged "$APP_USER is in group audio"
    else
        usermod -aG audio "$APP_USER"
        did "added $APP_USER to group audio"
    fi
    # The unit's StateDirectory= makes it too, but `talkbox run` by hand needs it first.
    ensure_dir "$STATE_DIR" "$APP_USER:$APP_USER" 750
}

install_venv() {
    step "Python environment $VENV"
    require_python "$SYSTEM_PYTHON"
    local wanted_hash
    wanted_hash=$(source_hash)
    if [[ -f $SOURCE_HASH_FILE && $(<"$SOURCE_HASH_FILE") == "$wanted_hash" ]] &&
        "$VENV/bin/python" -c 'import talkbox' 2>/dev/null && [[ -x $VENV/bin/talkbox ]]; then
        unchanged "talkbox in $VENV is up to date with this checkout"
        return
    fi
    install -d -m 755 "$PREFIX"
    if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$VENV"
        "$SYSTEM_PYTHON" -m venv "$VENV"
        did "made venv $VENV ($("$SYSTEM_PYTHON" --version))"
    fi
    # pip is taken out of the venv after each install (below): bring it back for this one.
    if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        "$VENV/bin/python" -m ensurepip --default-pip >/dev/null
    fi
    # Build from a clean copy: pip writes build/ and *.egg-info into the tree it builds.
    local stage
    stage=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: $stage is local
    trap "rm -rf '$stage'" EXIT
    cp -a "$CHECKOUT/pyproject.toml" "$CHECKOUT/daemon" "$stage/"
    [[ -f $CHECKOUT/README.md ]] && cp -a "$CHECKOUT/README.md" "$stage/"
    find "$stage" \( -name '__pycache__' -o -name '*.egg-info' \) -prune -exec rm -rf {} +
    note "installing talkbox and its dependencies (this takes a while on a Pi)"
    pip_install_locked "$VENV" "$CHECKOUT/requirements/daemon.txt" "$stage"
    # pip and setuptools only install: 27 MB on the SD card that the daemon never imports.
    "$VENV/bin/python" -m pip uninstall --quiet --yes pip setuptools
    rm -rf "$stage"
    trap - EXIT
    printf '%s\n' "$wanted_hash" >"$SOURCE_HASH_FILE"
    did "installed talkbox from $CHECKOUT into $VENV"
}

install_config() {
    step "Configuration $CONFIG"
    local shipped=$CHECKOUT/config/talkbox.toml
    [[ -f $shipped ]] || die "$shipped is missing from this checkout"
    ensure_dir "$ETC_DIR" "root:$APP_USER" 750
    local shipped_hash
    shipped_hash=$(file_hash "$shipped")
    if [[ ! -e $CONFIG ]]; then
        install -m 640 -o root -g "$APP_USER" "$shipped" "$CONFIG"
        printf '%s\n' "$shipped_hash" >"$CONFIG_DEFAULT_HASH_FILE"
        did "installed the default config as $CONFIG"
        return
    fi
    local recorded_hash=""
    [[ -f $CONFIG_DEFAULT_HASH_FILE ]] && recorded_hash=$(<"$CONFIG_DEFAULT_HASH_FILE")
    if cmp -s "$shipped" "$CONFIG"; then
        unchanged "$CONFIG is the shipped default"
    elif [[ $recorded_hash == "$shipped_hash" ]]; then
        unchanged "$CONFIG kept as you edited it (the shipped default has not changed)"
    elif [[ -f $CONFIG.dist ]] && cmp -s "$shipped" "$CONFIG.dist"; then
        unchanged "$CONFIG kept; the new default is already in $CONFIG.dist"
    else
        install -m 640 -o root -g "$APP_USER" "$shipped" "$CONFIG.dist"
        did "the shipped default config changed: $CONFIG is kept as it is, the new default" \
            "is $CONFIG.dist; compare with: diff $CONFIG $CONFIG.dist"
    fi
    if [[ $recorded_hash != "$shipped_hash" ]]; then
        printf '%s\n' "$shipped_hash" >"$CONFIG_DEFAULT_HASH_FILE"
    fi
}

# Writes the key from stdin-free sources only; the key never appears in output or argv.
install_api_key() {
    local key_source=$1
    step "API key $KEY_FILE"
    if [[ -n $key_source ]]; then
        [[ -r $key_source ]] || die "cannot read the API key file $key_source"
        grep -q '[^[:space:]]' "$key_source" || die "the API key file $key_source is empty"
        if [[ -f $KEY_FILE ]] && cmp -s "$key_source" "$KEY_FILE"; then
            unchanged "$KEY_FILE already holds the key from $key_source"
        else
            install -m 600 -o root -g root "$key_source" "$KEY_FILE"
            did "stored the key from $key_source in $KEY_FILE (root only, 0600)"
        fi
    elif [[ -f $KEY_FILE ]]; then
        unchanged "$KEY_FILE is present (kept)"
    elif [[ -t 0 ]]; then
        local key=""
        read -r -s -p "    Paste the Azure/OpenAI API key, or press Enter to skip (the echo provider needs none): " key
        printf '\n'
        if [[ -n $key ]]; then
            (umask 077 && printf '%s\n' "$key" >"$KEY_FILE.new")
            chown root:root "$KEY_FILE.new"
            mv -f "$KEY_FILE.new" "$KEY_FILE"
            did "stored the key in $KEY_FILE (root only, 0600)"
        else
            unchanged "no API key given (the echo provider needs none)"
        fi
        key=""
    else
        unchanged "no API key (the echo provider needs none; add one with --api-key-file FILE)"
    fi
    # The unit reads the key as root (LoadCredential=); nobody else should.
    if [[ -f $KEY_FILE && $(stat -c '%U:%G %a' "$KEY_FILE") != "root:root 600" ]]; then
        chown root:root "$KEY_FILE"
        chmod 600 "$KEY_FILE"
        did "restricted $KEY_FILE to root (0600)"
    fi
}

install_command_link() {
    step "Command $COMMAND_LINK"
    if [[ -L $COMMAND_LINK && $(readlink -- "$COMMAND_LINK") == "$VENV/bin/talkbox" ]]; then
        unchanged "$COMMAND_LINK points to $VENV/bin/talkbox"
        return
    fi
    if [[ -e $COMMAND_LINK || -L $COMMAND_LINK ]]; then
        note "$COMMAND_LINK exists and is not ours; left alone (use $VENV/bin/talkbox)"
        return
    fi
    ln -s "$VENV/bin/talkbox" "$COMMAND_LINK"
    did "linked $COMMAND_LINK -> $VENV/bin/talkbox"
}

install_unit() {
    step "systemd unit $UNIT_DEST"
    if [[ -f $UNIT_DEST ]] && cmp -s "$CHECKOUT/systemd/$UNIT_NAME" "$UNIT_DEST"; then
        unchanged "$UNIT_DEST is up to date"
        return 1
    fi
    install -D -m 644 -o root -g root "$CHECKOUT/systemd/$UNIT_NAME" "$UNIT_DEST"
    did "installed $UNIT_DEST"
}

enable_unit() {
    if systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
        unchanged "$UNIT_NAME is enabled"
    else
        systemctl enable --quiet "$UNIT_NAME"
        did "enabled $UNIT_NAME (starts at boot)"
    fi
}

start_service() {
    local unit_changed=$1 changes_before_service=$2
    step "Service"
    if ! systemd_running; then
        # E.g. a chroot building a Pi's SD card image: enabling only makes symlinks, and
        # works offline, so the speaker starts when that system first boots.
        if command -v systemctl >/dev/null; then enable_unit; fi
        note "systemd is not running on this machine (no /run/systemd/system), so the service"
        note "is installed but not started. To run talkbox in the foreground:"
        note "    $FOREGROUND_COMMAND"
        # The control socket lives here; under systemd, RuntimeDirectory= makes it.
        ensure_dir "$RUN_DIR" "$APP_USER:$APP_USER" 750
        return
    fi
    if ((unit_changed)); then
        systemctl daemon-reload
        did "reloaded systemd"
    fi
    enable_unit
    if ! systemctl is-active --quiet "$UNIT_NAME"; then
        systemctl start "$UNIT_NAME"
        did "started $UNIT_NAME"
    elif ((changes_before_service > 0)); then
        # New code, unit or key: the key is handed over only at start, so restart.
        systemctl restart "$UNIT_NAME"
        did "restarted $UNIT_NAME to apply the changes"
    else
        unchanged "$UNIT_NAME is running"
    fi
}

print_next_steps() {
    cat <<EOF

Next steps
  talkbox starts with the "echo" provider: say "hey jarvis", speak, and hear yourself back.
  To talk to Azure OpenAI or OpenAI instead:
    1. Edit $CONFIG: in [realtime] set provider = "azure" (with endpoint and
       deployment) or "openai" (with model); the comments there explain each key.
    2. Store the key, readable by root only:
         sudo ./install.sh --api-key-file /path/to/key-file
       (or: sudo install -m600 /dev/stdin $KEY_FILE, paste, Enter, Ctrl-D)
    3. Check (as root: the key file is root-only), try one question, then apply:
         sudo talkbox check --connect --config $CONFIG
         sudo talkbox ask "what is the capital of France?" --config $CONFIG --out /tmp/answer.wav
         sudo systemctl restart talkbox
  Logs: journalctl -u talkbox -f      Control: sudo talkbox ctl status
EOF
}

system_install() {
    local key_source=$1
    [[ $EUID -eq 0 ]] || die "the system install needs root: sudo ./install.sh (or ./install.sh --dev for a development set-up)"
    command -v apt-get >/dev/null || die "this installer is for Debian 12 / Raspberry Pi OS Bookworm (no apt-get here)"
    if [[ -n $key_source ]]; then
        # Absolute now: the steps below run in other directories.
        key_source=$(realpath -- "$key_source") || die "no such API key file: $1"
    fi
    say "Installing talkbox from $CHECKOUT"
    install_packages
    install_user
    install_venv
    install_config
    install_api_key "$key_source"
    install_command_link
    local unit_changed=0
    install_unit && unit_changed=1
    start_service "$unit_changed" "$changes"
    print_next_steps
    if ((changes == 0)); then
        printf '\n%s\n' "Nothing changed: talkbox is already installed and up to date."
    else
        printf '\n%s\n' "Done: $changes change(s) made."
    fi
}

# --- uninstall ----------------------------------------------------------------------------

remove_path() {
    local path=$1
    if [[ -e $path || -L $path ]]; then
        rm -rf -- "$path"
        did "removed $path"
    else
        unchanged "$path is not there"
    fi
}

uninstall() {
    local purge=$1
    [[ $EUID -eq 0 ]] || die "uninstalling needs root: sudo ./install.sh --uninstall"
    step "Service"
    if systemd_running && [[ -f $UNIT_DEST ]]; then
        systemctl disable --now --quiet "$UNIT_NAME" || true
        did "stopped and disabled $UNIT_NAME"
    elif [[ -f $UNIT_DEST ]] && command -v systemctl >/dev/null; then
        # Enabled offline (see start_service): remove the boot symlink the same way.
        systemctl disable --quiet "$UNIT_NAME" 2>/dev/null || true
        did "disabled $UNIT_NAME (no running service to stop)"
    else
        unchanged "no running service to stop"
    fi
    remove_path "$UNIT_DEST"
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    fi
    step "Home Assistant (MQTT)"
    # With the service stopped, nothing publishes the entities again. A broker that cannot be
    # reached is a note, never a failed uninstall.
    if [[ -x $VENV/bin/python && -f $CONFIG ]]; then
        timeout 60 "$VENV/bin/python" -m talkbox.mqtt.forget --config "$CONFIG" ||
            note "could not clear this speaker's retained MQTT messages (left on the broker)"
    else
        unchanged "no installed talkbox to remove from the broker"
    fi
    step "Files"
    if [[ -L $COMMAND_LINK && $(readlink -- "$COMMAND_LINK") == "$VENV/bin/talkbox" ]]; then
        remove_path "$COMMAND_LINK"
    fi
    remove_path "$PREFIX"
    remove_path "$STATE_DIR"
    remove_path "$RUN_DIR"
    step "User $APP_USER"
    if getent passwd "$APP_USER" >/dev/null; then
        if pgrep -u "$APP_USER" >/dev/null; then
            die "processes of user $APP_USER are still running (a talkbox started by hand?); stop them and run this again"
        fi
        userdel "$APP_USER"
        did "removed user $APP_USER"
    else
        unchanged "user $APP_USER does not exist"
    fi
    if getent group "$APP_USER" >/dev/null; then
        groupdel "$APP_USER"
        did "removed group $APP_USER"
    fi
    step "Configuration $ETC_DIR"
    if ((purge)); then
        remove_path "$ETC_DIR"
    elif [[ -d $ETC_DIR ]]; then
        # The group is gone; a number without a name could later match a new group.
        if find "$ETC_DIR" -nogroup | grep -q .; then
            chgrp -R root "$ETC_DIR"
            did "gave $ETC_DIR to group root (the talkbox group is gone)"
        fi
        note "kept $ETC_DIR (config and API key); remove it with --purge"
    else
        unchanged "$ETC_DIR is not there"
    fi
    note "Debian packages installed for talkbox are left in place."
    if ((changes == 0)); then
        printf '\n%s\n' "Nothing changed: talkbox is not installed."
    else
        printf '\n%s\n' "Done: $changes change(s) made."
    fi
}

# --- development --------------------------------------------------------------------------

dev_setup() {
    say "Development set-up in $CHECKOUT"
    step "Debian packages for building and testing"
    if [[ $EUID -eq 0 ]]; then
        apt_install_missing "" "${DEV_PACKAGES[@]}"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        apt_install_missing "sudo -n" "${DEV_PACKAGES[@]}"
    else
        local -a missing
        mapfile -t missing < <(missing_packages "${DEV_PACKAGES[@]}")
        if ((${#missing[@]} == 0)); then
            unchanged "Debian packages already installed"
        else
            note "not root and no password-less sudo; install these first, then run again:"
            note "    sudo apt-get install -y ${missing[*]}"
        fi
    fi
    step "Python environment $CHECKOUT/.venv"
    require_python python3
    local venv=$CHECKOUT/.venv
    local lock=$CHECKOUT/requirements/dev.txt wanted_hash
    wanted_hash=$(cat "$CHECKOUT/pyproject.toml" "$CHECKOUT"/requirements/*.txt | sha256sum | cut -d' ' -f1)
    if [[ -f $venv/.dependencies-hash && $(<"$venv/.dependencies-hash") == "$wanted_hash" ]] &&
        "$venv/bin/python" -c 'import talkbox' 2>/dev/null; then
        unchanged ".venv is up to date with pyproject.toml and requirements/ (editable install)"
        return
    fi
    if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        python3 -m venv "$venv"
        did "made .venv ($(python3 --version))"
    fi
    pip_install_locked "$venv" "$lock" -e "$CHECKOUT"
    printf '%s\n' "$wanted_hash" >"$venv/.dependencies-hash"
    did "installed talkbox (editable) with the pinned dev tools into .venv"
}

run_checks() {
    local venv=$CHECKOUT/.venv
    local -a failed=()
    cd "$CHECKOUT"
    step "ruff check"
    "$venv/bin/ruff" check || failed+=(ruff)
    step "mypy"
    "$venv/bin/mypy" || failed+=(mypy)
    step "import contracts (lint-imports)"
    "$venv/bin/lint-imports" --no-cache --no-logo || failed+=(lint-imports)
    step "pytest"
    local status=0
    "$venv/bin/pytest" || status=$?
    if ((status == 5)); then
        say "pytest collected no tests: that counts as a failure"
        failed+=(pytest)
    elif ((status != 0)); then
        failed+=(pytest)
    fi
    if ((${#failed[@]} > 0)); then
        printf '\n%s\n' "FAILED: ${failed[*]}"
        return 1
    fi
    printf '\n%s\n' "All checks passed."
}

# --- main ---------------------------------------------------------------------------------

main() {
    local mode=install key_source=""
    while (($# > 0)); do
        case $1 in
            --api-key-file)
                (($# >= 2)) || die "--api-key-file needs a file name"
                key_source=$2
                shift 2
                ;;
            --api-key-file=*)
                key_source=${1#*=}
                shift
                ;;
            --uninstall | --purge | --dev | --test)
                [[ $mode == install ]] || die "choose one of --uninstall, --purge, --dev, --test"
                mode=${1#--}
                shift
                ;;
            -h | --help)
                usage
                return 0
                ;;
            *)
                usage >&2
                die "unknown option: $1"
                ;;
        esac
    done
    if [[ -n $key_source && $mode != install ]]; then
        die "--api-key-file goes with the system install only"
    fi
    case $mode in
        install) system_install "$key_source" ;;
        uninstall) uninstall 0 ;;
        purge) uninstall 1 ;;
        dev) dev_setup ;;
        test)
            dev_setup
            run_checks
            ;;
    esac
}

main "$@"
