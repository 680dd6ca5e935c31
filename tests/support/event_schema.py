"""Strict validation of Realtime API events against the pinned `openai` package's type models.

This module owns the question "is this event something the real service would accept (client
events) or could have sent (server events), in this dialect?". Two dialects exist:

- ``"ga"``: OpenAI GA and Azure ``/openai/v1`` (``openai.types.realtime``);
- ``"preview"``: Azure ``/openai/realtime?api-version=...`` (= the retired OpenAI beta shape,
  ``openai.types.beta.realtime``).

The SDK unions carry a discriminator marker that pydantic ignores, so they are re-wrapped with a
real ``Field(discriminator="type")``; the SDK models also accept unknown keys, so every
``model_extra`` is walked and reported (the real service rejects unknown parameters). On top of
the schema, the documented value ranges that the SDK does not enforce are checked, and so are
what the SDK types as optional but the service requires: a function tool's ``type``, ``name``
(``^[a-zA-Z0-9_-]{1,64}$``, unique) and ``parameters`` (when given, a JSON-schema object with
``"type": "object"``), and a preview ``function_call_output`` item's ``call_id`` and ``output``.

Each problem carries the error ``code`` and ``param`` the real service would answer with, so the
fake server can reply like the real one; ``validate_*`` return plain strings for assertions.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args

import openai.types.beta.realtime as beta_types
import openai.types.realtime as ga_types
from openai.types.realtime.realtime_session_create_response import RealtimeSessionCreateResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

Dialect = Literal["ga", "preview"]
DIALECTS: tuple[Dialect, ...] = ("ga", "preview")

# Largest single input_audio_buffer.append the service takes (decoded bytes).
MAX_APPEND_BYTES = 15 * 1024 * 1024


@dataclass(frozen=True)
class Problem:
    """One reason an event is invalid, phrased the way the service's `error` event phrases it."""

    code: str  # unknown_parameter | missing_required_parameter | invalid_value | invalid_type
    param: str | None  # dotted path inside the event, e.g. "session.audio.input.format.rate"
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class _PreviewServerSession(beta_types.Session):
    """The preview session object as the service sends it in session.created/updated.

    The SDK's beta `Session` model is the request shape; the service adds these two fields.
    """

    object: Literal["realtime.session"]
    expires_at: int


def _strict_union_adapter(sdk_union: object) -> TypeAdapter[Any]:
    # The SDK union is Annotated[Union[...], PropertyInfo(discriminator=...)]; pydantic does not
    # read PropertyInfo, so without this a bad event yields one error per union member.
    members = get_args(get_args(sdk_union)[0])
    union: Any = Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007
    return TypeAdapter(union)


@cache
def _client_adapter(dialect: Dialect) -> TypeAdapter[Any]:
    module = ga_types if dialect == "ga" else beta_types
    return _strict_union_adapter(module.RealtimeClientEvent)


@cache
def _server_adapter(dialect: Dialect) -> TypeAdapter[Any]:
    module = ga_types if dialect == "ga" else beta_types
    return _strict_union_adapter(module.RealtimeServerEvent)


@cache
def _server_session_adapter(dialect: Dialect) -> TypeAdapter[Any]:
    if dialect == "ga":
        return TypeAdapter(RealtimeSessionCreateResponse)
    return TypeAdapter(_PreviewServerSession)


def _check_dialect(dialect: str) -> Dialect:
    if dialect == "ga":
        return "ga"
    if dialect == "preview":
        return "preview"
    raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")


# --- schema ---------------------------------------------------------------------------------


def _format_path(parts: Sequence[str | int]) -> str | None:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or None


