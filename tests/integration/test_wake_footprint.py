"""The wake-word model loads without the parts of openwakeword talkbox never uses."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from talkbox.audio.wake import WakeWordDetector
detector = WakeWordDetector(["hey_jarvis"])
print(sorted(m for m in ("sklearn", "scipy", "onnxruntime") if m in sys.modules))
import openwakeword
try:
    openwakeword.train_custom_verifier()
except RuntimeError as error:
    print(error)
"""


def test_scikit_learn_scipy_and_onnxruntime_stay_unloaded() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    loaded, refusal = probe.stdout.splitlines()
    assert loaded == "[]", f"heavy modules imported: {loaded}"
    assert "not loaded by talkbox" in refusal


@pytest.mark.parametrize("name", ["hey_jarvis", "alexa"])
def test_the_model_still_scores(name: str) -> None:
    import numpy as np

    from talkbox.audio.wake import WakeWordDetector

    detector = WakeWordDetector([name])
    detector.process(np.zeros(1280, dtype=np.int16))
    assert set(detector.last_scores) and all(0.0 <= s <= 1.0 for s in detector.last_scores.values())
