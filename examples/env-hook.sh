#!/bin/sh
# talkbox state hook for trying hooks out: write down what a hook gets.
#
# talkbox runs it as:  env-hook.sh FILE STATE
# with [hooks] on_state = ["/usr/local/bin/talkbox-env-hook", "/tmp/talkbox-hook.txt"].
# Each run appends "--- STATE" and the environment it was started with, one NAME=value a
# line: TALKBOX_STATE, PATH, HOME and the locale variables (LANG, LANGUAGE, LC_*, TZ) when
# the daemon has them. Nothing else of the daemon's environment reaches a hook: never the
# API key, the credentials directory or systemd's notify and watchdog variables.
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 FILE STATE" >&2
    exit 2
fi
{
    printf -- '--- %s\n' "$2"
    env | sort
} >>"$1"
