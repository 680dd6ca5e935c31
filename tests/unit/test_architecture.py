"""The layering in pyproject.toml's [tool.importlinter] holds, and each contract would catch
an import the wrong way (checked on a copy of the package with one such import added).

docs/architecture.md explains the layers: command line -> daemon shell -> adapters (realtime |
audio | tools) -> core, with the foundation (config, errors, ...) importing none of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(checkout: Path) -> subprocess.CompletedProcess[str]:
    # The package is found on PYTHONPATH first, so a copy is checked instead of the checkout.
    environ = {**os.environ, "PYTHONPATH": str(checkout / "daemon")}
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo"], cwd=checkout, env=environ,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_layering_contracts_hold() -> None:
    result = lint_imports(CHECKOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("core/conversation.py", "import talkbox.shell.app", "Layers"),
        ("realtime/protocol.py", "import talkbox.audio.playback", "Layers"),
        ("audio/frontend.py", "import talkbox.cli", "Layers"),
        ("tools/runner.py", "import talkbox.realtime.protocol", "Layers"),
        ("config/schema.py", "import talkbox.core.events", "The foundation"),
        ("core/retry.py", "import asyncio", "The core is pure"),
        ("core/events.py", "import numpy", "The core is pure"),
    ],
)
def test_an_import_the_wrong_way_breaks_a_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    shutil.copy(CHECKOUT / "pyproject.toml", tmp_path)
    shutil.copytree(CHECKOUT / "daemon", tmp_path / "daemon",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with (tmp_path / "daemon" / "talkbox" / module).open("a") as source:
        source.write(f"\n{wrong_import}  # the wrong way\n")

    result = lint_imports(tmp_path)

    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith(" BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout
