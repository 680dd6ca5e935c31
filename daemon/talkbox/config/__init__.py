"""talkbox's configuration: the TOML file contract, its validation, and its defaults.

- `schema`: the tables and keys (defaults, ranges, cross-field rules) and what a setting
  means for the service;
- `loading`: reading and parsing the file, and the warnings about settings without effect;
- `messages`: tomllib/pydantic failures as problems naming the key and its line;
- `toml_lines`: where each key is written in the text.

This package imports only the foundation modules (errors, safe_text, owner_files,
locations), pydantic and the standard library: every layer may read it.
"""

from talkbox.config.api_key_places import (
    API_KEY_CREDENTIAL,
    API_KEY_ENV_VAR,
    API_KEY_PLACES,
    INSTALLED_KEY_FILE,
    INSTALLED_MQTT_PASSWORD_FILE,
    MQTT_PASSWORD_CREDENTIAL,
    MQTT_PASSWORD_PLACES,
)
from talkbox.config.loading import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_VALUES,
    MAX_NESTING_LEVELS,
    config_warnings,
    effective_settings,
    load_config,
    parse_config,
)
from talkbox.config.messages import MAX_PROBLEMS_SHOWN
from talkbox.config.schema import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_TEMPERATURE,
    FIRST_PREVIEW_SUCCESSOR,
    MAX_UNIX_SOCKET_PATH_BYTES,
    OPENAI_DEFAULT_ENDPOINT,
    TEMPERATURE_IGNORED,
    WAKE_MODELS_EMPTY,
    AudioConfig,
    Config,
    ControlConfig,
    ConversationConfig,
    HooksConfig,
    LogConfig,
    McpServerConfig,
    MqttConfig,
    RealtimeConfig,
    RuleViolation,
    ToolsConfig,
    TurnConfig,
    WakeConfig,
    is_loopback_host,
    is_wake_model_path,
    wake_model_name,
    wake_model_violations,
)
from talkbox.config.toml_lines import KeyPath, dotted_key, locate_keys
from talkbox.locations import DEFAULT_CONFIG_PATH

__all__ = [
    "API_KEY_CREDENTIAL",
    "API_KEY_ENV_VAR",
    "API_KEY_PLACES",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_TEMPERATURE",
    "FIRST_PREVIEW_SUCCESSOR",
    "INSTALLED_KEY_FILE",
    "INSTALLED_MQTT_PASSWORD_FILE",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_VALUES",
    "MAX_NESTING_LEVELS",
    "MAX_PROBLEMS_SHOWN",
    "MAX_UNIX_SOCKET_PATH_BYTES",
    "MQTT_PASSWORD_CREDENTIAL",
    "MQTT_PASSWORD_PLACES",
    "OPENAI_DEFAULT_ENDPOINT",
    "TEMPERATURE_IGNORED",
    "WAKE_MODELS_EMPTY",
    "AudioConfig",
    "Config",
    "ControlConfig",
    "ConversationConfig",
    "HooksConfig",
    "KeyPath",
    "LogConfig",
    "McpServerConfig",
    "MqttConfig",
    "RealtimeConfig",
    "RuleViolation",
    "ToolsConfig",
    "TurnConfig",
    "WakeConfig",
    "config_warnings",
    "dotted_key",
    "effective_settings",
    "is_loopback_host",
    "is_wake_model_path",
    "load_config",
    "locate_keys",
    "parse_config",
    "wake_model_name",
    "wake_model_violations",
]
