"""The API key: where it is looked for, and a holder that never shows it.

This module follows the lookup order that `talkbox.config.API_KEY_PLACES` states
(TALKBOX_API_KEY, the systemd credential `api-key`, `realtime.api_key_file`, the key file
install.sh writes) and owns `ApiKey`, whose str/repr are a mask. The only way to get the
value is `ApiKey.reveal()`, called where the key goes into a request header. No message
raised or logged here contains the key.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Mapping
from pathlib import Path

from talkbox.config import (
    API_KEY_CREDENTIAL,
    API_KEY_ENV_VAR,
    INSTALLED_KEY_FILE,
    INSTALLED_MQTT_PASSWORD_FILE,
    MQTT_PASSWORD_CREDENTIAL,
    MQTT_PASSWORD_PLACES,
    MqttConfig,
    RealtimeConfig,
)
from talkbox.errors import ConfigError
from talkbox.owner_files import FileRefused, read_regular_file
from talkbox.safe_text import mask_secret, remember_secret

ENV_VAR = API_KEY_ENV_VAR
CREDENTIAL_NAME = API_KEY_CREDENTIAL
# Real keys are well under 1 KiB; a bigger file is the wrong file (and is not read whole).
MAX_KEY_FILE_BYTES = 4096

_log = logging.getLogger(__name__)

_HOW_TO_PROVIDE = (
    "store the key readable by root only with `sudo install -m600 /dev/stdin "
    f"{INSTALLED_KEY_FILE}` (paste the key, Enter, Ctrl-D), which the talkbox systemd unit "
    f"passes in as the credential {CREDENTIAL_NAME} "
    f"(LoadCredential={CREDENTIAL_NAME}:{INSTALLED_KEY_FILE}); "
    "when running by hand, set realtime.api_key_file to a key file you can read, "
    f"or export {ENV_VAR}"
)


class ApiKey:
    """A secret API key. str() and repr() show a mask; `reveal()` gives the value.

    Making one also makes every log line and every text from the service mask this value
    (`safe_text.remember_secret`): a 401 body or an error message quoting it shows the mask.
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source
        remember_secret(value)

    def reveal(self) -> str:
        """The key itself: only for putting it into a request header."""
        return self._value

    def masked(self) -> str:
        """Like `sk-…(41 chars)`: at most the first 3 characters, and only of a long key."""
        return mask_secret(self._value)

    def __repr__(self) -> str:
        return self.masked()

    def __str__(self) -> str:
        return self.masked()

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the key in clear to wherever the pickle goes.
        raise TypeError("an ApiKey cannot be pickled")


def _exists(path: Path, what: str) -> bool:
    """Whether `path` exists; a place this user may not even look into is a ConfigError."""
    try:
        return path.exists()
    except OSError as error:
        raise ConfigError(
            [
                f"{what} cannot be looked at by this user ({path}: {error.strerror}); run "
                "this command as the user the service runs as, or with sudo"
            ]
        ) from None


def resolve_api_key(
    cfg: RealtimeConfig,
    environ: Mapping[str, str],
    *,
    installed_key_file: Path = INSTALLED_KEY_FILE,
) -> ApiKey | None:
    """Find the API key for `cfg.provider`; None for "echo", which needs none.

    Order (the one API_KEY_PLACES states): $TALKBOX_API_KEY, then
    $CREDENTIALS_DIRECTORY/api-key if that file exists, then realtime.api_key_file if set,
    then the key file install.sh writes (`installed_key_file`), so that
    `sudo talkbox ask ...` run by hand finds the key the service uses. Raises
    ConfigError naming every place looked at, or the source that is broken (unreadable, not
    text, more than the key on one line).
    """
    if cfg.provider == "echo":
        return None
    # An empty variable or credential counts as "not given": the systemd unit sets an empty
    # api-key credential as the fallback for a missing /etc/talkbox/api-key.
    looked_at = []
    from_environment = environ.get(ENV_VAR)
    if from_environment is None:
        looked_at.append(f"the environment variable {ENV_VAR} (not set)")
    elif not from_environment.strip():
        looked_at.append(f"the environment variable {ENV_VAR} (set but empty)")
    else:
        return _key_from_text(from_environment, ENV_VAR, f"the environment variable {ENV_VAR}")

    credentials_directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if credentials_directory:
        credential = Path(credentials_directory) / CREDENTIAL_NAME
        source = f"systemd credential {CREDENTIAL_NAME}"
        if not _exists(credential, f"the {source}"):
            looked_at.append(f"the systemd credential {credential} (no such file)")
        else:
            text = _read_key_file(credential, source)
            if text.strip():
                return _key_from_text(text, source, source)
            looked_at.append(f"the systemd credential {credential} (empty)")
    else:
        looked_at.append(
            f"the systemd credential {CREDENTIAL_NAME} (CREDENTIALS_DIRECTORY not set)"
        )

    if cfg.api_key_file:
        # Set on purpose, so an empty file is an error rather than "no key".
        source = f"realtime.api_key_file {cfg.api_key_file}"
        return _key_from_text(_read_key_file(Path(cfg.api_key_file), source), source, source)
    looked_at.append("realtime.api_key_file (not set)")

    if _exists(installed_key_file, f"the installed key file {installed_key_file}"):
        source = f"the installed key file {installed_key_file}"
        try:
            text = _read_key_file(installed_key_file, source)
        except ConfigError:
            raise ConfigError(
                [
                    f"{source} exists but cannot be read by this user; it is root-only on "
                    "purpose: run this command with sudo"
                ]
            ) from None
        if text.strip():
            return _key_from_text(text, source, source)
        looked_at.append(f"{installed_key_file} (empty)")
    else:
        looked_at.append(f"{installed_key_file} (no such file)")

    raise ConfigError(
        [
            f'no API key found for provider = "{cfg.provider}"; looked at '
            + ", ".join(looked_at)
            + f". To fix: {_HOW_TO_PROVIDE}"
        ]
    )


