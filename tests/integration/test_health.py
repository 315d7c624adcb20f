"""Black box: health monitoring on the real bridge (sim engine) over a real broker: alerts (one per
episode, from a healthy account, none for `stopped`, recovered once), the silent-link watchdog (the
sim's `silence` control), the operating requests (log level, restart) and the Prometheus endpoint."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from typing import Any

import jinja2

from wa_mqtt.mqtt import discovery

from harness import BridgeEnv, BridgeProcess, Probe, Received, free_port, wait_port

A = "5511900000001"  # healthy: sends the alerts
B = "5511900000002"  # the one in trouble
C = "5511900000003"  # a corrupt store: `error` at boot
TO = "5511988880000"
TO_JID = f"{TO}@s.whatsapp.net"
OTHER = "5511977776666"


async def wait_sent_any(probe: Probe, senders: tuple[str, ...], needle: str) -> Received:
    topics = {f"{probe.base}/sim/{sender}/sent" for sender in senders}
    await probe.wait_until(lambda received: any(r.topic in topics and r.json().get("to") == TO_JID
                                                and needle in (r.json().get("text") or "") for r in received),
                           timeout=15)
    return next(r for r in probe.received if r.topic in topics and needle in (r.json().get("text") or ""))


def events(probe: Probe, kind: str, phone: str, after: int = 0) -> list[dict[str, Any]]:
    return [r.json()["data"] for r in probe.received[after:]
            if r.topic == f"{probe.base}/bridge/event" and r.payload and r.json()["type"] == kind
            and r.json()["data"].get("phone") == phone]


def sent_to(probe: Probe, sender: str, after: int = 0) -> list[dict[str, Any]]:
    return [r.json() for r in probe.received[after:] if r.topic == f"{probe.base}/sim/{sender}/sent"
            and r.json().get("to") == TO_JID]


async def wait_event(probe: Probe, kind: str, phone: str, after: int) -> dict[str, Any]:
    item = await probe.wait_for(f"{probe.base}/bridge/event", lambda r: r.json()["type"] == kind
                                and r.json()["data"].get("phone") == phone, timeout=15, after=after)
    data: dict[str, Any] = item.json()["data"]
    return data


async def wait_sent(probe: Probe, sender: str, needle: str, after: int) -> Received:
    return await probe.wait_for(f"{probe.base}/sim/{sender}/sent", lambda r: r.json().get("to") == TO_JID
                                and needle in (r.json().get("text") or ""), timeout=15, after=after)


async def test_alerts_problem_sensor_and_notify_failures(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    prefix = "ha" + uuid.uuid4().hex[:8]
    env.write_config(alerts={"to": [TO], "after": 0.5, "via": "any"},
                     mqtt={"discovery": True, "discovery_prefix": prefix},
                     notify=[OTHER], outgoing={"allow_to": [TO]})  # a notify recipient the policy refuses
    for phone in (A, B, C):
        env.link_sim_account(phone)
    (env.sessions / C / "store.db").write_bytes(b"\x00garbage" * 64)
    bridge.start()
    problem_b = f"{env.base}/{B}/problem"
    async with Probe(env.broker, env.base, filters=[f"{env.base}/#", f"{prefix}/#"]) as probe:
        # Home Assistant: the problem binary sensor of each account, the operating entities of the bridge
        config = await probe.wait_for(discovery.device_topic(prefix, discovery.account_device_id(B)),
                                      lambda r: "problem" in r.json()["cmps"])
        sensor = config.json()["cmps"]["problem"]
        assert (sensor["platform"], sensor["device_class"], sensor["state_topic"]) == (
            "binary_sensor", "problem", problem_b)
        bridge_config = await probe.wait_for(discovery.device_topic(prefix, discovery.bridge_device_id(env.base)))
        assert {"log_level", "restart_accounts", "reload_config"} <= set(bridge_config.json()["cmps"])
        problem_on = jinja2.Environment().from_string(sensor["value_template"])

        # a notify entity's failed send surfaces as its account's send_failed event
        config = await probe.wait_for(discovery.device_topic(prefix, discovery.account_device_id(A)),
                                      lambda r: "send_failed" in r.json()["cmps"])
        cmps = config.json()["cmps"]
        ha = jinja2.Environment()
        ha.filters["to_json"] = json.dumps  # Home Assistant's filter
        notify = cmps[f"to_{OTHER}"]
        mark = probe.mark()
        await probe.publish(notify["command_topic"], ha.from_string(notify["command_template"]).render(value="hi"))
        answer = await probe.wait_for(cmps["send_failed"]["state_topic"], after=mark)
        fired = json.loads(ha.from_string(cmps["send_failed"]["value_template"]).render(value_json=answer.json()))
        assert fired["event_type"] == "send_failed" and fired["to"] == OTHER and fired["code"] == "forbidden", fired
        # error (a corrupt store at boot): alerted, the message waits until a healthy account can send it
        alert = await wait_event(probe, "alert", C, 0)
        assert alert["state"] == "error" and alert["error_code"] == "store_corrupt" and alert["since"]
        text = (await wait_sent_any(probe, (A, B), f"+{C}")).json()["text"]  # whichever connected first sends it
        assert "error" in text and "store_corrupt" in text and "What to do" in text
        await probe.wait_state(B, "connected")
        await probe.wait_for(problem_b, lambda r: r.json()["problem"] is False)

        # logged_out: one alert, the message from A (never from B itself), the problem topic on
        mark = probe.mark()
        await probe.sim(B, "logout")
        alert = await wait_event(probe, "alert", B, mark)
        assert (alert["state"], alert["error_code"]) == ("logged_out", "logged_out"), alert
        message = await wait_sent(probe, A, f"+{B}", mark)
        assert "logged_out" in message.json()["text"] and "scan the QR" in message.json()["text"]
        problem = (await probe.wait_for(problem_b, lambda r: r.json()["problem"], after=mark)).json()
        assert problem["state"] == "logged_out" and problem["since"] == alert["since"]
        assert problem_on.render(value_json=problem) == "ON"
        # back: pairing again is still the same episode; connected ends it with one recovered message
        assert (await probe.request(B, "connect", {}))["status"] == "ok"
        await probe.wait_state(B, "pairing", after=mark)
        await probe.sim(B, "scan")
        await probe.wait_state(B, "connected", after=mark)
        recovered = await wait_event(probe, "recovered", B, mark)
        assert recovered["since"] == alert["since"]
        await wait_sent(probe, A, "recovered", mark)
        problem = (await probe.wait_for(problem_b, lambda r: r.json()["problem"] is False, after=mark)).json()
        assert problem_on.render(value_json=problem) == "OFF"

        # conflict
        mark = probe.mark()
        await probe.sim(B, "replace")
        assert (await wait_event(probe, "alert", B, mark))["state"] == "conflict"
        await wait_sent(probe, A, "conflict", mark)
        assert (await probe.request(B, "connect", {}))["status"] == "ok"
        await probe.wait_state(B, "connected", after=mark)
        await wait_event(probe, "recovered", B, mark)
        await wait_sent(probe, A, "recovered", mark)

        # disconnected longer than `after` (0.5 s): one alert however many retries fail meanwhile
        mark = probe.mark()
        await probe.sim(B, "outage", {"seconds": 1.5})
        alert = await wait_event(probe, "alert", B, mark)
        assert alert["state"] == "disconnected", alert
        await probe.wait_state(B, "connected", timeout=15, after=mark)
        await wait_event(probe, "recovered", B, mark)
        await wait_sent(probe, A, "recovered", mark)
        statuses = [r.json()["state"] for r in probe.received[mark:] if r.topic == f"{env.base}/{B}/status"]
        # whatsmeow (the sim's own loop) retries through the outage: one `disconnected` that lasts, one episode
        assert statuses.count("disconnected") >= 1 and statuses[-1] == "connected", statuses
        assert len(events(probe, "alert", B, mark)) == 1
        assert len(events(probe, "recovered", B, mark)) == 1
        assert len([m for m in sent_to(probe, A, mark) if "recovered" in m["text"]]) == 1
        assert len([m for m in sent_to(probe, A, mark) if "needs attention" in m["text"]]) == 1

        # stopped on request: nothing, even well past `after`
        mark = probe.mark()
        assert (await probe.request(B, "disconnect", {}))["status"] == "ok"
        await probe.wait_state(B, "stopped", after=mark)
        await asyncio.sleep(1)  # twice `after`: an alert would have come by now
        assert events(probe, "alert", B, mark) == []
        assert sent_to(probe, A, mark) == []
        assert not [m for m in sent_to(probe, B, 0) if f"+{B}" in m["text"]]  # never from the account in trouble

        # logged out on request (the `logout` request, or the web page's button): a person acted, nothing to tell
        assert (await probe.request(B, "connect", {}))["status"] == "ok"
        await probe.wait_state(B, "connected", after=mark)
        mark = probe.mark()
        assert (await probe.request(B, "logout", {}))["status"] == "ok"
        await probe.wait_state(B, "logged_out", after=mark)
        await asyncio.sleep(1)  # twice `after`
        assert events(probe, "alert", B, mark) == [] and sent_to(probe, A, mark) == []
        assert not [r for r in probe.received[mark:] if r.topic == problem_b and r.json()["problem"]]

        # a restart resumes the open episodes: C, still in `error`, is not alerted again
        mark = probe.mark()
        assert bridge.stop() == 0
        bridge.start()
        await probe.wait_state(C, "error", after=mark)
        await probe.wait_state(A, "connected", after=mark)
        assert (await probe.request("bridge", "health", {}))["status"] == "ok"  # answered after C's alert would be
        assert events(probe, "alert", C, mark) == []
        assert not [m for m in sent_to(probe, A, mark) + sent_to(probe, B, mark) if f"+{C}" in m["text"]]
        assert (await probe.wait_for(f"{env.base}/{C}/problem", lambda r: r.json()["problem"], after=mark))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`/metrics` parsed with prometheus_client's own parser: (sample name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_watchdog_requests_and_metrics(env: BridgeEnv, bridge: BridgeProcess) -> None:
    """A silent connection is checked and reconnected; log level and restart at run time; /metrics."""
    port = free_port()
    env.write_config(watchdog={"silent_after": 1, "check_timeout": 0.5},
                     metrics={"port": port, "host": "127.0.0.1"})
    env.link_sim_account(A)
    env.link_sim_account(B)
    bridge.start()
    status_a = f"{env.base}/{A}/status"
    async with Probe(env.broker, env.base) as probe:
        connected = await probe.wait_state(A, "connected")
        await probe.wait_state(B, "connected")
        assert connected["last_event_at"] is not None
        # quiet but healthy: the check is answered, the account stays connected, last_event_at moves on
        checked = await probe.wait_for(status_a, lambda r: (r.json()["last_event_at"] or "") > connected["last_event_at"],
                                       timeout=10)
        assert checked.json()["state"] == "connected"

        # silent: the connection stays up, nothing arrives, the check fails: reconnect
        mark = probe.mark()
        await probe.sim(A, "silence", {"seconds": 60})
        await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "held by the silence", "id": "SILENT1"})
        down = await probe.wait_state(A, "disconnected", timeout=10, after=mark)
        assert down["error_code"] == "keepalive_timeout", down
        assert not [r for r in probe.received[mark:] if r.topic == f"{env.base}/{A}/message"]
        await probe.wait_state(A, "connected", timeout=10, after=mark)
        message = await probe.wait_for(f"{env.base}/{A}/message", after=mark)  # the new connection hears it
        assert message.json()["id"] == "SILENT1"
        assert bridge.log().count("the check failed") == 1

        # a keepalive gap (`degraded`) is whatsmeow's to heal: no check of ours restarts the client under it,
        # though the account is quiet past silent_after and the server answers nothing meanwhile
        status_b = f"{env.base}/{B}/status"
        mark = probe.mark()
        await probe.sim(B, "keepalive", {"seconds": 3})
        gap = await probe.wait_for(status_b, lambda r: r.json()["degraded"] is True, after=mark)
        wait_port(port)
        during = await asyncio.to_thread(scrape, port)  # Prometheus sees the gap too
        assert (during[("wa_mqtt_account_degraded", (("phone", B),))],
                during[("wa_mqtt_account_degraded", (("phone", A),))]) == (1, 0)
        healed = await probe.wait_for(status_b, lambda r: r.json()["degraded"] is False, after=mark, timeout=10)
        assert {r.json()["state"] for r in probe.received[mark:] if r.topic == status_b} == {"connected"}
        assert bridge.log().count("the check failed") == 1
        assert healed.json()["last_event_at"] > gap.json()["last_event_at"]  # a keepalive answered is news
        bad = await probe.request("bridge", "log_level", {"level": "loud"})
        assert bad["status"] == "error" and bad["code"] == "invalid_request", bad

        # log level at run time
        mark = probe.mark()
        ok = await probe.request("bridge", "log_level", {"level": "WARNING"})
        assert ok == {"status": "ok", "data": {"level": "warning"}, "transaction": ok["transaction"]}
        info = await probe.wait_for(f"{env.base}/bridge/info", lambda r: r.json()["log_level"] == "warning", after=mark)
        assert info.json()["config"]["log_level"] == "debug"  # the file's, in force again at the next start
        lines = len(bridge.log().splitlines())
        await probe.sim(B, "incoming", {"sender": "5511988887777", "text": "no debug line for this"})
        await probe.wait_for(f"{env.base}/{B}/message", after=mark)
        assert not [line for line in bridge.log().splitlines()[lines:] if " DEBUG " in line]
        assert (await probe.request("bridge", "log_level", {"level": "debug"}))["status"] == "ok"

        # restart: every running account restarts; one stopped on request stays stopped
        assert (await probe.request(B, "disconnect", {}))["status"] == "ok"
        mark = probe.mark()
        restarted = await probe.request("bridge", "restart", {})
        assert restarted["status"] == "ok", restarted
        assert restarted["data"] == {"restarted": [A], "skipped": [B], "failed": {}}
        await probe.wait_state(A, "stopped", after=mark)
        await probe.wait_state(A, "connected", after=mark)

        # metrics, labelled by phone
        wait_port(port)
        metrics = await asyncio.to_thread(scrape, port)
        assert metrics[("wa_mqtt_account_state", (("phone", A), ("state", "connected")))] == 1
        assert metrics[("wa_mqtt_account_state", (("phone", B), ("state", "stopped")))] == 1
        assert metrics[("wa_mqtt_account_state", (("phone", B), ("state", "connected")))] == 0
        assert metrics[("wa_mqtt_messages_received_total", (("phone", A),))] == 1
        assert metrics[("wa_mqtt_messages_received_total", (("phone", B),))] == 1
        assert metrics[("wa_mqtt_reconnects_total", (("phone", A),))] >= 1  # the watchdog's
        assert metrics[("wa_mqtt_messages_sent_total", (("phone", A),))] == 0
        assert metrics[("wa_mqtt_outgoing_queue_depth", (("phone", A),))] == 0
        assert 0 <= metrics[("wa_mqtt_last_event_age_seconds", (("phone", A),))] < 60
        assert metrics[("wa_mqtt_engine_rss_bytes", (("phone", A),))] > 1 << 20
        assert ("wa_mqtt_spool_depth", ()) in metrics
        assert metrics[("wa_mqtt_accounts", ())] == 2
