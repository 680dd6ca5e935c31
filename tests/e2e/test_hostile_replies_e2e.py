"""`talkbox run` against a service that sends reply audio no real one sends: deltas of many
MiB, a flood of tiny deltas, deltas that are not whole 16-bit samples.

The real process on ALSA file devices (microphone fed and speaker drained in real time) asks
the fake service a question in one breath; the service answers with the injected audio. The
daemon must stay within a memory bound the old unbounded queue broke by far, end an answer no
real service gives as one failed conversation (one log line, the error chime, back to idle),
and drop a bad delta without ending anything. Memory is the daemon's own VmRSS/VmHWM from
/proc, its peak reset once the daemon is up, so start-up does not count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.conftest import API_KEY, one_breath, service_config
from support.daemon import DaemonRun, run_daemon
from support.fake_realtime import AudioFlood, ServerThread
from support.procmem import Memory, read_memory, reset_peak
from support.service import sessions
from support.speech import concat, silence
from talkbox.audio.chimes import chime
from talkbox.core.conversation import MAX_REPLY_SECONDS
from talkbox.realtime.connection import MAX_FRAME_BYTES

pytestmark = pytest.mark.slow

SPEAKER_RATE = 24000
MIB = 2**20
# The largest delta whose base64 JSON still fits in one message talkbox takes.
LARGEST_DELTA_BYTES = (MAX_FRAME_BYTES - 4096) * 3 // 4 // 2 * 2
# What the daemon may hold for the capped answer (the cap's audio at 24 kHz, 14 MiB) plus one
# message being decoded (a few copies of 4 MiB), with room for allocator slack. The old queue
# took every delta: 40 of the largest deltas alone are 120 MiB.
HUGE_DELTA_GROWTH_LIMIT_MIB = 64


def ask(run: DaemonRun) -> None:
    """'hey jarvis, tell me a story' in one breath, with silence around it."""
    spoken, _ = one_breath("hey jarvis", "tell me a story")
    run.say(concat(silence(2.0), spoken, silence(1.5)).tobytes())


def growth(before: Memory, run: DaemonRun) -> float:
    """How far the daemon's resident memory peaked above where it was before the answer."""
    return read_memory(run.process.pid).hwm_mib - before.rss_mib


def start_measuring(run: DaemonRun) -> Memory:
    run.wait_ready()
    reset_peak(run.process.pid)
    return read_memory(run.process.pid)


def failed_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "conversation failed: " in line]


@dataclass
class FailedAnswer:
    """What an answer that had to end as a failed conversation left behind."""

    before: Memory
    grew_mib: float  # resident memory's peak above `before`
    failed_line: str

    @classmethod
    def of(cls, tmp_path: Path, fake_service: ServerThread, flood: AudioFlood) -> FailedAnswer:
        """Ask; the service answers with `flood`. The answer must end as one failed
        conversation, with the error chime, back to idle, and the daemon still answering."""
        fake_service.server.faults.audio_flood = flood
        with run_daemon(tmp_path, service_config(fake_service.url_base), api_key=API_KEY) as run:
            before = start_measuring(run)
            ask(run)
            run.wait_for_log("conversation failed: ", timeout=40)
            run.wait_for_log("state idle", timeout=5)
            grew = growth(before, run)
            time.sleep(1.0)  # the error chime plays out
            status = run.ctl("status")
            code, _ = run.terminate()
            heard = run.heard()
            log = run.log()
        assert code == 0, log
        assert status.returncode == 0 and "state: idle" in status.stdout, status
        assert "Traceback" not in log
        assert chime("error", SPEAKER_RATE, 0.6) in heard
        [failed] = failed_lines(log)
        return cls(before, grew, failed)


def test_huge_deltas_end_the_answer_at_the_cap_with_bounded_memory(
    tmp_path: Path, fake_service: ServerThread
) -> None:
    answer = FailedAnswer.of(tmp_path, fake_service, AudioFlood(LARGEST_DELTA_BYTES, count=40))

    cap = f"the service's answer ran past {MAX_REPLY_SECONDS:g} s of audio"
    assert cap in answer.failed_line, answer.failed_line
    [session] = sessions(fake_service)
    [response] = session.responses
    assert response.audio_deltas < 40, "talkbox hung up instead of taking the whole flood"
    assert answer.grew_mib < HUGE_DELTA_GROWTH_LIMIT_MIB, answer


def test_a_delta_larger_than_any_message_talkbox_takes_fails_cleanly(
    tmp_path: Path, fake_service: ServerThread
) -> None:
    # 9 MiB of audio per delta, as an outside probe sent: 12 MiB of base64 each.
    answer = FailedAnswer.of(tmp_path, fake_service, AudioFlood(9 * MIB, count=40))

    limit = f"({MAX_FRAME_BYTES // MIB} MiB)"
    assert f"sent a message larger than talkbox accepts {limit}" in answer.failed_line, answer
    # Refused by its length before its payload was read: nothing of it was held.
    assert answer.grew_mib < 32, answer


def test_a_flood_of_tiny_deltas_costs_little_more_than_its_audio(
    tmp_path, fake_service: ServerThread
) -> None:
    # 100,000 deltas of 1 ms: 4.6 MiB of audio (100 s), as an outside probe sent.
    deltas, delta_bytes = 100_000, 48
    fake_service.server.faults.audio_flood = AudioFlood(delta_bytes, count=deltas)
    audio_mib = deltas * delta_bytes / MIB
    with run_daemon(tmp_path, service_config(fake_service.url_base), api_key=API_KEY) as run:
        before = start_measuring(run)
        ask(run)
        run.wait_for_log("answer completed", timeout=90)  # every delta has been taken
        grew = growth(before, run)
        stopped = run.ctl("stop")
        run.wait_for_log("state idle", timeout=5)
        code, _ = run.terminate()
        log = run.log()

    assert code == 0, log
    assert stopped.returncode == 0, stopped
    assert failed_lines(log) == []
    [session] = sessions(fake_service)
    assert session.responses[0].audio_deltas == deltas
    # The old queue paid ~400 bytes of objects per delta on top of its 48 bytes of audio
    # (+42 MB for this flood); now small deltas share one buffer.
    assert grew < audio_mib + 12, f"{grew:.1f} MiB for {audio_mib:.1f} MiB of audio ({before})"


def test_odd_length_deltas_cost_only_themselves(
    tmp_path, fake_service: ServerThread, reply_speech: bytes
) -> None:
    fake_service.server.reply_pcm = reply_speech
    fake_service.server.faults.odd_length_deltas = 5
    with run_daemon(tmp_path, service_config(fake_service.url_base), api_key=API_KEY) as run:
        run.wait_ready()
        ask(run)
        run.wait_for_log("state listening (answer played)", timeout=30)
        code, _ = run.terminate()
        heard = run.heard()
        log = run.log()

    assert code == 0, log
    [session] = sessions(fake_service)
    assert session.responses[0].odd_deltas == 5
    assert failed_lines(log) == []
    assert log.count("dropped an audio delta of 3 bytes") == 1, log
    assert reply_speech in heard, "the answer was heard whole, byte for byte"
