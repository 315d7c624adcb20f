"""The bridge's configuration: pydantic models of config.yaml, and what a live reload may change.

One validated `Config` object is built (config_loading.py: file, environment, flags) and passed down.
A reload applies what it can and names the settings that need a restart (`RESTART_KEYS`,
`config_changes`). Secrets are masked by config_secrets.py's list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .auto_reply_rules import AutoReplyLimits, AutoReplyRules
from .config_migrations import CONFIG_VERSION, Migration, current_version
from .config_secrets import SECRET_MASK, at_path, mask_url, secret_paths
from .health_config import AlertsConfig, MetricsConfig, WatchdogConfig
from .model import phone_list
from .mqtt.topics import is_topic_name

ENV_PREFIX = "WA_MQTT_"
PROXY_SCHEMES = ("http", "https", "socks5")


class ConfigError(Exception):
    """A config that cannot be used; the message names the key and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttConfig(_Section):
    url: str | None = None
    embedded_port: int = Field(1883, ge=1, le=65535)
    base_topic: str = "wa"
    client_id: str = "wa_mqtt"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    keepalive: int = Field(30, ge=5, le=3600)
    # TLS for mqtts:// URLs: a CA file to trust (else the system's), a client certificate and key
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False  # skip the server hostname check (self-signed test brokers only)
    max_payload_bytes: int = Field(96 * 1024 * 1024, ge=1024)  # a request larger than this: too_large

    @model_validator(mode="after")
    def _tls_files(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("has no host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port ({exc})") from None
        return value

    @field_validator("base_topic", "discovery_prefix")
    @classmethod
    def _topic_root(cls, value: str) -> str:
        if not is_topic_name(value) or value.startswith("/") or value.endswith("/"):
            raise ValueError("must be a plain topic prefix without wildcards, control characters or "
                             "leading/trailing '/'")
        return value


class ReconnectConfig(_Section):
    initial: float = Field(1.0, gt=0)
    factor: float = Field(2.0, ge=1)
    max: float = Field(300.0, gt=0)
    jitter: float = Field(0.2, ge=0, le=1)
    flap_window: float = Field(60.0, ge=0)
    # issue 14: after a drop of a logged-in session whatsmeow reconnects by itself; the bridge takes over
    # (stops and starts the session with its backoff) only if it is still down after this many seconds
    engine_grace: float = Field(600.0, gt=0)


class BackupsConfig(_Section):
    keep: int = Field(3, ge=1, le=100)
    # Encrypt backups at rest (Fernet). Generate one with:
    #   python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
    # Prefer the environment (WA_MQTT_BACKUPS__ENCRYPTION_KEY) to the file. Lose it and the backups are lost.
    encryption_key: str | None = None

    @field_validator("encryption_key")
    @classmethod
    def _fernet_key(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        import base64
        import binascii

        try:
            raw = base64.urlsafe_b64decode(value.encode())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError("must be a Fernet key: 32 bytes, url-safe base64 (44 characters)")
        return value

    @property
    def key(self) -> bytes | None:
        return self.encryption_key.encode() if self.encryption_key else None


class OutgoingConfig(_Section):
    ttl: float = Field(86400, gt=0)
    allow_to: list[str] | None = None
    max_media_bytes: int = Field(64 * 1024 * 1024, gt=0)
    media_dir: Path | None = None  # media `path`s must lie inside it; null = paths refused
    block_private_urls: bool = False  # refuse media URLs that resolve to private/loopback addresses
    max_text_chars: int = Field(65536, ge=1, le=65536)  # WhatsApp's own limit

    @field_validator("allow_to", mode="before")
    @classmethod
    def _recipients(cls, value: Any) -> Any:
        return phone_list(value, jids=True)


class MediaConfig(_Section):
    """Incoming media: downloaded by the engines into `dir/<phone>/`, never put on the broker."""

    download: bool = True  # false: messages carry the media's metadata only
    dir: Path | None = None  # null: <data_dir>/media (the add-on: /media/whatsapp)
    max_bytes: int = Field(64 * 1024 * 1024, gt=0)  # a larger file is not kept: `media.error: too_large`
    download_timeout: float = Field(60, gt=0, le=3600)  # seconds; beyond it `media.error: download_failed`
    keep_days: float = Field(30, ge=0)  # files older than this are removed; 0 keeps them forever
    max_total_mb: int = Field(2048, ge=0)  # per account; the oldest files go first; 0: no limit


class CallsConfig(_Section):
    """Incoming calls (each is published on `wa/<phone>/call` whatever these say)."""

    reject: bool = False  # reject every incoming call at once
    reply: str | None = Field(None, max_length=4096)  # with reject: this text is sent to the caller


class EngineProcessConfig(_Section):
    """How engine sessions run: one child process per account, supervised."""

    in_process: bool = False  # inside the bridge (tests, benchmarks): an engine crash then takes the bridge down
    heartbeat_interval: float = Field(1.0, gt=0, le=60)
    heartbeat_timeout: float = Field(15.0, gt=0)  # a child silent this long is hung: killed and restarted
    max_rss_mb: int = Field(512, ge=64)  # a child above this is killed and restarted
    recycle_after_failures: int = Field(20, ge=1)  # failed connects before a fresh process (neonize leaks)
    fork_server: bool = True  # children forked from a preloaded server (ms) instead of exec'd (~0.15-0.5 s CPU)


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach: 127.0.0.0/8, ::1 or `localhost`."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or "" (every address)


class WebConfig(_Section):
    """The web page (features/web.py): bound to loopback unless a token or the ingress proxy guards it."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8099, ge=1, le=65535)
    token: str | None = None  # a secret: every request must carry it (required on a non-loopback host)
    ingress_proxy: str | None = None  # Home Assistant's ingress proxy (the add-on: 172.30.32.2): only it is answered

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if len(value) < 16 or any(c.isspace() for c in value):
            raise ValueError("must be at least 16 characters without spaces (python -c \"import secrets; "
                             "print(secrets.token_urlsafe(24))\")")
        return value

    @field_validator("ingress_proxy")
    @classmethod
    def _proxy_address(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("must be one IP address (the add-on's is 172.30.32.2)") from None

    @model_validator(mode="after")
    def _guarded(self) -> WebConfig:
        if self.enabled and not is_loopback(self.host) and self.token is None and self.ingress_proxy is None:
            raise ValueError(f"host {self.host or '(every address)'!r} is not a loopback address: set web.token "
                             "(a secret every request must carry), or bind web.host to 127.0.0.1")
        return self


class StoreConfig(_Section):
    """Where the bridge keeps its own durable state (outbox, dedup ids, account records, leases)."""

    url: str | None = None  # postgres://user:pass@host:5432/db: PostgreSQL (shared by a cluster); unset: SQLite in data_dir

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("must start with postgres:// or postgresql:// (or be unset: SQLite files in data_dir)")
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError("needs a host and a database name, e.g. postgres://wa:secret@db:5432/wa_mqtt")
        return value


class ClusterConfig(_Section):
    """Several bridges sharing the accounts through PostgreSQL leases (store.url); see docs/scaling.md."""

    takeover_after: float = Field(30, ge=3, le=3600)  # a dead instance's accounts move to the others within this


class Config(_Section):
    version: int = CONFIG_VERSION  # the layout of the file; older files are migrated (config_migrations.py)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    engine: Literal["neonize", "sim"] = "neonize"
    engine_process: EngineProcessConfig = Field(default_factory=EngineProcessConfig)
    proxy: str | None = None  # WhatsApp traffic (neonize) through http://, https:// or socks5://[user:pass@]host:port
    sessions_dir: Path = Path("sessions")
    data_dir: Path = Path("data")
    disk_full_hold_mb: int = Field(64, ge=1)  # held in memory while data_dir is full; beyond it the engines wait
    accounts: list[str] = Field(default_factory=list)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    backups: BackupsConfig = Field(default_factory=BackupsConfig)
    outgoing: OutgoingConfig = Field(default_factory=OutgoingConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    calls: CallsConfig = Field(default_factory=CallsConfig)
    status_interval: float = Field(60, gt=0)
    pairing_timeout: float = Field(160, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    auto_reply: AutoReplyRules = Field(default_factory=list)  # see auto_reply_rules.py, docs/automations.md
    auto_reply_limits: AutoReplyLimits = Field(default_factory=AutoReplyLimits)
    notify: list[str] = Field(default_factory=list)  # default recipients: one HA notify entity each
    # health monitoring (health_config.py)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    # issue 14: the presence sent on connect (typing indicators and push names need `available`)
    presence: Literal["available", "unavailable"] = "available"
    store: StoreConfig = Field(default_factory=StoreConfig)
    instance_id: str | None = None  # this bridge's name in a cluster (store.url); unset: the host name
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    _migrations: tuple[Migration, ...] = PrivateAttr(default=())

    @property
    def migrations_applied(self) -> tuple[Migration, ...]:
        """The migrations the file's data went through at load (empty when it was current)."""
        return self._migrations

    @field_validator("version")
    @classmethod
    def _current_version(cls, value: int) -> int:
        if value != current_version():  # a file's version was migrated: only an override can get here
            raise ValueError(f"must be {current_version()} (the config version this wa_mqtt reads)")
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in PROXY_SCHEMES:
            raise ValueError(f"proxy must start with {', '.join(s + '://' for s in PROXY_SCHEMES)}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("proxy has an invalid port") from None
        if not parts.hostname or port is None:
            raise ValueError("proxy needs a host and a port, e.g. socks5://127.0.0.1:1080")
        return value

    @field_validator("notify", mode="before")
    @classmethod
    def _notify_recipients(cls, value: Any) -> Any:
        return phone_list(value, jids=True)

    @field_validator("accounts", mode="before")
    @classmethod
    def _phones(cls, value: Any) -> Any:
        return phone_list(value)

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not all(c.isalnum() or c in "-_." for c in value) or len(value) > 64:
            raise ValueError("use letters, digits, '-', '_' and '.' only (at most 64): it is part of MQTT topics")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def masked(self) -> dict[str, Any]:
        """The effective config as JSON with every secret replaced by `***` (for bridge/info)."""
        data = self.model_dump(mode="json")
        for path, is_url in secret_paths(data):
            *parents, key = path
            node = at_path(data, parents)
            if isinstance(node, dict) and node.get(key):
                node[key] = mask_url(node[key]) if is_url else SECRET_MASK
        return data


# Settings that only take effect at start: a reload reports them instead of half-applying them. The
# media limits are also enforced by the engine processes, which keep the values they started with.
RESTART_KEYS = ("mqtt", "engine", "engine_process", "proxy", "sessions_dir", "data_dir", "disk_full_hold_mb", "web",
                "store", "instance_id", "cluster",
                "outgoing.max_media_bytes", "outgoing.media_dir", "outgoing.block_private_urls",
                "media",  # incoming media: the engine processes keep the values they started with
                "metrics",  # the endpoint's server is started once, on metrics.host:metrics.port
                "presence")  # issue 14: the engine processes send the presence they started with


def _at(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def config_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(top-level keys a reload applies, keys that need a restart: top-level or dotted), each sorted."""
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    restart = sorted(key for key in RESTART_KEYS if _at(before, key) != _at(after, key))
    applied = without_restart_changes(old, new).model_dump(mode="json")
    return sorted(key for key in applied if before.get(key) != applied[key]), restart


def without_restart_changes(old: Config, new: Config) -> Config:
    """`new`, but with the settings that need a restart kept as they are in `old`."""
    update: dict[str, Any] = {key: getattr(old, key) for key in RESTART_KEYS if "." not in key}
    for key in RESTART_KEYS:
        if "." in key:
            section, name = key.split(".", 1)
            kept = update.get(section) or getattr(new, section)
            update[section] = kept.model_copy(update={name: getattr(getattr(old, section), name)})
    return new.model_copy(update=update)


