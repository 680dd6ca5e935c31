"""Config loading and validation: defaults, types, ranges, cross-field rules, line numbers."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from talkbox.config import (
    DEFAULT_CONFIG_PATH,
    AudioConfig,
    Config,
    ControlConfig,
    ConversationConfig,
    HooksConfig,
    LogConfig,
    RealtimeConfig,
    TurnConfig,
    WakeConfig,
    config_warnings,
    effective_settings,
    load_config,
    locate_keys,
    parse_config,
)
from talkbox.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "config" / "talkbox.toml"
BAD_CONFIGS = sorted((REPO / "tests" / "data" / "bad_configs").glob("*.toml"))


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    assert caught.value.source == "test.toml"
    return caught.value.problems


def only_problem(text: str) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# --- defaults and the shipped file --------------------------------------------------------


def test_an_empty_file_gives_every_default() -> None:
    cfg = parse_config("", "empty.toml")
    assert cfg == Config()
    assert cfg.realtime.provider == "echo"
    assert cfg.realtime.api_version == ""  # GA: the preview protocol is deprecated
    assert cfg.turn.silence_duration_ms == 500
    assert cfg.audio.input_rate == 16000
    assert cfg.audio.output_rate == 24000
    assert cfg.wake.models == ("hey_jarvis",)
    assert cfg.wake.thresholds == {}
    assert cfg.conversation.max_conversation_seconds == 300.0
    assert cfg.hooks.on_state == ()
    assert cfg.control.socket == "/run/talkbox/control.sock"


def test_a_partial_table_keeps_the_other_defaults() -> None:
    cfg = parse_config("[turn]\nsilence_duration_ms = 800\n", "partial.toml")
    assert cfg.turn.silence_duration_ms == 800
    assert cfg.turn.prefix_padding_ms == 300
    assert cfg.realtime == RealtimeConfig()


def test_default_config_path() -> None:
    assert Path("/etc/talkbox/config.toml") == DEFAULT_CONFIG_PATH


def test_shipped_config_parses_to_exactly_the_model_defaults() -> None:
    assert load_config(SHIPPED_CONFIG) == Config()


def test_shipped_config_lists_every_key_of_every_table() -> None:
    shipped = tomllib.loads(SHIPPED_CONFIG.read_text())
    assert shipped == effective_settings(Config())


def test_every_key_in_the_shipped_config_has_a_comment_above_it() -> None:
    lines = SHIPPED_CONFIG.read_text().splitlines()
    key_lines = {line for path, line in locate_keys("\n".join(lines)).items() if len(path) == 2}
    for line_number in key_lines:
        # Walk up through the keys of the same group to the comment that documents them.
        index = line_number - 2
        while index >= 0 and lines[index] and not lines[index].startswith("#"):
            index -= 1
        assert index >= 0 and lines[index].startswith("#"), lines[line_number - 1]


def test_shipped_config_gives_no_warnings() -> None:
    assert config_warnings(load_config(SHIPPED_CONFIG)) == []


# --- strict types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "key", "phrase"),
    [
        ('[realtime]\nvoice = 5', "realtime.voice (line 2)", "must be a string"),
        ("[realtime]\nprovider = 1", "realtime.provider (line 2)", "must be one of"),
        ('[realtime]\ntemperature = "0.8"', "realtime.temperature (line 2)", "must be a number"),
        ("[realtime]\ntemperature = true", "realtime.temperature (line 2)", "must be a number"),
        ("[turn]\nvad_aggressiveness = true", "turn.vad_aggressiveness (line 2)", "whole number"),
        ("[turn]\nprefix_padding_ms = 300.0", "turn.prefix_padding_ms (line 2)", "whole number"),
        ('[turn]\nsilence_duration_ms = "500"', "turn.silence_duration_ms (line 2)", "whole"),
        ('[audio]\nchimes = "yes"', "audio.chimes (line 2)", "must be true or false"),
        ("[audio]\nchimes = 1", "audio.chimes (line 2)", "must be true or false"),
        ("[audio]\ninput_device = 0", "audio.input_device (line 2)", "must be a string"),
        ('[wake]\nmodels = "hey_jarvis"', "wake.models (line 2)", "must be an array"),
        ('[wake]\nmodels = ["hey_jarvis", 3]', "wake.models[1] (line 2)", "must be a string"),
        ("[wake]\nthresholds = 0.5", "wake.thresholds (line 2)", "must be a table"),
        ("[conversation]\nbarge_in = false", "conversation.barge_in (line 2)", "must be one of"),
        ("[conversation]\nfollow_up_seconds = [8]", "conversation.follow_up_seconds", "number"),
        ("[log]\ntranscripts = 0", "log.transcripts (line 2)", "must be true or false"),
        ("[hooks]\non_state = '/bin/led'", "hooks.on_state (line 2)", "must be an array"),
        ("[hooks]\ntimeout_seconds = '5'", "hooks.timeout_seconds (line 2)", "must be a number"),
        ("[control]\npersist_mute = 'no'", "control.persist_mute (line 2)", "true or false"),
        ("[control]\nsocket = 5", "control.socket (line 2)", "must be a string"),
        ("turn = 5", "turn (line 1)", "must be a table"),
        ("[realtime]\napi_version = 2024-10-01", "realtime.api_version (line 2)", "date/time"),
    ],
)
def test_a_wrong_type_is_rejected_naming_key_and_line(snippet: str, key: str, phrase: str) -> None:
    problem = only_problem(snippet)
    assert problem.startswith(key)
    assert phrase in problem


def test_an_integer_is_accepted_where_a_number_is_expected() -> None:
    cfg = parse_config("[turn]\nmax_turn_seconds = 20\n[audio]\nvolume = 1\n", "ints.toml")
    assert cfg.turn.max_turn_seconds == 20.0
    assert isinstance(cfg.turn.max_turn_seconds, float)
    assert cfg.audio.volume == 1.0


def test_the_value_of_a_wrong_type_is_shown_as_written() -> None:
    assert only_problem("[log]\nlevel = 3").endswith("got the number 3")
    assert only_problem('[log]\ntranscripts = "on"').endswith('got the string "on"')


# --- ranges and choices -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("[realtime]\ntemperature = 0.3", "realtime.temperature (line 2): must be between 0.6 "
                                          "and 1.2, got 0.3"),
        ("[realtime]\nconnect_timeout_seconds = 0", "realtime.connect_timeout_seconds (line 2):"
                                                    " must be between 1 and 60, got 0"),
        ("[turn]\nsilence_duration_ms = 20", "turn.silence_duration_ms (line 2): must be "
                                             "between 100 and 5000, got 20"),
        ("[turn]\nthreshold = 1.5", "turn.threshold (line 2): must be between 0 and 1, got 1.5"),
        ("[turn]\nprefix_padding_ms = -1", "turn.prefix_padding_ms (line 2): must be between 0"
                                           " and 2000, got -1"),
        ("[turn]\nvad_aggressiveness = 4", "turn.vad_aggressiveness (line 2): must be between "
                                           "0 and 3, got 4"),
        ("[turn]\nmax_turn_seconds = 121", "turn.max_turn_seconds (line 2): must be between 1 "
                                           "and 120, got 121"),
        ("[audio]\nvolume = -0.1", "audio.volume (line 2): must be between 0 and 1, got -0.1"),
        ("[wake]\nthreshold = nan", "wake.threshold (line 2): must be between 0 and 1, got nan"),
        ("[wake]\nrefractory_seconds = inf", "wake.refractory_seconds (line 2): must be between"
                                             " 0 and 10, got inf"),
        ("[wake]\nthresholds = { hey_jarvis = 2 }", "wake.thresholds.hey_jarvis (line 2): must "
                                                    "be between 0 and 1, got 2"),
        ("[conversation]\nfollow_up_seconds = 0.5", "conversation.follow_up_seconds (line 2): "
                                                    "must be between 1 and 60, got 0.5"),
        ("[conversation]\nmax_conversation_seconds = 3600", "conversation.max_conversation_"
                                                            "seconds (line 2): must be between "
                                                            "30 and 3000, got 3600"),
        ("[hooks]\ntimeout_seconds = 0.05", "hooks.timeout_seconds (line 2): must be between "
                                            "0.1 and 60, got 0.05"),
    ],
)
def test_an_out_of_range_value_states_the_range(snippet: str, expected: str) -> None:
    assert only_problem(snippet) == expected


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[realtime]\nprovider = "azur"', 'realtime.provider (line 2): must be one of "azure", '
                                          '"openai" or "echo", got the string "azur"'),
        ('[realtime]\nnoise_reduction = "far"', "realtime.noise_reduction (line 2): must be "
                                                'one of "far_field", "near_field" or "off", '
                                                'got the string "far"'),
        ('[turn]\ndetection = "vad"', "turn.detection (line 2): must be one of"),
        ('[turn]\neagerness = "max"', "turn.eagerness (line 2): must be one of"),
        ("[audio]\ninput_rate = 44000", "audio.input_rate (line 2): must be one of 8000, 16000,"
                                        " 22050, 24000, 32000, 44100 or 48000, got the number "
                                        "44000"),
        ("[audio]\noutput_rate = 11025", "audio.output_rate (line 2): must be one of"),
        ('[conversation]\nbarge_in = "always"', "conversation.barge_in (line 2): must be one of"),
        ('[log]\nlevel = "verbose"', 'log.level (line 2): must be one of "debug", "info", '
                                     '"warning" or "error", got the string "verbose"'),
    ],
)
def test_a_value_outside_the_choices_lists_them(snippet: str, expected: str) -> None:
    assert only_problem(snippet).startswith(expected)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[realtime]\nvoice = ""', "realtime.voice (line 2): must not be empty"),
        ('[realtime]\nmodel = "  "', "realtime.model (line 2): must not be empty"),
        ('[audio]\noutput_device = ""', "audio.output_device (line 2): must not be empty"),
        ("[wake]\nmodels = []", "wake.models (line 2): must list at least one wake word model"),
        ('[wake]\nmodels = [""]', "wake.models[0] (line 2): must not be empty"),
        ('[hooks]\non_state = ["", "x"]', "hooks.on_state (line 2): the first element"),
        ('[hooks]\non_state = ["led-hook.sh"]', "hooks.on_state (line 2): the first element "
                                                "must be the absolute path of the program"),
        ('[hooks]\non_state = ["echo $TALKBOX_STATE > /tmp/state"]',
         'hooks.on_state (line 2): the first element must be the absolute path of the program '
         'to run (like "/usr/local/bin/led-ring"), got "echo $TALKBOX_STATE > /tmp/state"; '
         "talkbox runs it directly, not through a shell"),
        ('[realtime]\napi_key_file = "keys/api-key"', 'realtime.api_key_file (line 2): must be '
                                                      '"" or an absolute path'),
        ('[control]\nsocket = "control.sock"', "control.socket (line 2): must be an absolute"),
        (f'[control]\nsocket = "/{"s" * 107}"', "control.socket (line 2): must be at most 107 "
                                                "bytes long (the limit for unix socket paths), "
                                                "got 108"),
    ],
)
def test_single_field_rules(snippet: str, expected: str) -> None:
    assert only_problem(snippet).startswith(expected)


def test_a_hook_with_arguments_is_kept_as_an_argv_tuple() -> None:
    cfg = parse_config('[hooks]\non_state = ["/usr/local/bin/led", "--ring", ""]', "h.toml")
    assert cfg.hooks.on_state == ("/usr/local/bin/led", "--ring", "")


# --- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize("table", list(Config.model_fields))
def test_an_unknown_key_is_rejected_in_every_table(table: str) -> None:
    problem = only_problem(f"[{table}]\nzzz_unheard_of = 1\n")
    assert problem.startswith(f"{table}.zzz_unheard_of (line 2): unknown key; known keys: ")


def test_an_unknown_key_with_a_close_name_suggests_it() -> None:
    problem = only_problem("[turn]\n\nsilence_duraton_ms = 400\n")
    assert problem == "turn.silence_duraton_ms (line 3): unknown key; did you mean " \
                      "turn.silence_duration_ms?"


def test_an_unknown_table_lists_the_tables() -> None:
    problem = only_problem("[speaker]\nvolume = 1\n")
    assert problem == "speaker (line 1): unknown table; known tables: audio, control, " \
                      "conversation, hooks, log, mqtt, realtime, tools, turn, wake"


def test_an_unknown_table_with_a_close_name_suggests_it() -> None:
    problem = only_problem("[wakeword]\nmodels = []\n")
    assert problem == "wakeword (line 1): unknown table; did you mean wake?"


def test_a_key_outside_its_table_says_where_it_belongs() -> None:
    problem = only_problem('provider = "openai"\n')
    assert problem == 'provider (line 1): unknown key; it belongs in a table: put it under ' \
                      '[realtime] as realtime.provider'


def test_an_api_key_in_the_file_is_refused_without_repeating_it() -> None:
    problem = only_problem('[realtime]\napi_key = "sk-NEVER-SHOW-THIS"\n')
    assert problem.startswith("realtime.api_key (line 2): unknown key; the API key must not be")
    assert "NEVER-SHOW" not in problem


@pytest.mark.parametrize(
    ("name", "looks_like_a_secret"),
    [("key", True), ("apikey", True), ("api-key", True), ("openai_api_key", True),
     ("token", True), ("no_such_key", False), ("keyboard", False)],
)
def test_only_secret_looking_keys_get_the_api_key_advice(
    name: str, looks_like_a_secret: bool
) -> None:
    problem = only_problem(f'[realtime]\n"{name}" = "x"\n')
    assert ("the API key must not be in the config file" in problem) is looks_like_a_secret


def test_a_key_pasted_into_api_key_file_is_not_repeated() -> None:
    problem = only_problem('[realtime]\napi_key_file = "sk-NEVER-SHOW-THIS"\n')
    assert "NEVER-SHOW" not in problem


# --- all problems at once -----------------------------------------------------------------


def test_every_problem_is_reported_at_once_in_file_order_with_its_line() -> None:
    text = """\
