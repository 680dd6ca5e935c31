"""Two ways to make the speaker quieter: a card's own volume control, or scaling the audio.

`AlsaMixer` moves a playback volume control of ALSA's simple mixer (what `amixer` and
`alsamixer` show: "Master", "PCM", "Speaker", ...) through libasound, loaded with ctypes like
audio/alsa.py. Percent maps linearly onto the control's own range, as `amixer set NAME 40%`
does. A control with fewer than 100 steps cannot hold every percentage (qemu's emulated HDA
card, set to 40 %, reads back 41 %), so the level set is the one asked for, and `amixer` may
show one off. Each call opens the mixer, acts and closes it: a
card that went away is an error for that call, not a stale handle.

`scaled` is the software way: PCM16 times a gain, clipped; nothing is done at gain 1.
"""

from __future__ import annotations

import ctypes
import logging

import numpy as np

from talkbox.audio.asound import libasound
from talkbox.errors import TalkboxError

log = logging.getLogger(__name__)

_CHANNEL_FRONT_LEFT = 0


class MixerError(TalkboxError):
    """The mixer control cannot be read or moved; the message names it and why."""


def scaled(pcm: bytes, gain: float) -> bytes:
    """PCM16 `pcm` with every sample times `gain` (0..1), rounded and clipped."""
    if gain >= 1.0 or not pcm or len(pcm) % 2:
        return pcm  # (half a sample is the player's to refuse)
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    samples *= gain
    np.rint(samples, out=samples)
    return np.clip(samples, -32768, 32767).astype(np.int16).tobytes()


class AlsaMixer:
    """The playback volume control `control` (simple mixer name) of ALSA control device
    `device` ("default", "hw:0", "hw:Headphones", as `amixer -D` takes it)."""

    def __init__(self, device: str, control: str) -> None:
        self.device = device
        self.control = control

    def __str__(self) -> str:
        return f"ALSA mixer control {self.control!r} on {self.device!r}"

    def get_percent(self) -> int:
        """The control's level in percent of its range (its first channel). MixerError."""
        return self._act(None)

    def set_percent(self, percent: int) -> None:
        """Set every channel to the step nearest `percent` of the range. MixerError."""
        self._act(max(0, min(100, percent)))

    def _act(self, percent: int | None) -> int:
        lib = libasound()
        if lib is None:
            raise MixerError(f"cannot use {self}: libasound.so.2 is not installed")
        mixer = ctypes.c_void_p()
        self._check(lib, lib.snd_mixer_open(ctypes.byref(mixer), 0), "open the mixer")
        selem_id = ctypes.c_void_p()
        try:
            self._check(lib, lib.snd_mixer_attach(mixer, self.device.encode()), "open the device")
            self._check(lib, lib.snd_mixer_selem_register(mixer, None, None), "open the mixer")
            self._check(lib, lib.snd_mixer_load(mixer), "load the mixer")
            self._check(lib, lib.snd_mixer_selem_id_malloc(ctypes.byref(selem_id)), "look")
            lib.snd_mixer_selem_id_set_index(selem_id, 0)
            lib.snd_mixer_selem_id_set_name(selem_id, self.control.encode())
            element = lib.snd_mixer_find_selem(mixer, selem_id)
            if not element:
                raise MixerError(f"{self}: there is no such control (`amixer -D "
                                 f"{self.device} scontrols` lists them)")
            if not lib.snd_mixer_selem_has_playback_volume(element):
                raise MixerError(f"{self}: it has no playback volume")
            low, high = ctypes.c_long(), ctypes.c_long()
            lib.snd_mixer_selem_get_playback_volume_range(
                element, ctypes.byref(low), ctypes.byref(high)
            )
            span = high.value - low.value
            if span <= 0:
                raise MixerError(f"{self}: its volume range is empty")
            if percent is not None:
                raw = low.value + round(span * percent / 100)
                self._check(
                    lib, lib.snd_mixer_selem_set_playback_volume_all(element, raw), "set it"
                )
            value = ctypes.c_long()
            self._check(
                lib,
                lib.snd_mixer_selem_get_playback_volume(
                    element, _CHANNEL_FRONT_LEFT, ctypes.byref(value)
                ),
                "read it",
            )
            return round((value.value - low.value) * 100 / span)
        finally:
            if selem_id:
                lib.snd_mixer_selem_id_free(selem_id)
            lib.snd_mixer_close(mixer)

    def _check(self, lib: ctypes.CDLL, status: int, doing: str) -> None:
        if status < 0:
            reason = lib.snd_strerror(status)
            raise MixerError(f"{self}: cannot {doing}: {reason.decode() if reason else status}")
