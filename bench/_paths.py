"""Puts `tests/` on sys.path (as pytest does), so bench modules can use `support.*` helpers.

Import it before anything from `support`; `python -m bench` and `python -m bench.NAME` both
run from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = str(Path(__file__).resolve().parent.parent / "tests")
# Appended, not prepended: nothing under tests/ may shadow an installed module.
if TESTS_DIR not in sys.path:
    sys.path.append(TESTS_DIR)
