"""`talkbox run` installs its start-up signal handlers before anything slow is imported.

Until then a SIGHUP kills the process (Python's default), so the command-line module itself
must import nothing heavy: pydantic, asyncio and the audio stack come with the command that
needs them. Checked in a fresh interpreter, where nothing is imported yet.
"""

from __future__ import annotations

import json
import subprocess
import sys

SLOW_MODULES = (
    "pydantic", "asyncio", "numpy", "pyaudio", "talkbox.config", "talkbox.shell.service"
)


def test_the_command_line_module_imports_nothing_slow() -> None:
    probe = (
        "import json, sys, talkbox.cli; "
        f"print(json.dumps([m for m in {list(SLOW_MODULES)!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == []
