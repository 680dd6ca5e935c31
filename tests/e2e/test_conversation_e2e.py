"""`talkbox run` end to end: the real process, real PyAudio over ALSA file devices fed and
drained in real time, the real wake-word model on synthetic speech, and the fake service."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from e2e.conftest import API_KEY, one_breath, phrase, service_config
from support.audio_match import locate, resample, voiced_seconds
from support.daemon import run_daemon
from support.service import sessions
from support.speech import concat, silence
from talkbox.audio.chimes import chime

pytestmark = pytest.mark.slow

SPEAKER_RATE = 24000


def log_time(log: str, text: str, occurrence: int = 0) -> float:
    """Wall-clock time of the n-th log line containing `text`."""
    stamps = [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        for line in log.splitlines()
        if text in line and re.match(r"\d{4}-\d\d-\d\d ", line)
    ]
    return stamps[occurrence]


def test_one_breath_question_gets_a_spoken_answer(tmp_path, fake_service, reply_speech) -> None:
    fake_service.server.reply_pcm = reply_speech
    spoken, command = one_breath("hey jarvis", "what is the capital of france")
    with run_daemon(tmp_path, service_config(fake_service.url_base), api_key=API_KEY) as run:
        run.wait_ready()
        run.say(concat(silence(2.0), spoken, silence(1.0)).tobytes())
        fake_service.wait_for(lambda: any(s.closed for s in fake_service.server.sessions), 25)
        run.wait_for_log("state idle", timeout=5)
        time.sleep(1.0)  # the done chime plays out
        code, took = run.terminate()
        heard = run.heard()
        log = run.log()

    assert code == 0 and took < 5.0, log
    assert fake_service.server.protocol_violations == []
    [session] = sessions(fake_service)
    assert len(session.client_events_of("session.update")) == 1
    assert len(session.client_events_of("input_audio_buffer.commit")) == 1
    assert len(session.client_events_of("response.create")) == 1
    # The whole command reached the service, though it came in one breath after the wake word.
    command_24k = resample(command, 16000, SPEAKER_RATE)
    _, match = locate(bytes(session.appended_audio), command_24k)
    assert match > 0.9, f"command not found whole in the upload (correlation {match:.2f})"
    # Only speech went up: far less than the 2 s of silence before plus the pause after.
    uploaded_s = len(session.appended_audio) / 2 / SPEAKER_RATE
    assert uploaded_s < len(spoken) / 16000 + 1.5, uploaded_s
    # The room heard the answer, byte for byte, then the done chime.
    assert reply_speech in heard
    assert chime("done", SPEAKER_RATE, 0.6) in heard
    assert heard.index(reply_speech) < heard.index(chime("done", SPEAKER_RATE, 0.6))
    # The socket closed after follow_up_seconds of silence, not before.
    answered = log_time(log, "state listening (answer played)")
    closed = log_time(log, "state idle")
    assert 1.9 <= closed - answered <= 3.5, closed - answered
    assert "assistant said: " in log


def test_a_follow_up_question_needs_no_wake_word(tmp_path, fake_service, reply_speech) -> None:
    fake_service.server.reply_pcm = reply_speech
    spoken, _ = one_breath("hey jarvis", "what is the capital of france")
    follow_up = phrase("and what about germany")
    script = concat(silence(2.0), spoken, silence(4.5), follow_up, silence(1.0))
    config = service_config(fake_service.url_base, follow_up=4.0)
    with run_daemon(tmp_path, config, api_key=API_KEY) as run:
        run.wait_ready()
        run.say(script.tobytes())
        fake_service.wait_for(lambda: any(s.closed for s in fake_service.server.sessions), 30)
        run.wait_for_log("state idle", timeout=5)
        code, _ = run.terminate()
        heard = run.heard()
        log = run.log()

    assert code == 0, log
    assert fake_service.server.protocol_violations == []
    [session] = sessions(fake_service)
    assert len(session.commits) == 2
    assert session.response_count == 2
    _, match = locate(bytes(session.commits[1].audio), resample(follow_up, 16000, SPEAKER_RATE))
    assert match > 0.9
    assert heard.count(reply_speech) == 2
    assert log.count("wake word hey_jarvis (score") == 1


def test_wake_word_barge_in_stops_the_answer_and_truncates_what_was_heard(
    tmp_path, fake_service
) -> None:
    long_reply = resample(
        phrase("one two three four five six seven eight nine ten " * 3), 16000, SPEAKER_RATE
    )
    fake_service.server.reply_pcm = long_reply.tobytes()
    # Generated at 1.5x real time, the reply is still being generated when the user interrupts.
    fake_service.server.pace_factor = 1.5
    spoken, _ = one_breath("hey jarvis", "count to thirty")
    stop, _ = one_breath("hey jarvis", "stop")
    script = concat(silence(2.0), spoken, silence(3.5), stop, silence(3.0))
    config = service_config(fake_service.url_base).replace(
        "[conversation]", '[conversation]\nbarge_in = "wake"')
    with run_daemon(tmp_path, config, api_key=API_KEY) as run:
        started_wall, started_mono = time.time(), time.monotonic()
        run.wait_ready()
        run.say(script.tobytes())
        fake_service.wait_for(lambda: any(s.truncates for s in fake_service.server.sessions), 30)
        run.wait_for_log("state listening (interrupted)", timeout=5)
        time.sleep(1.0)
        code, _ = run.terminate()
        log = run.log()
        records = list(run.drainer.records)

    assert code == 0, log
    assert fake_service.server.protocol_violations == []
    [session] = sessions(fake_service)
    [truncate] = session.truncates
    assert truncate.item_id == session.responses[0].item_id
    assert session.responses[0].status == "cancelled", "the reply was still being generated"
    # What the speaker actually wrote of the reply, and when it fell silent.
    heard = b"".join(chunk for _, chunk in records)
    offset, match = locate(heard[: len(heard) & ~1], long_reply[:SPEAKER_RATE])
    assert match > 0.95
    reply_heard = heard[offset * 2 :]
    written_ms = _reply_ms_before_silence(reply_heard, long_reply.tobytes())
    assert abs(truncate.audio_end_ms - written_ms) <= 60, (truncate.audio_end_ms, written_ms)
    detected_wall = log_time(log, "wake word hey_jarvis (score", occurrence=1)
    detected = started_mono + (detected_wall - started_wall)
    silent_at = _time_reply_stopped(records, offset * 2 + int(written_ms * 48))
    assert silent_at - detected <= 0.2, f"playback went on {silent_at - detected:.3f} s"


# When the fake service sends the transcript of a turn, after its commit: a short turn's
# transcript comes a few hundred ms after the commit from the real service too.
STOP_TRANSCRIPT_DELAY_MS = 400


def test_saying_stop_silences_the_answer_to_it_and_ends_the_conversation(
    tmp_path, fake_service
) -> None:
    server = fake_service.server
    first_reply = resample(
        phrase("one two three four five six seven eight nine ten " * 3), 16000, SPEAKER_RATE
    ).tobytes()
    # What the service would answer to "stop" without talkbox stopping it.
    unwanted = resample(
        phrase("Okay, I will stop. Let me know if there is anything else I can do for you."),
        16000,
        SPEAKER_RATE,
    ).tobytes()
    server.reply_pcm = lambda turn: first_reply if turn == 1 else unwanted
    server.pace_factor = 1.5  # both replies are still being generated when interrupted
    server.input_transcript = lambda turn: (
        "Hey Jarvis, what's the weather?" if turn == 1 else "Hey Jarvis, stop."
    )
    server.input_transcript_delay_ms = STOP_TRANSCRIPT_DELAY_MS
    spoken, _ = one_breath("hey jarvis", "what is the weather")
    stop, _ = one_breath("hey jarvis", "stop")
    script = concat(silence(2.0), spoken, silence(3.5), stop, silence(4.0))
    config = service_config(
        fake_service.url_base, follow_up=4.0, transcription_model="gpt-4o-mini-transcribe"
    )
    with run_daemon(tmp_path, config, api_key=API_KEY) as run:
        run.wait_ready()
        run.say(script.tobytes())
        fake_service.wait_for(lambda: any(s.closed for s in server.sessions), 30)
        run.wait_for_log("state idle (stop phrase heard)", timeout=5)
        time.sleep(1.5)  # the done chime plays out, and anything that would come after it
        code, _ = run.terminate()
        log = run.log()
        records = list(run.drainer.records)

    assert code == 0, log
    assert fake_service.server.protocol_violations == []
    [session] = sessions(fake_service)
    first, second = session.responses  # no third: nothing answered the stop
    assert [t.transcript for t in session.input_transcripts] == [
        "Hey Jarvis, what's the weather?",
        "Hey Jarvis, stop.",
    ]
    # The wake word silenced the first reply (as before); the transcript silenced the second.
    assert [e["response_id"] for e in session.client_events_of("response.cancel")] == [
        first.response_id,
        second.response_id,
    ]
    assert second.status in ("cancelled", "interrupted"), "still being generated when stopped"
    assert [t.item_id for t in session.truncates] == [first.item_id, second.item_id]
    assert "state listening (interrupted)" in log
    assert log.count("state idle") == 1 and "state idle (stop phrase heard)" in log
    assert "user said: Hey Jarvis, stop." in log

    heard = b"".join(chunk for _, chunk in records)
    heard = heard[: len(heard) & ~1]
    # Where the unwanted reply began, found by its first 100 ms (less may have been played).
    offset, match = locate(heard, unwanted[: SPEAKER_RATE // 10 * 2])
    assert match > 0.95, match
    played_ms = _reply_ms_before_silence(heard[offset * 2 :], unwanted)
    print(f"\nunwanted reply played before silence: {played_ms:.0f} ms "
          f"(transcript {STOP_TRANSCRIPT_DELAY_MS} ms after the commit)")
    assert [t.audio_end_ms for t in session.truncates][1] == pytest.approx(played_ms, abs=60)
    # At worst its first word or so: bounded by the transcript's delay plus the device's
    # output latency, far from the 4 s the reply is long.
    assert played_ms <= STOP_TRANSCRIPT_DELAY_MS + 400, played_ms
    # Nothing more of it was played, anywhere, and the speaker went quiet after the chime.
    after = heard[offset * 2 + int(played_ms * 48) :]
    block = SPEAKER_RATE // 10 * 2  # 100 ms
    start = (int(played_ms * 48) // block + 1) * block
    later = [unwanted[i : i + block] for i in range(start, len(unwanted) - block, block)]
    assert later and not any(piece in heard for piece in later)
    done = chime("done", SPEAKER_RATE, 0.6)
    assert done in after
    tail = after[after.index(done) + len(done) :]
    assert voiced_seconds(tail, SPEAKER_RATE) == 0.0


def _reply_ms_before_silence(heard: bytes, reply: bytes) -> float:
    """How much of `reply` (from its start) `heard` holds before they part."""
    length = min(len(heard), len(reply)) & ~1
    same = 0
    step = 480  # compare in 10 ms blocks
    while same + step <= length and heard[same : same + step] == reply[same : same + step]:
        same += step
    return same / 48.0


def _time_reply_stopped(records: list[tuple[float, bytes]], reply_end_byte: int) -> float:
    """The drain time of the record holding byte `reply_end_byte` of the speaker stream."""
    seen = 0
    for at, chunk in records:
        seen += len(chunk)
        if seen >= reply_end_byte:
            return at
    raise AssertionError("the reply's end was never drained")


def test_a_dropped_connection_returns_to_idle_and_the_next_wake_works(
    tmp_path, fake_service, reply_speech
) -> None:
    fake_service.server.reply_pcm = reply_speech
    fake_service.server.faults.drop_after_audio_deltas = 2
    spoken, _ = one_breath("hey jarvis", "what is the capital of france")
    script = concat(silence(2.0), spoken, silence(5.0), spoken, silence(1.0))
    with run_daemon(tmp_path, service_config(fake_service.url_base), api_key=API_KEY) as run:
        run.wait_ready()
        run.say(script.tobytes())
        fake_service.wait_for(lambda: len(fake_service.server.sessions) == 2, 30)
        fake_service.wait_for(lambda: fake_service.server.sessions[1].closed, 20)
        run.wait_for_log("state idle", count=2, timeout=5)
        time.sleep(1.0)
        code, _ = run.terminate()
        heard = run.heard()
        log = run.log()

    assert code == 0, log
    first, second = sessions(fake_service)
    assert first.dropped
    assert second.responses[0].status == "completed"
    assert "conversation failed" in log
    assert chime("error", SPEAKER_RATE, 0.6) in heard
    assert reply_speech in heard


def test_echo_provider_plays_the_turn_back(tmp_path) -> None:
    spoken, command = one_breath("hey jarvis", "testing one two three")
    config = """
