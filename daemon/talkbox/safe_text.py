"""Text fit to show: what the service or a peer says, and values that may hold a secret.

This module owns the one rule for text talkbox did not write itself (`safe_line`: one printable
line, bounded, the API key masked) and how a secret is shown when it must be mentioned at all
(`mask_secret`, `mask_secret_parts`). Every adapter where outside text enters (the Realtime
decoder and socket, the control socket, hook output, the command line) passes it through
`safe_line`, so a log line, `talkbox ctl status` or a terminal never gets a raw escape
sequence, a forged second line, megabytes of text, or the key.

The keys talkbox uses are remembered here (`remember_secret`, called by `secrets.ApiKey`), so
`redact_secrets` can mask them in any text, whatever its source; the log formatters call it
on every line.
"""

from __future__ import annotations

import json
import re
from typing import Final

# Error messages and codes, close reasons, ids: a sentence or two is all a log line needs.
MAX_LINE_CHARS: Final = 200
# Transcripts and setting values shown whole: a spoken answer is rarely longer.
MAX_PROSE_CHARS: Final = 2000
CUT_MARK: Final = "…"
# Below this length even a 3-character prefix gives away too much of a secret.
MIN_LENGTH_TO_SHOW_PREFIX: Final = 16
SHOWN_PREFIX_CHARS: Final = 3
# A "key" this short is no real key, and masking it everywhere would garble every log line.
MIN_REMEMBERED_SECRET_CHARS: Final = 8

# Replaced, never changed in place: log lines from other threads read it while a reload adds.
_remembered_secrets: frozenset[str] = frozenset()

# Shapes of credentials people paste into a config file: OpenAI keys (sk-..., sk-proj-...),
# Azure keys (32 hex digits, or the newer long alphanumeric ones), bearer tokens (JWT), and
# the value of any query parameter named like a credential (Azure portal URLs carry api-key=).
_SECRET_PARAMETER = re.compile(
    r"(?i)\b((?:api[-_]?key|key|secret|token|access[-_]?token|password|passwd|sig|signature)=)"
    r"([^&#\s\"']+)"
)
_KEY_SHAPED = re.compile(
    r"sk-[A-Za-z0-9_-]{8,}"
    r"|\b[0-9a-fA-F]{32,}\b"
    r"|[A-Za-z0-9]{40,}"
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?"
)


def mask_secret(value: str) -> str:
    """Like `sk-…(41 chars)`: at most the first 3 characters, and only of a long value."""
    length = len(value)
    prefix = value[:SHOWN_PREFIX_CHARS] if length >= MIN_LENGTH_TO_SHOW_PREFIX else ""
    return f"{prefix}…({length} chars)"


def remember_secret(value: str) -> None:
    """From now on, `redact_secrets` masks `value` wherever it appears."""
    global _remembered_secrets
    if len(value) >= MIN_REMEMBERED_SECRET_CHARS:
        _remembered_secrets = _remembered_secrets | {value}


def redact_secrets(text: str) -> str:
    """`text` with every remembered secret replaced by its mask."""
    for secret in _remembered_secrets:
        if secret in text:
            text = text.replace(secret, mask_secret(secret))
    return text


def mask_secret_parts(value: str) -> str:
    """A config value as it may be echoed: credential-like parts masked, the rest as written.

    For messages about a value that is wrong (a URL with a query, an api_version with more
    after the date): the user sees which value is meant without the key pasted into it.
    """
    value = _SECRET_PARAMETER.sub(lambda m: m[1] + mask_secret(m[2]), value)
    return _KEY_SHAPED.sub(lambda m: mask_secret(m[0]), redact_secrets(value))


def safe_line(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """Outside text made fit for one line of a log, a status reply or a terminal.

    Remembered secrets are masked; every character that is not printable (control
    characters such as ESC and line breaks, format and separator characters) becomes a space;
    runs of whitespace become one space; the result is stripped and keeps at most `limit`
    characters of the text, followed by "…" when something was cut.
    """
    # Whole text first: a cut must not leave the first part of a key behind.
    text = redact_secrets(text)
    # Megabytes from a hostile peer cost no more than a short message: only a bounded head
    # gets the per-character work.
    head = text[: 4 * limit]
    printable = "".join(char if char.isprintable() else " " for char in head)
    line = " ".join(printable.split())
    if len(line) > limit or len(head) < len(text):
        line = line[:limit].rstrip() + CUT_MARK
    return line


def shown_value(value: str) -> str:
    """A string value as a message quotes it: in double quotes, escapes visible, any
    credential-like part masked (people paste whole portal URLs, api-key= and all)."""
    return safe_line(json.dumps(mask_secret_parts(value), ensure_ascii=False))
