"""The topics a talkbox uses on the broker, and the claims' wire format.

    talkbox/<device>/availability   "online" / "offline" (retained; "offline" is the last will)
    talkbox/<device>/state          {"state", "muted", "last_error", "volume", "ringing",
                                     "next_timer", "next_timer_name"} as JSON (retained)
    talkbox/<device>/muted/set      "ON" / "OFF"       (Home Assistant's switch)
    talkbox/<device>/volume/set     0..100             (Home Assistant's number; talkbox ctl volume)
    talkbox/<device>/wake           "PRESS"            (Home Assistant's button; talkbox ctl wake)
    talkbox/<device>/stop           "PRESS"
    talkbox/<device>/announce       text to say        (Home Assistant's notify entity)
    talkbox/house/claims            a `Claim` as JSON, from every speaker (not retained)
    talkbox/house/announce          text for the house: one speaker says it (arbitrated)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import get_args

from talkbox.core.arbitration import KIND_ORDER, Claim, Subject

ROOT = "talkbox"
HOUSE = f"{ROOT}/house"
CLAIMS_TOPIC = f"{HOUSE}/claims"
HOUSE_ANNOUNCE_TOPIC = f"{HOUSE}/announce"
ONLINE = "online"
OFFLINE = "offline"
# Longer announcements are cut: a notification, not a book.
MAX_ANNOUNCE_CHARS = 500
_DEVICE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class DeviceTopics:
    device: str

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.device}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def muted_set(self) -> str:
        return f"{self.base}/muted/set"

    @property
    def volume_set(self) -> str:
        return f"{self.base}/volume/set"

    @property
    def wake(self) -> str:
        return f"{self.base}/wake"

    @property
    def stop(self) -> str:
        return f"{self.base}/stop"

    @property
    def announce(self) -> str:
        return f"{self.base}/announce"

    @property
    def commands(self) -> tuple[str, ...]:
        return (self.muted_set, self.volume_set, self.wake, self.stop, self.announce)


def encode_claim(claim: Claim) -> bytes:
    return json.dumps(
        {
            "speaker": claim.speaker,
            "subject": claim.subject,
            "kind": claim.kind,
            "level_db": round(claim.level_db, 1),
            "score": round(claim.score, 3),
        },
        separators=(",", ":"),
    ).encode()


def decode_claim(payload: bytes) -> Claim | None:
    """A claim from the wire, or None for anything that is not one (never an exception)."""
    try:
        data = json.loads(payload)
        speaker, subject, kind = data["speaker"], data["subject"], data["kind"]
        level_db, score = float(data["level_db"]), float(data["score"])
    except (ValueError, TypeError, KeyError):
        return None
    if not (isinstance(speaker, str) and _DEVICE.fullmatch(speaker)):
        return None
    if subject not in get_args(Subject) or kind not in KIND_ORDER:
        return None
    if not (math.isfinite(level_db) and math.isfinite(score)):
        return None
    return Claim(speaker, subject, kind, max(-120.0, min(0.0, level_db)), max(0.0, min(1.0, score)))