def _input_path(obj: object, loc: tuple[int | str, ...]) -> list[str | int]:
    """Map a pydantic error location onto keys that really exist in the input.

    Locations also contain union-member labels (class names, tags); following the input object
    drops those and leaves the parameter path the service would name.
    """
    path: list[str | int] = []
    current = obj
    for part in loc:
        in_mapping = isinstance(current, Mapping) and isinstance(part, str) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_mapping or in_list:
            path.append(part)
            current = current[part]  # type: ignore[index]
        elif isinstance(current, Mapping) and isinstance(part, str) and not path and part == loc[0]:
            continue  # the discriminator tag at the root
        elif isinstance(current, Mapping) and part not in current and _looks_like_field(part):
            path.append(part)  # a missing field: name it even though the input lacks it
            current = None
    return path


# Labels pydantic puts in error locations for union members of builtin type.
_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "bytes"})


def _looks_like_field(part: int | str) -> bool:
    return (isinstance(part, str) and part.isidentifier() and part.islower()
            and part not in _TYPE_LABELS)


def _is_type_tag_mismatch(error: ErrorDetails) -> bool:
    loc = error["loc"]
    return error["type"] == "literal_error" and bool(loc) and loc[-1] == "type"


def _problem_from_error(obj: object, error: ErrorDetails) -> Problem:
    kind = error["type"]
    param = _format_path(_input_path(obj, tuple(error["loc"])))
    where = f"'{param}'" if param else "the event"
    if kind == "union_tag_not_found":
        return Problem("missing_required_parameter", "type", "Missing required parameter: 'type'.")
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag")
        expected = error.get("ctx", {}).get("expected_tags", "")
        return Problem("invalid_value", "type",
                       f"Invalid value: '{tag}'. Supported values are: {expected}.")
    if kind == "missing":
        return Problem("missing_required_parameter", param,
                       f"Missing required parameter: {where}.")
    if kind in ("literal_error", "enum") or kind.endswith("_parsing"):
        return Problem("invalid_value", param,
                       f"Invalid value for {where}: {error['input']!r}. {error['msg']}.")
    if kind.endswith("_type"):
        return Problem("invalid_type", param, f"Invalid type for {where}: {error['msg']}.")
    return Problem("invalid_value", param, f"Invalid value for {where}: {error['msg']}.")


def _schema_problems(obj: object, error: ValidationError) -> list[Problem]:
    errors = error.errors()
    # Union members whose `type` literal does not match only add noise when another member
    # produced the real complaint (e.g. a GA realtime session vs. the transcription session,
    # or a function_call_output item vs. the message items): drop all of those members' errors.
    mismatched = [tuple(e["loc"][:-1]) for e in errors if _is_type_tag_mismatch(e)]
    meaningful = [e for e in errors if not _is_type_tag_mismatch(e)
                  and not any(m and tuple(e["loc"][:len(m)]) == m for m in mismatched)]
    chosen = meaningful or errors
    problems: list[Problem] = []
    for e in chosen:
        problem = _problem_from_error(obj, e)
        if problem not in problems:
            problems.append(problem)
    return problems


def _unknown_keys(model: object, path: list[str | int], skip: frozenset[str] = frozenset()
                  ) -> list[list[str | int]]:
    """Paths of keys the models did not declare (pydantic keeps them in `model_extra`)."""
    found: list[list[str | int]] = []
    if isinstance(model, BaseModel):
        found += [[*path, key] for key in (model.model_extra or {})]
        for name in type(model).model_fields:
            if not path and name in skip:
                continue
            found += _unknown_keys(getattr(model, name), [*path, name])
    elif isinstance(model, list | tuple):
        for index, value in enumerate(model):
            found += _unknown_keys(value, [*path, index])
    elif isinstance(model, dict):
        for key, value in model.items():
            found += _unknown_keys(value, [*path, str(key)])
    return found


def _unknown_key_problems(paths: list[list[str | int]]) -> list[Problem]:
    problems = []
    for parts in paths:
        param = _format_path(parts)
        problems.append(Problem("unknown_parameter", param, f"Unknown parameter: '{param}'."))
    return problems


# --- documented value ranges the SDK models do not enforce -------------------------------------


def _dig(obj: object, *keys: str) -> object:
    current = obj
    for key in keys:
        if not isinstance(current, Mapping) or key not in current:
            return None
        current = current[key]
    return current


