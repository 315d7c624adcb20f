"""What an engine takes from the config, as one typed value: `EngineOptions` (media policy, proxy).

Built in one place from the `Config` (`EngineOptions.from_config`), serialised once for an engine child
(`to_wire`), validated in the child (`from_wire`) and handed to the engine there (engines/child.py
`make_inner_engine`). A key left out means what the same key left out of config.yaml means: every
default here is read from the config model, so there is one default per value.

The proxy URL may carry a password. It is a `SecretStr`: `repr`, `str` and ordinary dumps show it
masked (`http://user:***@host:port`); only `to_wire` reveals it, and the launcher keeps that text off
the child's command line and process title, which `ps` shows (engines/launch.py, docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SerializationInfo, ValidationError, field_serializer

from ..config import Config, MediaConfig, OutgoingConfig
from ..config_loading import describe_validation_error
from ..config_secrets import mask_url
from ..media import MediaPolicy

EngineName = Literal["neonize", "sim"]
Presence = Literal["available", "unavailable"]  # config `presence` (issue 14)
_REVEAL = "reveal_secrets"  # serialisation context key: only `to_wire` sets it


class EngineOptionsError(ValueError):
    """Options text that is not `EngineOptions` (not JSON, an unknown key, a wrong type); names the key."""


def _config_default(section: type[BaseModel], key: str) -> Any:
    """What `key` of a config section is when config.yaml leaves it out."""
    return section.model_fields[key].get_default(call_default_factory=True)


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MediaOptions(_Options):
    """The outgoing media policy: `outgoing.max_media_bytes`, `outgoing.media_dir`, `outgoing.block_private_urls`."""

    max_bytes: int = Field(default=_config_default(OutgoingConfig, "max_media_bytes"), gt=0)
    media_dir: Path | None = _config_default(OutgoingConfig, "media_dir")
    block_private_urls: bool = _config_default(OutgoingConfig, "block_private_urls")

    def policy(self) -> MediaPolicy:
        return MediaPolicy(self.max_bytes, self.media_dir, self.block_private_urls)


class DownloadOptions(_Options):
    """Incoming media (the config's `media` section): where and within which limits it is downloaded.
    `dir` holds one folder per account (a relative one is taken from the working directory)."""

    download: bool = _config_default(MediaConfig, "download")
    dir: Path = Path(_config_default(Config, "data_dir")) / "media"
    max_bytes: int = Field(default=_config_default(MediaConfig, "max_bytes"), gt=0)
    timeout: float = Field(default=_config_default(MediaConfig, "download_timeout"), gt=0)
    keep_days: float = Field(default=_config_default(MediaConfig, "keep_days"), ge=0)
    max_total_mb: int = Field(default=_config_default(MediaConfig, "max_total_mb"), ge=0)

    @classmethod
    def from_config(cls, config: Config) -> DownloadOptions:
        media = config.media
        folder = media.dir if media.dir is not None else config.data_dir / "media"
        return cls(download=media.download, dir=folder, max_bytes=media.max_bytes,
                   timeout=media.download_timeout, keep_days=media.keep_days, max_total_mb=media.max_total_mb)


class EngineOptions(_Options):
    """Everything an engine is configured with. Frozen; `EngineOptions()` is the default config's."""

    media: MediaOptions = MediaOptions()
    downloads: DownloadOptions = DownloadOptions()  # incoming media
    proxy: SecretStr | None = _config_default(Config, "proxy")  # WhatsApp traffic through it (neonize)
    presence: Presence = _config_default(Config, "presence")  # sent on every connect (issue 14)
    store_url: SecretStr | None = None  # `store.url`: each account's session in PostgreSQL (store/pg_sessions.py)

    @classmethod
    def from_config(cls, config: Config) -> EngineOptions:
        outgoing = config.outgoing
        return cls(media=MediaOptions(max_bytes=outgoing.max_media_bytes, media_dir=outgoing.media_dir,
                                      block_private_urls=outgoing.block_private_urls),
                   downloads=DownloadOptions.from_config(config),
                   proxy=SecretStr(config.proxy) if config.proxy is not None else None,
                   presence=config.presence,
                   store_url=SecretStr(config.store.url) if config.store.url is not None else None)

    @property
    def proxy_url(self) -> str | None:
        """The proxy URL with its password: for the engine's connect, never for a log."""
        return self.proxy.get_secret_value() if self.proxy is not None else None

    @property
    def store_url_value(self) -> str | None:
        """`store.url` with its password: for the engine's store, never for a log."""
        return self.store_url.get_secret_value() if self.store_url is not None else None

    def to_wire(self) -> str:
        """JSON for the child, secrets included (see the module docstring for where it may travel)."""
        return self.model_dump_json(context={_REVEAL: True})

    @classmethod
    def from_wire(cls, text: str | bytes) -> EngineOptions:
        """The options `to_wire` wrote; raises EngineOptionsError (an empty text is the defaults)."""
        try:
            return cls.model_validate_json(text or "{}")
        except ValidationError as exc:
            raise EngineOptionsError(f"engine options: {describe_validation_error(exc)}") from None

    @field_serializer("proxy", "store_url")
    def _dump_proxy(self, proxy: SecretStr | None, info: SerializationInfo) -> str | None:
        if proxy is None:
            return None
        reveal = isinstance(info.context, dict) and info.context.get(_REVEAL) is True
        return proxy.get_secret_value() if reveal else mask_url(proxy.get_secret_value())

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name in ("proxy", "store_url") and value is not None:
                yield name, mask_url(value.get_secret_value())
            else:
                yield name, value
