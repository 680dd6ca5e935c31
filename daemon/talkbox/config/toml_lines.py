"""Where each key of a TOML document is written, and how a key path is spelled.

tomllib gives values without positions; the messages about a config name the line of each
key, so this module scans the text that tomllib has already accepted, and spells key paths
the way TOML does (`wake.models[1]`, quoted where a part is not a bare key).
"""

from __future__ import annotations

import json
import re
import tomllib

KeyPath = tuple[str | int, ...]

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dotted_key(path: KeyPath) -> str:
    """`("wake", "models", 1)` -> `wake.models[1]`; unusual keys are quoted as TOML does."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{name}" if text else name
    return text


def locate_keys(text: str) -> dict[KeyPath, int]:
    """Map every key path of a valid TOML document to the 1-based line where it is defined.

    Tables, dotted keys, inline tables and array elements (as int parts) are all included;
    an implicit parent table maps to the line of its first descendant.
    """
    return _KeyLocator(text).run()


class _KeyLocator:
    """A small scanner over TOML text that tomllib has already accepted.

    tomllib gives values without positions; this walks the same text only far enough to
    note where each key starts, skipping over values (strings may span lines).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.found: dict[KeyPath, int] = {}
        self.array_table_counts: dict[KeyPath, int] = {}

    def run(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return self.found
            if self.text.startswith("[[", self.pos):
                self.pos += 2
                key = self._read_key()
                self._expect("]]")
                index = self.array_table_counts.get(key, 0)
                self.array_table_counts[key] = index + 1
                table = (*key, index)
                self._note(table, start=0)
            elif self.text.startswith("[", self.pos):
                self.pos += 1
                table = self._read_key()
                self._expect("]")
                self._note(table, start=0)
            else:
                self._read_pair(table)

    def _note(self, path: KeyPath, start: int) -> None:
        # Record the path and any implicit parents it creates below `start` parts.
        for size in range(max(start, 1), len(path) + 1):
            self.found.setdefault(path[:size], self.line)

    def _expect(self, token: str) -> None:
        self._skip_blank(newlines=False)
        if not self.text.startswith(token, self.pos):
            raise ValueError(f"expected {token!r} at line {self.line}")
        self.pos += len(token)

    def _skip_blank(self, newlines: bool) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r":
                self.pos += 1
            elif char == "\n" and newlines:
                self.line += 1
                self.pos += 1
            elif char == "#" and newlines:
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _read_key(self) -> KeyPath:
        parts: list[str | int] = []
        while True:
            self._skip_blank(newlines=False)
            parts.append(self._read_simple_key())
            self._skip_blank(newlines=False)
            if self.text.startswith(".", self.pos):
                self.pos += 1
            else:
                return tuple(parts)

    def _read_simple_key(self) -> str:
        start = self.pos
        char = self.text[start]
        if char in "\"'":
            self._skip_string()
            # Let tomllib decode escapes exactly as it did for the document.
            decoded: str = tomllib.loads(f"k = {self.text[start : self.pos]}")["k"]
            return decoded
        while self.pos < len(self.text) and BARE_KEY.match(self.text[self.pos]):
            self.pos += 1
        if self.pos == start:
            raise ValueError(f"expected a key at line {self.line}")
        return self.text[start : self.pos]

    def _read_pair(self, table: KeyPath) -> None:
        key = (*table, *self._read_key())
        self._note(key, start=len(table) + 1)
        self._expect("=")
        self._skip_blank(newlines=False)
        self._skip_value(key)

    def _skip_value(self, path: KeyPath) -> None:
        char = self.text[self.pos]
        if char in "\"'":
            self._skip_string()
        elif char == "[":
            self._skip_array(path)
        elif char == "{":
            self._skip_inline_table(path)
        else:
            # Numbers, booleans, dates: they end at a separator, a comment or the line end.
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}#\n":
                self.pos += 1

    def _skip_array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self._skip_blank(newlines=True)
            if self.text[self.pos] == "]":
                self.pos += 1
                return
            self._note((*path, index), start=len(path) + 1)
            self._skip_value((*path, index))
            index += 1
            self._skip_blank(newlines=True)
            if self.text[self.pos] == ",":
                self.pos += 1

    def _skip_inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self._skip_blank(newlines=True)
            if self.text[self.pos] == "}":
                self.pos += 1
                return
            self._read_pair(path)
            self._skip_blank(newlines=True)
            if self.text[self.pos] == ",":
                self.pos += 1

    def _skip_string(self) -> None:
        text, quote = self.text, self.text[self.pos]
        escapes = quote == '"'
        if text.startswith(quote * 3, self.pos):
            closing = self._find_unescaped(quote * 3, self.pos + 3, escapes)
            # Up to two quotes right before the closing delimiter belong to the content,
            # so the closing run of quotes can be up to five long.
            end = closing
            while end < len(text) and text[end] == quote and end - closing < 5:
                end += 1
        else:
            end = self._find_unescaped(quote, self.pos + 1, escapes) + 1
        self.line += text.count("\n", self.pos, end)
        self.pos = end

    def _find_unescaped(self, delimiter: str, start: int, escapes: bool) -> int:
        """Index of the first `delimiter` at or after `start` that no backslash escapes."""
        index = start
        text = self.text
        while not text.startswith(delimiter, index):
            if index >= len(text):
                raise ValueError("unterminated string")
            index += 2 if escapes and text[index] == "\\" else 1
        return index