# a config with many mistakes
[realtime]
provider = "openai"
temperature = 2.0

[wake]
models = [
  "hey_jarvis",
  7,
]

[turn]
silence_duration_ms = 20
bogus = true

[audio]
volume = "loud"
"""
    assert problems_of(text) == [
        "realtime.temperature (line 4): must be between 0.6 and 1.2, got 2",
        "wake.models[1] (line 9): must be a string (in quotes), got the number 7",
        "turn.silence_duration_ms (line 13): must be between 100 and 5000, got 20",
        "turn.bogus (line 14): unknown key; known keys: detection, eagerness, max_turn_seconds,"
        " prefix_padding_ms, silence_duration_ms, threshold, vad_aggressiveness",
        'audio.volume (line 17): must be a number, got the string "loud"',
    ]


def test_the_error_message_lists_the_source_and_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[turn]\nthreshold = 2\n[audio]\nvolume = 2\n", "/etc/talkbox/config.toml")
    message = str(caught.value)
    assert message.startswith("invalid configuration in /etc/talkbox/config.toml:\n")
    assert "  - turn.threshold (line 2)" in message
    assert "  - audio.volume (line 4)" in message


def test_dotted_keys_and_inline_tables_are_located() -> None:
    text = 'turn.threshold = 3\naudio = { volume = 5, chimes = true }\n'
    assert problems_of(text) == [
        "turn.threshold (line 1): must be between 0 and 1, got 3",
        "audio.volume (line 2): must be between 0 and 1, got 5",
    ]


# --- bad TOML and unreadable files --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[turn]\nthreshold = \n", "TOML syntax error (line 2, column 13): Invalid value"),
        ("[turn]\nthreshold = 0.5\nthreshold = 0.6\n", "TOML syntax error (line 3, column 16)"),
        ('[realtime]\nvoice = "alloy\n', "TOML syntax error (line 2, column 15)"),
        ("[wake]\nmodels = [\n", "TOML syntax error (line 2, end of file)"),
    ],
)
def test_bad_toml_is_one_problem_naming_the_line(text: str, expected: str) -> None:
    assert only_problem(text).startswith(expected)


def test_a_missing_file_says_how_to_get_one(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.source == str(missing)
    assert "file not found; pass --config PATH" in caught.value.problems[0]


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.problems[0].startswith("cannot read the file")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[realtime]\ninstructions = "Grüß dich"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["the file is not UTF-8 text (line 2); save it as UTF-8"]


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[log]\nlevel = \"debug\"\n")
    assert load_config(path).log.level == "debug"


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=[p.stem for p in BAD_CONFIGS])
def test_each_broken_config_in_the_corpus_is_rejected_naming_its_key(path: Path) -> None:
    first_line = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# expect: (.+)", first_line)
    assert match, f"{path.name} must start with '# expect: <key or phrase>'"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert match.group(1) in str(caught.value)
    for problem in caught.value.problems:
        assert re.search(r"line \d+", problem), problem


def test_the_corpus_is_large_enough() -> None:
    assert len(BAD_CONFIGS) >= 20


# --- cross-field rules --------------------------------------------------------------------


AZURE = '[realtime]\nprovider = "azure"\nendpoint = "https://contoso.openai.azure.com"\n' \
        'deployment = "gpt-realtime"\n'


# The first preview protocol, which Azure deprecated: talkbox still speaks it, and warns.
PREVIEW = AZURE + 'api_version = "2024-10-01-preview"\n'
DEPRECATED = ('realtime.api_version = "2024-10-01-preview" selects the preview protocol, which '
              "Azure deprecated")


def test_a_complete_azure_config_is_accepted_and_speaks_ga() -> None:
    cfg = parse_config(AZURE, "azure.toml")
    assert cfg.realtime.endpoint == "https://contoso.openai.azure.com"
    assert not cfg.realtime.uses_preview_protocol
    assert parse_config(PREVIEW, "preview.toml").realtime.uses_first_preview_protocol


def test_azure_needs_endpoint_and_deployment_pointing_at_the_provider_line() -> None:
    assert problems_of('# azure\n[realtime]\nprovider = "azure"\n') == [
        'realtime.endpoint (not set; see realtime.provider at line 3): required when provider'
        ' = "azure": your resource URL, like "https://NAME.openai.azure.com"',
        "realtime.deployment (not set; see realtime.provider at line 3): required when "
        'provider = "azure": the name you gave the realtime model deployment in Azure AI '
        "Foundry",
    ]


def test_azure_with_a_blank_deployment_is_refused() -> None:
    problem = only_problem(AZURE.replace('"gpt-realtime"', '"  "'))
    assert problem.startswith('realtime.deployment (line 4): required when provider = "azure"')


def test_the_placeholder_endpoint_is_refused_for_azure_with_a_hint() -> None:
    text = AZURE.replace("contoso", "YOUR-RESOURCE")
    assert only_problem(text) == (
        "realtime.endpoint (line 3): still has the placeholder YOUR-RESOURCE: put your Azure "
        "OpenAI resource name there (Azure portal > your resource > Keys and Endpoint)"
    )


def test_openai_gets_the_public_endpoint_by_default() -> None:
    cfg = parse_config('[realtime]\nprovider = "openai"\n', "openai.toml")
    assert cfg.realtime.endpoint == "https://api.openai.com/v1"
    assert RealtimeConfig(provider="openai").endpoint == "https://api.openai.com/v1"
    assert not cfg.realtime.uses_preview_protocol


def test_openai_keeps_an_explicit_endpoint() -> None:
    cfg = parse_config('[realtime]\nprovider = "openai"\nendpoint = "http://127.0.0.1:9"\n', "x")
    assert cfg.realtime.endpoint == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://contoso.openai.azure.com",
        "https://contoso.openai.azure.com/",
        "wss://contoso.openai.azure.com",
        "http://localhost:8080",
        "http://LOCALHOST",
        "ws://127.0.0.1:9000",
        "http://127.10.20.30",
        "http://[::1]:8765/v1",
    ],
)
def test_tls_or_loopback_endpoints_are_accepted(endpoint: str) -> None:
    text = f'[realtime]\nprovider = "azure"\nendpoint = "{endpoint}"\ndeployment = "d"\n'
    assert parse_config(text, "x").realtime.endpoint == endpoint


@pytest.mark.parametrize(
    ("endpoint", "phrase"),
    [
        ("http://contoso.openai.azure.com", "TLS is required: use https:// or wss://"),
        ("ws://192.168.1.20:8080", "TLS is required"),
        ("http://localhost.example.com", "TLS is required"),
        ("http://128.0.0.1", "TLS is required"),
        ("contoso.openai.azure.com", 'must be a URL like "https://HOST"'),
        ("ftp://contoso.openai.azure.com", 'must be a URL like "https://HOST"'),
        ("https://", 'must be a URL like "https://HOST"'),
        ("https://host:99999", "is not a valid URL"),
        ("https://user:pw@contoso.openai.azure.com", "must not contain credentials"),
        ("https://contoso.openai.azure.com/?api-key=x", "must not contain a query"),
    ],
)
def test_bad_endpoints_are_refused(endpoint: str, phrase: str) -> None:
    text = f'[realtime]\nprovider = "openai"\nendpoint = "{endpoint}"\n'
    problem = only_problem(text)
    assert problem.startswith("realtime.endpoint (line 3): ")
    assert phrase in problem


@pytest.mark.parametrize("version", ["", "2024-10-01-preview", "2025-04-01-preview", "2025-08-28"])
def test_valid_api_versions(version: str) -> None:
    cfg = parse_config(AZURE + f'api_version = "{version}"\n', "x")
    assert cfg.realtime.uses_preview_protocol == version.endswith("-preview")


@pytest.mark.parametrize(
    "version", ["v1", "2024-10-01-beta", "2024-13-01", "2024-02-30-preview", "24-10-01", "latest"]
)
def test_invalid_api_versions(version: str) -> None:
    problem = only_problem(f'[realtime]\napi_version = "{version}"\n')
    assert problem.startswith('realtime.api_version (line 2): must be "" (GA protocol) or a date')


def test_uses_preview_protocol_only_for_azure() -> None:
    assert not RealtimeConfig(provider="echo").uses_preview_protocol
    assert not RealtimeConfig(provider="openai", api_version="2024-10-01-preview") \
        .uses_preview_protocol


def test_prefix_padding_must_be_shorter_than_a_turn() -> None:
    problem = only_problem("[turn]\nmax_turn_seconds = 1\nprefix_padding_ms = 1000\n")
    assert problem == "turn.prefix_padding_ms (line 3): must be shorter than " \
                      "turn.max_turn_seconds (1000 ms), got 1000"
    assert parse_config("[turn]\nmax_turn_seconds = 1\nprefix_padding_ms = 999\n", "x")


def test_wake_models_must_be_unique_pointing_at_the_duplicate() -> None:
    problem = only_problem('[wake]\nmodels = [\n  "alexa",\n  "hey_jarvis",\n  "alexa",\n]\n')
    assert problem == 'wake.models[2] (line 5): "alexa" is listed twice'


def test_two_spellings_of_one_wake_model_are_a_duplicate() -> None:
    # The wake module would load the same model twice; the config says so before it starts.
    problem = only_problem('[wake]\nmodels = ["hey_jarvis", "Hey Jarvis"]\n')
    assert problem == (
        'wake.models[1] (line 2): "Hey Jarvis" is listed twice (as "hey_jarvis" before)'
    )
    problem = only_problem('[wake]\nmodels = ["/a/computer.tflite", "/b/computer.tflite"]\n')
    assert problem.startswith('wake.models[1] (line 2): "/b/computer.tflite" is listed twice')


def test_a_threshold_may_name_a_model_file_by_its_name() -> None:
    text = '[wake]\nmodels = ["/opt/computer.tflite"]\nthresholds = { computer = 0.6 }\n'
    assert parse_config(text, "x").wake.thresholds == {"computer": 0.6}


def test_thresholds_may_only_name_listed_models() -> None:
    text = '[wake]\nmodels = ["hey_jarvis"]\nthresholds = { hey_jarvis = 0.6, alexa = 0.7 }\n'
    assert only_problem(text) == (
        'wake.thresholds.alexa (line 3): "alexa" is not in wake.models; thresholds can only '
        "override models listed there"
    )


def test_per_model_thresholds_override_the_default() -> None:
    text = '[wake]\nmodels = ["hey_jarvis", "/opt/x.tflite"]\nthreshold = 0.4\n' \
           'thresholds = { "/opt/x.tflite" = 0.7 }\n'
    wake = parse_config(text, "x").wake
    assert wake.threshold_for("hey_jarvis") == 0.4
    assert wake.threshold_for("/opt/x.tflite") == 0.7


def test_unknown_wake_model_names_are_left_to_the_wake_module() -> None:
    assert parse_config('[wake]\nmodels = ["no_such_model"]\n', "x").wake.models == (
        "no_such_model",
    )


def test_rules_also_hold_when_models_are_built_in_code() -> None:
    with pytest.raises(ValidationError):
        RealtimeConfig(provider="azure")
    with pytest.raises(ValidationError):
        TurnConfig(max_turn_seconds=1, prefix_padding_ms=1500)
    with pytest.raises(ValidationError):
        WakeConfig(models=("alexa", "alexa"))


# --- the models themselves ----------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [RealtimeConfig, TurnConfig, AudioConfig, WakeConfig, ConversationConfig, LogConfig,
     HooksConfig, ControlConfig],
)
def test_every_table_is_frozen(model: type[RealtimeConfig]) -> None:
    section = model()
    name = next(iter(model.model_fields))
    with pytest.raises(ValidationError):
        setattr(section, name, getattr(section, name))


def test_effective_settings_is_plain_json_and_rebuilds_the_config() -> None:
    cfg = parse_config(AZURE + '[hooks]\non_state = ["/bin/led", "x"]\n', "x")
    settings_dict = effective_settings(cfg)
    assert json.loads(json.dumps(settings_dict)) == settings_dict
    assert settings_dict["hooks"]["on_state"] == ["/bin/led", "x"]
    assert settings_dict["realtime"]["deployment"] == "gpt-realtime"
    assert Config.model_validate(settings_dict) == cfg


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[realtime]\nprovider = "openai"\ntemperature = 1.0\n', ["realtime.temperature is "
                                                                  "ignored"]),
        (PREVIEW + "temperature = 1.0\n", [DEPRECATED]),
        (AZURE + "temperature = 1.0\n", ["realtime.temperature is ignored"]),
        (PREVIEW + 'noise_reduction = "off"\n', ["realtime.noise_reduction is ignored",
                                                  DEPRECATED]),
        (AZURE + 'noise_reduction = "off"\n', []),
        (AZURE + 'model = "gpt-4o-realtime-preview"\n', ["realtime.model is ignored"]),
        ('[realtime]\nprovider = "openai"\ndeployment = "d"\n', ["realtime.deployment is "
                                                                 "ignored"]),
        ('[realtime]\nprovider = "openai"\napi_version = "2025-04-01-preview"\n',
         ["realtime.api_version is ignored"]),
        ("[turn]\nthreshold = 0.7\n", ["turn.threshold is ignored"]),
        ('[turn]\ndetection = "server_vad"\nthreshold = 0.7\n', []),
        ('[turn]\neagerness = "low"\n', ["turn.eagerness is ignored"]),
        ('[turn]\ndetection = "semantic_vad"\neagerness = "low"\n', []),
        (AZURE + '[turn]\ndetection = "server_vad"\n', []),
        (PREVIEW + '[turn]\ndetection = "server_vad"\n[conversation]\nbarge_in = "wake"\n',
         [DEPRECATED, 'conversation.barge_in = "wake" cannot']),
        (PREVIEW + '[turn]\ndetection = "server_vad"\n', [DEPRECATED]),
        ("[audio]\necho_cancellation = false\n",
         ['conversation.barge_in = "speech" with audio.echo_cancellation = false']),
        ('[audio]\necho_cancellation = false\n[conversation]\nbarge_in = "wake"\n', []),
        (PREVIEW + '[turn]\ndetection = "server_vad"\n[conversation]\nbarge_in = "speech"\n',
         [DEPRECATED]),
        (AZURE + 'api_version = "2025-04-01-preview"\n[turn]\ndetection = "server_vad"\n',
         ['realtime.api_version = "2025-04-01-preview" selects the preview protocol']),
    ],
)
def test_settings_without_effect_are_warned_about(snippet: str, expected: list[str]) -> None:
    warnings = config_warnings(parse_config(snippet, "x"))
    assert [w[: len(e)] for w, e in zip(warnings, expected, strict=False)] == expected
    assert len(warnings) == len(expected)


# --- locating keys in arbitrary TOML ------------------------------------------------------


SCALARS = [
    "42", "-1.5e3", "true", "1979-05-27T07:32:00Z", '"plain"', '"a # not a comment"',
    '"brackets ] } , ["', '"escaped \\" quote"', "'literal # ] \\'", '""',
]
MULTILINE_STRINGS = [
    '"""\nfirst\n# not a comment\nlast"""',
    "'''\nraw [\n]'''",
    '"""ends in quotes"""""',
    '"""line \\\n  continued"""',
]


