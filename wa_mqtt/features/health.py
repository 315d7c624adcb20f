"""The health-monitoring extensions, built in one place for `app.py`: alerts, the silent-link watchdog
and (with `metrics.port`) the Prometheus endpoint. Each is its own extension; see their modules."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ..bus import EventBus
from ..config import Config
from ..mqtt.link import MqttLink
from ..mqtt.spool import Spool
from ..mqtt.topics import Topics
from ..sending import SendService
from . import Extension
from .alerts import Alerts
from .watchdog import Watchdog

if TYPE_CHECKING:
    from ..accounts.manager import AccountManager


def health_extensions(bus: EventBus, config: Config, topics: Topics, link: MqttLink, manager: AccountManager,
                      sending: SendService, spool: Spool, clock: Callable[[], datetime]) -> list[Extension]:
    """Alerts and the watchdog always (they cost nothing while all is well); metrics when asked for."""
    extensions: list[Extension] = [Alerts(bus, config, topics, link, manager, sending, clock),
                                   Watchdog(bus, config, manager, clock)]
    if config.metrics.port is not None:
        from .metrics import Metrics  # prometheus_client is imported only when metrics are on

        extensions.append(Metrics(bus, config, manager, spool, clock))
    return extensions
