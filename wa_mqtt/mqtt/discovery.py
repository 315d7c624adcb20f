"""Home Assistant MQTT discovery: the config messages for the bridge device and each account's device.

Pure functions only: they return `(topic, payload)` pairs; the bridge publishes them retained
(QoS 1) when it connects, again when Home Assistant announces itself (`<prefix>/status` = `online`,
see `is_ha_birth`), and publishes `account_removal` when an account is removed.

Form chosen: **device-based discovery**, one retained message per device on
`<prefix>/device/<device_id>/config` with every entity under `cmps` (Home Assistant 2024.11+).
Why: an account is one device whose entities come and go together; one message announces it whole
(no half-discovered device while 15 configs arrive), one empty retained message removes it whole,
and an entity left out of a later announcement is removed by Home Assistant itself, so changing
`linked` or `notify` never leaves stale entities behind. Older Home Assistant releases ignore the
`device` discovery topic; they are not supported.

Entity ids: every entity carries `default_entity_id` (`sensor.whatsapp_<phone>_state`, ...) and the
same id's object part as `object_id` (`whatsapp_<phone>_state`), as zigbee2mqtt does. Home Assistant
2025.10+ reads `default_entity_id`; older releases ignore it and read `object_id`, and without it they
derive the id from the device name at each entity's first discovery: the pairing entities, announced
while the device is still *WhatsApp +<phone>*, and the session entities, announced once the push name
renamed it, would get ids of two shapes. With both, the ids in the docs are the ids users get on
every release, whatever the device is named. `unique_id`s are
`wa_mqtt_<phone>_<key>` for accounts (a phone is globally unique, like a Zigbee IEEE address) and
`wa_mqtt_bridge_<base>_<key>` for the bridge (one per base topic).

Availability: every account entity follows the bridge (`<base>/bridge/state` online/offline);
the entities that need a linked session (disconnect, logout, notify) also follow the account's
status (`offline` while it is `pairing` or `logged_out`), with `availability_mode: all`. The event
entity deliberately follows only the bridge: an event entity that turns available again re-fires
state triggers. The bridge's own connectivity sensor has no availability: its state *is* the
bridge state, and with availability on the same topic it could never show "off".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, get_args

from ..model import AccountState, MessageType
from .topics import Topics

ORIGIN_NAME = "wa_mqtt"
MANUFACTURER = "wa_mqtt"
ENTITY_PREFIX = "whatsapp"

MESSAGE_EVENT_TYPES: tuple[str, ...] = get_args(MessageType)
STATE_OPTIONS: tuple[str, ...] = tuple(state.value for state in AccountState)
UNLINKED_STATES: tuple[str, ...] = (AccountState.PAIRING.value, AccountState.LOGGED_OUT.value)

# Adds `event_type` (the message `type`) to the message JSON, which Home Assistant's event entity
# requires; every other message field becomes an event attribute. Plain string work on the raw
# payload (the bridge publishes compact JSON objects), so no template feature beyond `to_json`.
CALL_EVENT_TYPES = ("voice", "video")
CALL_VALUE_TEMPLATE = "{{ '{\"event_type\": \"' ~ ('video' if value_json.video else 'voice') ~ '\", ' ~ value[1:] }}"
EVENT_VALUE_TEMPLATE = "{{ '{\"event_type\": ' ~ (value_json['type'] | to_json) ~ ', ' ~ value[1:] }}"
LINKED_AVAILABILITY_TEMPLATE = (
    "{{ 'offline' if value_json.state in " + repr(list(UNLINKED_STATES)) + " else 'online' }}"
)
# The bridge clears pairing topics with an empty retained payload; 'None' makes the sensor unknown.
PAIR_CODE_TEMPLATE = "{{ value if value else 'None' }}"
NOTIFY_COMMAND_TEMPLATE = '{{"to": "{to}", "text": {{{{ value | to_json }}}}, "transaction": "{tx}{to}"}}'
# -- health monitoring (issue 17) -------------------------------------------------------------------
NOTIFY_TRANSACTION = "ha_notify:"
"""The `transaction` of every notify entity's send (then the recipient): its answer on
`<base>/<phone>/response/send` is told apart from other clients' by it."""
# The `send_failed` event entity: an error answer to a notify entity's send (at once, or later for a
# queued one) becomes an event with the recipient, the code and the text; any other answer renders
# nothing, which Home Assistant ignores.
SEND_FAILED_TEMPLATE = (
    "{% set t = value_json.get('transaction') | string %}"
    "{% if value_json.get('status') == 'error' and t.startswith('" + NOTIFY_TRANSACTION + "') %}"
    "{{ {'event_type': 'send_failed', 'to': t[" + str(len(NOTIFY_TRANSACTION)) + ":], "
    "'code': value_json.get('code'), 'error': value_json.get('error')} | to_json }}{% endif %}"
)
PROBLEM_TEMPLATE = "{{ 'ON' if value_json.problem else 'OFF' }}"
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")

