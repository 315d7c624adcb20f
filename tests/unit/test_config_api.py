"""Config loading (file, environment, flags, errors) and request parsing (codes and field names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wa_mqtt.config import ConfigError, config_changes, without_restart_changes
from wa_mqtt.config_loading import build_config, load_config, read_yaml
from wa_mqtt.config_secrets import file_secrets, mask_url
from wa_mqtt.mqtt import api
from wa_mqtt.mqtt.topics import Topics, parse_request_topic, parse_sim_topic

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_yaml_is_valid_and_runs_as_is() -> None:
    config = load_config(REPO / "config.yaml", environ={})
    assert config.mqtt.url is None  # the embedded broker
    assert config.mqtt.base_topic == "wa" and config.backups.keep == 3


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.yaml", environ={})
    assert config.engine == "neonize" and config.status_interval == 60 and config.outgoing.ttl == 86400
    assert config.reconnect.initial == 1 and config.reconnect.max == 300


@pytest.mark.parametrize(("data", "key"), [
    ({"mqtt": {"embedded_port": 0}}, "mqtt.embedded_port"),
    ({"mqtt": {"url": "http://x"}}, "mqtt.url"),
    ({"mqtt": {"base_topic": "wa/#"}}, "mqtt.base_topic"),
    ({"mqtt": {"base_topic": "wa\x01"}}, "mqtt.base_topic"),  # a control character: the broker would hang up
    ({"mqtt": {"discovery_prefix": "ha\ufffe"}}, "mqtt.discovery_prefix"),  # a noncharacter, likewise
    ({"engine": "selenium"}, "engine"),
    ({"accounts": ["12ab"]}, "accounts"),
    ({"reconnect": {"factor": "fast"}}, "reconnect.factor"),
    ({"outgoing": {"allow_to": ["not a phone"]}}, "outgoing.allow_to"),
    ({"typo_key": 1}, "typo_key"),
    ({"status_interval": -1}, "status_interval"),
    ({"proxy": "ftp://proxy:21"}, "proxy"),
    ({"proxy": "socks5://proxy"}, "proxy"),
    ({"proxy": "http://proxy:99999"}, "proxy"),
])
def test_invalid_values_name_their_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data, environ={})
    assert str(info.value).startswith(key) or f"; {key}" in str(info.value)


def test_environment_then_flags_override_the_file() -> None:
    environ = {"WA_MQTT_MQTT__URL": "mqtt://u:p@broker:1884", "WA_MQTT_STATUS_INTERVAL": "10",
               "WA_MQTT_ACCOUNTS": "[5511900000001]", "OTHER": "x"}
    config = build_config({"status_interval": 30, "engine": "neonize"}, environ, {"engine": "sim"})
    assert config.mqtt.url == "mqtt://u:p@broker:1884" and config.status_interval == 10
    assert config.accounts == ["5511900000001"] and config.engine == "sim"


def test_secrets_are_masked() -> None:
    assert mask_url("mqtt://user:secret@host:1883") == "mqtt://user:***@host:1883"
    assert mask_url("mqtt://host") == "mqtt://host"
    config = build_config({"mqtt": {"url": "mqtts://me:pw@h"}}, environ={})
    assert "pw" not in str(config.masked())
    config = build_config({}, environ={"WA_MQTT_PROXY": "socks5://me:hunter2@10.0.0.2:1080"})
    assert config.proxy == "socks5://me:hunter2@10.0.0.2:1080"
    assert config.masked()["proxy"] == "socks5://me:***@10.0.0.2:1080"
    assert build_config({}, environ={}).masked()["proxy"] is None


def test_unreadable_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mqtt: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, environ={})


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_an_empty_file_is_no_settings_at_start_but_an_error_when_required(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert read_yaml(path) == {}
    with pytest.raises(ConfigError, match="empty"):
        load_config(path, environ={}, missing_ok=False, empty_ok=False)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml", environ={}, missing_ok=False)


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WA_MQTT_FOO": "1"}, "foo: unknown key (from the environment variable WA_MQTT_FOO)"),
    ({"WA_MQTT_MQTT__PORTX": "1"}, "mqtt.portx: unknown key (from the environment variable WA_MQTT_MQTT__PORTX)"),
    ({"WA_MQTT_STATUS_INTERVAL": "soon"}, "(from the environment variable WA_MQTT_STATUS_INTERVAL)"),
    ({"WA_MQTT_MQTT_URL": "mqtt://h"}, "two underscores: WA_MQTT_MQTT__URL"),
    ({"WA_MQTT_ENGINE_PROCESS_IN_PROCESS": "true"}, "two underscores: WA_MQTT_ENGINE_PROCESS__IN_PROCESS"),
])
def test_a_bad_environment_variable_is_named(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, environ)
    assert expected in str(info.value)


def test_file_errors_do_not_name_variables() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"foo": 1}, {"WA_MQTT_BAR": "1"})
    assert "foo: unknown key;" in str(info.value) or str(info.value).startswith("foo: unknown key")
    assert "WA_MQTT_FOO" not in str(info.value)


def test_file_secrets_are_only_those_written_in_the_file() -> None:
    assert file_secrets({"mqtt": {"url": "mqtt://user@host"}, "proxy": "socks5://h:1"}) == []
    assert file_secrets({"mqtt": {"url": "mqtt://u:p@host"}, "proxy": "http://u:p@h:3128",
                         "backups": {"encryption_key": "k"}}) == ["mqtt.url", "proxy", "backups.encryption_key"]
    assert file_secrets({"mqtt": None, "proxy": 5}) == []


def test_media_limits_need_a_restart_and_are_kept_until_then() -> None:
    """The engine processes enforce them too, with the values they started with: a reload that
    tightened them in the bridge alone would claim a protection the fetches do not have."""
    old = build_config({"outgoing": {"allow_to": ["5511988887777"]}}, environ={})
    new = build_config({"outgoing": {"allow_to": ["5511977776666"], "block_private_urls": True}}, environ={})
    assert config_changes(old, new) == (["outgoing"], ["outgoing.block_private_urls"])
    effective = without_restart_changes(old, new)
    assert effective.outgoing.allow_to == ["5511977776666"] and effective.outgoing.block_private_urls is False
    only_media = build_config({"outgoing": {"allow_to": ["5511988887777"], "max_media_bytes": 1000}}, environ={})
    assert config_changes(old, only_media) == ([], ["outgoing.max_media_bytes"])


@pytest.mark.parametrize(("raw", "code"), [
    (b"{bad", "invalid_json"), (b"[1, 2]", "invalid_request"), (b'"text"', "invalid_request"),
    (b"\xff\xfe", "invalid_json"),
])
def test_decode_errors(raw: bytes, code: str) -> None:
    with pytest.raises(api.ApiError) as info:
        api.decode_payload(raw)
    assert info.value.code == code


def test_decode_keeps_transaction_and_treats_empty_as_object() -> None:
    assert api.decode_payload(b"") == ({}, None, False)
    assert api.decode_payload(b'{"transaction": null, "to": "1"}') == ({"to": "1"}, None, True)
    with pytest.raises(api.ApiError) as info:
        api.decode_payload(b"x" * 11, max_bytes=10)
    assert info.value.code == "too_large"


@pytest.mark.parametrize(("bridge", "command", "data", "field"), [
    (False, "send", {"text": "x"}, "to"),
    (False, "send", {"to": "5511999999999"}, "text or one of"),
    (False, "send", {"to": "55+11", "text": "x"}, "to"),
    (False, "send", {"to": "5511999999999", "text": "x", "colour": "red"}, "colour"),
    (False, "send", {"to": "5511999999999", "image": {"url": "http://x", "path": "/y"}}, "image"),
    (False, "react", {"chat": "5511999999999", "emoji": "x"}, "id"),
    (False, "read", {"chat": "5511999999999", "ids": []}, "ids"),
    (False, "typing", {"chat": "5511999999999", "state": "dancing"}, "state"),
    (False, "connect", {"method": "carrier pigeon"}, "method"),
    (True, "pair", {}, "phone"),
    (True, "pair", {"phone": "../../etc"}, "phone"),
    (True, "remove", {"phone": 5}, "phone"),
    (True, "nope", {}, "unknown command"),
])
def test_invalid_requests_name_the_field(bridge: bool, command: str, data: dict, field: str) -> None:
    with pytest.raises(api.ApiError) as info:
        api.parse_command(bridge, command, data)
    assert info.value.code == "invalid_request" and field in info.value.message


def test_responses_echo_the_transaction_only_when_given() -> None:
    route = api.Route(transaction={"n": 1}, has_transaction=True)
    assert api.ok(route, {"id": "X"}) == {"status": "ok", "data": {"id": "X"}, "transaction": {"n": 1}}
    assert api.error(api.Route(), "unknown_account", "no") == {"status": "error", "error": "no", "code": "unknown_account"}
    restored = api.Route.from_dict(api.Route("t", True, "reply/me", b"\x00\x01").to_dict())
    assert restored.correlation_data == b"\x00\x01" and restored.response_topic == "reply/me"


def test_topic_parsing() -> None:
    topics = Topics("home/wa")
    request = parse_request_topic(topics, "home/wa/5511900000001/request/send")
    assert request is not None and request.target == "5511900000001" and request.command == "send"
    assert parse_request_topic(topics, "home/wa/bridge/request/pair").is_bridge  # type: ignore[union-attr]
    assert parse_request_topic(topics, "home/wa/x/response/send") is None
    assert parse_request_topic(topics, "other/x/request/send") is None
    assert parse_sim_topic(topics, "home/wa/sim/5511900000001/scan").action == "scan"  # type: ignore[union-attr]
    assert parse_sim_topic(topics, "home/wa/sim/5511900000001/sent") is None


def _leaf_keys(model: type, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    found = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _leaf_keys(annotation, f"{prefix}{name}.")
        else:
            found.append(prefix + name)
    return found


def test_docs_configuration_lists_every_key_with_its_default_variable_and_restart() -> None:
    """docs/configuration.md is the reference a user reads: it must not drift from config.py."""
    import re

    import yaml

    from wa_mqtt.config import RESTART_KEYS, Config

    rows = {}
    for line in (REPO / "docs" / "configuration.md").read_text().splitlines():
        if row := re.match(r"\| `([a-z_.]+)` \| `([^`]*)`[^|]* \| `(WA_MQTT_\w+)` \| (.*) \|$", line):
            rows[row[1]] = row.groups()[1:]
    defaults = build_config({}, environ={}).model_dump(mode="json")
    assert set(rows) == set(_leaf_keys(Config))
    for key, (default, variable, on_reload) in rows.items():
        value: object = defaults
        for part in key.split("."):
            value = value[part]  # type: ignore[index]
        assert yaml.safe_load(default) == value, key
        assert variable == "WA_MQTT_" + "__".join(key.split(".")).upper(), key
        assert (on_reload == "restart") == (key in RESTART_KEYS or key.split(".")[0] in RESTART_KEYS), key