[realtime]
provider = "echo"
[audio]
input_device = "mic"
output_device = "speaker"
# This microphone does not hear the speaker (no room): nothing to cancel.
echo_cancellation = false
[conversation]
follow_up_seconds = 2.0
[control]
socket = "{control_socket}"
"""
    with run_daemon(tmp_path, config) as run:
        run.wait_ready()
        run.say(concat(silence(2.0), spoken, silence(1.0)).tobytes())
        run.wait_for_log("state idle", timeout=25)
        time.sleep(1.0)
        code, _ = run.terminate()
        heard = run.heard()
        log = run.log()

    assert code == 0, log
    command_24k = resample(command, 16000, SPEAKER_RATE)
    _, match = locate(heard, command_24k)
    assert match > 0.9, f"the command was not played back (correlation {match:.2f})"
    # Played back: the command (with some of the wake phrase) and nothing like the 3 s of silence.
    echoed_voice = voiced_seconds(heard, SPEAKER_RATE) - voiced_seconds(
        b"".join(chime(k, SPEAKER_RATE, 0.6) for k in ("wake", "done")), SPEAKER_RATE
    )
    command_voice = voiced_seconds(command_24k, SPEAKER_RATE)
    spoken_voice = voiced_seconds(resample(spoken, 16000, SPEAKER_RATE), SPEAKER_RATE)
    assert command_voice - 0.1 <= echoed_voice <= spoken_voice + 0.1, (
        command_voice,
        echoed_voice,
        spoken_voice,
    )
