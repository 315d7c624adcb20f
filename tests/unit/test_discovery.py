"""Home Assistant discovery payloads (wa_mqtt.mqtt.discovery): every entity of the bridge and of a
linked and an unlinked account, ids, availability, command topics, the image and event entities."""

from __future__ import annotations

import json
import re

import pytest

from wa_mqtt.model import AccountState
from wa_mqtt.mqtt import discovery as d

PHONE = "557996277210"
OTHER = "5511999999999"
GROUP = "120363012345678901@g.us"
VERSION = "0.1.0"

# Home Assistant's discovery topic rule (components/mqtt/discovery.py TOPIC_MATCHER).
TOPIC_RE = re.compile(r"^homeassistant/(?P<component>\w+)/(?:[a-zA-Z0-9_-]+/)?[a-zA-Z0-9_-]+/config$")
PLATFORMS = {"sensor", "binary_sensor", "image", "button", "event", "notify", "select"}
COMMON_KEYS = {"platform", "unique_id", "default_entity_id", "name"}


def account(linked: bool, *, name: str | None = "Ana", recipients=(OTHER, GROUP), base="wa", prefix="homeassistant"):
    return d.account_discovery(
        base_topic=base, discovery_prefix=prefix, phone=PHONE, name=name, version=VERSION,
        linked=linked, recipients=list(recipients),
    )


def bridge(base="wa"):
    return d.bridge_discovery(base_topic=base, discovery_prefix="homeassistant", version=VERSION)


def availability_topics(component: dict) -> list[str]:
    return [entry["topic"] for entry in component.get("availability", [])]


# ---------------------------------------------------------------- topics and envelope

def test_device_based_topics_match_home_assistant_rule():
    for topic, _ in (account(True), account(False), bridge()):
        match = TOPIC_RE.match(topic)
        assert match and match["component"] == "device", topic
    assert account(True)[0] == f"homeassistant/device/wa_mqtt_{PHONE}/config"
    assert bridge()[0] == "homeassistant/device/wa_mqtt_bridge_wa/config"


def test_custom_prefix_and_base_topic_are_used():
    topic, payload = account(True, base="home/wa", prefix="ha")
    assert topic == f"ha/device/wa_mqtt_{PHONE}/config"
    assert payload["cmps"]["state"]["state_topic"] == f"home/wa/{PHONE}/status"
    assert payload["device"]["via_device"] == "wa_mqtt_bridge_home_wa"
    assert bridge("home/wa")[0] == "homeassistant/device/wa_mqtt_bridge_home_wa/config"
    assert TOPIC_RE.match(bridge("home/wa")[0])


@pytest.mark.parametrize("linked", [True, False])
def test_account_envelope(linked):
    _, payload = account(linked)
    assert payload["origin"] == {"name": "wa_mqtt", "sw_version": VERSION}
    device = payload["device"]
    assert device["identifiers"] == [f"wa_mqtt_{PHONE}"]
    assert device["name"] == "WhatsApp Ana"
    assert device["via_device"] == "wa_mqtt_bridge_wa"
    assert device["sw_version"] == VERSION
    assert device["serial_number"] == f"+{PHONE}"
    assert device["manufacturer"] and device["model"]
    json.loads(d.encode(payload))  # serialisable as published


def test_unnamed_account_is_named_by_its_phone():
    assert account(True, name=None)[1]["device"]["name"] == f"WhatsApp +{PHONE}"


# ---------------------------------------------------------------- entity sets

def test_linked_account_entities():
    cmps = account(True)[1]["cmps"]
    platforms = {key: c["platform"] for key, c in cmps.items()}
    assert platforms == {
        "state": "sensor", "connected": "binary_sensor", "qr": "image", "pair_code": "sensor",
        "connect": "button", "pair_with_code": "button", "disconnect": "button", "logout": "button",
        "message": "event", "messages_in": "sensor", "messages_out": "sensor", "reconnects": "sensor",
        f"to_{OTHER}": "notify", "to_120363012345678901_g_us": "notify", "groups": "sensor", "call": "event",
        "problem": "binary_sensor", "send_failed": "event",
    }


def test_unlinked_account_offers_only_state_and_pairing():
    cmps = account(False)[1]["cmps"]
    assert set(cmps) == {"state", "connected", "qr", "pair_code", "connect", "pair_with_code", "problem"}
    # pairing entities are primary while unlinked, diagnostic once linked
    assert "entity_category" not in cmps["qr"]
    assert account(True)[1]["cmps"]["qr"]["entity_category"] == "diagnostic"


