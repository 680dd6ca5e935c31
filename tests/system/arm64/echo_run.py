"""Host side of tests/system/arm64_test.sh: the sound card, systemd's notify socket and the
person speaking, for a `talkbox run` inside the arm64 root.

echo_run.py HOST_DIR INNER_DIR LOG -- COMMAND...
    Makes HOST_DIR (which the daemon sees as INNER_DIR) with a sound card of FIFOs, as the
    end-to-end tests have it (support.alsa: `mic` reads mic.raw, `speaker` writes
    speaker.raw, both described in asound.conf) and a notify socket (notify.sock). Runs
    COMMAND, which must start the daemon with ALSA_CONFIG_PATH=INNER_DIR/asound.conf and
    NOTIFY_SOCKET=INNER_DIR/notify.sock, its output in LOG. Once READY=1 comes, says
    "hey jarvis, testing one two three" into the microphone, waits for the wake word, the
    conversation's end and its echo on the speaker, then ends the daemon with SIGTERM.

The microphone runs at TALKBOX_ARM64_SPEED times real time (default 0.05): under qemu-user
the wake model takes several times longer than the audio it scores (measured: 430-530 ms for
an 80 ms chunk, against 3 ms natively on x86_64), and a daemon that falls behind its
microphone drops audio, as it would on a Pi that is too slow. The daemon counts a turn's
speech and silence in samples, so the conversation goes the same at any speed, except for
timers in real seconds: arm64_test.sh sets a long follow-up. The speaker drains in real time.

Prints one "ok NAME" / "FAILED NAME" line per check, and the time each step took (emulated
times: they say nothing about a Pi).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))

from support.alsa import (  # noqa: E402
    FifoDrainer,
    FifoFeeder,
    _file_pcm,
    capture_pcm,
    playback_pcm,
)
from support.audio_match import locate, resample  # noqa: E402
from support.daemon import (  # noqa: E402
    CAPTURE_PERIOD_FRAMES,
    MIC_RATE,
    SPEAKER_RATE,
    NotifyListener,
    wait_until,
)
from support.speech import concat, silence, speak  # noqa: E402

SPEED = float(os.environ.get("TALKBOX_ARM64_SPEED", "0.05"))
# Under emulation the wake model loads many times slower than on a Pi (40 s, say).
READY_TIMEOUT = 900.0
# Each step takes its audio's length / SPEED, and then some.
STEP_TIMEOUT = 60.0 + 10.0 / SPEED
WAKE_PHRASE = "hey jarvis"
COMMAND_PHRASE = "testing one two three"

failed = 0


def report(ok: bool, name: str) -> bool:
    global failed
    print(f"{'ok' if ok else 'FAILED'} {name}", flush=True)
    failed += not ok
    return ok


def waited(predicate: Callable[[], bool], timeout: float, what: str) -> bool:
    try:
        wait_until(predicate, timeout, what)
    except AssertionError as error:
        print(f"    {error}", flush=True)
        return False
    return True


def make_sound_card(host_dir: Path, inner_dir: str) -> None:
    host_dir.mkdir(mode=0o755, parents=True)
    for name in ("mic.raw", "speaker.raw"):
        os.mkfifo(host_dir / name)
        os.chmod(host_dir / name, 0o666)  # the daemon runs as user talkbox
    mic, speaker = f"{inner_dir}/mic.raw", f"{inner_dir}/speaker.raw"
    # PortAudio needs a `default` to list devices; the daemon is configured for mic and speaker.
    pcms = {
        "!default": _file_pcm(infile=mic, outfile=speaker),
        "mic": capture_pcm(mic),
        "speaker": playback_pcm(speaker),
    }
    (host_dir / "asound.conf").write_text(
        "".join(f"pcm.{name} {body}\n" for name, body in pcms.items())
    )


class Run:
    """The daemon's process and what stands around it: microphone, speaker, notify socket."""

    def __init__(self, host_dir: Path, log_path: Path, command: list[str]) -> None:
        self.host_dir = host_dir
        self.log_path = log_path
        self.notify = NotifyListener(host_dir / "notify.sock")
        os.chmod(self.notify.path, 0o666)
        self.notify.start()
        self.drainer = FifoDrainer(host_dir / "speaker.raw", rate=SPEAKER_RATE)
        self.drainer.start()
        # Open before the daemon, so its capture never sees end-of-file (see support.alsa).
        self.mic_fd = os.open(host_dir / "mic.raw", os.O_RDWR)
        self.feeder: FifoFeeder | None = None
        self.started = time.monotonic()
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if self.feeder is not None:
            self.feeder.stop()
        os.close(self.mic_fd)
        self.drainer.stop()
        self.notify.stop()


