"""Every topic name the bridge uses, built in one place from the base topic, and their parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass

BRIDGE = "bridge"
SIM = "sim"
RESERVED_IDS = frozenset({BRIDGE, SIM})

BRIDGE_COMMANDS = frozenset({"pair", "remove", "backup", "restart_account", "reload", "health"})
BRIDGE_COMMANDS |= {"log_level", "restart"}  # operating it (issue 17)
ACCOUNT_COMMANDS = frozenset({"connect", "disconnect", "logout", "send", "react", "read", "typing",
                              "check"}) | frozenset({
    "groups", "group_info", "contacts", "edit", "revoke"})  # issue 15


@dataclass(frozen=True)
class Topics:
    """Topic names under one base topic (`wa` by default)."""

    base: str = "wa"

    # bridge
    @property
    def bridge_state(self) -> str:
        return f"{self.base}/bridge/state"

    @property
    def bridge_info(self) -> str:
        return f"{self.base}/bridge/info"

    @property
    def bridge_accounts(self) -> str:
        return f"{self.base}/bridge/accounts"

    @property
    def bridge_event(self) -> str:
        return f"{self.base}/bridge/event"

    def bridge_request(self, cmd: str) -> str:
        return f"{self.base}/bridge/request/{cmd}"

    def bridge_response(self, cmd: str) -> str:
        return f"{self.base}/bridge/response/{cmd}"

    # accounts
    def status(self, phone: str) -> str:
        return f"{self.base}/{phone}/status"

    def qr(self, phone: str) -> str:
        return f"{self.base}/{phone}/qr"

    def qr_image(self, phone: str) -> str:
        return f"{self.base}/{phone}/qr/image"

    def pair_code(self, phone: str) -> str:
        return f"{self.base}/{phone}/pair_code"

    def message(self, phone: str) -> str:
        return f"{self.base}/{phone}/message"

    def receipt(self, phone: str) -> str:
        return f"{self.base}/{phone}/receipt"

    def response(self, phone: str, cmd: str) -> str:
        return f"{self.base}/{phone}/response/{cmd}"

    def request(self, phone: str, cmd: str) -> str:
        return f"{self.base}/{phone}/request/{cmd}"

    def groups(self, phone: str) -> str:
        return f"{self.base}/{phone}/groups"

    def account_event(self, phone: str) -> str:
        return f"{self.base}/{phone}/event"

    def call(self, phone: str) -> str:
        return f"{self.base}/{phone}/call"

    def stats(self, phone: str) -> str:
        """Retained JSON counters `{"messages_in", "messages_out", "reconnects"}` (HA sensors)."""
        return f"{self.base}/{phone}/stats"

    def problem(self, phone: str) -> str:
        """Retained JSON `{"problem", "state", "error_code", "since"}`: whether the account needs a person
        (features/alerts.py; the Home Assistant `problem` binary sensor)."""
        return f"{self.base}/{phone}/problem"

    # sim
    def sim_sent(self, phone: str) -> str:
        return f"{self.base}/{SIM}/{phone}/sent"

    # subscriptions
    @property
    def request_filters(self) -> list[str]:
        return [f"{self.base}/+/request/+"]

    @property
    def sim_filter(self) -> str:
        return f"{self.base}/{SIM}/+/+"


# Characters MQTT forbids in a topic (U+0000; a lone surrogate is not UTF-8) or says SHOULD NOT be there
# (1.5.4: control characters, noncharacters), and which Mosquitto answers with a disconnect: a publish
# to such a topic, sent again first on every reconnect, would keep the bridge from ever connecting.
_UNFIT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
                    + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17)) + "]")


def has_unfit_character(topic: str) -> bool:
    """True when `topic` holds a character MQTT forbids or advises against in a topic: U+0000, a control
    character (U+0001-U+001F, U+007F-U+009F), a noncharacter (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF), a lone
    surrogate (not UTF-8). One rule for a topic we publish to (`is_topic_name`, `packets.check_topic`)."""
    if topic.isascii():  # ASCII's unfit ones are exactly its non-printable ones (U+0000-U+001F, U+007F)
        return not topic.isprintable()
    return _UNFIT.search(topic) is not None


def is_topic_name(topic: str) -> bool:
    """True for a name a client may publish to (MQTT 4.7): not empty, no wildcard (`+`, `#`), no
    character `has_unfit_character` refuses, at most 65,535 bytes of UTF-8."""
    if not topic or "+" in topic or "#" in topic or has_unfit_character(topic):
        return False
    return len(topic) <= 65535 if topic.isascii() else len(topic.encode()) <= 65535  # ASCII: no encode


def within(topic: str, root: str) -> bool:
    """True when `topic` is `root` or below it (what the filter `<root>/#` matches)."""
    return topic == root or topic.startswith(root + "/")


@dataclass(frozen=True)
class RequestTopic:
    """A parsed `<base>/<target>/request/<cmd>`; target is `bridge` or a phone (unchecked, may be empty:
    `wa//request/connect` is a request for the account `""`, answered `unknown_account`)."""

    target: str
    command: str

    @property
    def is_bridge(self) -> bool:
        return self.target == BRIDGE


@dataclass(frozen=True)
class SimTopic:
    phone: str
    action: str


def parse_request_topic(topics: Topics, topic: str) -> RequestTopic | None:
    prefix = topics.base + "/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix):].split("/")
    if len(parts) != 3 or parts[1] != "request":
        return None
    return RequestTopic(parts[0], parts[2])


def parse_sim_topic(topics: Topics, topic: str) -> SimTopic | None:
    prefix = f"{topics.base}/{SIM}/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix):].split("/")
    if len(parts) != 2 or parts[1] == "sent":
        return None
    return SimTopic(parts[0], parts[1])