def test_every_component_has_the_keys_home_assistant_needs():
    for _, payload in (account(True), account(False), bridge()):
        for key, component in payload["cmps"].items():
            assert set(component) >= COMMON_KEYS, key
            assert component["platform"] in PLATFORMS
            assert component["default_entity_id"].startswith(component["platform"] + ".")
            assert re.fullmatch(r"[a-z_]+\.[a-z0-9_]+", component["default_entity_id"])
            # Home Assistant before 2025.10 reads object_id: the same id there
            assert component["default_entity_id"] == f"{component['platform']}.{component['object_id']}"
            assert re.fullmatch(r"[a-zA-Z0-9_-]+", key)


# ---------------------------------------------------------------- ids

def test_unique_ids_are_unique_across_devices_and_stable():
    ids = [c["unique_id"] for _, p in (account(True), bridge()) for c in p["cmps"].values()]
    other = d.account_discovery(base_topic="wa", discovery_prefix="homeassistant", phone=OTHER, name=None,
                                version="9.9.9", linked=True, recipients=[GROUP])
    ids += [c["unique_id"] for c in other[1]["cmps"].values()]
    assert len(ids) == len(set(ids))
    # stable: independent of name, version, recipients order and linked state
    first = {k: c["unique_id"] for k, c in account(True)[1]["cmps"].items()}
    renamed = d.account_discovery(base_topic="wa", discovery_prefix="homeassistant", phone=PHONE, name="Bia",
                                  version="2.0.0", linked=True, recipients=[GROUP, OTHER])
    assert first == {k: c["unique_id"] for k, c in renamed[1]["cmps"].items()}
    unlinked = {k: c["unique_id"] for k, c in account(False)[1]["cmps"].items()}
    assert all(first[k] == v for k, v in unlinked.items())
    assert first["state"] == f"wa_mqtt_{PHONE}_state"


def test_default_entity_ids_used_in_the_docs():
    cmps = account(True)[1]["cmps"]
    assert cmps["message"]["default_entity_id"] == f"event.whatsapp_{PHONE}_message"
    assert cmps["state"]["default_entity_id"] == f"sensor.whatsapp_{PHONE}_state"
    assert cmps["qr"]["default_entity_id"] == f"image.whatsapp_{PHONE}_qr"
    assert cmps[f"to_{OTHER}"]["default_entity_id"] == f"notify.whatsapp_{PHONE}_to_{OTHER}"
    assert bridge()[1]["cmps"]["connection_state"]["default_entity_id"] == "binary_sensor.whatsapp_bridge_connection_state"


# ---------------------------------------------------------------- availability

def test_account_entities_follow_the_bridge_and_session_entities_the_account_too():
    cmps = account(True)[1]["cmps"]
    session = {"disconnect", "logout", f"to_{OTHER}", "to_120363012345678901_g_us"}
    for key, component in cmps.items():
        assert component["availability_mode"] == "all", key
        topics = availability_topics(component)
        assert topics[0] == "wa/bridge/state"
        assert component["availability"][0]["payload_available"] == "online"
        assert component["availability"][0]["payload_not_available"] == "offline"
        if key in session:
            assert topics == ["wa/bridge/state", f"wa/{PHONE}/status"], key
            assert component["availability"][1]["value_template"] == d.LINKED_AVAILABILITY_TEMPLATE
        else:
            assert topics == ["wa/bridge/state"], key


def test_linked_availability_template_maps_every_state():
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(d.LINKED_AVAILABILITY_TEMPLATE)
    for state in AccountState:
        expected = "offline" if state in (AccountState.PAIRING, AccountState.LOGGED_OUT) else "online"
        assert template.render(value_json={"state": state.value}) == expected


def test_bridge_device():
    _topic, payload = bridge()
    cmps = payload["cmps"]
    assert payload["device"]["identifiers"] == ["wa_mqtt_bridge_wa"]
    assert "via_device" not in payload["device"]
    conn = cmps["connection_state"]
    assert conn["platform"] == "binary_sensor" and conn["device_class"] == "connectivity"
    assert (conn["state_topic"], conn["payload_on"], conn["payload_off"]) == ("wa/bridge/state", "online", "offline")
    assert "availability" not in conn  # its state is the bridge state; it must be able to show "off"
    assert cmps["accounts"]["state_topic"] == "wa/bridge/accounts"
    assert availability_topics(cmps["accounts"]) == ["wa/bridge/state"]
    assert cmps["version"]["state_topic"] == "wa/bridge/info"


# ---------------------------------------------------------------- specific entities

def test_state_sensor_reads_status_with_attributes():
    state = account(True)[1]["cmps"]["state"]
    assert state["state_topic"] == state["json_attributes_topic"] == f"wa/{PHONE}/status"
    assert state["device_class"] == "enum"
    assert state["options"] == [s.value for s in AccountState]


def test_connected_binary_sensor():
    connected = account(False)[1]["cmps"]["connected"]
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(connected["value_template"])
    assert template.render(value_json={"state": "connected"}) == "ON"
    assert template.render(value_json={"state": "disconnected"}) == "OFF"
    assert connected["device_class"] == "connectivity"


