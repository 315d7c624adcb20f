"""`python -m wa_mqtt pair <phone>`: link a number from a terminal, with the QR drawn in the terminal.

It is an ordinary MQTT client of the bridge: when a bridge is already online on the configured broker
it asks that one (`bridge/request/pair`); otherwise it runs the bridge in this process for the time
of the pairing. Either way the pairing is the bridge's own code path, and the session it stores is
restored by every later start.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiomqtt
import segno

from .config import Config
from .model import is_phone
from .mqtt.link import broker_address
from .mqtt.topics import Topics
from .startup import StartupError

ONLINE_WAIT = 30.0


def _client(config: Config) -> aiomqtt.Client:
    url = config.mqtt.url or f"mqtt://127.0.0.1:{config.mqtt.embedded_port}"
    address = broker_address(url)
    return aiomqtt.Client(address.host, address.port, username=address.username, password=address.password,
                          identifier=None, protocol=aiomqtt.ProtocolVersion.V311)


def _say(text: str) -> None:
    print(text, flush=True)


def draw_qr(code: str) -> str:
    """The QR as text for a terminal (half-block characters)."""
    qr = segno.make(code, error="l", micro=False)
    lines = []
    matrix = [list(row) for row in qr.matrix_iter(scale=1, border=2)]
    for top, bottom in zip(matrix[::2], [*matrix[1::2], [0] * len(matrix[0])], strict=False):
        lines.append("".join(
            "█" if t and b else "▀" if t else "▄" if b else " " for t, b in zip(top, bottom, strict=True)))
    return "\n".join(lines)


async def _bridge_online(config: Config, topics: Topics, timeout: float) -> bool:
    """True when a bridge publishes `online` on this broker within `timeout` (retained, so at once)."""
    try:
        async with _client(config) as client:
            await client.subscribe(topics.bridge_state, qos=1)
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    return message.payload == b"online"
    except (aiomqtt.MqttError, TimeoutError):
        return False
    return False


async def _pair_over_mqtt(config: Config, topics: Topics, phone: str, method: str) -> int:
    async with _client(config) as client:
        for topic in (topics.qr(phone), topics.pair_code(phone), topics.status(phone),
                      topics.bridge_response("pair")):
            await client.subscribe(topic, qos=1)
        await client.publish(f"{topics.base}/bridge/request/pair",
                             json.dumps({"phone": phone, "method": method}), qos=1)
        problem: str | None = None
        async with asyncio.timeout(config.pairing_timeout + 30):
            async for message in client.messages:
                topic, payload = str(message.topic), bytes(message.payload or b"")
                if topic == topics.qr(phone) and payload:
                    _say(draw_qr(payload.decode()))
                    _say(f"Scan this in WhatsApp on the phone of +{phone}: Settings → Linked devices → Link a device")
                elif topic == topics.pair_code(phone) and payload:
                    _say(f"On the phone of +{phone}: Linked devices → Link with phone number → {payload.decode()}")
                elif topic == topics.bridge_response("pair"):
                    answer: dict[str, Any] = json.loads(payload)
                    if answer.get("status") != "ok":
                        _say(f"pairing refused: {answer.get('error')}")
                        return 1
                elif topic == topics.status(phone) and payload:
                    status = json.loads(payload)
                    if status["state"] == "connected":
                        _say(f"linked: +{phone} ({status.get('name') or 'no name'}); the bridge restores it on every start")
                        return 0
                    error = for_terminal(status.get("error"), phone)
                    if status["state"] in ("disconnected", "error", "logged_out") and status.get("error_code") in (
                            "pairing_timeout", "client_outdated", "store_corrupt"):
                        _say(f"pairing failed: {error}")
                        return 1
                    if status["state"] == "disconnected" and error and error != problem:
                        problem = error  # said once, not on every retry
                        _say(f"{error}; trying again (Ctrl-C to stop)")
    return 1


def for_terminal(error: str | None, phone: str) -> str | None:
    """A status error as a terminal user should read it: the MQTT command it suggests becomes this one."""
    return error.replace("send connect", f"run `python -m wa_mqtt pair {phone}`") if error else error


async def run_pair(config: Config, phone: str, method: str) -> int:
    phone = phone.lstrip("+")
    if not is_phone(phone):
        print(f"wa_mqtt: {phone!r} is not a phone number (international, digits only)", file=sys.stderr)
        return 2
    topics = Topics(config.mqtt.base_topic)
    if await _bridge_online(config, topics, timeout=2.0):
        _say("asking the running bridge to pair")
        return await _pair_reporting_failures(config, topics, phone, method)

    from .app import App

    stop = asyncio.Event()
    app = App(config)
    app_task = asyncio.create_task(app.run(stop))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ONLINE_WAIT
        while not await _bridge_online(config, topics, timeout=1.0):
            if app_task.done() and not app_task.cancelled() and isinstance(app_task.exception(), StartupError):
                print(f"wa_mqtt: cannot start: {app_task.exception()}", file=sys.stderr)
                return 2
            if app_task.done() or loop.time() > deadline:
                _say("the bridge could not start; see the log above")
                return 1
        return await _pair_reporting_failures(config, topics, phone, method)
    finally:
        stop.set()
        await asyncio.gather(app_task, return_exceptions=True)


async def _pair_reporting_failures(config: Config, topics: Topics, phone: str, method: str) -> int:
    try:
        return await _pair_over_mqtt(config, topics, phone, method)
    except TimeoutError:
        _say(f"pairing failed: not linked within {config.pairing_timeout + 30:g} s")
    except aiomqtt.MqttError as exc:
        _say(f"pairing failed: the MQTT connection to the bridge failed ({exc})")
    return 1
