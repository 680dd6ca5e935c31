#!/bin/sh
# talkbox state hook: show the conversation state on a Linux LED (sysfs LED class).
#
# talkbox runs it as:  led-hook.sh LED_DIR STATE   (STATE is also in $TALKBOX_STATE)
# with [hooks] on_state = ["/usr/local/bin/talkbox-led-hook", "/sys/class/leds/ACT"].
#
#   idle                     off
#   listening                on
#   connecting, responding   blinking (the kernel's "timer" trigger)
#   anything else            on
#
# No shell tricks with the arguments: they are only ever used as quoted file names and
# compared against fixed words.
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 LED_DIR STATE" >&2
    exit 2
fi
led_dir=$1
state=$(printf '%s' "$2" | tr '[:upper:]' '[:lower:]')

if [ ! -w "$led_dir/brightness" ]; then
    echo "cannot write $led_dir/brightness (see examples/README.md for permissions)" >&2
    exit 1
fi

max_brightness=1
if [ -r "$led_dir/max_brightness" ]; then
    max_brightness=$(cat "$led_dir/max_brightness")
fi

set_trigger() {
    # Not every LED allows its trigger to be changed; brightness alone still works then.
    if [ -w "$led_dir/trigger" ]; then
        printf '%s\n' "$1" > "$led_dir/trigger"
    fi
}

case $state in
    idle)
        set_trigger none
        printf '0\n' > "$led_dir/brightness"
        ;;
    connecting|responding)
        set_trigger timer
        # The timer trigger blinks at 500/500 ms by default; faster where we may set it.
        for delay in delay_on delay_off; do
            if [ -w "$led_dir/$delay" ]; then
                printf '150\n' > "$led_dir/$delay"
            fi
        done
        ;;
    *)
        set_trigger none
        printf '%s\n' "$max_brightness" > "$led_dir/brightness"
        ;;
esac