Discovery = tuple[str, dict[str, Any]]


def ha_status_topic(discovery_prefix: str) -> str:
    """Where Home Assistant publishes its birth (`online`) and will (`offline`) messages."""
    return f"{discovery_prefix}/status"


def is_ha_birth(discovery_prefix: str, topic: str, payload: bytes | str) -> bool:
    """True for Home Assistant's `online` birth message: the bridge must announce everything again."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    return topic == ha_status_topic(discovery_prefix) and text.strip() == "online"


def encode(payload: dict[str, Any] | None) -> bytes:
    """A discovery payload as published: compact JSON, or empty (removal) for None."""
    if payload is None:
        return b""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def slug(value: str) -> str:
    """Lower-case `[a-z0-9_]` form of a base topic or recipient, for ids and discovery topics."""
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_") or "_"


def bridge_device_id(base_topic: str) -> str:
    return f"wa_mqtt_bridge_{slug(base_topic)}"


def account_device_id(phone: str) -> str:
    return f"wa_mqtt_{phone}"


def device_topic(discovery_prefix: str, device_id: str) -> str:
    return f"{discovery_prefix}/device/{device_id}/config"


def origin(version: str) -> dict[str, str]:
    return {"name": ORIGIN_NAME, "sw_version": version}


def _availability(*entries: dict[str, str]) -> dict[str, Any]:
    return {"availability": list(entries), "availability_mode": "all"}


def _bridge_online(topics: Topics) -> dict[str, str]:
    return {"topic": topics.bridge_state, "payload_available": "online", "payload_not_available": "offline"}


def _account_linked(topics: Topics, phone: str) -> dict[str, str]:
    return {"topic": topics.status(phone), "value_template": LINKED_AVAILABILITY_TEMPLATE}


def _identify(component: dict[str, Any], unique_id: str, object_id: str) -> None:
    """Ids of one entity: `unique_id`, and its entity id for every Home Assistant release (module doc)."""
    component["unique_id"] = unique_id
    component["default_entity_id"] = f"{component['platform']}.{object_id}"
    component["object_id"] = object_id  # read by Home Assistant before 2025.10


def bridge_discovery(*, base_topic: str, discovery_prefix: str, version: str) -> Discovery:
    """The bridge device: connectivity, number of accounts, version."""
    topics = Topics(base_topic)
    device_id = bridge_device_id(base_topic)
    name = "WhatsApp bridge" if base_topic == "wa" else f"WhatsApp bridge ({base_topic})"
    available = _availability(_bridge_online(topics))
    components: dict[str, dict[str, Any]] = {
        "connection_state": {
            "platform": "binary_sensor", "name": "Connection state", "device_class": "connectivity",
            "state_topic": topics.bridge_state, "payload_on": "online", "payload_off": "offline",
            "entity_category": "diagnostic",
        },
        "accounts": {
            "platform": "sensor", "name": "Accounts", "icon": "mdi:account-multiple",
            "state_topic": topics.bridge_accounts, "value_template": "{{ value_json | length }}",
            "json_attributes_topic": topics.bridge_accounts,
            "json_attributes_template": "{{ {'accounts': value_json} | to_json }}",
            **available,
        },
        "version": {
            "platform": "sensor", "name": "Version", "icon": "mdi:tag", "entity_category": "diagnostic",
            "state_topic": topics.bridge_info, "value_template": "{{ value_json.version }}",
            **available,
        },
    }
    components |= _bridge_operating(topics, available)
    for key, component in components.items():
        _identify(component, f"{device_id}_{key}", f"{ENTITY_PREFIX}_bridge_{key}")
    payload = {
        "device": {
            "identifiers": [device_id], "name": name, "manufacturer": MANUFACTURER,
            "model": "WhatsApp to MQTT bridge", "sw_version": version,
        },
        "origin": origin(version),
        "cmps": components,
    }
    return device_topic(discovery_prefix, device_id), payload


def _bridge_operating(topics: Topics, available: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Operating the bridge from Home Assistant: its log level, restarting the accounts, reloading config.yaml."""
    def button(name: str, cmd: str, icon: str, category: str) -> dict[str, Any]:
        return {
            "platform": "button", "name": name, "icon": icon, "command_topic": topics.bridge_request(cmd),
            "payload_press": "{}", "qos": 1, "retain": False, "entity_category": category, **available,
        }

    return {
        "log_level": {
            "platform": "select", "name": "Log level", "icon": "mdi:format-list-bulleted",
            "entity_category": "config", "options": list(LOG_LEVELS),
            "command_topic": topics.bridge_request("log_level"), "command_template": '{"level": "{{ value }}"}',
            "state_topic": topics.bridge_info, "value_template": "{{ value_json.log_level }}",
            "qos": 1, "retain": False, **available,
        },
        "restart_accounts": button("Restart accounts", "restart", "mdi:restart", "config"),
        "reload_config": button("Reload config", "reload", "mdi:file-refresh", "config"),
    }


