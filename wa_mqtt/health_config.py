"""The config sections of health monitoring (docs/configuration.md): `alerts` (who is told when an
account needs a person), `watchdog` (silent connections), `metrics` (the Prometheus endpoint).

Kept apart from config.py so each section stays next to its own validation; `Config` includes them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .model import is_phone, phone_list

ANY = "any"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertsConfig(_Section):
    """WhatsApp messages to people when an account needs one (features/alerts.py)."""

    to: list[str] = Field(default_factory=list)  # phones or JIDs told; empty: no messages (events still)
    after: float = Field(600, ge=0)  # seconds an account may stay disconnected before it counts
    via: str = ANY  # the account that sends the alerts, or `any` connected one

    @field_validator("to", mode="before")
    @classmethod
    def _recipients(cls, value: Any) -> Any:
        return phone_list(value, jids=True)

    @field_validator("via", mode="before")
    @classmethod
    def _sender(cls, value: Any) -> Any:
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            value = value.lstrip("+")
            if value != ANY and not is_phone(value):
                raise ValueError(f"must be `{ANY}` or an account's phone number (digits only), not {value!r}")
        return value


class WatchdogConfig(_Section):
    """Silent connections (features/watchdog.py): `connected`, but nothing heard from WhatsApp."""

    silent_after: float = Field(300, ge=0)  # seconds without news before the connection is checked; 0: off
    check_timeout: float = Field(20, gt=0)  # seconds the check (a server round trip) may take


class MetricsConfig(_Section):
    """The Prometheus endpoint (features/metrics.py)."""

    port: int | None = Field(None, ge=1, le=65535)  # null: off
    host: str = "0.0.0.0"  # the scrape comes from another host (Prometheus); 127.0.0.1 keeps it local