@st.composite
def toml_documents(draw: st.DrawFn) -> tuple[str, dict[tuple[str | int, ...], int]]:
    """A random valid TOML text and the line each key path starts on."""
    lines: list[str] = []
    expected: dict[tuple[str | int, ...], int] = {}

    def note(path: tuple[str | int, ...], line: int) -> None:
        for size in range(1, len(path) + 1):
            expected.setdefault(path[:size], line)

    def emit_value(path: tuple[str | int, ...], line: int, depth: int) -> str:
        """The text of a value starting on `line` (it may span lines); notes paths inside."""
        kinds = ["scalar", "multiline", "array", "table"] if depth < 2 else ["scalar"]
        kind = draw(st.sampled_from(kinds))
        if kind == "scalar":
            return draw(st.sampled_from(SCALARS))
        if kind == "multiline":
            return draw(st.sampled_from(MULTILINE_STRINGS))
        count = draw(st.integers(0, 3))
        if kind == "table":
            parts = []
            for index in range(count):
                note((*path, f"i{index}"), line)
                parts.append(f"i{index} = {draw(st.sampled_from(SCALARS))}")
            return "{ " + ", ".join(parts) + " }"
        if not draw(st.booleans()):
            items = []
            for index in range(count):
                note((*path, index), line)
                items.append(draw(st.sampled_from(SCALARS)))
            return "[" + ", ".join(items) + "]"
        # A multi-line array: one element per line, comments between, maybe nested values.
        text = "[ # opening"
        for index in range(count):
            element_line = line + text.count("\n") + 1
            note((*path, index), element_line)
            text += "\n  " + emit_value((*path, index), element_line, depth + 1) + ","
            if draw(st.booleans()):
                text += "\n  # between"
        return text + "\n]"

    def emit_pair(table: tuple[str | int, ...], index: int, depth: int) -> None:
        style = draw(st.sampled_from(["bare", "quoted", "literal", "dotted"]))
        key_text, key = {
            "bare": (f"k{index}", (f"k{index}",)),
            "quoted": (f'"k {index}.x"', (f"k {index}.x",)),
            "literal": (f"'k#{index}'", (f"k#{index}",)),
            "dotted": (f"d{index} . k", (f"d{index}", "k")),
        }[style]
        line = len(lines) + 1
        note((*table, *key), line)
        value = emit_value((*table, *key), line, depth)
        lines.extend(f"{key_text} = {value}".split("\n"))
        if draw(st.booleans()):
            lines[-1] += "  # trailing comment"

    for index in range(draw(st.integers(0, 3))):
        emit_pair((), index, 0)
    for table_index in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            lines.append("")
            lines.append("# a comment line")
        header_style = draw(st.sampled_from(["bare", "quoted", "dotted"]))
        header, table = {
            "bare": (f"t{table_index}", (f"t{table_index}",)),
            "quoted": (f'"t {table_index}"', (f"t {table_index}",)),
            "dotted": (f"g{table_index}.t", (f"g{table_index}", "t")),
        }[header_style]
        lines.append(f"[{header}]")
        note(table, len(lines))
        for index in range(draw(st.integers(0, 4))):
            emit_pair(table, index, 0)
        if draw(st.booleans()):
            # A sub-table later on must not move where its parent table was found.
            lines.append(f"[{header}.sub]")
            note((*table, "sub"), len(lines))
            for index in range(draw(st.integers(0, 2))):
                emit_pair((*table, "sub"), index, 0)
    return "\n".join(lines) + "\n", expected


