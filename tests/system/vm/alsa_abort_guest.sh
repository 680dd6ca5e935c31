#!/usr/bin/env bash
# Runs INSIDE the VM of tests/system/alsa_abort_vm.sh (as run.sh on the 9p share, with
# talkbox.service masked): shows the sound card and the plug -> dmix chain that ALSA's
# `default` builds for talkbox's format, then counts aborts (alsa_abort_guest.py).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")" || exit 1
# shellcheck source=/dev/null
[[ -f ./env ]] && . ./env
export ALSA_ABORT_CONFIGS ALSA_ABORT_SLOT_S ALSA_ABORT_ROUNDS ALSA_ABORT_PLAYERS ALSA_ABORT_LOAD
# ALSA_ABORT_CHAIN=plug-dmix: `default` is plug straight over the card's dmix, as for a USB
# card (the HDA card's own default has softvol between them).
if [[ ${ALSA_ABORT_CHAIN:-} == plug-dmix ]]; then
    printf 'pcm.!default { type plug slave.pcm "dmix" }\n' >/etc/asound.conf
fi
echo "== cards"; cat /proc/asound/cards
aplay -l
uname -r
echo "== the chain for 24000 Hz mono and 48000 Hz mono/stereo on default (aplay -v, 1 s)"
for format in "-r 24000 -c 1" "-r 48000 -c 1" "-r 48000 -c 2"; do
    # shellcheck disable=SC2086
    timeout 60 aplay -v -D default -f S16_LE $format -d 1 /dev/zero 2>&1 |
        grep -E 'PCM|Rate|Route|Format|Direct|Plug|rate|channels|format' | head -24
    echo "--"
done
echo "== experiment"
/usr/bin/python3 ./alsa_abort_guest.py
journalctl -b --no-pager -k | grep -iE 'snd|hda|alsa' | tail -20 >kernel.txt
sync
