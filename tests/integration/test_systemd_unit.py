"""systemd/talkbox.service: systemd-analyze verify and security, and the sandbox's promises.

systemd is not PID 1 here, so the unit is checked by `systemd-analyze`, and the two
sandboxing settings that could break the audio stack are checked against the real
libraries: MemoryDenyWriteExecute= (through the kernel's PR_SET_MDWE, the same rule) and
the SystemCallFilter= set (through strace).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "talkbox.service"
EXEC_START = "/opt/talkbox/venv/bin/talkbox run --config /etc/talkbox/config.toml"
MAX_EXPOSURE = 2.0


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values in order (keys such as SystemCallFilter= repeat)."""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}= should be set once, is {values}"
    return values[0]


@pytest.fixture
def checkable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart and ExecReload pointing at an existing program (verify insists
    on one)."""
    fake_talkbox = tmp_path / "venv" / "bin" / "talkbox"
    fake_talkbox.parent.mkdir(parents=True)
    fake_talkbox.symlink_to("/bin/true")
    text = UNIT.read_text()
    assert text.count("/opt/talkbox/venv/bin/talkbox") == 2
    unit = tmp_path / "talkbox.service"
    unit.write_text(text.replace("/opt/talkbox/venv/bin/talkbox", str(fake_talkbox)))
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def exposure(unit: Path, threshold: int = 100) -> tuple[float, int]:
    result = analyze("security", "--offline=true", f"--threshold={threshold}", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1)), result.returncode


def test_verify_prints_nothing(checkable_unit: Path) -> None:
    result = analyze("verify", str(checkable_unit))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_verify_would_catch_a_mistake(checkable_unit: Path) -> None:
    # Guards the test above: a typo must show up as output.
    checkable_unit.write_text(checkable_unit.read_text().replace("WatchdogSec=", "WatchDogSec="))
    result = analyze("verify", str(checkable_unit))
    assert "WatchDogSec" in result.stdout + result.stderr


def test_exposure_is_at_most_2_0(checkable_unit: Path) -> None:
    score, returncode = exposure(checkable_unit, threshold=int(MAX_EXPOSURE * 10))
    assert score <= MAX_EXPOSURE
    assert returncode == 0


def test_an_unhardened_unit_would_fail_the_threshold(checkable_unit: Path) -> None:
    # Guards the test above: without the sandbox lines the score and exit code give it away.
    text = checkable_unit.read_text()
    sandbox = text[text.index("# ---- Sandboxing"):text.index("[Install]")]
    checkable_unit.write_text(text.replace(sandbox, ""))
    score, returncode = exposure(checkable_unit, threshold=int(MAX_EXPOSURE * 10))
    assert score > MAX_EXPOSURE
    assert returncode != 0


def test_service_settings() -> None:
    settings = unit_settings(UNIT.read_text())
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": EXEC_START,
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "RestartPreventExitStatus": "78",
        "User": "talkbox",
        "Group": "talkbox",
        "SupplementaryGroups": "audio",
        "RuntimeDirectory": "talkbox",
        "RuntimeDirectoryMode": "0750",
        "StateDirectory": "talkbox",
        "DevicePolicy": "closed",
        "DeviceAllow": "char-alsa rw",
        "RestrictRealtime": "yes",
        "MemoryDenyWriteExecute": "yes",
        "MemoryMax": "384M",
    }
    assert {key: one(settings, key) for key in expected} == expected
    # Check the file (a broken one fails the reload), then tell the daemon.
    assert settings["ExecReload"] == [
        "/opt/talkbox/venv/bin/talkbox check --quiet --config /etc/talkbox/config.toml",
        "/bin/kill -HUP $MAINPID",
    ]
    assert int(one(settings, "StartLimitBurst")) > 1
    assert int(one(settings, "StartLimitIntervalSec")) > 0


def test_a_missing_api_key_or_mqtt_password_file_does_not_fail_the_start() -> None:
    # LoadCredential= with an absolute path fails the start when the file is missing,
    # unless SetCredential= gives the same id a fallback (systemd.exec(5), "Credentials").
    settings = unit_settings(UNIT.read_text())
    assert settings["LoadCredential"] == [
        "api-key:/etc/talkbox/api-key",
        "mqtt-password:/etc/talkbox/mqtt-password",
    ]
    fallback_ids = [value.split(":", 1)[0] for value in settings["SetCredential"]]
    assert fallback_ids == ["api-key", "mqtt-password"]


def test_sandbox_keeps_alsa_and_the_network_reachable() -> None:
    settings = unit_settings(UNIT.read_text())
    # PrivateDevices=yes would hide /dev/snd unless it were bound back in.
    if settings.get("PrivateDevices", ["no"])[-1] == "yes":
        assert any("/dev/snd" in value for value in settings.get("BindPaths", []))
    families = set(one(settings, "RestrictAddressFamilies").split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families
    assert "PrivateNetwork" not in settings
    assert "IPAddressDeny" not in settings


# --- the libraries under the sandbox's rules ------------------------------------------------

# Exercises what the daemon loads, the way it loads it: the tflite wake models through
# talkbox.audio.wake (XNNPACK delegate; openwakeword without its ONNX runtime), numpy, soxr,
# webrtcvad, PyAudio capture and callback playback over ALSA's file plugin, TLS, the journal.
# The start of every probe: with the argument "mdwe", what MemoryDenyWriteExecute=yes sets
# (PR_SET_MDWE) is put in force first, and shown to be.
MDWE_PREAMBLE = r"""
import ctypes, mmap, os, sys
if sys.argv[1] == "mdwe":
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(f"PR_SET_MDWE failed (errno {ctypes.get_errno()}); the kernel needs >= 6.3")
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        print("write+execute memory refused")
    else:
        sys.exit("PR_SET_MDWE is not in force")
