"""The one rule for outside text (`safe_line`) and how secrets are shown (masks, redaction)."""

from __future__ import annotations

import time

import pytest

from talkbox.safe_text import (
    MAX_LINE_CHARS,
    mask_secret,
    mask_secret_parts,
    redact_secrets,
    remember_secret,
    safe_line,
)
from talkbox.secrets import ApiKey

KEY = "sk-unit-test-key-5f4e3d2c1b0a"


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        ("red\x1b[31m text", "red [31m text"),  # ESC: the sequence is left harmless, visible
        ("one\ntwo\r\nthree", "one two three"),  # no second line, no carriage return
        ("bell\x07 and del\x7f", "bell and del"),
        ("8-bit CSI\x9b2J", "8-bit CSI 2J"),  # C1 controls too
        ("line\u2028separator\u2029para", "line separator para"),
        ("bidi\u202etxet", "bidi txet"),  # format characters cannot reorder what follows
        ("  tabs\t\tand   runs  ", "tabs and runs"),
        ("", ""),
        ("Grüße, 你好", "Grüße, 你好"),  # printable text of any script is kept as it is
    ],
)
def test_outside_text_becomes_one_printable_line(hostile: str, shown: str) -> None:
    assert safe_line(hostile) == shown


def test_long_text_is_cut_with_a_mark_and_costs_no_more_than_short_text() -> None:
    huge = "word " * 400_000 + "\x1b" * 2_000_000
    started = time.perf_counter()
    line = safe_line(huge)
    assert time.perf_counter() - started < 0.2
    assert line.endswith("…") and len(line) <= MAX_LINE_CHARS + 1
    assert safe_line("abc", limit=3) == "abc"
    assert safe_line("abcd", limit=3) == "abc…"


def test_a_text_of_only_whitespace_past_the_head_is_still_marked_as_cut() -> None:
    assert safe_line("ok" + " " * 10_000 + "hidden", limit=10) == "ok…"


def test_the_key_is_masked_even_where_the_cut_would_fall_inside_it() -> None:
    key = ApiKey(KEY, "test")
    for prefix_length in range(150, 200, 7):
        line = safe_line("x" * prefix_length + key.reveal() + " tail")
        assert KEY[:8] not in line, prefix_length
    assert safe_line(f"Incorrect API key provided: {KEY}.") == (
        f"Incorrect API key provided: {key.masked()}."
    )


def test_redaction_masks_remembered_secrets_only_and_ignores_tiny_ones() -> None:
    remember_secret("sk-remembered-0000000000")
    remember_secret("abc")  # too short to be a key: masking it would garble every line
    text = "sk-remembered-0000000000 and abc and sk-other-1111111111"
    assert redact_secrets(text) == "sk-…(24 chars) and abc and sk-other-1111111111"


def test_a_mask_shows_a_prefix_only_of_a_long_secret() -> None:
    assert mask_secret("sk-0123456789abcdef") == "sk-…(19 chars)"
    assert mask_secret("short-secret") == "…(12 chars)"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (
            "https://res.openai.azure.com/openai/realtime?api-version=2024-10-01-preview"
            "&deployment=gpt&api-key=0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "https://res.openai.azure.com/openai/realtime?api-version=2024-10-01-preview"
            "&deployment=gpt&api-key=0f1…(32 chars)",
        ),
        (
            "2024-10-01-preview&api-key=sk-test-abcdefgh",
            "2024-10-01-preview&api-key=sk-…(16 chars)",
        ),
        ("sk-proj-AbCdEf0123456789", "sk-…(24 chars)"),
        ("0f1e2d3c4b5a69788796a5b4c3d2e1f0", "0f1…(32 chars)"),  # an Azure key on its own
        ("x?token=abc&sig=s3cr3t", "x?token=…(3 chars)&sig=…(6 chars)"),
        # What is no secret stays readable: deployment names, dates, hosts.
        ("gpt-4o-realtime-preview-2024-12-17", "gpt-4o-realtime-preview-2024-12-17"),
        ("https://contoso-eastus2.openai.azure.com", "https://contoso-eastus2.openai.azure.com"),
        ("2024-10-01-previewx", "2024-10-01-previewx"),
    ],
)
def test_config_values_are_echoed_with_credential_parts_masked(value: str, shown: str) -> None:
    assert mask_secret_parts(value) == shown