def _read_key_file(path: Path, source: str) -> str:
    try:
        data = read_regular_file(path, MAX_KEY_FILE_BYTES)
        # Only after the reader accepted it: the path may point at a FIFO or a device.
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise ConfigError([f"{source}: no such file. To fix: {_HOW_TO_PROVIDE}"]) from None
    except PermissionError:
        raise ConfigError(
            [
                f"{source}: permission denied; make it readable by the user talkbox runs as, or "
                f"keep it root-only at {INSTALLED_KEY_FILE}, which the systemd unit passes in as "
                f"the credential {CREDENTIAL_NAME}"
            ]
        ) from None
    except FileRefused as refusal:
        raise ConfigError(
            [f"{source}: cannot read it: it {refusal}; the file must hold only the key"]
        ) from None
    except OSError as error:
        raise ConfigError([f"{source}: cannot read it: {error.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: not text; the file must hold only the key"]) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("%s can be read by other users; restrict it with chmod 600", source)
    return text


def _key_from_text(text: str, source: str, described: str) -> ApiKey:
    value = text.strip()
    if not value:
        raise ConfigError(
            [f"{described} is empty; it must hold the API key. To fix: {_HOW_TO_PROVIDE}"]
        )
    # Spaces, line breaks or control characters inside mean a second line or a paste
    # accident; such a value would also be rejected as an HTTP header.
    if any(not (char.isprintable() and not char.isspace()) for char in value):
        raise ConfigError(
            [
                f"{described} has spaces, line breaks or control characters "
                "inside the key; it must hold only the key, on one line"
            ]
        )
    return ApiKey(value, source)


def read_token_file(token_file: Path, what: str, environ: Mapping[str, str]) -> ApiKey:
    """A bearer token from a file of its own (an MCP server's `token_file`), for `what` (like
    "tools.mcp home"). A systemd credential named like the file is read instead when the unit
    passes one in (`LoadCredential=NAME:/etc/talkbox/NAME` keeps the file root-only). ConfigError
    says what is wrong with the file, never what is in it."""
    credentials_directory = environ.get("CREDENTIALS_DIRECTORY", "")
    path = token_file
    if credentials_directory:
        credential = Path(credentials_directory) / token_file.name
        if credential.is_file():
            path = credential
    source = f"{what} token_file {path}"
    data = _read_secret_file(
        path,
        source,
        missing=f"{source}: no such file",
        permission=(
            f"{source}: permission denied; let the service read it as a credential "
            f"(LoadCredential={token_file.name}:{token_file} in a drop-in, see README.md) "
            "or make it readable by the user talkbox runs as"
        ),
    )
    value = data.decode("utf-8", "replace").strip()
    if not value or any(not (char.isprintable() and not char.isspace()) for char in value):
        raise ConfigError(
            [f"{source}: must hold only the token, on one line"
             + ("" if value else " (it is empty)")]
        )
    return ApiKey(value, source)


def resolve_mqtt_password(
    cfg: MqttConfig,
    environ: Mapping[str, str],
    *,
    installed_file: Path = INSTALLED_MQTT_PASSWORD_FILE,
) -> ApiKey | None:
    """The broker password, held like the API key (masked, remembered for masking); None when
    no username is set or none of MQTT_PASSWORD_PLACES holds one (a broker may take a user
    without a password). A file named in mqtt.password_file must exist and hold it."""
    if not cfg.username:
        return None
    credentials_directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if credentials_directory:
        credential = Path(credentials_directory) / MQTT_PASSWORD_CREDENTIAL
        if _exists(credential, f"the systemd credential {MQTT_PASSWORD_CREDENTIAL}"):
            text = _read_password_file(credential, f"systemd credential {credential}")
            if text.strip():
                return _password_from_text(text, f"systemd credential {MQTT_PASSWORD_CREDENTIAL}")
    if cfg.password_file:
        source = f"mqtt.password_file {cfg.password_file}"
        return _password_from_text(_read_password_file(Path(cfg.password_file), source), source)
    if _exists(installed_file, f"the password file {installed_file}"):
        source = f"the password file {installed_file}"
        text = _read_password_file(installed_file, source)
        if text.strip():
            return _password_from_text(text, source)
    return None


def _read_password_file(path: Path, source: str) -> str:
    data = _read_secret_file(
        path,
        source,
        missing=f"{source}: no such file; the password may be in {MQTT_PASSWORD_PLACES}",
        permission=f"{source}: permission denied; make it readable by the user talkbox runs as",
    )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: not text; the file must hold only the password"]) from None


def _password_from_text(text: str, source: str) -> ApiKey:
    value = text.strip("\r\n")
    if not value or "\n" in value:
        raise ConfigError([f"{source} must hold the broker password on one line"])
    return ApiKey(value, source)


def _read_secret_file(path: Path, source: str, *, missing: str, permission: str) -> bytes:
    """The bytes of a token or password file; ConfigError names the file and what is wrong
    (`missing`, `permission`: the advice for those two), never what is in it."""
    try:
        return read_regular_file(path, MAX_KEY_FILE_BYTES)
    except FileNotFoundError:
        raise ConfigError([missing]) from None
    except PermissionError:
        raise ConfigError([permission]) from None
    except FileRefused as refusal:
        raise ConfigError([f"{source}: cannot read it: it {refusal}"]) from None
    except OSError as error:
        raise ConfigError([f"{source}: cannot read it: {error.strerror}"]) from None
