"""The Home Assistant add-on (addon/) against the Supervisor's add-on rules, and its options mapping
(wa_mqtt.addon_options) onto a valid bridge config.

The rules are those of the Supervisor's source (supervisor/addons/validate.py, options.py, const.py)
and the add-on developer docs: required keys, slug, version, arch, services, map, startup, the
options schema element types, and how option values are checked against them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tomllib
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml

import wa_mqtt
from wa_mqtt import addon_options as ao
from wa_mqtt.config import ConfigError
from wa_mqtt.config_loading import build_config

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon"

# --- the Supervisor's rules -------------------------------------------------------------------
ARCH_ALL = {"armhf", "armv7", "aarch64", "amd64", "i386"}
STARTUP = {"initialize", "system", "services", "application", "once"}
BOOT = {"auto", "manual", "manual_only"}
RE_SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
RE_SERVICE = re.compile(r"^(mqtt|mysql):(provide|want|need)$")
RE_VOLUME = re.compile(
    r"^(data|config|ssl|addons|backup|share|media|homeassistant_config|all_addon_configs|addon_config)(:(rw|ro))?$"
)
RE_BUILD_IMAGE = re.compile(r"^([a-zA-Z\-.:\d{}]+/)*?([\-\w{}]+)/([\-\w{}]+)(:[.\-\w{}]+)?$")
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:|bool|email|url|port|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>\d+)?,(?P<i_max>\d+)?\))?"
    r"|float(?:\((?P<f_min>[\d.]+)?,(?P<f_max>[\d.]+)?\))?"
    r"|match\((?P<match>.*)\)|list\((?P<list>.+)\))\??$"
)


def manifest() -> dict[str, Any]:
    return yaml.safe_load((ADDON / "config.yaml").read_text(encoding="utf-8"))


def translations() -> dict[str, Any]:
    return yaml.safe_load((ADDON / "translations" / "en.yaml").read_text(encoding="utf-8"))


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted path → leaf (a schema element string, a one-element list, or an option value)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_value(typ: str, value: Any) -> None:
    """One option value against one schema element, as the Supervisor's AddonOptions does."""
    match = RE_SCHEMA_ELEMENT.match(typ)
    assert match, f"unknown schema element {typ!r}"
    bounds = {k[2:]: float(v) for k, v in match.groupdict().items() if v and k[1:2] == "_"}
    base = typ.rstrip("?")
    assert value is not None, f"missing required value for {typ}"
    if base.startswith(("str", "password")):
        assert isinstance(value, str)
        assert bounds.get("min", 0) <= len(value) <= bounds.get("max", float("inf"))
    elif base.startswith("int"):
        assert isinstance(value, int) and not isinstance(value, bool)
        assert bounds.get("min", -float("inf")) <= value <= bounds.get("max", float("inf"))
    elif base.startswith("float"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert bounds.get("min", -float("inf")) <= float(value) <= bounds.get("max", float("inf"))
    elif base == "bool":
        assert isinstance(value, bool)
    elif base.startswith("match"):
        assert re.match(match["match"], str(value)), f"{value!r} does not match {typ}"
    elif base.startswith("list"):
        assert str(value) in match["list"].split("|")
    elif base == "port":
        assert isinstance(value, int) and 1 <= value <= 65535
    else:
        pytest.fail(f"no check for {typ}")


def validate_options(schema: dict[str, Any], options: dict[str, Any]) -> None:
    for key, value in options.items():
        assert key in schema, f"option {key!r} has no schema entry"
        typ = schema[key]
        if isinstance(typ, dict):
            assert isinstance(value, dict)
            validate_options(typ, value)
        elif isinstance(typ, list):
            assert isinstance(value, list)
            for item in value:
                check_value(typ[0], item)
        else:
            check_value(typ, value)
    for key, typ in schema.items():  # missing keys must be optional
        if key not in options:
            element = typ[0] if isinstance(typ, list) else typ
            assert isinstance(element, str) and element.endswith("?"), f"required option {key!r} has no default"


# --- manifest ---------------------------------------------------------------------------------

def test_required_keys_and_formats():
    data = manifest()
    for key in ("name", "version", "slug", "description", "arch"):
        assert data.get(key), key
    assert isinstance(data["name"], str) and isinstance(data["description"], str)
    assert data["slug"] == "wa_mqtt" and RE_SLUG.match(data["slug"])
    assert isinstance(data["version"], str) and re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", data["version"])


def test_version_matches_the_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert manifest()["version"] == pyproject["project"]["version"] == wa_mqtt.__version__
    assert f"## {manifest()['version']}" in (ADDON / "CHANGELOG.md").read_text(encoding="utf-8")


def test_arch_services_startup_and_data():
    data = manifest()
    assert set(data["arch"]) <= ARCH_ALL
    assert sorted(data["arch"]) == ["aarch64", "amd64"]  # the arches neonize has manylinux wheels for
    assert all(RE_SERVICE.match(s) for s in data["services"]) and "mqtt:need" in data["services"]
    assert data["startup"] in STARTUP and data["startup"] == "services"
    assert data["boot"] in BOOT
    assert data["init"] is False
    assert all(RE_VOLUME.match(v) for v in data.get("map", []))
    assert not data.get("host_network") and not data.get("privileged") and not data.get("full_access")


def test_schema_elements_are_valid_types():
    for path, typ in leaves(manifest()["schema"]).items():
        if isinstance(typ, list):
            assert len(typ) == 1 and isinstance(typ[0], (str, dict)), path  # no list of lists
            typ = typ[0]
        assert RE_SCHEMA_ELEMENT.match(typ), f"{path}: {typ!r}"
        if typ.startswith("match("):
            re.compile(RE_SCHEMA_ELEMENT.match(typ)["match"])


def test_every_option_has_a_schema_entry_and_defaults_validate():
    data = manifest()
    validate_options(data["schema"], data["options"])


def test_schema_rejects_what_the_bridge_rejects():
    schema = manifest()["schema"]
    for good in ("557996277210", "+5511999999999"):
        check_value(schema["accounts"][0], good)
    for good in ("5511999999999", "120363012345678901@g.us", "5511999999999@s.whatsapp.net"):
        check_value(schema["notify"][0], good)
        build_config({"notify": [good]})
    for bad in ("abc", "0123456789", "55 11 9999"):
        with pytest.raises(AssertionError):
            check_value(schema["notify"][0], bad)
        with pytest.raises(ConfigError):
            build_config({"notify": [bad]})
    for bad in ("wa/", "#", "/wa", "a+b"):
        with pytest.raises(AssertionError):
            check_value(schema["base_topic"], bad)
        with pytest.raises(ConfigError):
            build_config({"mqtt": {"base_topic": bad}})
    check_value(schema["base_topic"], "home/wa")


def test_every_option_has_a_translation():
    schema, names = manifest()["schema"], translations()["configuration"]

    def walk(schema_node: dict[str, Any], names_node: dict[str, Any], where: str) -> None:
        assert set(names_node) == set(schema_node), f"{where}: translations and schema differ"
        for key, typ in schema_node.items():
            entry = names_node[key]
            assert entry.get("name") and entry.get("description"), f"{where}{key}"
            if isinstance(typ, dict):
                walk(typ, entry["fields"], f"{where}{key}.")

    walk(schema, names, "")


def test_build_yaml_uses_debian_bases_for_every_arch():
    build = yaml.safe_load((ADDON / "build.yaml").read_text(encoding="utf-8"))
    assert set(build["build_from"]) == set(manifest()["arch"])
    for arch, image in build["build_from"].items():
        assert RE_BUILD_IMAGE.match(image), image
        assert arch in image and "debian" in image and "alpine" not in image
    assert all(isinstance(v, str) for v in build.get("labels", {}).values())


def test_dockerfile_is_debian_with_libmagic_and_runs_the_start_script():
    text = (ADDON / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM \$\{?BUILD_FROM\}?$", text, re.M)
    assert re.search(r"^ARG BUILD_FROM=.*debian", text, re.M)
    assert "apt-get install" in text and "apk " not in text
    for package in ("python3", "python3-venv", "libmagic1", "ffmpeg"):
        assert re.search(rf"\b{re.escape(package)}\b", text), package
    assert 'CMD ["/run.sh"]' in text


# --- the build context: this repository's own source ------------------------------------------

def _pack_source() -> Any:
    spec = importlib.util.spec_from_file_location("pack_source", ADDON / "pack_source.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _install_step(dockerfile: str) -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's COPY sources by destination file, and every `pip install` argument."""
    text = dockerfile.replace("\\\n", " ")
    copies: dict[str, str] = {}
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, dest = line.split()
        for source in sources:
            copies[dest.rstrip("/") + "/" + Path(source).name if dest.endswith("/") else dest] = source
    installs = [arg for command in re.findall(r"pip install ([^&;\n]+)", text) for arg in command.split()
                if not arg.startswith("-")]
    return copies, installs


def test_the_build_context_holds_this_repository_source():
    """addon/ is all the Supervisor builds from: the archive in it must be the package as it is here."""
    pack_source = _pack_source()
    assert (ADDON / "wa_mqtt-source.tar").read_bytes() == pack_source.pack(ROOT), (
        "addon/wa_mqtt-source.tar is stale: run python addon/pack_source.py")
    assert pack_source.pack(ROOT) == pack_source.pack(ROOT)  # reproducible: content decides the bytes


def test_the_dockerfile_installs_the_archive_of_its_build_context_and_nothing_else_of_wa_mqtt():
    copies, installs = _install_step((ADDON / "Dockerfile").read_text(encoding="utf-8"))
    assert installs == ["/tmp/addon/wa_mqtt-source.tar"]
    assert copies[installs[0]] == "wa_mqtt-source.tar" and (ADDON / copies[installs[0]]).is_file()
    assert not re.search(r"wa_mqtt\s*[=<>~]=|git\+|https?://", (ADDON / "Dockerfile").read_text())


def test_the_package_builds_from_the_build_context_alone(tmp_path):
    """What the Supervisor does, less Docker: copy the add-on folder alone, build the wheel the
    Dockerfile's install step names, offline; it is this version, with every module of the package."""
    context = tmp_path / "context"
    shutil.copytree(ADDON, context)
    copies, installs = _install_step((context / "Dockerfile").read_text(encoding="utf-8"))
    archive = context / copies[installs[0]]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", str(tmp_path / "dist"), str(archive)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as built:
        names = set(built.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        version = re.search(r"^Version: (.+)$", built.read(metadata).decode(), re.M)
    assert version and version[1] == manifest()["version"] == wa_mqtt.__version__
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "wa_mqtt").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules <= names, modules - names
    static = {p.relative_to(ROOT).as_posix() for p in (ROOT / "wa_mqtt" / "web" / "static").iterdir()}
    assert static and static <= names, static - names  # the web page's files


def test_repository_yaml_is_a_valid_add_on_repository():
    """The Supervisor's repository schema (supervisor/store/validate.py): a name, optional url and maintainer."""
    data = yaml.safe_load((ROOT / "repository.yaml").read_text(encoding="utf-8"))
    assert isinstance(data.get("name"), str) and data["name"]
    assert set(data) <= {"name", "url", "maintainer"}
    if "url" in data:
        assert re.match(r"^https?://", data["url"])
    # the Supervisor finds add-ons as config.* files outside dot folders; ours is addon/
    assert (ADDON / "config.yaml").is_file() and manifest()["slug"] == "wa_mqtt"


def test_start_script():
    run = ADDON / "run.sh"
    assert os.stat(run).st_mode & stat.S_IXUSR
    text = run.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/with-contenv bashio")  # SUPERVISOR_TOKEN reaches it
    assert "-m wa_mqtt.addon_options" in text and "--options /data/options.json" in text
    assert "exec python -m wa_mqtt --config /data/config.yaml" in text


def _png_size(path: Path) -> tuple[int, int]:
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    stream, size, idat = io.BytesIO(blob[8:]), None, b""
    while True:
        length, kind = struct.unpack(">I4s", stream.read(8))
        body = stream.read(length)
        assert struct.unpack(">I", stream.read(4))[0] == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    assert size and zlib.decompress(idat)
    return size


def test_icon_and_logo_are_valid_pngs():
    width, height = _png_size(ADDON / "icon.png")
    assert width == height and 64 <= width <= 512
    width, height = _png_size(ADDON / "logo.png")
    assert width > height


# --- options → bridge config ------------------------------------------------------------------

SERVICE = {"host": "core-mosquitto", "port": 1883, "ssl": False, "protocol": "3.1.1",
           "username": "addons", "password": "s3cr:t/@x", "addon": "core_mosquitto"}


def test_option_paths_cover_the_schema_exactly():
    assert set(leaves(manifest()["schema"])) == set(ao.OPTION_PATHS)


def test_default_options_give_a_valid_bridge_config():
    config = build_config(ao.options_to_config(manifest()["options"], SERVICE))
    assert config.mqtt.url == "mqtt://addons:s3cr%3At%2F%40x@core-mosquitto:1883"
    assert str(config.sessions_dir) == "/data/sessions" and str(config.data_dir) == "/data/data"
    assert config.outgoing.allow_to is None  # empty list in the UI = any recipient
    assert config.engine == "neonize" and config.mqtt.discovery is True
    assert str(config.media.dir) == "/media/whatsapp" and "media:rw" in manifest()["map"]  # HA's media browser
    # the web page is the ingress panel: on the container's address, answering the ingress proxy alone
    assert config.web.enabled and config.web.port == manifest()["ingress_port"] == ao.INGRESS_PORT
    assert config.web.host == "0.0.0.0" and config.web.ingress_proxy == "172.30.32.2" and config.web.token is None


def test_the_web_page_is_an_ingress_panel_in_the_sidebar():
    data = manifest()
    assert data["ingress"] is True and isinstance(data["ingress_port"], int)
    assert data["panel_title"] == "WhatsApp" and data["panel_icon"] == "mdi:whatsapp"
    assert "ports" not in data  # reachable through Home Assistant only, not on a port of the host


# A value for every option, valid for its schema and different from the default.
SAMPLES: dict[str, tuple[Any, Any]] = {  # option → (value, expected config value)
    "engine": ("sim", "sim"),
    "log_level": ("debug", "debug"),
    "accounts": (["+557996277210"], ["557996277210"]),
    "notify": (["120363012345678901@g.us"], ["120363012345678901@g.us"]),
    "mqtt_url": ("mqtts://u:p@broker.lan:8883", "mqtts://u:p@broker.lan:8883"),
    "proxy": ("socks5://10.0.0.2:1080", "socks5://10.0.0.2:1080"),
    "presence": ("unavailable", "unavailable"),
    "base_topic": ("home/wa", "home/wa"),
    "discovery": (False, False),
    "discovery_prefix": ("ha", "ha"),
    "status_interval": (30, 30),
    "reconnect.initial": (2.5, 2.5),
    "reconnect.factor": (3, 3),
    "reconnect.max": (600, 600),
    "reconnect.jitter": (0.5, 0.5),
    "outgoing.ttl": (3600, 3600),
    "outgoing.allow_to": (["5511999999999"], ["5511999999999"]),
    "backups.keep": (7, 7),
    "alerts.to": (["+5511999999999"], ["5511999999999"]),
    "alerts.after": (120, 120),
    "alerts.via": ("+557996277210", "557996277210"),
}


def _with(options: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    options = json.loads(json.dumps(options))
    node = options
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return options


def _get(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        obj = getattr(obj, key)
    return obj


@pytest.mark.parametrize("option", sorted(ao.OPTION_PATHS))
def test_every_option_reaches_its_config_key(option):
    data = manifest()
    value, expected = SAMPLES[option]
    options = _with(data["options"], option, value)
    validate_options(data["schema"], options)  # the Supervisor would accept it
    config = build_config(ao.options_to_config(options, SERVICE))
    assert _get(config, ao.OPTION_PATHS[option]) == expected
    default = build_config(ao.options_to_config(data["options"], SERVICE))
    assert _get(default, ao.OPTION_PATHS[option]) != expected


def test_extra_config_file_adds_keys_the_options_lack_and_options_win():
    extra = {"auto_reply": [{"name": "ping", "match": {"text": "ping"}, "reply": "pong"}], "pairing_timeout": 120,
             "mqtt": {"client_id": "wa_ha", "base_topic": "ignored"}}
    config = build_config(ao.options_to_config(manifest()["options"], SERVICE, extra))
    assert [rule.name for rule in config.auto_reply] == ["ping"] and config.pairing_timeout == 120
    assert config.mqtt.client_id == "wa_ha" and config.mqtt.base_topic == "wa"


def test_unknown_option_is_an_error():
    with pytest.raises(ConfigError, match="nonsense"):
        ao.options_to_config({"nonsense": 1})


@pytest.mark.parametrize("service,url", [
    ({"host": "core-mosquitto", "port": 1883}, "mqtt://core-mosquitto:1883"),
    ({"host": "b", "port": 8883, "ssl": True, "username": "u"}, "mqtts://u@b:8883"),
    ({"host": "fd00::1", "port": 1883, "username": "u", "password": "a b"}, "mqtt://u:a%20b@[fd00::1]:1883"),
])
def test_mqtt_url_from_service(service, url):
    assert ao.mqtt_url(service) == url
    build_config({"mqtt": {"url": url}})


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fetch_mqtt_service_uses_the_supervisor_token():
    seen = {}

    def opener(request, timeout):
        seen["auth"] = request.get_header("Authorization")
        seen["url"] = request.full_url
        return _Response(json.dumps({"result": "ok", "data": SERVICE}).encode())

    assert ao.fetch_mqtt_service("tok", opener=opener) == SERVICE
    assert seen == {"auth": "Bearer tok", "url": "http://supervisor/services/mqtt"}
    assert ao.fetch_mqtt_service(None, opener=opener) is None

    def failing(request, timeout):
        raise OSError("no supervisor")

    assert ao.fetch_mqtt_service("tok", opener=failing) is None
    assert ao.fetch_mqtt_service("tok", opener=lambda r, timeout: _Response(b'{"result":"error"}')) is None


def test_main_writes_a_private_valid_config(tmp_path):
    options = _with(manifest()["options"], "mqtt_url", "mqtt://u:pw@broker:1883")
    (tmp_path / "options.json").write_text(json.dumps(options))
    out = tmp_path / "out" / "config.yaml"
    code = ao.main(["--options", str(tmp_path / "options.json"), "--extra", str(tmp_path / "none.yaml"),
                    "--output", str(out)], environ={})
    assert code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = build_config(yaml.safe_load(out.read_text()))
    assert config.mqtt.url == "mqtt://u:pw@broker:1883"


def test_main_without_a_broker_or_with_bad_options_exits_2(tmp_path, capsys):
    (tmp_path / "options.json").write_text(json.dumps(manifest()["options"]))
    args = ["--options", str(tmp_path / "options.json"), "--extra", str(tmp_path / "none.yaml"),
            "--output", str(tmp_path / "config.yaml")]
    assert ao.main(args, environ={}) == 2
    assert "no MQTT broker" in capsys.readouterr().err
    bad = _with(manifest()["options"], "mqtt_url", "mqtt://u:pw@broker:1883")
    bad["reconnect"]["jitter"] = 5
    (tmp_path / "options.json").write_text(json.dumps(bad))
    assert ao.main(args, environ={}) == 2
    assert "reconnect.jitter" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()
