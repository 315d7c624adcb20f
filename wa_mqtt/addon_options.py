"""Home Assistant add-on start: maps the add-on options and the Supervisor's MQTT service onto the
bridge's config (`config.yaml` keys), validated by `wa_mqtt.config_loading.build_config`.

`OPTION_PATHS` is the whole mapping, option → config key; `options_to_config` applies it (pure).
`main` is the add-on's edge: it reads `/data/options.json`, asks the Supervisor for the MQTT
service (`GET http://supervisor/services/mqtt` with `SUPERVISOR_TOKEN`), merges the optional
`/config/config.yaml` of the add-on's config folder (for keys the options do not cover, such as
`auto_reply`, brought to the current config `version` first), and writes `/data/config.yaml` (0600:
it holds the broker password, and the current `version`) for the bridge.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from .ai.settings import SUPERVISOR_TOKEN_VARIABLE
from .config import ConfigError
from .config_loading import build_config, deep_merge, read_yaml
from .config_migrations import VERSION_KEY, ConfigVersionError, Migration, current_version, describe, migrate

SESSIONS_DIR = "/data/sessions"
DATA_DIR = "/data/data"
MEDIA_DIR = "/media/whatsapp"  # incoming media where Home Assistant's media browser shows it (map: media)
OPTIONS_PATH = Path("/data/options.json")
OUTPUT_PATH = Path("/data/config.yaml")
EXTRA_CONFIG_PATH = Path("/config/config.yaml")
SERVICE_URL = "http://supervisor/services/mqtt"
INGRESS_PORT = 8099  # addon/config.yaml's ingress_port
INGRESS_PROXY = "172.30.32.2"  # the Supervisor's ingress proxy: the only address the page answers in the add-on

# add-on option (dotted for nested options) → bridge config key (dotted)
OPTION_PATHS: dict[str, str] = {
    "engine": "engine",
    "log_level": "log_level",
    "accounts": "accounts",
    "notify": "notify",
    "mqtt_url": "mqtt.url",
    "proxy": "proxy",
    "presence": "presence",
    "base_topic": "mqtt.base_topic",
    "discovery": "mqtt.discovery",
    "discovery_prefix": "mqtt.discovery_prefix",
    "status_interval": "status_interval",
    "reconnect.initial": "reconnect.initial",
    "reconnect.factor": "reconnect.factor",
    "reconnect.max": "reconnect.max",
    "reconnect.jitter": "reconnect.jitter",
    "outgoing.ttl": "outgoing.ttl",
    "outgoing.allow_to": "outgoing.allow_to",
    "backups.keep": "backups.keep",
    "alerts.to": "alerts.to",
    "alerts.after": "alerts.after",
    "alerts.via": "alerts.via",
}
# options where an empty value means "not set": the bridge's default (or the MQTT service) applies
EMPTY_MEANS_UNSET = frozenset({"mqtt_url", "proxy", "outgoing.allow_to"})


def mqtt_url(service: Mapping[str, Any]) -> str:
    """`mqtt[s]://user:password@host:port` from the Supervisor's MQTT service data."""
    host = str(service["host"])
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "mqtts" if service.get("ssl") else "mqtt"
    auth = ""
    if service.get("username"):
        auth = quote(str(service["username"]), safe="")
        if service.get("password"):
            auth += ":" + quote(str(service["password"]), safe="")
        auth += "@"
    return f"{scheme}://{auth}{host}:{int(service['port'])}"


def _flatten(options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in options.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= _flatten(value, path + ".")
        else:
            flat[path] = value
    return flat


def _set(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


def options_to_config(
    options: Mapping[str, Any],
    mqtt_service: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The bridge's config data (not yet validated) from the add-on options.

    `extra` (the add-on folder's own config.yaml, migrated to the current version) is the base;
    options override it; the sessions and data folders are always under /data, and the web page is the
    ingress panel (every address of the container, answering only the ingress proxy). `mqtt_url` wins over
    the Supervisor's MQTT service. The result has the current `version`. Unknown options raise
    ConfigError (the manifest and OPTION_PATHS must agree), and so does an `extra` newer than the code.
    """
    base = _current_layout(extra or {}, "the add-on folder's config.yaml")[0]
    data: dict[str, Any] = {VERSION_KEY: current_version()}
    for option, value in _flatten(options).items():
        if option not in OPTION_PATHS:
            raise ConfigError(f"add-on option {option!r} has no config key")
        if option in EMPTY_MEANS_UNSET and value in (None, "", []):
            continue
        _set(data, OPTION_PATHS[option], value)
    if "url" not in data.get("mqtt", {}) and mqtt_service:
        _set(data, "mqtt.url", mqtt_url(mqtt_service))
    data["sessions_dir"] = SESSIONS_DIR
    data["data_dir"] = DATA_DIR
    # the web page as the ingress panel: on the container's address, for the ingress proxy alone
    data["web"] = {"enabled": True, "host": "0.0.0.0", "port": INGRESS_PORT, "ingress_proxy": INGRESS_PROXY}
    merged = deep_merge(base, data)
    media = merged.setdefault("media", {})
    if isinstance(media, dict):
        media.setdefault("dir", MEDIA_DIR)  # the add-on folder's config.yaml may name another
    return merged


def read_extra(path: Path) -> dict[str, Any]:
    """The add-on folder's config.yaml (absent: empty) in the current layout; says on stderr which
    migrations it needed (the file itself is not rewritten: see config_migrations.py)."""
    data, applied = _current_layout(read_yaml(path), str(path))
    if applied:
        print(f"wa_mqtt add-on: {describe(str(path), applied)}", file=sys.stderr)
    return data


def _current_layout(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[Migration]]:
    try:
        return migrate(data)
    except ConfigVersionError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def fetch_mqtt_service(
    token: str | None, url: str = SERVICE_URL, opener: Callable[..., Any] = urllib.request.urlopen
) -> dict[str, Any] | None:
    """The Supervisor's MQTT service data (host, port, ssl, username, password), None if not offered."""
    if not token:
        return None
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with opener(request, timeout=10) as response:
            body = json.loads(response.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    data = body.get("data") if isinstance(body, dict) else None
    return data if isinstance(data, dict) and data.get("host") else None


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the bridge config from the add-on options.")
    parser.add_argument("--options", type=Path, default=OPTIONS_PATH)
    parser.add_argument("--extra", type=Path, default=EXTRA_CONFIG_PATH)
    parser.add_argument("--output", type=Path, default=OUTPUT_PATH)
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        options = json.loads(args.options.read_text(encoding="utf-8"))
        service = fetch_mqtt_service(env.get("SUPERVISOR_TOKEN"))
        data = options_to_config(options, service, read_extra(args.extra))
        if not data.get("mqtt", {}).get("url"):
            raise ConfigError("no MQTT broker: install the Mosquitto broker add-on or set the mqtt_url option")
        # validate now: a clear message in the add-on log, exit code 2 (the Supervisor's token lets
        # home_assistant AI rules reach Home Assistant without a url or token of their own)
        build_config(data, {k: v for k, v in env.items() if k == SUPERVISOR_TOKEN_VARIABLE})
    except (OSError, ValueError, ConfigError) as exc:
        print(f"wa_mqtt add-on: invalid configuration: {exc}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        yaml.safe_dump(data, out, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