@settings(max_examples=300, deadline=None)
@given(toml_documents())
def test_locate_keys_finds_the_line_of_every_key(
    document: tuple[str, dict[tuple[str | int, ...], int]],
) -> None:
    text, expected = document
    tomllib.loads(text)  # the generator must only make valid TOML
    found = locate_keys(text)
    assert {path: found.get(path) for path in expected} == expected


# --- never a traceback --------------------------------------------------------------------


KNOWN_KEYS = [(table, key) for table, field in Config.model_fields.items()
              for key in field.annotation.model_fields]  # type: ignore[union-attr]
ANY_VALUES = ["0", "1", "-5", "0.5", "1e9", "nan", "true", '""', '"x"', '"azure"',
              '"https://a.b"', '"http://8.8.8.8"', "[]", '["a", "a"]', "[1]", "{}",
              "{ a = 1 }", "2024-10-01", '"/run/x"', '"2024-10-01-preview"']


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([*KNOWN_KEYS, ("turn", "nope"), ("zz", "a")]),
                          st.sampled_from(ANY_VALUES)), max_size=12, unique_by=lambda p: p[0]))
def test_any_document_gives_a_config_or_a_config_error_naming_lines(
    pairs: list[tuple[tuple[str, str], str]],
) -> None:
    text = "".join(f"{table}.{key} = {value}\n" for (table, key), value in pairs)
    try:
        parse_config(text, "fuzz.toml")
    except ConfigError as error:
        assert error.problems
        for problem in error.problems:
            assert re.search(r"\(line \d+\)|\(not set; see .* at line \d+\)", problem), problem


def test_mqtt_needs_a_host_and_a_device_name_when_enabled() -> None:
    problems = problems_of("[mqtt]\nenabled = true\n")
    assert any(p.startswith("mqtt.host") and "must be set when mqtt.enabled = true" in p
               for p in problems), problems
    assert any(p.startswith("mqtt.device") for p in problems), problems
    cfg = parse_config('[mqtt]\nenabled = true\nhost = "broker"\ndevice = "kitchen"\n', "t")
    assert (cfg.mqtt.host, cfg.mqtt.device, cfg.mqtt.arbitration_ms) == ("broker", "kitchen", 150)


def test_an_mqtt_device_name_must_be_a_topic_level() -> None:
    problem = only_problem('[mqtt]\ndevice = "kitchen/#"\n')
    assert problem.startswith("mqtt.device (line 2): must be")


def test_an_mqtt_ca_file_without_tls_is_a_mistake() -> None:
    problem = only_problem(
        '[mqtt]\nenabled = true\nhost = "b"\ndevice = "k"\nca_file = "/etc/talkbox/ca.pem"\n'
    )
    assert problem.startswith("mqtt.ca_file") and "tls = true" in problem, problem
