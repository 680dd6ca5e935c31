"""`talkbox run` stands its speaker by while idle, end to end: the real process on ALSA file
devices (speaker drained in real time), the echo provider answering.

With [audio] keep_speaker_running = false (the default) nothing reaches the speaker once
nothing has played for the linger (30 s shipped, shortened here through
support.daemon.short_speaker_standby); the wake word's chime starts it again at once and the
answer plays whole. With true, the speaker is written silence all the time, as before.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2e.conftest import one_breath
from support.audio_match import locate, resample, voiced_seconds
from support.daemon import DaemonRun, log_monotonic, run_daemon, short_speaker_standby
from support.speech import concat, silence
from talkbox.audio.chimes import chime

pytestmark = pytest.mark.slow

SPEAKER_RATE = 24000
LINGER_S = 2.0
# From the wake word's log line to its chime in the drained FIFO: the chime is queued right
# after the line and a started stream reaches the FIFO in a period or two; generous for load.
CHIME_PROMPT_S = 0.5


def echo_config(keep_speaker_running: bool) -> str:
    return f"""
[realtime]
provider = "echo"
[audio]
input_device = "mic"
output_device = "speaker"
# This microphone does not hear the speaker (no room): nothing to cancel.
echo_cancellation = false
keep_speaker_running = {str(keep_speaker_running).lower()}
[conversation]
follow_up_seconds = 1.0
[control]
socket = "{{control_socket}}"
"""


def drained_over(run: DaemonRun, seconds: float) -> int:
    """PCM16 bytes the speaker FIFO received in the next `seconds`."""
    before = run.drainer.drained
    time.sleep(seconds)
    return run.drainer.drained - before


def drained_at(records: list[tuple[float, bytes]], offset: int) -> float:
    """When the drain read the byte at `offset` of everything it read."""
    read = 0
    for at, pcm in records:
        read += len(pcm)
        if read > offset:
            return at
    raise AssertionError(f"nothing was drained at byte {offset}")


def wait_until_silent(run: DaemonRun, seconds: float, timeout: float) -> None:
    """Until the speaker FIFO received nothing for `seconds`."""
    deadline = time.monotonic() + timeout
    while drained_over(run, seconds):
        if time.monotonic() > deadline:
            raise AssertionError(f"the speaker was still written {timeout:g} s on")


def test_an_idle_daemon_writes_nothing_to_the_speaker_and_wakes_it_for_a_chime(
    tmp_path: Path,
) -> None:
    spoken, command = one_breath("hey jarvis", "testing one two three")
    with run_daemon(tmp_path, echo_config(False),
                    extra_env=short_speaker_standby(LINGER_S)) as run:
        run.wait_ready()
        microphone = run.microphone()
        # Idle from the start: the stream was opened, and never started.
        time.sleep(LINGER_S)
        assert drained_over(run, 1.0) == 0
        assert run.drainer.drained == 0

        microphone.speak(concat(spoken, silence(1.0)).tobytes())
        run.wait_for_log("state idle", timeout=25)
        # Within the linger the stream still runs (silence between the sounds)...
        time.sleep(0.5)
        assert drained_over(run, 0.5) > 0.25 * SPEAKER_RATE * 2
        # ...and after it, nothing more: the idle daemon writes nothing again.
        wait_until_silent(run, 1.0, timeout=LINGER_S + 5)
        assert drained_over(run, 1.0) == 0
        code, _ = run.terminate()
        log = run.log()
        records = list(run.drainer.records)

    assert code == 0, log
    assert "ERROR" not in log, log
    heard = b"".join(pcm for _, pcm in records)
    # The chime, promptly after the wake word, though the stream had to start for it.
    wake_chime = chime("wake", SPEAKER_RATE, 0.6)
    assert heard.count(wake_chime) == 1
    chime_reached_at = drained_at(records, heard.index(wake_chime))
    woke_at = log_monotonic(log, "wake word hey_jarvis")
    assert 0 <= chime_reached_at - woke_at < CHIME_PROMPT_S, chime_reached_at - woke_at
    # The answer (the echo provider plays the turn back) whole, then the done chime.
    command_24k = resample(command, 16000, SPEAKER_RATE)
    _, match = locate(heard, command_24k)
    assert match > 0.9, f"the command was not played back whole (correlation {match:.2f})"
    chimes_voice = voiced_seconds(
        b"".join(chime(kind, SPEAKER_RATE, 0.6) for kind in ("wake", "done")), SPEAKER_RATE)
    echoed_voice = voiced_seconds(heard, SPEAKER_RATE) - chimes_voice
    assert echoed_voice >= voiced_seconds(command_24k, SPEAKER_RATE) - 0.1, echoed_voice
    assert heard.index(wake_chime) < heard.index(chime("done", SPEAKER_RATE, 0.6))


def test_keep_speaker_running_writes_silence_all_the_time(tmp_path: Path) -> None:
    with run_daemon(tmp_path, echo_config(True),
                    extra_env=short_speaker_standby(LINGER_S)) as run:
        run.wait_ready()
        run.microphone()
        time.sleep(LINGER_S + 1.0)
        written = drained_over(run, 1.0)
        code, _ = run.terminate()
        log = run.log()

    assert code == 0, log
    # About a second of silence at 24 kHz (the drain runs at the DAC's pace): most of it.
    assert written > 0.7 * SPEAKER_RATE * 2, written