def _check_range(problems: list[Problem], value: object, param: str, low: float, high: float,
                 ) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if not low <= value <= high:
        problems.append(Problem("invalid_value", param,
                                f"Invalid '{param}': expected a value between {low} and {high},"
                                f" but got {value} instead."))


def _check_max_tokens(problems: list[Problem], value: object, param: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        _check_range(problems, value, param, 1, 4096)


def _check_turn_detection(problems: list[Problem], value: object, param: str) -> None:
    if not isinstance(value, Mapping):
        return
    _check_range(problems, value.get("threshold"), f"{param}.threshold", 0.0, 1.0)
    for key in ("silence_duration_ms", "prefix_padding_ms", "idle_timeout_ms"):
        _check_range(problems, value.get(key), f"{param}.{key}", 0, 3_600_000)


def _check_modalities(problems: list[Problem], dialect: Dialect, value: object, param: str
                      ) -> None:
    if not isinstance(value, list):
        return
    if dialect == "ga":
        allowed = [["audio"], ["text"]]
        hint = "either ['audio'] or ['text'], not both"
    else:
        allowed = [["text"], ["audio", "text"]]
        hint = "['text'] or ['audio', 'text']"
    if sorted(value) not in allowed:
        problems.append(Problem("invalid_value", param,
                                f"Invalid value for '{param}': {value!r}. Supported: {hint}."))


def _session_range_problems(dialect: Dialect, session: Mapping[str, Any], prefix: str
                            ) -> list[Problem]:
    problems: list[Problem] = []
    if dialect == "ga":
        _check_modalities(problems, dialect, session.get("output_modalities"),
                          f"{prefix}.output_modalities")
        _check_max_tokens(problems, session.get("max_output_tokens"),
                          f"{prefix}.max_output_tokens")
        _check_range(problems, _dig(session, "audio", "output", "speed"),
                     f"{prefix}.audio.output.speed", 0.25, 1.5)
        _check_turn_detection(problems, _dig(session, "audio", "input", "turn_detection"),
                              f"{prefix}.audio.input.turn_detection")
    else:
        _check_modalities(problems, dialect, session.get("modalities"), f"{prefix}.modalities")
        _check_max_tokens(problems, session.get("max_response_output_tokens"),
                          f"{prefix}.max_response_output_tokens")
        _check_range(problems, session.get("temperature"), f"{prefix}.temperature", 0.6, 1.2)
        _check_range(problems, session.get("speed"), f"{prefix}.speed", 0.25, 1.5)
        _check_turn_detection(problems, session.get("turn_detection"),
                              f"{prefix}.turn_detection")
    return problems


# A function's name, as the service requires it.
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _parameters_problems(parameters: object, param: str) -> list[Problem]:
    """A function tool's `parameters`: a JSON-schema object whose type is "object"."""
    if not isinstance(parameters, Mapping):
        return [Problem("invalid_type", param, f"Invalid type for '{param}': expected a JSON"
                        f" schema object, but got {type(parameters).__name__} instead.")]
    if parameters.get("type") != "object":
        return [Problem("invalid_value", f"{param}.type",
                        f"Invalid schema for function parameters: '{param}.type' must be"
                        f" 'object', got {parameters.get('type')!r}.")]
    properties = parameters.get("properties", {})
    if not isinstance(properties, Mapping) or not all(isinstance(v, Mapping)
                                                      for v in properties.values()):
        return [Problem("invalid_value", f"{param}.properties",
                        f"Invalid schema for function parameters: '{param}.properties' must be"
                        " an object of schemas.")]
    required = parameters.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) and r in properties
                                                 for r in required):
        return [Problem("invalid_value", f"{param}.required",
                        f"Invalid schema for function parameters: '{param}.required' must list"
                        " names from 'properties'.")]
    return []


