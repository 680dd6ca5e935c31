"""The names the model calls an MCP server's tools by.

The Realtime API takes function names matching ^[a-zA-Z0-9_-]{1,64}$, unique in a session.
An MCP tool's own name may be longer and may hold dots or slashes, and two servers may each
have a tool called "search". So each is offered as `SERVER__TOOL`, with anything outside the
allowed characters made `_`, and cut with a short hash of the tool's own name when too long or
when it would clash with a name already given. Built-in tools have no `__` in their names, so
no MCP tool can take the place of one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

MAX_FUNCTION_NAME = 64
SEPARATOR = "__"
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
_HASH_CHARS = 6


def function_names(server: str, tools: Iterable[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """Each tool's function name, `server` prefixed (a name the config checked: 1 to 20 allowed
    characters); none equals another or one of `taken`."""
    used = set(taken)
    names: dict[str, str] = {}
    prefix = server + SEPARATOR
    for tool in tools:
        if tool in names:
            continue  # a server listing one name twice: the first one stands
        name = prefix + tool
        if len(name) > MAX_FUNCTION_NAME or _NOT_ALLOWED.search(tool) or name in used:
            # Changed, so made unique again by what it was changed from.
            digest = hashlib.sha256(tool.encode("utf-8", "surrogatepass")).hexdigest()
            cut = (prefix + _NOT_ALLOWED.sub("_", tool))[: MAX_FUNCTION_NAME - _HASH_CHARS - 1]
            name = f"{cut}_{digest[:_HASH_CHARS]}"
        if name in used:
            continue  # even the changed name clashes: left out rather than ambiguous
        used.add(name)
        names[tool] = name
    return names
