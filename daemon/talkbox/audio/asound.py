"""libasound (alsa-lib) through ctypes, loaded once, for the little PortAudio does not offer:
the rate a playback device takes as it is (alsa.py) and a mixer control by name (mixer.py)."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libasound() -> ctypes.CDLL | None:
    """The library with the prototypes of the calls talkbox makes; None where it is missing."""
    try:
        lib = ctypes.CDLL("libasound.so.2")
    except OSError:
        return None
    ptr, handle = ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p
    long_ptr = ctypes.POINTER(ctypes.c_long)
    lib.snd_pcm_open.argtypes = [ptr, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.snd_pcm_close.argtypes = [handle]
    lib.snd_pcm_hw_params_malloc.argtypes = [ptr]
    lib.snd_pcm_hw_params_free.argtypes = [handle]
    lib.snd_pcm_hw_params_free.restype = None
    lib.snd_pcm_hw_params_any.argtypes = [handle, handle]
    lib.snd_pcm_hw_params_set_rate_resample.argtypes = [handle, handle, ctypes.c_uint]
    lib.snd_pcm_hw_params_set_format.argtypes = [handle, handle, ctypes.c_int]
    lib.snd_pcm_hw_params_test_rate.argtypes = [handle, handle, ctypes.c_uint, ctypes.c_int]
    lib.snd_pcm_hw_params_set_rate_near.argtypes = [
        handle, handle, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_int)
    ]
    lib.snd_mixer_open.argtypes = [ptr, ctypes.c_int]
    lib.snd_mixer_attach.argtypes = [handle, ctypes.c_char_p]
    lib.snd_mixer_selem_register.argtypes = [handle, handle, handle]
    lib.snd_mixer_load.argtypes = [handle]
    lib.snd_mixer_close.argtypes = [handle]
    lib.snd_mixer_selem_id_malloc.argtypes = [ptr]
    lib.snd_mixer_selem_id_free.argtypes = [handle]
    lib.snd_mixer_selem_id_free.restype = None
    lib.snd_mixer_selem_id_set_index.argtypes = [handle, ctypes.c_uint]
    lib.snd_mixer_selem_id_set_index.restype = None
    lib.snd_mixer_selem_id_set_name.argtypes = [handle, ctypes.c_char_p]
    lib.snd_mixer_selem_id_set_name.restype = None
    lib.snd_mixer_find_selem.argtypes = [handle, handle]
    lib.snd_mixer_find_selem.restype = handle
    lib.snd_mixer_selem_has_playback_volume.argtypes = [handle]
    lib.snd_mixer_selem_get_playback_volume_range.argtypes = [handle, long_ptr, long_ptr]
    lib.snd_mixer_selem_get_playback_volume.argtypes = [handle, ctypes.c_int, long_ptr]
    lib.snd_mixer_selem_set_playback_volume_all.argtypes = [handle, ctypes.c_long]
    lib.snd_strerror.argtypes = [ctypes.c_int]
    lib.snd_strerror.restype = ctypes.c_char_p
    return lib
