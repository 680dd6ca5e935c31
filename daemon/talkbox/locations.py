"""Where talkbox looks for its config by default.

A module of its own, importing nothing, so that `talkbox run` can name the file in its help
and install its start-up signal handlers before the slow imports (pydantic, asyncio).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/talkbox/config.toml")