def _tools_problems(tools: object, prefix: str) -> list[Problem]:
    """Function tool declarations: the SDK types every field optional; the service does not."""
    if not isinstance(tools, list):
        return []
    problems: list[Problem] = []
    names: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"{prefix}[{index}]"
        if not isinstance(tool, Mapping) or tool.get("type") == "mcp":
            continue
        if "type" not in tool:
            problems.append(Problem("missing_required_parameter", f"{where}.type",
                                    f"Missing required parameter: '{where}.type'."))
        name = tool.get("name")
        if name is None:
            problems.append(Problem("missing_required_parameter", f"{where}.name",
                                    f"Missing required parameter: '{where}.name'."))
        elif isinstance(name, str) and not _FUNCTION_NAME.fullmatch(name):
            problems.append(Problem("invalid_value", f"{where}.name",
                                    f"Invalid '{where}.name': string does not match pattern."
                                    " Expected a string that matches the pattern"
                                    " '^[a-zA-Z0-9_-]+$' of at most 64 characters."))
        elif isinstance(name, str) and name in names:
            problems.append(Problem("invalid_value", f"{where}.name",
                                    f"Invalid '{where}.name': duplicate function name"
                                    f" '{name}'."))
        if isinstance(name, str):
            names.add(name)
        if "parameters" in tool:
            problems += _parameters_problems(tool["parameters"], f"{where}.parameters")
    return problems


def _item_problems(dialect: Dialect, item: Mapping[str, Any]) -> list[Problem]:
    """The preview SDK types one flat item with every field optional; per type it is not."""
    if dialect != "preview" or item.get("type") != "function_call_output":
        return []
    problems = [Problem("missing_required_parameter", f"item.{key}",
                        f"Missing required parameter: 'item.{key}'.")
                for key in ("call_id", "output") if item.get(key) is None]
    problems += [Problem("unknown_parameter", f"item.{key}",
                         f"Unknown parameter: 'item.{key}' (not a field of a"
                         " function_call_output item).")
                 for key in ("role", "content", "name", "arguments") if key in item]
    return problems


def _client_value_problems(dialect: Dialect, event: Mapping[str, Any]) -> list[Problem]:
    kind = event.get("type")
    problems: list[Problem] = []
    if kind == "session.update" and isinstance(event.get("session"), Mapping):
        problems += _tools_problems(event["session"].get("tools"), "session.tools")
        problems += _session_range_problems(dialect, event["session"], "session")
    elif kind == "conversation.item.create" and isinstance(event.get("item"), Mapping):
        problems += _item_problems(dialect, event["item"])
    elif kind == "response.create" and isinstance(event.get("response"), Mapping):
        response = event["response"]
        problems += _tools_problems(response.get("tools"), "response.tools")
        if dialect == "ga":
            _check_modalities(problems, dialect, response.get("output_modalities"),
                              "response.output_modalities")
            _check_max_tokens(problems, response.get("max_output_tokens"),
                              "response.max_output_tokens")
        else:
            _check_modalities(problems, dialect, response.get("modalities"),
                              "response.modalities")
            _check_max_tokens(problems, response.get("max_response_output_tokens"),
                              "response.max_response_output_tokens")
            _check_range(problems, response.get("temperature"), "response.temperature", 0.6, 1.2)
    elif kind == "input_audio_buffer.append":
        problems += _base64_problems(event.get("audio"), "audio", MAX_APPEND_BYTES)
    elif kind == "conversation.item.truncate":
        _check_range(problems, event.get("audio_end_ms"), "audio_end_ms", 0, 2**31)
        _check_range(problems, event.get("content_index"), "content_index", 0, 2**31)
    return problems


def _base64_problems(value: object, param: str, max_bytes: int | None) -> list[Problem]:
    if not isinstance(value, str):
        return []
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return [Problem("invalid_value", param, f"Invalid value for '{param}': not valid base64.")]
    if max_bytes is not None and len(decoded) > max_bytes:
        return [Problem("invalid_value", param,
                        f"Invalid value for '{param}': {len(decoded)} bytes exceeds the"
                        f" {max_bytes} byte limit per event.")]
    return []


