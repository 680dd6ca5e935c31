#!/usr/bin/env bash
# shellcheck disable=SC2317  # the helpers are called indirectly, through check and until_ok
# Runs INSIDE the throwaway VM of tests/system/vm_test.sh, as root, from the 9p share, once
# multi-user.target is reached (talkbox-vmtest.service). It exercises the installed
# talkbox.service under the real systemd (PID 1) and writes one line per check to ./results:
# "ok NAME" or "FAILED NAME". The host prints and counts them; it also checks what the fake
# Realtime service recorded. ./env (from the host) sets SENTINEL, the fake API key.
#
# Everything is slow under software emulation (TCG): waits poll with generous bounds.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")" || exit 1
# shellcheck source=/dev/null
. ./env
: "${SENTINEL:?the host must set SENTINEL in ./env}"

readonly UNIT=talkbox.service
readonly CONFIG=/etc/talkbox/config.toml
readonly SOCKET=/run/talkbox/control.sock
readonly RESULTS=$PWD/results
readonly WATCHDOG_DROPIN=/run/systemd/system/$UNIT.d/50-vmtest-watchdog.conf
: >"$RESULTS"

pass() { printf 'ok %s\n' "$1" >>"$RESULTS"; printf 'ok     %s\n' "$1"; }
fail() { printf 'FAILED %s\n' "$1" >>"$RESULTS"; printf 'FAILED %s\n' "$1"; }
# check NAME COMMAND...: passes when COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
# until_ok SECONDS COMMAND...: runs COMMAND every half second until it succeeds; false when
# it still fails after SECONDS.
until_ok() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}
log() { printf '\n== %s (uptime %s s)\n' "$*" "$(cut -d' ' -f1 /proc/uptime)"; }
prop() { systemctl show -p "$1" --value "$UNIT"; }
is_prop() { [[ $(prop "$1") == "$2" ]]; }
# props_are PROPERTY=VALUE...: true when each property of the unit has that value now.
props_are() {
    local pair
    for pair in "$@"; do
        [[ $(prop "${pair%%=*}") == "${pair#*=}" ]] || return 1
    done
}
# break_config: a valid TOML file with an unknown key in [realtime] (the daemon refuses those).
break_config() { sed -i 's/^\[realtime\]$/[realtime]\nno_such_key = 1/' "$CONFIG"; }
show() { systemctl show -p ActiveState,SubState,Result,MainPID,NRestarts,ExecMainStatus,StatusText "$UNIT" | tr '\n' ' '; echo; }
now() { date +%s; }
# journal_since EPOCH: talkbox's journal (messages only) since that second.
journal_since() { journalctl -q -u "$UNIT" --since "@$1" -o cat --no-pager; }
said_since() { journal_since "$1" | grep -qF -- "$2"; }
not_said_since() { ! said_since "$@"; }
running_with_new_pid() { is_prop ActiveState active && [[ $(prop MainPID) != "$1" && $(prop MainPID) != 0 ]]; }
# The processes of the unit's cgroup (the daemon and any ALSA helper it forked).
unit_pids() { cat "/sys/fs/cgroup/system.slice/$UNIT/cgroup.procs" 2>/dev/null; }
ctl() { /usr/local/bin/talkbox ctl "$@"; }
# (a failing ctl says why on stderr, into the log)
status_field() { ctl status | sed -n "s/^$1: //p"; }

# --- a. boot ------------------------------------------------------------------------------------
log "a. boot"
show
check "talkbox.service is active after boot (Type=notify: READY=1 arrived)" \
    until_ok 900 is_prop ActiveState active
if ! is_prop ActiveState active; then
    echo "---- the daemon's journal (a hung start is aborted: its threads' stacks are here)"
    journalctl -q -u "$UNIT" -o cat --no-pager | tail -n 150
fi
check "it started once, without restarts" is_prop NRestarts 0
echo "the start, from the journal: $(journalctl -q -u "$UNIT" -o short-monotonic --no-pager | grep -E 'Starting|ready|XNNPACK' | head -4 | tr '\n' '|')"
echo "the unit's memory (cgroup): current $(cat /sys/fs/cgroup/system.slice/$UNIT/memory.current) peak $(cat /sys/fs/cgroup/system.slice/$UNIT/memory.peak 2>/dev/null) stat: $(grep -E '^(anon|file) ' /sys/fs/cgroup/system.slice/$UNIT/memory.stat | tr '\n' ' ')"
check "its status text names the idle state" \
    until_ok 30 bash -c "systemctl show -p StatusText --value $UNIT | grep -q '^idle, listening for hey jarvis'"
