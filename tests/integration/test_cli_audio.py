"""The commands that touch the sound card, as real processes on a sound card made of files
(ALSA's file plugin under real PyAudio, tests/support/alsa.py): `talkbox devices`,
`talkbox listen` with the real wake-word model on espeak speech, and `talkbox ask` playing
its answer on the speaker.

`listen` gets its microphone from a FIFO fed whole periods on a clock at twice real time, not
from a plain file: read unpaced, a file floods the capture queue, which (rightly, for a live
microphone) drops the OLDEST audio, so whether the wake word survives would be luck. Paced,
every byte arrives, in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.alsa import AlsaSandbox, FifoFeeder, alsa_sandbox, narrow, playback_only_pcm
from support.cli import CliRun, RunningTalkbox, environment, run_talkbox
from support.fake_realtime import RecordedSession
from support.service import serving, sessions
from support.speech import speak, speech_bounds

API_KEY = "sk-SENTINEL-audio-6c0e2b9f4a1d8357"
MIC_RATE = 16000
SPEAKER_RATE = 24000  # the reply's own rate, so what the speaker file holds is byte-exact
LISTEN_PERIOD_FRAMES = MIC_RATE * 80 // 1000  # `talkbox listen` captures 80 ms buffers
FEED_SPEED = 2.0
LISTEN_SECONDS = 3.0  # wall clock: 6 s of audio at FEED_SPEED; the clip is under 4 s
REPLY_TEXT = "Paris is the capital of France."
ENV_NOT_INHERITED = ("TALKBOX_API_KEY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")

pytestmark = pytest.mark.audio

WAKE_LINE = re.compile(r"^\s*(?P<at>\d+\.\d\d)s  WAKE (?P<model>\w+) score (?P<score>\d\.\d\d)$")
SPEECH_LINE = re.compile(r"^\s*(?P<at>\d+\.\d\d)s  speech (?P<what>started|ended \(\w+\))$")
REPORT_LINE = re.compile(r"^\s*\d+\.\d\ds  speech\s+\d+%  wake hey_jarvis \d\.\d\d$")


def talkbox_env(sandbox: AlsaSandbox, **extra: str) -> dict[str, str]:
    return environment(ENV_NOT_INHERITED, extra, base=sandbox.env)


def talkbox(*args: str, env: dict[str, str]) -> CliRun:
    return run_talkbox(*args, env=env, secrets=(API_KEY,))


def write_config(
    directory: Path, *, input_device: str, output_device: str, extra: str = ""
) -> Path:
    config = directory / "talkbox.toml"
    config.write_text(
        f'{extra}[audio]\ninput_device = "{input_device}"\noutput_device = "{output_device}"\n'
        f"input_rate = {MIC_RATE}\noutput_rate = {SPEAKER_RATE}\n"
    )
    return config


def device_rows(table: str) -> dict[str, str]:
    """Device name -> its mark ("input", "output", "input + output" or "") from the table."""
    rows: dict[str, str] = {}
    for line in table.splitlines()[1:]:
        fields = line.split(maxsplit=4)
        if len(fields) == 5 and fields[0].isdigit():
            name, _, mark = fields[4].partition("   <- ")
            rows[name] = mark
    return rows


# --- talkbox devices ----------------------------------------------------------------------------


def test_devices_lists_the_sound_card_and_marks_the_configured_ones(tmp_path: Path) -> None:
    with alsa_sandbox(tmp_path / "alsa") as sandbox:
        config = write_config(tmp_path, input_device="mic", output_device="speaker")
        run = talkbox("devices", "--config", str(config), env=talkbox_env(sandbox))

    assert run.exit_code == 0, run.stderr
    assert device_rows(run.stdout) == {"mic": "input", "speaker": "output", "default": ""}
    lines = run.stdout.splitlines()
    assert any(re.fullmatch(r"input  audio\.input_device = 'mic': \[\d+\] mic", x) for x in lines)
    assert any(
        re.fullmatch(r"output audio\.output_device = 'speaker': \[\d+\] speaker", x) for x in lines
    )


def test_devices_with_a_configured_device_missing_fails_listing_the_devices(
    tmp_path: Path,
) -> None:
    with alsa_sandbox(tmp_path / "alsa") as sandbox:
        config = write_config(tmp_path, input_device="mic", output_device="USB speaker")
        run = talkbox("devices", "--config", str(config), env=talkbox_env(sandbox))

    assert run.exit_code == 1
    # The table still shows what there is, and says what is wrong.
    assert device_rows(run.stdout) == {"mic": "input", "speaker": "", "default": ""}
    assert "output audio.output_device = 'USB speaker': NOT FOUND" in run.stdout
    assert run.stderr.startswith(
        "talkbox: audio.output_device = 'USB speaker' matches no output device; "
        "available output devices:\n"
    )
    for name in ("mic", "speaker", "default"):
        assert re.search(rf"^  \[\d+\] {name}$", run.stderr, re.MULTILINE)
    assert 'set audio.output_device to one of these names (or "default")' in run.stderr


def test_devices_needs_no_config_and_marks_nothing_without_one(tmp_path: Path) -> None:
    # No --config: no file is read, not even the default one (a fresh machine has none).
    with alsa_sandbox(tmp_path / "alsa") as sandbox:
        run = talkbox("devices", env=talkbox_env(sandbox))

    assert run.exit_code == 0, run.stderr
    assert device_rows(run.stdout) == {"mic": "", "speaker": "", "default": ""}
    assert run.stdout.splitlines()[-1] == (
        "no config read: with --config PATH, the devices that config selects are marked"
    )
    assert run.stderr == ""


@pytest.mark.parametrize("with_config", [False, True], ids=["no config", "config"])
def test_devices_without_a_sound_card_says_so_and_what_to_check(
    tmp_path: Path, with_config: bool
) -> None:
    config = write_config(tmp_path, input_device="default", output_device="default")
    given = ["--config", str(config)] if with_config else []
    with alsa_sandbox(tmp_path / "alsa", sound_card=False) as sandbox:
        run = talkbox("devices", *given, env=talkbox_env(sandbox))

    assert run.exit_code == 1
    assert run.stdout == ""  # no table of nothing, and no "default" that is not there
    assert run.stderr.startswith(
        "talkbox: no sound card found: PortAudio lists no audio device\n"
        "check that `aplay -l` (speakers) and `arecord -l` (microphones) list the card"
    )
    assert "in group audio" in run.stderr


def test_devices_says_when_no_device_can_record(tmp_path: Path) -> None:
    pcms = {"Kitchen Speaker": playback_only_pcm(tmp_path / "kitchen.raw")}
    with alsa_sandbox(tmp_path / "alsa", sound_card=False, extra_pcms=pcms) as sandbox:
        config = write_config(tmp_path, input_device="default", output_device="kitchen")
        run = talkbox("devices", "--config", str(config), env=talkbox_env(sandbox))

    assert run.exit_code == 1
    assert device_rows(run.stdout) == {"Kitchen Speaker": "output"}
    assert (
        "input  audio.input_device = 'default': NOTHING TO SELECT, no input device found: "
        "none of the 1 audio device PortAudio lists can record"
    ) in run.stdout.splitlines()
    assert run.stderr.startswith(
        "talkbox: input device 'default': no input device found: none of the 1 audio device "
        "PortAudio lists can record (audio.input_device); check that `aplay -l`"
    )


# --- talkbox listen -----------------------------------------------------------------------------


def test_listen_prints_the_wake_word_and_speech_from_the_microphone(tmp_path: Path) -> None:
    clip = speak("hey jarvis, what time is it", rate=MIC_RATE, pad=(1.0, 1.0))
    spoken_from, spoken_to = speech_bounds(clip, MIC_RATE)
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True) as sandbox:
        config = write_config(tmp_path, input_device="mic", output_device="speaker")
        # Opened (read-write) now, so the capture never sees end-of-file; fed only once
        # listen is capturing, so no audio queues up behind the model loading.
        feeder = FifoFeeder(
            sandbox.capture_path,
            clip.tobytes(),
            rate=MIC_RATE,
            period_frames=LISTEN_PERIOD_FRAMES,
            speed=FEED_SPEED,
        )
        running = RunningTalkbox(
            "listen", "--seconds", str(LISTEN_SECONDS), "--config", str(config),
            env=talkbox_env(sandbox, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
        try:
            assert running.process.stdout is not None
            first_line = running.process.stdout.readline()
            feeder.start()
            run = running.finish()
        finally:
            if running.process.poll() is None:
                running.kill()
            feeder.stop()

    assert run.exit_code == 0, run.stderr
    assert first_line == f"listening on 'mic' at {MIC_RATE} Hz; Ctrl-C ends\n"
    rest = run.stdout
    lines = rest.splitlines()

    wakes = [m for m in map(WAKE_LINE.match, lines) if m]
    assert len(wakes) == 1, rest
    wake = wakes[0]
    assert wake["model"] == "hey_jarvis" and float(wake["score"]) >= 0.5
    # Audio time: it fires after the wake word was spoken, not in the silence before it.
    wake_at = float(wake["at"])
    assert spoken_from < wake_at < spoken_to + 0.5

    speech = [(float(m["at"]), m["what"]) for m in map(SPEECH_LINE.match, lines) if m]
    assert speech and speech[0][1] == "started" and speech[0][0] < wake_at
    assert speech[0][0] >= spoken_from - 0.5  # not in the silent lead-in
    assert any(what == "ended (silence)" and at > spoken_to for at, what in speech), rest
    # And the once-a-second summary for tuning, over the whole run.
    assert sum(bool(REPORT_LINE.match(line)) for line in lines) >= 3, rest


def test_listen_on_a_missing_microphone_fails_listing_the_devices(tmp_path: Path) -> None:
    with alsa_sandbox(tmp_path / "alsa") as sandbox:
        config = write_config(tmp_path, input_device="ReSpeaker", output_device="speaker")
        run = talkbox("listen", "--seconds", "1", "--config", str(config), env=talkbox_env(sandbox))

    assert run.exit_code == 1
    assert (
        "talkbox: audio.input_device = 'ReSpeaker' matches no input device; "
        "available input devices:\n"
    ) in run.stderr
    assert re.search(r"^  \[\d+\] mic$", run.stderr, re.MULTILINE)
    assert 'set audio.input_device to one of these names (or "default")' in run.stderr


# --- talkbox ask, played ------------------------------------------------------------------------


@contextmanager
def service_answering(reply: bytes) -> Iterator[tuple[str, list[RecordedSession]]]:
    """(url_base, the sessions it recorded, filled in once the block ends)."""
    with serving(API_KEY, reply_pcm=reply, reply_transcript=REPLY_TEXT) as service:
        seen: list[RecordedSession] = []
        yield service.url_base, seen
        server = service.server
        service.wait_for(lambda: bool(server.sessions) and server.sessions[0].closed)
        seen.extend(sessions(service))


def openai_table(url_base: str) -> str:
    return (
        f'[realtime]\nprovider = "openai"\nendpoint = "{url_base}/v1"\n'
        "connect_timeout_seconds = 2\n"
    )


def test_ask_without_out_plays_the_answer_on_the_speaker(tmp_path: Path) -> None:
    reply = speak(REPLY_TEXT, rate=SPEAKER_RATE, pad=(0.0, 0.0)).tobytes()
    with (
        alsa_sandbox(tmp_path / "alsa") as sandbox,
        service_answering(reply) as (url_base, sessions),
    ):
        config = write_config(
            tmp_path, input_device="mic", output_device="speaker", extra=openai_table(url_base)
        )
        run = talkbox(
            "ask", "capital of France?", "--config", str(config),
            env=talkbox_env(sandbox, TALKBOX_API_KEY=API_KEY),
        )  # fmt: skip
    played = narrow(sandbox.playback_path.read_bytes())

    assert run.exit_code == 0, run.stderr
    assert f"answer: {REPLY_TEXT}" in run.stdout.splitlines()
    [session] = sessions
    sent = bytes(session.sent_audio)
    assert sent == reply
    # The speaker got the answer whole and in order, with only silence around it (the
    # stream runs silent before the answer comes and until it has drained).
    start = played.find(sent)
    assert start >= 0 and start % 2 == 0
    assert not any(played[:start])
    assert not any(played[start + len(sent) :])


def test_ask_on_a_missing_speaker_fails_listing_the_devices(tmp_path: Path) -> None:
    with (
        alsa_sandbox(tmp_path / "alsa") as sandbox,
        service_answering(b"\x00\x01" * SPEAKER_RATE) as (url_base, _),
    ):
        config = write_config(
            tmp_path, input_device="mic", output_device="HDMI", extra=openai_table(url_base)
        )
        run = talkbox(
            "ask", "capital of France?", "--config", str(config),
            env=talkbox_env(sandbox, TALKBOX_API_KEY=API_KEY),
        )  # fmt: skip

    assert run.exit_code == 1
    assert (
        "talkbox: audio.output_device = 'HDMI' matches no output device; "
        "available output devices:\n"
    ) in run.stderr
    assert re.search(r"^  \[\d+\] speaker$", run.stderr, re.MULTILINE)
