"""What ALSA itself says about a playback device: the rate it takes without converting.

ALSA's `plug` plugin (behind `default` on most systems) accepts any rate and converts it to
its slave's, e.g. dmix's 48000 Hz. talkbox's replies are 24000 Hz, so until playback asked,
plug's rate converter ran under every reply; in alsa-lib 1.2.8 (Debian 12, Raspberry Pi OS
bookworm) that chain has aborted the daemon (`snd_pcm_plugin_status: Assertion
'status->appl_ptr == *pcm->appl.ptr' failed`, from PortAudio's callback thread, see
tests/system/alsa_abort_vm.sh). Playback therefore opens the device at the rate ALSA takes
with plug's resampling turned off (`snd_pcm_hw_params_set_rate_resample(0)`) and resamples
in process (audio/resample.py) instead.

`native_rate()` answers for an ALSA PCM name; `playback_rate()` for a PortAudio device. Any
doubt (not ALSA, the device busy or gone, no libasound) keeps the rate asked for: opening the
stream then reports the problem as before.
"""

from __future__ import annotations

import ctypes
import logging
import re
from typing import Any

import pyaudio

from talkbox.audio.asound import libasound

log = logging.getLogger(__name__)

_STREAM_PLAYBACK = 0
_NONBLOCK = 1
_FORMAT_S16_LE = 2
# PortAudio names a card's hardware device "<card>: <device> (hw:X,Y)" and opens hw:X,Y;
# any other ALSA device (default, sysdefault, dmix, a name from asound.conf) is opened by name.
_HW_SUFFIX = re.compile(r"\((hw:\d+,\d+)\)$")


def native_rate(pcm_name: str, wanted: int) -> int | None:
    """`wanted` if ALSA's playback PCM `pcm_name` takes it without converting its rate, else
    the nearest rate it does take that way; None if ALSA cannot tell (no such PCM, busy)."""
    lib = libasound()
    if lib is None:
        return None
    pcm = ctypes.c_void_p()
    # Non-blocking: a device another program holds answers -EBUSY at once.
    if lib.snd_pcm_open(ctypes.byref(pcm), pcm_name.encode(), _STREAM_PLAYBACK, _NONBLOCK) < 0:
        return None
    params = ctypes.c_void_p()
    try:
        if lib.snd_pcm_hw_params_malloc(ctypes.byref(params)) < 0:
            return None
        if (
            lib.snd_pcm_hw_params_any(pcm, params) < 0
            or lib.snd_pcm_hw_params_set_rate_resample(pcm, params, 0) < 0
        ):
            return None
        # PCM16 is what talkbox plays; a device whose rates depend on the format says so here.
        lib.snd_pcm_hw_params_set_format(pcm, params, _FORMAT_S16_LE)
        if lib.snd_pcm_hw_params_test_rate(pcm, params, wanted, 0) == 0:
            return wanted
        rate = ctypes.c_uint(wanted)
        if lib.snd_pcm_hw_params_set_rate_near(pcm, params, ctypes.byref(rate), None) < 0:
            return None
        return int(rate.value)
    finally:
        if params:
            lib.snd_pcm_hw_params_free(params)
        lib.snd_pcm_close(pcm)


def alsa_name(pa: Any, index: int | None) -> str | None:
    """The ALSA PCM that PortAudio opens for output device `index` (None: its default), or
    None when that device is not ALSA's (`pa` is a `pyaudio.PyAudio`)."""
    if index is None:
        info = pa.get_default_output_device_info()
    else:
        info = pa.get_device_info_by_index(index)
    if pa.get_host_api_info_by_index(info["hostApi"])["type"] != pyaudio.paALSA:
        return None
    name = str(info["name"])
    hw = _HW_SUFFIX.search(name)
    return hw.group(1) if hw else name


def playback_rate(pa: Any, index: int | None, wanted: int) -> int:
    """The rate to open output device `index` at: `wanted` unless ALSA would convert it."""
    name = alsa_name(pa, index)
    rate = native_rate(name, wanted) if name is not None else None
    if rate is None:
        log.debug("ALSA could not tell the native rate of %r; playing at %d Hz", name, wanted)
        return wanted
    return rate