check "the journal shows capture started on the ALSA default device" \
    bash -c "journalctl -q -u $UNIT -o cat | grep -qF \"capture started: input device 'default' at 16000 Hz\""
check "the journal shows which service it talks to" \
    bash -c "journalctl -q -u $UNIT -o cat | grep -qF 'talkbox ready: Azure OpenAI (GA) deployment gpt-realtime at wss://10.0.2.100:8080'"
capture_status=/proc/asound/card0/pcm0c/sub0/status
cat /proc/asound/cards "$capture_status"
capture_owner() { sed -n 's/^owner_pid *: *//p' "$capture_status"; }
check "the sound card's capture device is RUNNING" grep -q '^state: RUNNING' "$capture_status"
check "it is held by a process of talkbox.service (sandbox lets /dev/snd through)" \
    bash -c "grep -qx \"\$(sed -n 's/^owner_pid *: *//p' $capture_status)\" /sys/fs/cgroup/system.slice/$UNIT/cgroup.procs"
echo "capture owner: $(capture_owner); unit processes: $(unit_pids | tr '\n' ' ')"
check "the daemon runs as the user talkbox" \
    bash -c "[[ \$(ps -o user= -p \$(systemctl show -p MainPID --value $UNIT)) == talkbox ]]"
# Under the unit's system-call filter: openwakeword's ONNX runtime (which pins threads with
# sched_setaffinity, a call the filter refuses) is neither installed nor loaded.
check "the daemon has the wake model's tflite runtime loaded and no ONNX runtime" \
    bash -c "maps=/proc/\$(systemctl show -p MainPID --value $UNIT)/maps; grep -q tflite_runtime \$maps && ! grep -qi onnxruntime \$maps"
check "the ONNX runtime is not installed" \
    bash -c "! ls -d /opt/talkbox/venv/lib/python3*/site-packages/onnxruntime 2>/dev/null"

# --- b. a conversation, started by talkbox ctl wake ---------------------------------------------
log "b. talkbox ctl"
check "a member of group talkbox can use the control socket (ctl status)" \
    runuser -u vmtester -- /usr/local/bin/talkbox ctl status
refused_to_nobody() {
    local output
    if output=$(runuser -u nobody -- /usr/local/bin/talkbox ctl status --socket "$SOCKET" 2>&1); then
        return 1
    fi
    printf '%s\n' "$output"
    grep -qF "permission denied on $SOCKET" <<<"$output"
}
check "a user outside group talkbox cannot: permission denied on the socket" refused_to_nobody
check "a member of group talkbox cannot read the API key credential" \
    bash -c "! runuser -u vmtester -- cat /run/credentials/$UNIT/api-key >/dev/null 2>&1"
mark=$(now)
check "talkbox ctl wake (as root) is accepted" ctl wake
check "the conversation connects: state listening (session ready)" \
    until_ok 90 said_since "$mark" "state listening (session ready)"
check "with silence it ends after the follow-up timeout: state idle (no follow-up)" \
    until_ok 90 said_since "$mark" "state idle (no follow-up)"
journal_since "$mark"
check "ctl status counts one conversation" test "$(status_field conversations)" = 1
check "ctl status shows no error" test "$(status_field last_error)" = none
check "the status text is idle again" \
    until_ok 30 bash -c "systemctl show -p StatusText --value $UNIT | grep -q '^idle'"

# --- c. reload ------------------------------------------------------------------------------------
log "c. reload"
pid=$(prop MainPID)
mark=$(now)
check "systemctl reload talkbox succeeds" systemctl reload "$UNIT"
check "after the reload the MainPID is the same" is_prop MainPID "$pid"
# ExecReload= checks the file, then sends SIGHUP: systemctl returns before the daemon has
# re-read it, and the unit shows "reloading" from the daemon's RELOADING=1 until its READY=1.
echo "ActiveState right after systemctl reload: $(prop ActiveState)"
check "after the reload (RELOADING=1 ... READY=1) the service is active again" \
    until_ok 300 is_prop ActiveState active
