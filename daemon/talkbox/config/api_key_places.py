"""Where the API key is looked for, and the one text that lists those places.

`talkbox.secrets.resolve_api_key` looks in exactly this order; every message that tells an
owner where the key may go (config problems, the key lookup itself, `talkbox check`) uses
these names, so the words and the lookup cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

API_KEY_ENV_VAR = "TALKBOX_API_KEY"
API_KEY_CREDENTIAL = "api-key"
# Where install.sh stores the key (root-only); the unit passes it in as a credential.
INSTALLED_KEY_FILE = Path("/etc/talkbox/api-key")

# The places, in lookup order, as one phrase that follows "use" or "through".
API_KEY_PLACES = (
    f"{API_KEY_ENV_VAR}, the systemd credential {API_KEY_CREDENTIAL}, realtime.api_key_file "
    f"or {INSTALLED_KEY_FILE} (looked up in that order)"
)

# The MQTT broker's password, looked up the same way as the key (never in the config itself):
# the systemd credential, then mqtt.password_file, then the file install.sh's README steps make.
MQTT_PASSWORD_CREDENTIAL = "mqtt-password"
INSTALLED_MQTT_PASSWORD_FILE = Path("/etc/talkbox/mqtt-password")
MQTT_PASSWORD_PLACES = (
    f"the systemd credential {MQTT_PASSWORD_CREDENTIAL}, mqtt.password_file or "
    f"{INSTALLED_MQTT_PASSWORD_FILE} (looked up in that order)"
)
