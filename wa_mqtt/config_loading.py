"""Building the one validated `Config`: the YAML file (brought to the current `version` by
config_migrations.py), then `WA_MQTT_<SECTION>__<KEY>` environment variables (or `WA_MQTT_<KEY>` for
top-level keys; values parsed as YAML scalars: `true`, `5`, `[a, b]`), then command-line flags; and
validation errors explained one line per problem. No other module reads the environment or config
files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .ai.settings import supervisor_defaults
from .config import ENV_PREFIX, Config, ConfigError
from .config_migrations import ConfigVersionError, migrate


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The overrides from `WA_MQTT_*` variables, and which variable set each key path (for errors)."""
    overrides: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if path[-1] in ("url", "proxy", "client_id", "base_topic", "token") and value is not None:
            value = raw  # never reinterpret strings that only look like YAML
        node = overrides
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        sources[tuple(path)] = name
    return overrides, sources


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, mappings merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe_validation_error(exc: ValidationError, env_sources: Mapping[tuple[str, ...], str] | None = None) -> str:
    """One line per problem: `mqtt.embedded_port: Input should be less than or equal to 65535`; a value
    that came from the environment names its variable."""
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        variable = next((name for path, name in (env_sources or {}).items() if loc[:len(path)] == path), None)
        if variable is not None:
            msg += f" (from the environment variable {variable}{_section_hint(loc)})"
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def _section_hint(loc: tuple[str, ...]) -> str:
    """`WA_MQTT_MQTT_URL` meant `WA_MQTT_MQTT__URL`: say so when an unknown top-level key starts with a
    section's name."""
    if len(loc) != 1:
        return ""
    sections = [name for name, field in Config.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)]
    section = max((name for name in sections if loc[0].startswith(name + "_")), key=len, default=None)
    if section is None:
        return ""
    inner = loc[0][len(section) + 1:].upper()
    return f"; a key inside a section takes two underscores: {ENV_PREFIX}{section.upper()}__{inner}"


def read_yaml(path: Path, *, missing_ok: bool = True, empty_ok: bool = True) -> dict[str, Any]:
    """The mapping in a YAML file. A missing file, or one with no settings at all (empty, only
    comments), is an empty config unless `missing_ok` / `empty_ok` say it is an error."""
    if not path.exists():
        if missing_ok:
            return {}
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if data is None:
        if empty_ok:
            return {}
        raise ConfigError(f"{path}: the file is empty (no settings); a half-written file is not applied")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def config_file_complete(path: Path) -> bool:
    """Whether `path` holds a readable mapping of settings (not missing, empty or broken YAML), as a
    file half-way through being rewritten in place would not."""
    try:
        read_yaml(path, missing_ok=False, empty_ok=False)
    except ConfigError:
        return False
    return True


def build_config(
    data: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
) -> Config:
    """File data (migrated to the current `version`), then environment, then command-line flags;
    validated. Raises ConfigError."""
    try:
        current, applied = migrate(data)
    except ConfigVersionError as exc:
        raise ConfigError(str(exc)) from None
    env, env_sources = _env_overrides(environ or {})
    merged = deep_merge(current, env)
    merged = deep_merge(merged, cli_overrides or {})
    merged = supervisor_defaults(merged, environ or {})  # the add-on: Home Assistant through the Supervisor
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, env_sources)) from None
    config._migrations = tuple(applied)
    return config


def load_config(
    path: Path,
    environ: Mapping[str, str] | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    *,
    missing_ok: bool = True,
    empty_ok: bool = True,
) -> Config:
    """Load and validate `path` with environment and flag overrides (see `read_yaml` for the flags)."""
    data = read_yaml(path, missing_ok=missing_ok, empty_ok=empty_ok)
    return build_config(data, os.environ if environ is None else environ, cli_overrides)