# The 2024-10-01-preview spec's turn_detection: server VAD with these keys and nothing else;
# create_response, interrupt_response and semantic_vad arrived with the 2024-12-17 models.
FIRST_PREVIEW_SUCCESSOR = "2024-12-17"
_FIRST_PREVIEW_TURN_KEYS = frozenset({"type", "threshold", "prefix_padding_ms",
                                      "silence_duration_ms"})


def _first_preview_problems(event: Mapping[str, Any]) -> list[Problem]:
    session = event.get("session")
    if event.get("type") != "session.update" or not isinstance(session, Mapping):
        return []
    turn = session.get("turn_detection")
    if not isinstance(turn, Mapping):
        return []
    param = "session.turn_detection"
    problems = [Problem("unknown_parameter", f"{param}.{key}",
                        f"Unknown parameter: '{param}.{key}'.")
                for key in sorted(set(turn) - _FIRST_PREVIEW_TURN_KEYS)]
    if turn.get("type") not in ("server_vad", None):
        problems.append(Problem("invalid_value", f"{param}.type",
                                f"Invalid value: '{turn.get('type')}'. Supported values are: "
                                "'server_vad'."))
    return problems


def is_first_preview(api_version: str | None) -> bool:
    """Whether an Azure preview api-version is the first protocol (before 2024-12-17)."""
    return api_version is not None and api_version < FIRST_PREVIEW_SUCCESSOR


# --- public API -------------------------------------------------------------------------------


def check_client_event(dialect: Dialect, event: object, api_version: str | None = None
                       ) -> list[Problem]:
    """Every problem the real service would reject in this client event (empty when valid).

    `api_version` (Azure preview only) narrows the preview dialect to what that dated protocol
    knew: the SDK's beta models are its latest state, which the first preview did not accept.
    """
    dialect = _check_dialect(dialect)
    if not isinstance(event, Mapping):
        return [Problem("invalid_type", None, "A client event must be a JSON object.")]
    try:
        model = _client_adapter(dialect).validate_python(event)
    except ValidationError as error:
        return _schema_problems(event, error)
    problems = _unknown_key_problems(_unknown_keys(model, []))
    if dialect == "preview" and is_first_preview(api_version):
        problems += _first_preview_problems(event)
    return problems + _client_value_problems(dialect, event)


def check_server_event(dialect: Dialect, event: object) -> list[Problem]:
    """Every way this server event departs from the dialect's models (empty when valid)."""
    dialect = _check_dialect(dialect)
    if not isinstance(event, Mapping):
        return [Problem("invalid_type", None, "A server event must be a JSON object.")]
    try:
        model = _server_adapter(dialect).validate_python(event)
    except ValidationError as error:
        return _schema_problems(event, error)
    kind = event.get("type")
    if kind in ("session.created", "session.updated") and isinstance(event.get("session"),
                                                                     Mapping):
        # The SDK types these sessions with the request shape; the service's session object
        # has a few more fields (id, object, expires_at), so check it against that shape.
        problems = _unknown_key_problems(_unknown_keys(model, [], skip=frozenset({"session"})))
        try:
            session = _server_session_adapter(dialect).validate_python(event["session"])
        except ValidationError as error:
            return problems + [
                Problem(p.code, f"session.{p.param}" if p.param else "session", p.message)
                for p in _schema_problems(event["session"], error)
            ]
        return problems + _unknown_key_problems(_unknown_keys(session, ["session"]))
    problems = _unknown_key_problems(_unknown_keys(model, []))
    if isinstance(kind, str) and kind.endswith("audio.delta"):
        problems += _base64_problems(event.get("delta"), "delta", None)
    return problems


def validate_client_event(dialect: Dialect, event: object) -> list[str]:
    """Problems with a client event as readable strings; an empty list means it is valid."""
    return [str(p) for p in check_client_event(dialect, event)]


def validate_server_event(dialect: Dialect, event: object) -> list[str]:
    """Problems with a server event as readable strings; an empty list means it is valid."""
    return [str(p) for p in check_server_event(dialect, event)]
