"""The typed engine boundary: `EngineOptions` (one default per value, the config's; a lossless wire; the
proxy password masked everywhere but on the wire) and sim control outside the production session."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from wa_mqtt.config import Config, EngineProcessConfig, OutgoingConfig
from wa_mqtt.config_loading import build_config
from wa_mqtt.engines import protocol as p
from wa_mqtt.engines.base import EngineSession, SimControllable
from wa_mqtt.engines.neonize_engine import NeonizeEngine
from wa_mqtt.engines.options import EngineOptions, EngineOptionsError, MediaOptions
from wa_mqtt.engines.process import ProcessEngine
from wa_mqtt.engines.sim import SimEngine
from wa_mqtt.media import MediaPolicy
from wa_mqtt.model import OutgoingMessage

SECRET = "s3cret-pw"
PROXY = f"socks5://me:{SECRET}@127.0.0.1:1080"


def configured() -> Config:
    return build_config({"proxy": PROXY, "outgoing": {"max_media_bytes": 4096, "media_dir": "/srv/media",
                                                      "block_private_urls": True}})


def test_defaults_are_the_configs() -> None:
    options = EngineOptions()
    assert options == EngineOptions.from_config(Config())
    outgoing = OutgoingConfig()
    assert options.media.policy() == MediaPolicy(outgoing.max_media_bytes, outgoing.media_dir,
                                                 outgoing.block_private_urls)
    assert options.proxy is None and Config().proxy is None
    assert EngineOptions.from_wire("") == options == EngineOptions.from_wire("{}")
    assert EngineOptions.from_wire('{"media": {}}') == options  # a key left out: the config's default


def test_built_from_the_config() -> None:
    options = EngineOptions.from_config(configured())
    assert options.media == MediaOptions(max_bytes=4096, media_dir=Path("/srv/media"), block_private_urls=True)
    assert options.proxy_url == PROXY
    assert NeonizeEngine(media_policy=options.media.policy(), proxy=options.proxy_url).media_policy.max_bytes == 4096
    assert NeonizeEngine().media_policy == EngineOptions().media.policy()  # no default of its own


def test_the_wire_round_trip_is_lossless() -> None:
    options = EngineOptions.from_config(configured())
    wire = options.to_wire()
    assert SECRET in wire  # the child needs the password: launch.py keeps this text off `ps`
    assert EngineOptions.from_wire(wire) == options
    assert EngineOptions.from_wire(wire.encode()).proxy_url == PROXY


def test_the_store_url_reaches_the_engine_with_its_password_masked_everywhere_but_on_the_wire() -> None:
    url = f"postgres://wa:{SECRET}@db:5432/wa_mqtt"
    options = EngineOptions.from_config(build_config({"store": {"url": url}}))
    assert options.store_url_value == url and EngineOptions().store_url_value is None
    assert EngineOptions.from_wire(options.to_wire()).store_url_value == url  # the child's sessions store
    for shown in (repr(options), str(options.model_dump()), options.model_dump_json()):
        assert SECRET not in shown and "postgres://wa:***@db:5432/wa_mqtt" in shown, shown


def test_the_proxy_password_is_masked_everywhere_but_on_the_wire() -> None:
    options = EngineOptions.from_config(configured())
    for shown in (repr(options), str(options), str(options.model_dump()), options.model_dump_json(),
                  f"{options!r}"):
        assert SECRET not in shown, shown
        assert "socks5://me:***@127.0.0.1:1080" in shown


@pytest.mark.parametrize(("text", "names"), [
    ('{"proxy": "http://h:1", "colour": "red"}', "colour: unknown key"),
    ('{"media": {"max_bytes": 0}}', "media.max_bytes"),
    ('{"media": {"max_bytes": "lots"}}', "media.max_bytes"),
    ('{"media": {"block_private_urls": "perhaps"}}', "media.block_private_urls"),
    ("not json", "Invalid JSON"),
])
def test_bad_options_are_refused_naming_the_key(text: str, names: str) -> None:
    with pytest.raises(EngineOptionsError) as refused:
        EngineOptions.from_wire(text)
    assert names in str(refused.value) and str(refused.value).startswith("engine options: ")


def test_options_are_frozen() -> None:
    options = EngineOptions()
    with pytest.raises(ValidationError):
        options.proxy = None  # type: ignore[misc]  # frozen: that is the point of the test
    with pytest.raises(ValidationError):
        options.media.max_bytes = 1  # type: ignore[misc]


def test_the_process_engine_takes_the_config_section_and_the_options(tmp_path: Path) -> None:
    settings = EngineProcessConfig(heartbeat_interval=0.5, fork_server=False)
    engine = ProcessEngine("neonize", EngineOptions.from_config(configured()), settings, log_level="debug")
    args = engine.child_args("4915100000001", tmp_path / "store.db")
    wire = args[args.index("--options") + 1]
    assert EngineOptions.from_wire(wire) == EngineOptions.from_config(configured())
    assert args[args.index("--heartbeat") + 1] == "0.5" and engine.settings is settings


# -- sim control is no part of the production session -----------------------------------------

def test_only_sim_sessions_take_sim_controls(tmp_path: Path) -> None:
    def emit(_event: object) -> None:
        return None

    store = tmp_path / "store.db"
    settings = EngineProcessConfig(fork_server=False)
    neonize = NeonizeEngine().open_session("4915100000001", store, emit)
    neonize_proxy = ProcessEngine("neonize", EngineOptions(), settings).open_session("4915100000001", store, emit)
    sim = SimEngine().open_session("4915100000001", store, emit)
    sim_proxy = ProcessEngine("sim", EngineOptions(), settings).open_session("4915100000001", store, emit)
    for session in (neonize, neonize_proxy, sim, sim_proxy):
        assert isinstance(session, EngineSession)
    assert not isinstance(neonize, SimControllable) and not hasattr(neonize, "sim_control")
    assert not isinstance(neonize_proxy, SimControllable) and not hasattr(neonize_proxy, "sim_control")
    assert isinstance(sim, SimControllable) and isinstance(sim_proxy, SimControllable)
    assert "sim_control" not in EngineSession.__dict__


def test_request_args_are_typed_and_cross_unchanged() -> None:
    message = OutgoingMessage(to="5511999999999", text="olá")
    args = p.SendArgs(message=message, message_id="3EB0A1B2C3D4E5F6A7B8C9", retry=True)
    request = p.decode_request(p.encode_request(p.Request(1, "send", args.to_json())))
    assert request.parsed_args() == args
    assert p.Request(2, "start", {}).parsed_args() == p.StartArgs(method="qr")
    assert p.Request(3, "sim_control", p.SimControlArgs(action="incoming", payload="\xff").to_json()).parsed_args() \
        == p.SimControlArgs(action="incoming", payload="\xff")  # payload bytes as latin-1 text: any byte crosses
    with pytest.raises(p.ProtocolError, match="bad arguments for react: emoji"):
        p.Request(4, "react", {"chat": "x", "id": "M1"}).parsed_args()
    with pytest.raises(p.ProtocolError, match="bad arguments for stop"):
        p.Request(5, "stop", {"force": True}).parsed_args()
    assert frozenset(p.ARGS) == p.OPS


def test_incoming_media_options_come_from_the_media_section() -> None:
    config = build_config({"data_dir": "/srv/data", "media": {"max_bytes": 10, "keep_days": 0, "download": False}})
    downloads = EngineOptions.from_config(config).downloads
    assert (downloads.dir, downloads.max_bytes, downloads.keep_days, downloads.download) == (
        Path("/srv/data/media"), 10, 0, False)
    assert EngineOptions.from_wire(EngineOptions.from_config(config).to_wire()).downloads == downloads
    assert EngineOptions.from_config(build_config({"media": {"dir": "/media/whatsapp"}})).downloads.dir == Path(
        "/media/whatsapp")