"""

AUDIO_STACK_PROBE = MDWE_PREAMBLE + r"""

import time
import numpy as np
from talkbox.audio.wake import WakeWordDetector
detector = WakeWordDetector(["hey_jarvis"])
noise = np.random.default_rng(0).normal(0, 300, 1280 * 25).astype(np.int16)
for start in range(0, len(noise), 1280):
    detector.process(noise[start:start + 1280])
assert 0.0 <= detector.last_scores["hey_jarvis"] < 0.5, detector.last_scores
print("wake model ran")

import soxr, webrtcvad
resampler = soxr.ResampleStream(48000, 16000, 1, dtype="int16")
assert len(resampler.resample_chunk(np.zeros(4800, dtype=np.int16))) > 0
assert webrtcvad.Vad(2).is_speech(b"\0" * 960, 16000) is False
print("soxr and webrtcvad ran")

import pyaudio
audio = pyaudio.PyAudio()
capture = audio.open(format=pyaudio.paInt16, channels=1, rate=16000, input=True,
                     frames_per_buffer=1280)
assert len(capture.read(1280)) == 2560
capture.close()
played = []
def fill(in_data, frames, time_info, status):
    played.append(frames)
    return (b"\0" * frames * 2, pyaudio.paContinue)
playback = audio.open(format=pyaudio.paInt16, channels=1, rate=24000, output=True,
                      frames_per_buffer=480, stream_callback=fill)
deadline = time.monotonic() + 10
while not played and time.monotonic() < deadline:
    time.sleep(0.01)
playback.stop_stream()
playback.close()
audio.terminate()
assert played, "the playback callback never ran"
print("pyaudio ran")

import ssl
ssl.create_default_context()
from systemd import journal, daemon
journal.send("probe")
print("tls and journal ran")
assert not {"onnxruntime", "scipy", "sklearn"} & set(sys.modules), "the daemon never loads these"
"""

PROBE_MARKERS = ["wake model ran", "soxr and webrtcvad ran", "pyaudio ran", "tls and journal ran"]


@pytest.fixture
def probe_environment(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "in.raw").write_bytes(bytes(16000 * 2))
    alsa_conf = tmp_path / "asound.conf"
    alsa_conf.write_text(
        f'pcm.!default {{ type file slave.pcm {{ type null }} file "{tmp_path}/out.raw" '
        f'infile "{tmp_path}/in.raw" format "raw" }}\n'
    )
    probe = tmp_path / "probe.py"
    probe.write_text(AUDIO_STACK_PROBE)
    # HOME in the scratch dir: nothing the daemon loads may write to the owner's home.
    environ = {**os.environ, "ALSA_CONFIG_PATH": str(alsa_conf), "HOME": str(tmp_path)}
    environ.pop("NOTIFY_SOCKET", None)
    return probe, environ


def test_audio_stack_runs_without_writable_executable_memory(
    probe_environment: tuple[Path, dict[str, str]]
) -> None:
    """Backs MemoryDenyWriteExecute=yes: nothing we load JIT-compiles or needs an exec stack."""
    probe, environ = probe_environment
    result = subprocess.run([sys.executable, str(probe), "mdwe"], capture_output=True,
                            text=True, env=environ, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for marker in ["write+execute memory refused", *PROBE_MARKERS]:
        assert marker in result.stdout, result.stdout + result.stderr


@cache
def syscall_group(name: str) -> frozenset[str]:
    """The system calls in a systemd syscall group, nested groups expanded."""
    listing = analyze("syscall-filter", name).stdout.splitlines()[1:]
    calls: set[str] = set()
    for raw in listing:
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        calls |= syscall_group(entry) if entry.startswith("@") else {entry}
    return frozenset(calls)


# Seen outside the filter, both harmless as EPERM: OpenBLAS's mbind() (result ignored);
# libjack's sched_setscheduler() while PortAudio probes for a JACK server the Pi does not run.
KNOWN_REFUSED = frozenset({"mbind", "sched_setscheduler"})


def test_audio_stack_stays_inside_the_system_call_filter(
    probe_environment: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Backs SystemCallFilter=@system-service ~@privileged @resources."""
    strace = shutil.which("strace")
    assert strace, "strace is needed (install.sh --dev installs it)"
    settings = unit_settings(UNIT.read_text())
    assert settings["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    allowed = (syscall_group("@system-service") - syscall_group("@privileged")
               - syscall_group("@resources"))
    assert "read" in allowed and "mount" not in allowed  # the expansion worked

    probe, environ = probe_environment
    summary = tmp_path / "strace.txt"
    result = subprocess.run(
        [strace, "-f", "-c", "-o", str(summary), sys.executable, str(probe), "plain"],
        capture_output=True, text=True, env=environ, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(marker in result.stdout for marker in PROBE_MARKERS), result.stdout

    used = set()
    for line in summary.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            used.add(fields[-1])
    assert len(used) > 20, summary.read_text()
    assert used - allowed <= KNOWN_REFUSED, sorted(used - allowed - KNOWN_REFUSED)