def _account_components(
    topics: Topics, phone: str, *, linked: bool, recipients: Sequence[str]
) -> dict[str, dict[str, Any]]:
    bridge = _availability(_bridge_online(topics))
    session = _availability(_bridge_online(topics), _account_linked(topics, phone))
    pairing_category = {"entity_category": "diagnostic"} if linked else {}

    def button(name: str, cmd: str, icon: str, available: dict[str, Any], press: str = "{}") -> dict[str, Any]:
        return {
            "platform": "button", "name": name, "icon": icon, "command_topic": topics.request(phone, cmd),
            "payload_press": press, "qos": 1, "retain": False, **available,
        }

    components: dict[str, dict[str, Any]] = {
        "state": {
            "platform": "sensor", "name": "State", "icon": "mdi:whatsapp", "device_class": "enum",
            "options": list(STATE_OPTIONS), "state_topic": topics.status(phone),
            "value_template": "{{ value_json.state }}", "json_attributes_topic": topics.status(phone),
            **bridge,
        },
        "connected": {
            "platform": "binary_sensor", "name": "Connected", "device_class": "connectivity",
            "state_topic": topics.status(phone),
            "value_template": "{{ 'ON' if value_json.state == 'connected' else 'OFF' }}",
            **bridge,
        },
        "qr": {
            "platform": "image", "name": "Pairing QR", "icon": "mdi:qrcode",
            "image_topic": topics.qr_image(phone), "content_type": "image/png",
            **pairing_category, **bridge,
        },
        "pair_code": {
            "platform": "sensor", "name": "Pair code", "icon": "mdi:form-textbox-password",
            "state_topic": topics.pair_code(phone), "value_template": PAIR_CODE_TEMPLATE,
            **pairing_category, **bridge,
        },
        "problem": {
            "platform": "binary_sensor", "name": "Problem", "device_class": "problem",
            "state_topic": topics.problem(phone), "value_template": PROBLEM_TEMPLATE,
            "json_attributes_topic": topics.problem(phone), **bridge,
        },
        "connect": button("Connect", "connect", "mdi:link-variant", bridge),
        "pair_with_code": {
            **button("Pair with code", "connect", "mdi:numeric", bridge, press='{"method": "code"}'),
            **pairing_category,
        },
    }
    if linked:
        components |= {
            "disconnect": button("Disconnect", "disconnect", "mdi:link-variant-off", session),
            "logout": {**button("Log out", "logout", "mdi:logout", session), "entity_category": "config"},
            "message": {
                "platform": "event", "name": "Message", "icon": "mdi:message-text",
                "state_topic": topics.message(phone), "event_types": list(MESSAGE_EVENT_TYPES),
                "value_template": EVENT_VALUE_TEMPLATE, "qos": 1,
                **bridge,
            },
            **_counter("messages_in", "Messages received", "mdi:message-arrow-left", topics, phone, bridge),
            **_counter("messages_out", "Messages sent", "mdi:message-arrow-right", topics, phone, bridge),
            **_counter("reconnects", "Reconnects", "mdi:connection", topics, phone, bridge, diagnostic=True),
            **_groups_and_calls(topics, phone, bridge),
        }
        if recipients:
            components["send_failed"] = {
                "platform": "event", "name": "Send failed", "icon": "mdi:message-alert",
                "state_topic": topics.response(phone, "send"), "event_types": ["send_failed"],
                "value_template": SEND_FAILED_TEMPLATE, "qos": 1, **bridge,
            }
        for recipient in recipients:
            components[f"to_{slug(recipient)}"] = {
                "platform": "notify", "name": f"Send to {recipient}", "icon": "mdi:message-arrow-right",
                "command_topic": topics.request(phone, "send"),
                "command_template": NOTIFY_COMMAND_TEMPLATE.format(to=recipient, tx=NOTIFY_TRANSACTION),
                "qos": 1, "retain": False,
                **session,
            }
    return components


