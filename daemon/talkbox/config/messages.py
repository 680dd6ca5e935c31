"""Turning tomllib and pydantic failures into problems an owner can act on.

Each problem names the dotted key and the line it is on (or the line of a related key when
the key itself is not in the file); values of keys that may hold a secret are never echoed.
"""

from __future__ import annotations

import datetime
import difflib
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from talkbox.config.api_key_places import API_KEY_PLACES
from talkbox.config.schema import Config, RuleViolation
from talkbox.config.toml_lines import KeyPath, dotted_key, locate_keys
from talkbox.safe_text import shown_value

MAX_PROBLEMS_SHOWN = 20

_SYNTAX_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TUPLE_TABLE_NAME = re.compile(r"\(('[^']*',? ?)+\)")


def syntax_problem(error: tomllib.TOMLDecodeError, text: str) -> str:
    message = str(error)
    position = _SYNTAX_POSITION.search(message)
    if position is not None:
        reason = message[: position.start()]
        where = f"line {position.group(1)}, column {position.group(2)}"
    else:
        reason = message.removesuffix(" (at end of document)")
        where = f"line {max(1, len(text.splitlines()))}, end of file"
    # tomllib names tables as Python tuples: "Cannot declare ('audio',) twice".
    reason = _TUPLE_TABLE_NAME.sub(_as_table_header, reason)
    return f"TOML syntax error ({where}): {reason}"


def _as_table_header(match: re.Match[str]) -> str:
    return "[" + ".".join(re.findall(r"'([^']*)'", match[0])) + "]"


@dataclass(frozen=True)
class _Problem:
    key: KeyPath
    message: str
    see: KeyPath = ()


_SECRET_WORDS = ("key", "secret", "token", "password")


def _may_echo(path: KeyPath) -> bool:
    # Values of keys that could hold a secret are never repeated back (they end up in logs).
    names = [part.lower() for part in path if isinstance(part, str)]
    return not any(word in name for name in names for word in _SECRET_WORDS)


def _describe_input(value: Any, echo: bool) -> str:
    if isinstance(value, bool):
        return f"got {str(value).lower()}"
    if isinstance(value, int | float):
        return f"got the number {value!r}"
    if isinstance(value, str):
        if not echo:
            return "got a string"
        shown = shown_value(value)
        shown = shown if len(shown) <= 42 else shown[:38] + '..."'
        return f"got the string {shown}"
    if isinstance(value, list):
        return "got an array"
    if isinstance(value, dict):
        return "got a table"
    if isinstance(value, datetime.date | datetime.time):
        return "got a date/time (put it in quotes to make it a string)"
    return f"got {type(value).__name__}"


_TYPE_EXPECTATIONS = {
    "string_type": "must be a string (in quotes)",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "tuple_type": 'must be an array, like ["a", "b"]',
    "list_type": 'must be an array, like ["a", "b"]',
    "dict_type": "must be a table, like { name = 0.5 }",
    "model_type": "must be a table",
}


def _fields_of(path: KeyPath) -> dict[str, Any] | None:
    """The field definitions of the model found at `path` under Config, if it is a model."""
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return dict(model.model_fields)


# Unknown [realtime] keys that look like someone pasting the API key into the file.
_NAMES_A_SECRET = re.compile(r"(azure[_-]?|openai[_-]?)?(api[_-]?)?(key|secret|token)")


def _unknown_key_message(path: KeyPath, value: Any) -> str:
    parent, name = path[:-1], str(path[-1])
    known = sorted(_fields_of(parent) or {})
    what = "unknown table" if not parent and isinstance(value, dict) else "unknown key"
    if _NAMES_A_SECRET.fullmatch(name.lower()) and parent == ("realtime",):
        return f"{what}; the API key must not be in the config file: use {API_KEY_PLACES}"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{what}; did you mean {dotted_key((*parent, close[0]))}?"
    homes = [
        table
        for table in Config.model_fields
        if name in (_fields_of((table,)) or {}) and (table,) != parent
    ]
    if homes:
        return (
            f"{what}; it belongs in a table: put it under [{homes[0]}] "
            f"as {dotted_key((homes[0], name))}"
        )
    listing = "tables" if not parent else "keys"
    return f"{what}; known {listing}: {', '.join(known)}"


def _problems_from_error(error: ErrorDetails) -> list[_Problem]:
    path: KeyPath = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    if kind == "rule_violations":
        violations: list[RuleViolation] = error.get("ctx", {})["violations"]
        return [
            _Problem((*path, *v.key), v.message, (*path, *v.see) if v.see else ())
            for v in violations
        ]
    if kind == "extra_forbidden":
        return [_Problem(path, _unknown_key_message(path, value))]
    echo = _may_echo(path)
    if kind in _TYPE_EXPECTATIONS:
        return [_Problem(path, f"{_TYPE_EXPECTATIONS[kind]}, {_describe_input(value, echo)}")]
    if kind == "literal_error":
        # pydantic lists choices in Python quotes; the file uses TOML's double quotes.
        choices = re.sub(r"'([^']*)'", r'"\1"', error.get("ctx", {}).get("expected", ""))
        return [_Problem(path, f"must be one of {choices}, {_describe_input(value, echo)}")]
    return [_Problem(path, error["msg"])]


def describe_problems(error: ValidationError, text: str) -> list[str]:
    problems = [p for e in error.errors() for p in _problems_from_error(e)]
    try:
        lines = locate_keys(text)
    except (IndexError, ValueError, tomllib.TOMLDecodeError):
        # The locator only serves the messages; a gap in it must not hide the problems.
        lines = {}
    located = [_locate(problem, lines) for problem in problems]
    located.sort(key=lambda item: item[0])  # stable: file order, then pydantic's order
    return [message for _, message in located]


def _locate(problem: _Problem, lines: dict[KeyPath, int]) -> tuple[float, str]:
    name = dotted_key(problem.key)
    if problem.key in lines:
        line = lines[problem.key]
        return line, f"{name} (line {line}): {problem.message}"
    anchors = [problem.see] if problem.see else []
    anchors += [problem.key[:size] for size in range(len(problem.key) - 1, 0, -1)]
    for anchor in anchors:
        if anchor in lines:
            line = lines[anchor]
            return (
                line,
                f"{name} (not set; see {dotted_key(anchor)} at line {line}): {problem.message}",
            )
    return float("inf"), f"{name} (not set): {problem.message}"


def bounded(problems: list[str]) -> list[str]:
    """At most MAX_PROBLEMS_SHOWN problems, and how many more there are."""
    if len(problems) <= MAX_PROBLEMS_SHOWN:
        return problems
    hidden = len(problems) - MAX_PROBLEMS_SHOWN
    return [*problems[:MAX_PROBLEMS_SHOWN], f"... and {hidden} more problems not shown"]
