"""Where the broker is and how to log in: the `mqtt.url` parsed, the TLS context for mqtts://,
whether a refused connection was a refused login, and how long to wait before the next try
(`Backoff`; no connection made here)."""

from __future__ import annotations

import asyncio
import random
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from ..config import MqttConfig


def login_refused(exc: aiomqtt.MqttError) -> bool:
    """A CONNACK saying "bad user name or password" or "not authorized" (MQTT 3.1.1 codes 4, 5; MQTT 5:
    134, 135): a credentials problem, not an unreachable broker."""
    rc = getattr(exc, "rc", None)
    return isinstance(exc, MqttConnectError) and getattr(rc, "value", rc) in (4, 5, 134, 135)


class Backoff:
    """The wait between connection attempts: `FIRST` s, doubling up to `CAP` s, each wait ±20 %
    (bridges restarted together do not come back in step); `reset()` after a connection that worked."""

    FIRST = 0.5
    CAP = 30.0

    def __init__(self) -> None:
        self.delay = self.FIRST  # the next wait, before its jitter (what a log line says)

    def reset(self) -> None:
        self.delay = self.FIRST

    async def wait(self) -> None:
        await asyncio.sleep(self.delay * random.uniform(0.8, 1.2))
        self.delay = min(self.delay * 2, self.CAP)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def broker_address(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerAddress(
        host=parts.hostname or "localhost",
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def tls_context_for(config: MqttConfig) -> ssl.SSLContext:
    """TLS for mqtts://: the configured CA (else the system's), an optional client certificate."""
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.cert_file and config.key_file:
        context.load_cert_chain(str(config.cert_file), str(config.key_file))
    if config.tls_insecure:
        context.check_hostname = False
    return context