check "the daemon logged that it re-read the config" \
    until_ok 300 said_since "$mark" "configuration $CONFIG reloaded"
cp -p "$CONFIG" /root/config.toml.good
break_config
mark=$(now)
check "systemctl reload with an invalid config fails (talkbox check in ExecReload=)" \
    bash -c "! systemctl reload $UNIT"
check "the journal names the bad key" until_ok 30 said_since "$mark" "realtime.no_such_key"
check "the daemon was not asked to reload it" not_said_since "$mark" "reload refused"
check "and the service keeps running with the same MainPID" \
    until_ok 30 props_are ActiveState=active MainPID="$pid"
cp -p /root/config.toml.good "$CONFIG"
show

# --- c2. the volume on the sound card's mixer -----------------------------------------------------
log "c2. volume through the ALSA mixer"
# The first simple control (index 0) of the card with a playback volume: qemu's HDA codec's.
playback_control() {
    amixer scontents | awk '
        /^Simple mixer control / { name = $0; sub(/^Simple mixer control \047/, "", name)
                                   index0 = sub(/\047,0$/, "", name) }
        /Capabilities:.*pvolume/ && index0 { print name; exit }'
}
# The control's level as amixer shows it (its first channel), e.g. 40.
mixer_percent() { amixer sget "$1" | grep -o '\[[0-9]*%\]' | head -n 1 | tr -d '[]%'; }
# mixer_near CONTROL PERCENT: amixer shows PERCENT, or one off (a control with fewer than 100
# steps cannot hold every percentage: qemu's card set to 40 % shows 41 %).
mixer_near() {
    local shown
    shown=$(mixer_percent "$1")
    [[ -n $shown ]] && ((shown - $2 <= 1 && $2 - shown <= 1))
}
# ctl_says TEXT ARGS...: `talkbox ctl ARGS` printed exactly TEXT.
ctl_says() { [[ $(ctl "${@:2}") == "$1" ]]; }
echo "the card's simple controls: $(amixer scontrols | tr '\n' '|')"
mixer_control=$(playback_control)
check "the VM's sound card has a playback volume control (amixer: '${mixer_control:-none}')" \
    test -n "$mixer_control"
if [[ -n $mixer_control ]]; then
    sed -i "s/^\[audio\]$/[audio]\nmixer_control = \"$mixer_control\"/" "$CONFIG"
    amixer -q sset "$mixer_control" 90%
    card_level=$(mixer_percent "$mixer_control")
    mark=$(now)
    # --no-block: the control socket and the mixer come long before READY=1 under emulation.
    systemctl restart --no-block "$UNIT"
    check "with no level kept yet, talkbox starts at the card's own level ($card_level % in amixer)" \
        until_ok 300 said_since "$mark" "volume $card_level % (ALSA mixer control '$mixer_control' on 'default')"
    check "talkbox ctl volume 40 answers volume: 40" until_ok 300 ctl_says "volume: 40" volume 40
    check "and amixer shows the control at 40 % (or one off)" mixer_near "$mixer_control" 40
    check "talkbox ctl volume -15 answers volume: 25" ctl_says "volume: 25" volume -15
    check "amixer shows 25 % (or one off)" mixer_near "$mixer_control" 25
    check "ctl status shows the volume" test "$(status_field volume)" = 25
    check "the level is kept under StateDirectory= (/var/lib/talkbox/volume)" \
        test "$(cat /var/lib/talkbox/volume)" = 25
    amixer -q sset "$mixer_control" 90%  # someone else turns it up meanwhile
    systemctl restart --no-block "$UNIT"
    check "after a restart talkbox puts the kept 25 % back on the card" \
        until_ok 300 mixer_near "$mixer_control" 25
    # Not waiting for READY=1 (minutes under emulation): d. restarts it anyway. These were two
    # more starts than the rest of this script counts on (StartLimitBurst=5).
    systemctl reset-failed "$UNIT"
fi
journal_since "$mark" | grep -E 'volume|mixer' | head -n 10