def since(moment: float) -> str:
    return f"{time.monotonic() - moment:.0f} s"


def conversation(run: Run) -> None:
    """READY, then "hey jarvis, testing one two three", the echo, idle and SIGTERM; stops at
    the first step that does not come."""
    waited(
        lambda: "READY=1" in run.notify.lines() or run.process.poll() is not None,
        READY_TIMEOUT,
        "READY=1",
    )
    ready = "READY=1" in run.notify.lines()
    if not report(ready, f"READY=1 came ({since(run.started)} after the start)"):
        return
    # The daemon logs "talkbox ready" just after it tells systemd; emulated, that is a moment.
    logged = waited(lambda: "talkbox ready" in run.log(), 30, "the 'talkbox ready' log line")
    report(logged, "the log says 'talkbox ready'")

    # espeak-ng and sox here, on the host: the root has neither.
    wake, command = speak(WAKE_PHRASE, pad=(0.0, 0.0)), speak(COMMAND_PHRASE, pad=(0.0, 0.0))
    spoken = concat(silence(2.0), wake, silence(0.1), command, silence(1.0))
    run.feeder = FifoFeeder(
        run.host_dir / "mic.raw",
        spoken.tobytes(),
        rate=MIC_RATE,
        period_frames=CAPTURE_PERIOD_FRAMES,
        speed=SPEED,
    )
    print(f"    the microphone runs at {SPEED:g} x real time", flush=True)
    spoke_at = time.monotonic()
    run.feeder.start()
    waited(lambda: "wake word hey_jarvis" in run.log(), STEP_TIMEOUT, "the wake word")
    score = re.search(r"wake word hey_jarvis \(score ([0-9.]+)\)", run.log())
    if not report(
        score is not None,
        f"the log says 'wake word hey_jarvis' (score {score[1] if score else '-'},"
        f" {since(spoke_at)} after the microphone started)",
    ):
        return
    waited(lambda: "state idle" in run.log(), STEP_TIMEOUT, "idle after the conversation")
    if not report(
        "state idle" in run.log(), f"back to idle ({since(spoke_at)} after the microphone started)"
    ):
        return
    time.sleep(1.0)  # the last of the done chime

    run.process.send_signal(signal.SIGTERM)
    try:
        code: int | None = run.process.wait(timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        code = None
    report(code == 0, f"the daemon exits 0 on SIGTERM (exit status {code})")

    heard = run.drainer.data()
    (run.host_dir / "heard.raw").write_bytes(heard)
    _, match = locate(heard, resample(command, MIC_RATE, SPEAKER_RATE))
    report(
        match > 0.9,
        f"the speaker played '{COMMAND_PHRASE}' back (correlation {match:.2f},"
        f" {len(heard) / 2 / SPEAKER_RATE:.1f} s played in all)",
    )


def main() -> int:
    host_dir, inner_dir, log_path = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    if len(sys.argv) < 6 or sys.argv[4] != "--":
        raise SystemExit(__doc__)
    make_sound_card(host_dir, inner_dir)
    run = Run(host_dir, log_path, sys.argv[5:])
    try:
        conversation(run)
    finally:
        run.close()
    log = run.log()
    for line in log.splitlines():
        if "answer completed" in line:
            print(f"    {line}", flush=True)
    report(
        "dropped the oldest audio" not in log,  # capture or the front end fell behind
        f"the daemon kept up with its microphone at {SPEED:g} x real time (dropped no audio;"
        " else lower TALKBOX_ARM64_SPEED)",
    )
    report("Traceback" not in log, "no Python traceback in the daemon's output")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
