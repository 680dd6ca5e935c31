"""The API key: lookup order, file problems, and a mask that never shows the key."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

from talkbox.config import API_KEY_PLACES, INSTALLED_KEY_FILE, RealtimeConfig
from talkbox.errors import ConfigError
from talkbox.secrets import ApiKey, resolve_api_key

REPO = Path(__file__).resolve().parents[2]

# A sentinel: if any part of its middle shows up in output, the key leaked.
SENTINEL = "sk-LEAKCHECK-7f3a9c1e5b2d8046aa91c3e7d5f2b8c0"
SENTINEL_MIDDLE = "LEAKCHECK"

AZURE = RealtimeConfig(
    provider="azure", endpoint="https://contoso.openai.azure.com", deployment="gpt-realtime"
)
OPENAI = RealtimeConfig(provider="openai")


def key_file(directory: Path, content: str, name: str = "api-key", mode: int = 0o600) -> Path:
    path = directory / name
    path.write_text(content)
    path.chmod(mode)
    return path


# No test may see a key installed on the machine running it.
NOT_INSTALLED = Path("/nonexistent/talkbox/api-key")


def error_of(cfg: RealtimeConfig, environ: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        resolve_api_key(cfg, environ, installed_key_file=NOT_INSTALLED)
    return caught.value


# --- lookup order -------------------------------------------------------------------------


def test_echo_needs_no_key_even_when_one_is_offered() -> None:
    assert resolve_api_key(RealtimeConfig(provider="echo"), {"TALKBOX_API_KEY": "x"}) is None


def test_the_environment_variable_comes_first(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    key_file(credentials, "from-credential")
    cfg = AZURE.model_copy(update={"api_key_file": str(key_file(tmp_path, "from-file", "k"))})
    key = resolve_api_key(
        cfg, {"TALKBOX_API_KEY": " from-env\n", "CREDENTIALS_DIRECTORY": str(credentials)}
    )
    assert key is not None
    assert key.reveal() == "from-env"
    assert key.source == "TALKBOX_API_KEY"


def test_the_systemd_credential_comes_second(tmp_path: Path) -> None:
    key_file(tmp_path, "from-credential\n", mode=0o400)
    cfg = AZURE.model_copy(update={"api_key_file": "/nonexistent/api-key"})
    key = resolve_api_key(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert key is not None
    assert key.reveal() == "from-credential"
    assert key.source == "systemd credential api-key"


def test_the_key_file_comes_last(tmp_path: Path) -> None:
    path = key_file(tmp_path, "\n  from-file \r\n", name="my-key")
    cfg = OPENAI.model_copy(update={"api_key_file": str(path)})
    # A credentials directory without an api-key file in it is passed over.
    key = resolve_api_key(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path / "empty")})
    assert key is not None
    assert key.reveal() == "from-file"
    assert key.source == f"realtime.api_key_file {path}"


def test_no_key_anywhere_names_every_place_looked_and_what_to_do(tmp_path: Path) -> None:
    error = error_of(AZURE, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    [problem] = error.problems
    assert problem.startswith('no API key found for provider = "azure"; looked at ')
    assert "the environment variable TALKBOX_API_KEY (not set)" in problem
    assert f"the systemd credential {tmp_path}/api-key (no such file)" in problem
    assert "realtime.api_key_file (not set)" in problem
    assert "sudo install -m600 /dev/stdin /etc/talkbox/api-key" in problem


def places_in_order(text: str, places: list[str]) -> list[str]:
    """`places` in the order of their first mention in `text` (each must be mentioned)."""
    for place in places:
        assert place in text, (place, text)
    return sorted(places, key=text.index)


# The four places as each text names them, in the order resolve_api_key looks.
PLACE_NAMES = ["TALKBOX_API_KEY", "api-key", "api_key_file", "/etc/talkbox/api-key"]


def test_the_lookup_order_said_to_owners_is_the_order_looked_in(tmp_path: Path) -> None:
    problem = error_of(OPENAI, {"CREDENTIALS_DIRECTORY": str(tmp_path)}).problems[0]
    looked_at = problem.split(". To fix:")[0]
    looked_order = places_in_order(
        looked_at, ["TALKBOX_API_KEY", f"{tmp_path}/api-key", "api_key_file", str(NOT_INSTALLED)]
    )
    assert looked_order == [
        "TALKBOX_API_KEY", f"{tmp_path}/api-key", "api_key_file", str(NOT_INSTALLED)
    ]
    assert places_in_order(API_KEY_PLACES, PLACE_NAMES) == PLACE_NAMES
    assert str(INSTALLED_KEY_FILE) == "/etc/talkbox/api-key"


def test_readme_and_the_shipped_config_state_the_lookup_order() -> None:
    for document, marker in [
        (REPO / "README.md", "Order of lookup:"),
        (REPO / "config" / "talkbox.toml", "The key is looked up in this order:"),
    ]:
        text = document.read_text()
        assert marker in text, document
        sentence = text[text.index(marker) :].split(".\n")[0].split(". ")[0]
        assert places_in_order(sentence, PLACE_NAMES) == PLACE_NAMES, (document, sentence)


def test_no_credentials_directory_is_said_so() -> None:
    problem = error_of(OPENAI, {}).problems[0]
    assert "the systemd credential api-key (CREDENTIALS_DIRECTORY not set)" in problem


# --- broken sources -----------------------------------------------------------------------


def test_an_empty_variable_and_an_empty_credential_count_as_not_given(tmp_path: Path) -> None:
    # The systemd unit sets an empty credential when /etc/talkbox/api-key does not exist.
    key_file(tmp_path, "\n")
    environ = {"TALKBOX_API_KEY": "  ", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    problem = error_of(AZURE, environ).problems[0]
    assert "the environment variable TALKBOX_API_KEY (set but empty)" in problem
    assert f"the systemd credential {tmp_path}/api-key (empty)" in problem
    path = key_file(tmp_path, SENTINEL, name="other")
    key = resolve_api_key(AZURE.model_copy(update={"api_key_file": str(path)}), environ)
    assert key is not None
    assert key.reveal() == SENTINEL


def test_an_empty_key_file_is_an_error(tmp_path: Path) -> None:
    path = key_file(tmp_path, "\n\n")
    problem = error_of(AZURE.model_copy(update={"api_key_file": str(path)}), {}).problems[0]
    assert problem.startswith(f"realtime.api_key_file {path} is empty")


def test_a_missing_key_file_names_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-key"
    problem = error_of(AZURE.model_copy(update={"api_key_file": str(missing)}), {}).problems[0]
    assert problem.startswith(f"realtime.api_key_file {missing}: no such file. To fix: ")


def test_an_unreadable_key_file_is_an_error(tmp_path: Path) -> None:
    # A directory stands in for an unreadable file: tests may run as root, who reads anything.
    problem = error_of(AZURE.model_copy(update={"api_key_file": str(tmp_path)}), {}).problems[0]
    assert problem.startswith(f"realtime.api_key_file {tmp_path}: cannot read it: ")


def test_a_huge_key_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = key_file(tmp_path, "k" * 10_000)
    problem = error_of(AZURE.model_copy(update={"api_key_file": str(path)}), {}).problems[0]
    assert "larger than 4096 bytes" in problem


def test_a_binary_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_bytes(b"\xff\xfe\x00key")
    problem = error_of(AZURE.model_copy(update={"api_key_file": str(path)}), {}).problems[0]
    assert problem.endswith("not text; the file must hold only the key")


@pytest.mark.parametrize("content", [f"{SENTINEL}\nsecond line", f"{SENTINEL} x", "a\x07b"])
def test_a_key_with_breaks_inside_is_refused_without_showing_it(
    tmp_path: Path, content: str
) -> None:
    path = key_file(tmp_path, content)
    error = error_of(AZURE.model_copy(update={"api_key_file": str(path)}), {})
    assert "spaces, line breaks or control characters inside the key" in str(error)
    assert SENTINEL_MIDDLE not in str(error)


def test_a_key_file_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = key_file(tmp_path, SENTINEL, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="talkbox.secrets"):
        resolve_api_key(
            AZURE.model_copy(update={"api_key_file": str(path)}),
            {},
            installed_key_file=NOT_INSTALLED,
        )
    assert [r.getMessage() for r in caplog.records] == [
        f"realtime.api_key_file {path} can be read by other users; restrict it with chmod 600"
    ]


def test_a_private_key_file_is_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = key_file(tmp_path, SENTINEL, mode=0o600)
    with caplog.at_level(logging.DEBUG, logger="talkbox.secrets"):
        resolve_api_key(
            AZURE.model_copy(update={"api_key_file": str(path)}),
            {},
            installed_key_file=NOT_INSTALLED,
        )
    assert caplog.records == []


# --- the mask -----------------------------------------------------------------------------


def test_str_and_repr_show_at_most_three_characters_and_the_length() -> None:
    key = ApiKey(SENTINEL, "TALKBOX_API_KEY")
    assert str(key) == repr(key) == f"sk-…({len(SENTINEL)} chars)"
    assert key.reveal() == SENTINEL


def test_a_short_key_shows_no_characters_at_all() -> None:
    assert str(ApiKey("abcdefgh", "TALKBOX_API_KEY")) == "…(8 chars)"


def test_no_formatting_or_logging_shows_the_key(caplog: pytest.LogCaptureFixture) -> None:
    key = ApiKey(SENTINEL, "TALKBOX_API_KEY")
    shown = [
        str(key),
        repr(key),
        f"{key}",
        f"{key!r}",
        format(key),
        repr([key]),
        repr({"k": key}),
        "%s %r" % (key, key),  # noqa: UP031 -- %-formatting is one of the paths under test
    ]
    logger = logging.getLogger("talkbox.test_secrets")
    with caplog.at_level(logging.DEBUG, logger="talkbox.test_secrets"):
        logger.info("key %s", key)
        logger.info("key %r", key)
        logger.info("key %s", {"api_key": key})
        logger.info(f"key {key}")
    shown += [record.getMessage() for record in caplog.records]
    for text in shown:
        assert SENTINEL_MIDDLE not in text, text
        assert "sk-…(" in text


def test_the_key_keeps_no_readable_attribute_but_its_source() -> None:
    key = ApiKey(SENTINEL, "TALKBOX_API_KEY")
    assert not hasattr(key, "__dict__")
    assert key.source == "TALKBOX_API_KEY"


def test_a_key_cannot_be_pickled() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(ApiKey(SENTINEL, "TALKBOX_API_KEY"))


def test_a_broken_credential_is_reported_not_passed_over(tmp_path: Path) -> None:
    # A credential with two lines is a mistake to fix, not a reason to use the key file;
    # and neither key may appear in the report.
    key_file(tmp_path, f"{SENTINEL}\n{SENTINEL}")
    path = key_file(tmp_path, SENTINEL, name="other")
    error = error_of(
        AZURE.model_copy(update={"api_key_file": str(path)}),
        {"CREDENTIALS_DIRECTORY": str(tmp_path)},
    )
    assert error.problems[0].startswith("systemd credential api-key has spaces, line breaks")
    assert SENTINEL_MIDDLE not in str(error)


# --- the key file install.sh writes ----------------------------------------------------


def test_the_installed_key_file_is_the_last_resort(tmp_path: Path) -> None:
    installed = key_file(tmp_path, "sk-installed-key-0123456789\n")
    key = resolve_api_key(AZURE, {}, installed_key_file=installed)
    assert key is not None and key.reveal() == "sk-installed-key-0123456789"
    assert str(installed) in key.source
    from_env = resolve_api_key(AZURE, {"TALKBOX_API_KEY": "sk-env"}, installed_key_file=installed)
    assert from_env is not None and from_env.reveal() == "sk-env"


def test_no_key_anywhere_names_the_installed_key_file_too() -> None:
    error = error_of(AZURE, {})
    assert str(NOT_INSTALLED) in str(error)


def test_an_unreadable_installed_key_file_says_to_use_sudo(tmp_path: Path) -> None:
    not_a_file = tmp_path / "api-key"
    not_a_file.mkdir()  # root reads any file, so a directory stands in for "unreadable"
    with pytest.raises(ConfigError, match="sudo"):
        resolve_api_key(AZURE, {}, installed_key_file=not_a_file)


def test_a_credentials_directory_that_cannot_be_looked_into_is_named_not_a_traceback(
    tmp_path: Path,
) -> None:
    # Root may look anywhere, so a name too long to look up stands in for "permission
    # denied" (systemd's credentials directory, seen from another process of the unit).
    unlookable = tmp_path / ("x" * 300)
    error = error_of(AZURE, {"CREDENTIALS_DIRECTORY": str(unlookable)})
    message = str(error)
    assert "the systemd credential api-key cannot be looked at by this user" in message
    assert "File name too long" in message