# --- d. watchdog ----------------------------------------------------------------------------------
log "d. watchdog (WatchdogSec=5s by a runtime drop-in, to keep the test short)"
mkdir -p "$(dirname "$WATCHDOG_DROPIN")"
printf '[Service]\nWatchdogSec=5s\n' >"$WATCHDOG_DROPIN"
systemctl daemon-reload
check "restart with WatchdogSec=5s" systemctl restart "$UNIT"
check "it is active with the 5 s watchdog" props_are ActiveState=active WatchdogUSec=5s
pid=$(prop MainPID)
restarts=$(prop NRestarts)
# Let it live through a few watchdog periods first: pings arrive while capture runs.
sleep 12
check "it lives through 12 s with the 5 s watchdog (it pings)" \
    props_are ActiveState=active MainPID="$pid" NRestarts="$restarts"
mark=$(now)
show
kill -STOP "$pid"
check "after kill -STOP, systemd restarts it: a new MainPID, active again" \
    until_ok 600 running_with_new_pid "$pid"
check "NRestarts went up" test "$(prop NRestarts)" -gt "$restarts"
check "the journal says the watchdog fired" \
    bash -c "journalctl -q -u $UNIT --since @$mark --no-pager | grep -q 'Watchdog timeout'"
check "the stopped process is gone" bash -c "! kill -0 $pid 2>/dev/null"
show
journalctl -q -u "$UNIT" --since "@$mark" --no-pager

# --- e. a broken config at start: exit 78, no restart ----------------------------------------
log "e. broken config"
# Only 5 starts are allowed in 10 minutes (StartLimitBurst=5); this test has used 3 so far.
systemctl reset-failed "$UNIT"
break_config
mark=$(now)
check "systemctl restart with an invalid config fails" bash -c "! systemctl restart $UNIT"
restarts=$(prop NRestarts)
show
check "the unit is failed with exit status 78 (EX_CONFIG)" \
    props_are ActiveState=failed Result=exit-code ExecMainStatus=78
check "the journal names the bad key" until_ok 30 said_since "$mark" "no_such_key"
# RestartSec=5: a restart would have begun by now.
sleep 15
check "it is not restarted (RestartPreventExitStatus=78)" \
    props_are ActiveState=failed NRestarts="$restarts"
show
cp -p /root/config.toml.good "$CONFIG"
check "with the config restored, systemctl start succeeds" systemctl start "$UNIT"
check "and it is active and idle again" \
    until_ok 600 bash -c "systemctl show -p StatusText --value $UNIT | grep -q '^idle'"

# --- h. the API key stays secret ----------------------------------------------------------------
# Before the stop: /run/talkbox and the daemon's environment exist only while it runs.
log "h. secrets"
secret_nowhere() {
    local pid
    pid=$(prop MainPID)
    ! journalctl -q -o verbose --no-pager | grep -qF "$SENTINEL" &&
        ! journalctl -q -u "$UNIT" --no-pager | grep -qF "$SENTINEL" &&
        ! grep -rqF "$SENTINEL" /var/lib/talkbox /run/talkbox &&
        ! tr '\0' '\n' <"/proc/$pid/environ" | grep -qF "$SENTINEL"
}
check "the key is in neither the journal, /var/lib/talkbox, /run/talkbox nor the environment" \
    secret_nowhere

# --- g. sandbox score -----------------------------------------------------------------------------
log "g. security"
systemd-analyze security --no-pager "$UNIT" >security.txt 2>&1
cat security.txt
score=$(sed -n 's/.*Overall exposure level for talkbox.service: \([0-9.]*\).*/\1/p' security.txt)
echo "exposure=${score:-?}" >score
check "systemd-analyze security (live) exposure ${score:-?} <= 2.0" \
    awk -v s="$score" 'BEGIN { exit !(s != "" && s + 0 <= 2.0) }'

# --- f. stop --------------------------------------------------------------------------------------
log "f. stop"
check "systemctl stop talkbox succeeds" systemctl stop "$UNIT"
show
check "it is inactive with Result=success and exit status 0 (a clean exit)" \
    props_are ActiveState=inactive Result=success ExecMainCode=1 ExecMainStatus=0
check "the journal shows the daemon's own stop" \
    bash -c "journalctl -q -u $UNIT -o cat | grep -qx stopping"
check "after the stop the key is still not in the journal" \
    bash -c "! journalctl -q -o verbose --no-pager | grep -qF \"\$0\"" "$SENTINEL"

log "done"
journalctl -b --no-pager >journal.txt 2>&1
sync
