"""config.yaml's `version`: files without it are version 1, older files are migrated in memory step
by step (never rewritten), newer ones are refused naming the key; the add-on writes the current one."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from wa_mqtt import addon_options, cli, config_migrations
from wa_mqtt.config import ConfigError
from wa_mqtt.config_loading import build_config, load_config
from wa_mqtt.config_migrations import CONFIG_VERSION, Migration, describe, migrate

REPO = Path(__file__).resolve().parents[2]


def rename_status_every(data: dict[str, Any]) -> dict[str, Any]:
    """A test migration: version 1 called it `status_every`, version 2 calls it `status_interval`."""
    if "status_every" in data:
        data["status_interval"] = data.pop("status_every")
    return data


def backups_as_mapping(data: dict[str, Any]) -> dict[str, Any]:
    """Another: version 2 allowed `backups: 5`, version 3 only `backups: {keep: 5}`."""
    if isinstance(data.get("backups"), int):
        data["backups"] = {"keep": data["backups"]}
    return data


TO_2 = Migration(2, "`status_every` is now `status_interval`", rename_status_every)
TO_3 = Migration(3, "`backups: N` is now `backups: {keep: N}`", backups_as_mapping)


def test_the_code_reads_version_1_and_a_file_without_version_is_version_1(tmp_path: Path) -> None:
    assert CONFIG_VERSION == 1 and config_migrations.MIGRATIONS == ()  # no real migration needed yet
    config = load_config(tmp_path / "absent.yaml", environ={})
    assert config.version == 1 and config.migrations_applied == ()
    assert build_config({"status_interval": 5}, environ={}).version == 1
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    assert shipped["version"] == CONFIG_VERSION
    assert load_config(REPO / "config.yaml", environ={}).masked()["version"] == CONFIG_VERSION


def test_migrations_run_stepwise_from_the_files_version() -> None:
    data = {"status_every": 30, "backups": 5, "mqtt": {"base_topic": "home"}}
    migrated, applied = migrate(data, [TO_2, TO_3])
    assert migrated == {"version": 3, "status_interval": 30, "backups": {"keep": 5}, "mqtt": {"base_topic": "home"}}
    assert applied == [TO_2, TO_3]
    assert data == {"status_every": 30, "backups": 5, "mqtt": {"base_topic": "home"}}  # the input is untouched
    migrated, applied = migrate({"version": 2, "status_every": "kept: v2 has no such key", "backups": 4},
                                [TO_2, TO_3])
    assert applied == [TO_3] and migrated["backups"] == {"keep": 4} and migrated["status_every"].startswith("kept")
    assert migrate({"version": 3, "backups": {"keep": 1}}, [TO_2, TO_3]) == ({"version": 3, "backups": {"keep": 1}},
                                                                            [])


@pytest.mark.parametrize(("version", "text"), [
    (2, "version: 2 is newer than this wa_mqtt reads (1): the file was written for a newer wa_mqtt"),
    (0, "version: must be a whole number from 1 up (this wa_mqtt reads 1), not 0"),
    ("1.0", "version: must be a whole number from 1 up (this wa_mqtt reads 1), not '1.0'"),
    (True, "version: must be a whole number"),
])
def test_a_newer_or_unreadable_version_is_a_config_error_naming_the_key(tmp_path: Path, version: Any,
                                                                        text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"version": version, "engine": "sim"}))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(text)


def test_version_cannot_be_overridden_to_another_value() -> None:
    with pytest.raises(ConfigError, match=r"^version: Value error, must be 1"):
        build_config({}, environ={"WA_MQTT_VERSION": "2"})


@pytest.mark.parametrize("numbers", [[3], [2, 2], [2, 4]])
def test_migrations_must_be_numbered_from_two_without_gaps(numbers: list[int]) -> None:
    with pytest.raises(ValueError, match="numbered 2, 3"):
        migrate({}, [Migration(n, "x", rename_status_every) for n in numbers])


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test migrations registered as if they shipped (the code then reads version 3)."""
    monkeypatch.setattr(config_migrations, "MIGRATIONS", (TO_2, TO_3))


OLD_FILE = "# my annotated config\nengine: sim\nstatus_every: 15   # seconds\nbackups: 2\n"


@pytest.mark.usefixtures("registered")
def test_an_old_file_is_migrated_at_load_and_left_unchanged_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(OLD_FILE)
    config = load_config(path, environ={"WA_MQTT_LOG_LEVEL": "debug"})
    assert (config.version, config.status_interval, config.backups.keep, config.log_level) == (3, 15, 2, "debug")
    assert config.migrations_applied == (TO_2, TO_3)
    assert path.read_text() == OLD_FILE  # comments and all: not rewritten
    assert describe(str(path), config.migrations_applied) == (
        f"{path} is config version 1, this wa_mqtt reads 3: migrated in memory (2: `status_every` is now "
        "`status_interval`; 3: `backups: N` is now `backups: {keep: N}`); the file is unchanged: make these "
        "changes and set `version: 3` in it")
    again = build_config(config.masked(), environ={})  # the effective config is current: nothing to migrate
    assert again.model_dump() == config.model_dump() and again.migrations_applied == ()


@pytest.mark.usefixtures("registered")
def test_the_bridge_says_once_at_start_which_migrations_it_applied(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(OLD_FILE + "log_level: info\n")
    try:
        assert cli.main(["--config", str(path), "check-config"]) == 0
    finally:
        logging.getLogger().handlers.clear()  # setup_logging attached one to the captured stderr
    out, err = capsys.readouterr()
    assert json.loads(out)["version"] == 3
    [line] = [line for line in err.splitlines() if "migrated in memory" in line]
    assert " INFO " in line and f"{path} is config version 1, this wa_mqtt reads 3" in line


def test_the_addon_writes_the_current_version_and_migrates_its_extra_file(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = addon_options.options_to_config({"engine": "sim"}, {"host": "broker", "port": 1883})
    assert data["version"] == CONFIG_VERSION and build_config(data, environ={}).version == CONFIG_VERSION
    with pytest.raises(ConfigError, match=r"^the add-on folder's config.yaml: version: 9 is newer"):
        addon_options.options_to_config({}, None, {"version": 9})
    monkeypatch.setattr(config_migrations, "MIGRATIONS", (TO_2,))
    extra = tmp_path / "extra.yaml"
    extra.write_text("status_every: 20\n")
    assert addon_options.read_extra(extra) == {"version": 2, "status_interval": 20}
    data = addon_options.options_to_config({"engine": "sim"}, {"host": "broker", "port": 1883},
                                           {"status_every": 20})
    assert data["version"] == 2 and data["status_interval"] == 20 and "status_every" not in data