def test_image_entity_shows_the_pairing_qr():
    qr = account(False)[1]["cmps"]["qr"]
    assert qr["image_topic"] == f"wa/{PHONE}/qr/image"
    assert qr["content_type"] == "image/png"
    assert "url_topic" not in qr and "image_encoding" not in qr  # raw PNG bytes


def test_pair_code_sensor_clears_to_unknown():
    code = account(False)[1]["cmps"]["pair_code"]
    assert code["state_topic"] == f"wa/{PHONE}/pair_code"
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(code["value_template"])
    assert template.render(value="ABCD-EFGH") == "ABCD-EFGH"
    assert template.render(value="") == "None"  # Home Assistant's "no value" payload


@pytest.mark.parametrize("key,cmd,press", [
    ("connect", "connect", {}), ("pair_with_code", "connect", {"method": "code"}),
    ("disconnect", "disconnect", {}), ("logout", "logout", {}),
])
def test_buttons_publish_requests(key, cmd, press):
    button = account(True)[1]["cmps"][key]
    assert button["command_topic"] == f"wa/{PHONE}/request/{cmd}"
    assert json.loads(button["payload_press"]) == press
    assert button["retain"] is False


def test_counters_read_the_stats_topic():
    cmps = account(True)[1]["cmps"]
    jinja2 = pytest.importorskip("jinja2")
    stats = {"messages_in": 7, "messages_out": 3, "reconnects": 1}
    for key in stats:
        assert cmps[key]["state_topic"] == f"wa/{PHONE}/stats"
        assert cmps[key]["state_class"] == "total_increasing"
        rendered = jinja2.Environment().from_string(cmps[key]["value_template"]).render(value_json=stats)
        assert rendered == str(stats[key])


def _ha_env():
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    env.filters["to_json"] = lambda obj: json.dumps(obj, ensure_ascii=False)  # Home Assistant's filter
    return env


def test_event_entity_template_adds_event_type_and_keeps_every_field():
    event = account(True)[1]["cmps"]["message"]
    assert event["state_topic"] == f"wa/{PHONE}/message"
    assert set(event["event_types"]) == {"text", "image", "video", "audio", "document", "sticker",
                                         "location", "contact", "reaction", "poll", "poll_vote", "edit", "revoke",
                                         "undecryptable", "unknown"}
    message = {"id": "3EB0", "account": PHONE, "chat": f"{OTHER}@s.whatsapp.net", "chat_type": "private",
               "sender": OTHER, "sender_jid": f"{OTHER}@s.whatsapp.net", "sender_name": "Zoë \"Z\"",
               "from_me": False, "timestamp": "2026-11-24T10:00:00Z", "type": "image", "text": None,
               "caption": "olá {x}", "media": {"mimetype": "image/jpeg", "size": 10}, "mentions": []}
    raw = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    rendered = _ha_env().from_string(event["value_template"]).render(value=raw, value_json=message)
    data = json.loads(rendered)
    assert data.pop("event_type") == "image"
    assert data == message
    # also with the default json.dumps separators
    rendered = _ha_env().from_string(event["value_template"]).render(value=json.dumps(message), value_json=message)
    assert json.loads(rendered)["event_type"] == "image"


def test_groups_sensor_and_call_event_render_as_home_assistant_would():
    cmps = account(True)[1]["cmps"]
    groups, call = cmps["groups"], cmps["call"]
    assert groups["entity_category"] == "diagnostic" and groups["state_topic"] == f"wa/{PHONE}/groups"
    listed = {"count": 1, "groups": [{"jid": "120363012345678901@g.us", "name": "Família", "participants": 5,
                                      "is_admin": True}]}
    env = _ha_env()
    assert env.from_string(groups["value_template"]).render(value_json=listed) == "1"
    attributes = json.loads(env.from_string(groups["json_attributes_template"]).render(value_json=listed))
    assert attributes == {"groups": listed["groups"]}
    assert call["state_topic"] == f"wa/{PHONE}/call" and call["event_types"] == ["voice", "video"]
    ring = {"id": "CALL1", "from": OTHER, "from_jid": f"{OTHER}@s.whatsapp.net", "video": True, "group": None,
            "timestamp": "2026-11-24T10:00:00Z"}
    rendered = env.from_string(call["value_template"]).render(value=json.dumps(ring), value_json=ring)
    data = json.loads(rendered)
    assert data.pop("event_type") == "video" and data == ring


def test_notify_entity_per_recipient_sends_a_valid_request():
    cmps = account(True)[1]["cmps"]
    for recipient, key in ((OTHER, f"to_{OTHER}"), (GROUP, "to_120363012345678901_g_us")):
        notify = cmps[key]
        assert notify["command_topic"] == f"wa/{PHONE}/request/send"
        rendered = _ha_env().from_string(notify["command_template"]).render(value='Door "open" ✓')
        assert json.loads(rendered) == {"to": recipient, "text": 'Door "open" ✓', "transaction": f"ha_notify:{recipient}"}
    assert not any(c["platform"] == "notify" for c in account(True, recipients=())[1]["cmps"].values())