def _groups_and_calls(topics: Topics, phone: str, available: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The joined groups (a diagnostic sensor: their count, the list as attributes, so every group's JID is
    at hand) and incoming calls (an event entity: `voice` / `video`, the call's fields as attributes)."""
    return {
        "groups": {
            "platform": "sensor", "name": "Groups", "icon": "mdi:account-group", "entity_category": "diagnostic",
            "state_topic": topics.groups(phone), "value_template": "{{ value_json.count }}",
            "json_attributes_topic": topics.groups(phone), "json_attributes_template": "{{ {'groups': value_json.groups} | to_json }}",
            **available,
        },
        "call": {
            "platform": "event", "name": "Call", "icon": "mdi:phone-incoming",
            "state_topic": topics.call(phone), "event_types": list(CALL_EVENT_TYPES),
            "value_template": CALL_VALUE_TEMPLATE, "qos": 1,
            **available,
        },
    }


def _counter(
    key: str, name: str, icon: str, topics: Topics, phone: str, available: dict[str, Any], *, diagnostic: bool = False
) -> dict[str, dict[str, Any]]:
    component: dict[str, Any] = {
        "platform": "sensor", "name": name, "icon": icon, "state_class": "total_increasing",
        "state_topic": topics.stats(phone), "value_template": f"{{{{ value_json.{key} }}}}",
        **available,
    }
    if diagnostic:
        component["entity_category"] = "diagnostic"
    return {key: component}


def account_discovery(
    *,
    base_topic: str,
    discovery_prefix: str,
    phone: str,
    name: str | None,
    version: str,
    linked: bool,
    recipients: Sequence[str] = (),
) -> Discovery:
    """One account's device. `linked`: it has a session (else only the pairing entities are offered).

    `recipients`: the configured default recipients (`notify` in config), one notify entity each.
    Announce again when `linked`, `name` or the recipients change: Home Assistant removes the
    entities a new announcement leaves out.
    """
    topics = Topics(base_topic)
    device_id = account_device_id(phone)
    components = _account_components(topics, phone, linked=linked, recipients=recipients)
    for key, component in components.items():
        _identify(component, f"{device_id}_{key}", f"{ENTITY_PREFIX}_{phone}_{key}")
    payload = {
        "device": {
            "identifiers": [device_id],
            "name": f"WhatsApp {name}" if name else f"WhatsApp +{phone}",
            "manufacturer": MANUFACTURER,
            "model": "WhatsApp linked device",
            "serial_number": f"+{phone}",
            "sw_version": version,
            "via_device": bridge_device_id(base_topic),
        },
        "origin": origin(version),
        "cmps": components,
    }
    return device_topic(discovery_prefix, device_id), payload


def all_discovery(
    *,
    base_topic: str,
    discovery_prefix: str,
    version: str,
    accounts: Iterable[tuple[str, str | None, bool]],
    recipients: Sequence[str] = (),
) -> list[Discovery]:
    """Everything to announce: the bridge, then each `(phone, name, linked)` account."""
    messages = [bridge_discovery(base_topic=base_topic, discovery_prefix=discovery_prefix, version=version)]
    for phone, name, linked in accounts:
        messages.append(account_discovery(
            base_topic=base_topic, discovery_prefix=discovery_prefix, phone=phone, name=name,
            version=version, linked=linked, recipients=recipients,
        ))
    return messages


def account_removal(*, discovery_prefix: str, phone: str) -> list[tuple[str, bytes]]:
    """Publish these retained (empty payloads) to remove an account's device and all its entities."""
    return [(device_topic(discovery_prefix, account_device_id(phone)), b"")]