# ---------------------------------------------------------------- birth, removal, all

def test_ha_birth_detection():
    assert d.ha_status_topic("homeassistant") == "homeassistant/status"
    assert d.is_ha_birth("homeassistant", "homeassistant/status", b"online")
    assert not d.is_ha_birth("homeassistant", "homeassistant/status", b"offline")
    assert not d.is_ha_birth("ha", "homeassistant/status", "online")


def test_account_removal_is_an_empty_retained_device_config():
    assert d.account_removal(discovery_prefix="homeassistant", phone=PHONE) == [
        (f"homeassistant/device/wa_mqtt_{PHONE}/config", b"")
    ]
    assert d.encode(None) == b""


def test_all_discovery_announces_bridge_first_then_accounts():
    messages = d.all_discovery(base_topic="wa", discovery_prefix="homeassistant", version=VERSION,
                               accounts=[(PHONE, "Ana", True), (OTHER, None, False)], recipients=[GROUP])
    assert [t for t, _ in messages] == [
        "homeassistant/device/wa_mqtt_bridge_wa/config",
        f"homeassistant/device/wa_mqtt_{PHONE}/config",
        f"homeassistant/device/wa_mqtt_{OTHER}/config",
    ]
    assert "message" in messages[1][1]["cmps"] and "message" not in messages[2][1]["cmps"]


def test_entity_ids_in_the_home_assistant_docs_exist():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "home-assistant.md").read_text(encoding="utf-8")
    mentioned = set(re.findall(r"\b(?:sensor|binary_sensor|image|button|event|notify)\.whatsapp_[a-z0-9_]+", text))
    created = {c["default_entity_id"] for _, p in (account(True), bridge()) for c in p["cmps"].values()}
    assert len(mentioned) >= 10
    assert mentioned <= created, mentioned - created


# ---------------------------------------------------------------- health monitoring (issue 17)

def test_problem_binary_sensor_reads_the_problem_topic():
    for linked in (True, False):
        problem = account(linked)[1]["cmps"]["problem"]
        assert (problem["platform"], problem["device_class"]) == ("binary_sensor", "problem")
        assert problem["state_topic"] == problem["json_attributes_topic"] == f"wa/{PHONE}/problem"
        template = _ha_env().from_string(problem["value_template"])
        assert template.render(value_json={"problem": True, "state": "logged_out"}) == "ON"
        assert template.render(value_json={"problem": False, "state": None}) == "OFF"


def test_send_failed_event_fires_only_for_a_notify_entitys_failed_send():
    event = account(True)[1]["cmps"]["send_failed"]
    assert event["state_topic"] == f"wa/{PHONE}/response/send" and event["event_types"] == ["send_failed"]
    template = _ha_env().from_string(event["value_template"])
    failed = {"status": "error", "code": "forbidden", "error": "to: not allowed", "transaction": f"ha_notify:{OTHER}"}
    assert json.loads(template.render(value_json=failed)) == {
        "event_type": "send_failed", "to": OTHER, "code": "forbidden", "error": "to: not allowed"}
    for other in ({"status": "ok", "data": {"id": "x"}, "transaction": f"ha_notify:{OTHER}"},
                  {**failed, "transaction": "someone-else"}, {"status": "error", "code": "busy", "error": "x"},
                  {**failed, "transaction": 7}):
        assert template.render(value_json=other) == ""  # Home Assistant ignores an empty payload (`if not payload`)
    assert "send_failed" not in account(True, recipients=())[1]["cmps"]


def test_bridge_device_operating_entities():
    cmps = bridge()[1]["cmps"]
    select = cmps["log_level"]
    assert select["platform"] == "select" and select["options"] == ["debug", "info", "warning", "error"]
    assert select["command_topic"] == "wa/bridge/request/log_level"
    assert json.loads(_ha_env().from_string(select["command_template"]).render(value="warning")) == {"level": "warning"}
    assert select["state_topic"] == "wa/bridge/info"
    assert _ha_env().from_string(select["value_template"]).render(value_json={"log_level": "info"}) == "info"
    assert (cmps["restart_accounts"]["platform"], cmps["restart_accounts"]["command_topic"]) == (
        "button", "wa/bridge/request/restart")
    assert (cmps["reload_config"]["platform"], cmps["reload_config"]["command_topic"]) == (
        "button", "wa/bridge/request/reload")
    assert all(availability_topics(cmps[key]) == ["wa/bridge/state"]
               for key in ("log_level", "restart_accounts", "reload_config"))
