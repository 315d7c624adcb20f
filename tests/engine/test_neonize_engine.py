"""NeonizeEngine / NeonizeSession against the real neonize library, offline.

Restore and pairing run the real Go code (which fails to dial: this machine has no route to
WhatsApp); Go's callbacks are then driven the way Go drives them, from another thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from neonize.aioze.client import ClientFactory
from neonize.events import EVENT_TO_INT
from neonize.exc import NeonizeError, PairPhoneError
from neonize.proto import Neonize_pb2 as N
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from wa_mqtt.engines import neonize_calls as calls
from wa_mqtt.engines.base import EngineError, EngineEvent, EngineSession, SimControllable
from wa_mqtt.engines.neonize_engine import NeonizeEngine, NeonizeSession, store_dsn
from wa_mqtt.model import ErrorCode, OutgoingMessage

from neonize_factories import jid, message_event, receipt_event, write_synthetic_device

TIMEOUT = 15


class Recorder:
    """The `emit` function of a session, with a way to wait for the next event."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()

    def __call__(self, event: EngineEvent) -> None:
        self.events.put_nowait(event)

    async def next(self) -> EngineEvent:
        return await asyncio.wait_for(self.events.get(), TIMEOUT)


@pytest.fixture
async def engine() -> AsyncIterator[NeonizeEngine]:
    engine = NeonizeEngine(stop_timeout=5)
    yield engine
    await engine.aclose()


def fresh_store(path: Path) -> Path:
    ClientFactory.get_all_devices_from_db(store_dsn(path))  # creates the tables, as the engine does
    return path


_phones = iter(range(4915100000100, 4915100000200))


def next_phone() -> str:
    return str(next(_phones))  # Go keys clients by JID user: one phone per test


async def go_event(session: NeonizeSession, event: object) -> None:
    """Deliver a protobuf event exactly as Go does: Event.execute(uuid, address, size, code) on a Go thread."""
    client = session.client
    assert client is not None
    data = event.SerializeToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    code = EVENT_TO_INT[type(event)]
    await asyncio.to_thread(client.event.execute, client.uuid, ctypes.addressof(buffer), len(data), code)


async def go_string_callback(callback: Callable[[int, int], None], session: NeonizeSession, text: str) -> None:
    """Call a Go→Python string callback (QR, login status) with C strings, from another thread."""
    uuid = ctypes.create_string_buffer(session.client.uuid)
    value = ctypes.create_string_buffer(text.encode())
    await asyncio.to_thread(callback, ctypes.addressof(uuid), ctypes.addressof(value))


def test_has_device(tmp_path: Path, engine: NeonizeEngine) -> None:
    missing = tmp_path / "none" / "store.db"
    assert engine.has_device(missing) is False
    assert not missing.exists()
    store = fresh_store(tmp_path / "store.db")
    assert engine.has_device(store) is False
    write_synthetic_device(store, "4915100000001")
    assert engine.has_device(store) is True


def test_session_satisfies_protocol(tmp_path: Path, engine: NeonizeEngine) -> None:
    session = engine.open_session("4915100000001", tmp_path / "store.db", Recorder())
    assert isinstance(session, EngineSession)
    assert engine.name == "neonize"


async def test_restore_offline_emits_dial_failed(tmp_path: Path, engine: NeonizeEngine) -> None:
    phone = next_phone()
    store = fresh_store(tmp_path / "store.db")
    write_synthetic_device(store, phone)
    events = Recorder()
    session = engine.open_session(phone, store, events)
    await session.start()
    assert session.client.jid.User == f"{phone}:7"  # restored the stored device, not a new one
    event = await events.next()
    assert event.kind == "disconnected"
    assert event.code == ErrorCode.DIAL_FAILED
    assert event.error.startswith("cannot reach WhatsApp") and "`proxy`" in event.error  # not Go's 300 characters
    with pytest.raises(EngineError) as failure:
        await session.send(OutgoingMessage(to="5511999999999", text="hi"))
    assert failure.value.code == "not_connected"  # Go: "... websocket not connected"
    first_client = session.client
    await session.stop()
    assert session.client is None
    assert not first_client._stop_finalizer.alive  # its GC would otherwise Stop() the next client (same uuid)
    await session.start()  # a second attempt on the same session (the supervisor's retry)
    assert (await events.next()).code == ErrorCode.DIAL_FAILED
    await session.close()
    assert store.stat().st_mode & 0o777 == 0o600


async def test_pairing_emits_qr_and_status_events_in_order(tmp_path: Path, engine: NeonizeEngine) -> None:
    phone = next_phone()
    events = Recorder()
    session = engine.open_session(phone, tmp_path / phone / "store.db", events)
    await session.start("qr")
    assert session.client.new_device is True
    assert (await events.next()).code == ErrorCode.DIAL_FAILED  # offline: Connect() fails before any QR

    await go_string_callback(session.client._NewAClient__onQr, session, "2@abc,def,ghi")
    assert (await events.next()).model_dump() == {"kind": "qr", "code": "2@abc,def,ghi"}

    scanned = "5511444444444"
    await go_event(session, N.PairStatus(ID=jid(scanned, device=9), BusinessName="", Platform="android",
                                         Status=N.PairStatus.SUCCESS))
    await go_event(session, N.Device(JID=jid(scanned, device=9), Platform="", BussinessName="", PushName="Ana",
                                     Initialized=True))
    await go_event(session, N.Connected(status=True))
    await go_event(session, message_event(E.Message(conversation="one"), msg_id="M1"))
    await go_event(session, message_event(E.Message(imageMessage=E.ImageMessage(caption="two")), msg_id="M2"))
    await go_event(session, receipt_event(N.Receipt.READ, ["M0"]))
    await go_event(session, N.KeepAliveTimeout(ErrorCount=2, LastSuccess=0))

    paired, connected, first, second, receipt, dropped = [await events.next() for _ in range(6)]
    assert (paired.kind, paired.phone) == ("paired", scanned)
    assert (connected.kind, connected.name) == ("connected", "Ana")
    assert (first.kind, first.message.id, first.message.text) == ("message", "M1", "one")
    assert first.message.account == scanned  # messages belong to the number that scanned
    assert (second.message.id, second.message.type, second.message.caption) == ("M2", "image", "two")
    assert (receipt.kind, receipt.receipt.ids, receipt.receipt.type) == ("receipt", ["M0"], "read")
    assert (dropped.kind, dropped.degraded, dropped.missed) == ("degraded", True, 2)  # a gap, not a drop (issue 14)
    assert events.events.empty()
    await session.close()


async def test_pairing_window_end_is_reported_only_when_it_failed(tmp_path: Path, engine: NeonizeEngine) -> None:
    phone = next_phone()
    events = Recorder()
    session = engine.open_session(phone, tmp_path / "store.db", events)
    await session.start("qr")
    assert (await events.next()).code == ErrorCode.DIAL_FAILED
    login_status = session.client._NewAClient__onLoginStatus
    await go_string_callback(login_status, session, "timeout")  # left to the supervisor's pairing timer
    await go_string_callback(login_status, session, "err-scanned-without-multidevice")
    await go_string_callback(login_status, session, "err-client-outdated")
    failed, outdated = await events.next(), await events.next()
    assert (failed.kind, failed.code) == ("disconnected", ErrorCode.CONNECT_FAILURE)
    assert "err-scanned-without-multidevice" in failed.error
    assert outdated.kind == "client_outdated"
    await session.close()


async def test_pair_code_method_asks_once_and_emits_the_code(tmp_path: Path, engine: NeonizeEngine) -> None:
    phone = next_phone()
    events = Recorder()
    session = engine.open_session(phone, tmp_path / "store.db", events)
    await session.start("code")
    assert (await events.next()).code == ErrorCode.DIAL_FAILED
    binder = GoPairPhone(session.client._NewAClient__client)  # Go's PairPhone needs WhatsApp
    session.client._NewAClient__client = binder
    for code in ("2@first", "2@second"):
        await go_string_callback(session.client._NewAClient__onQr, session, code)
    assert (await events.next()).model_dump() == {"kind": "pair_code", "code": "ABCD-EFGH"}
    [asked] = binder.asked
    assert (asked.phone, asked.showPushNotification) == (phone, True)
    # issue 14: WhatsApp validates "Browser (OS)"; neonize's own PairPhone would send "FIREFOX (Linux)"
    assert (asked.clientDisplayName, asked.clientType) == ("Chrome (Linux)", 1)
    await session.close()
    assert events.events.empty()


class GoPairPhone:
    """neonize's Go binding with PairPhone answered as Go answers it once WhatsApp gave a code; every
    other call goes to the real binding."""

    def __init__(self, real: object) -> None:
        self._real = real
        self.asked: list[N.PairPhoneParams] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    async def PairPhone(self, uuid: bytes, payload: bytes, size: int) -> bytes:  # Go's name
        assert len(payload) == size
        self.asked.append(N.PairPhoneParams.FromString(payload))
        return N.PairPhoneReturnFunction(Code="ABCD-EFGH").SerializeToString()


async def test_events_from_a_stopped_client_are_ignored(tmp_path: Path, engine: NeonizeEngine) -> None:
    phone = next_phone()
    events = Recorder()
    session = engine.open_session(phone, tmp_path / "store.db", events)
    await session.start()
    assert (await events.next()).code == ErrorCode.DIAL_FAILED
    old = session.client
    await session.start()  # replaces the client
    assert (await events.next()).code == ErrorCode.DIAL_FAILED
    await asyncio.to_thread(old._NewAClient__onQr, 0, ctypes.addressof(ctypes.create_string_buffer(b"2@stale")))
    await go_string_callback(session.client._NewAClient__onQr, session, "2@fresh")
    assert (await events.next()).model_dump() == {"kind": "qr", "code": "2@fresh"}
    await session.close()


async def test_calls_without_a_client(tmp_path: Path, engine: NeonizeEngine) -> None:
    session = engine.open_session("4915100000001", tmp_path / "store.db", Recorder())
    with pytest.raises(EngineError) as failure:
        await session.send(OutgoingMessage(to="5511999999999", text="hi"))
    assert failure.value.code == "not_connected"
    assert not isinstance(session, SimControllable)  # sim controls are no part of a real session
    with pytest.raises(EngineError) as failure:
        await session.typing("5511999999999", "dancing")
    assert failure.value.code == "invalid_request"
    await session.close()


async def test_replies_reactions_and_reads_on_an_offline_restored_client(tmp_path: Path,
                                                                         engine: NeonizeEngine) -> None:
    phone = next_phone()
    store = fresh_store(tmp_path / "store.db")
    write_synthetic_device(store, phone)
    events = Recorder()
    session = engine.open_session(phone, store, events)
    await session.start()
    assert (await events.next()).code == ErrorCode.DIAL_FAILED
    group = jid("120363012345678901", "g.us")
    await go_event(session, message_event(E.Message(extendedTextMessage=E.ExtendedTextMessage(
        text="lunch?", contextInfo=E.ContextInfo(stanzaID="OLDER"))), msg_id="M1", chat=group,
        sender=jid("5511777777777", device=4)))
    assert (await events.next()).message.id == "M1"

    sent: list[tuple[object, E.Message]] = []

    async def send_message(to: object, message: E.Message) -> N.SendResponse:  # the network part of a send
        sent.append((to, message))
        return N.SendResponse(ID=f"OUT{len(sent)}", Timestamp=1_795_000_000, ServerID=0,
                              DebugTimings=N.MessageDebugTimings())

    session.client.send_message = send_message
    result = await session.send(OutgoingMessage(to="120363012345678901@g.us", text="yes", reply_to="M1"))
    assert result.id == "OUT1" and result.timestamp.year == 2026
    to, reply = sent[0]
    assert (to.User, to.Server) == ("120363012345678901", "g.us")
    ctx = reply.extendedTextMessage.contextInfo
    assert (reply.extendedTextMessage.text, ctx.stanzaID, ctx.participant) == (
        "yes", "M1", "5511777777777@s.whatsapp.net")
    assert ctx.quotedMessage.extendedTextMessage.text == "lunch?"
    assert not ctx.quotedMessage.extendedTextMessage.HasField("contextInfo")  # the quote's own quote is dropped

    assert await session.react("120363012345678901@g.us", "M1", "👍") == "OUT2"  # Go's BuildReaction, offline
    reaction = sent[1][1].reactionMessage
    assert (reaction.text, reaction.key.ID, reaction.key.participant) == (
        "👍", "M1", "5511777777777@s.whatsapp.net")

    for call in (session.mark_read("120363012345678901@g.us", ["M1"]),
                 session.typing("5511999999999", "composing")):
        with pytest.raises(EngineError) as failure:
            await call
        assert failure.value.code == "not_connected", str(failure.value)
    await session.close()


async def test_media_sources_are_read_under_the_policy(tmp_path: Path) -> None:
    from wa_mqtt.engines.neonize_calls import load_media
    from wa_mqtt.media import MediaPolicy
    from wa_mqtt.model import MediaSource

    (tmp_path / "a.bin").write_bytes(b"\x00\x01")
    policy = MediaPolicy(max_bytes=1024, media_dir=tmp_path)
    assert await load_media("image", MediaSource(path="a.bin"), policy) == b"\x00\x01"
    assert await load_media("image", MediaSource(base64="aGk="), policy) == b"hi"
    with pytest.raises(EngineError) as failure:
        await load_media("image", MediaSource(base64="not base64!"), policy)
    assert failure.value.code == "invalid_request"
    with pytest.raises(EngineError) as outside:
        await load_media("document", MediaSource(path="/etc/hostname"), policy)
    assert outside.value.code == "forbidden" and "document.path" in str(outside.value)


async def test_a_retried_send_is_recognised_by_the_secret_whatsmeow_stored(tmp_path: Path,
                                                                           engine: NeonizeEngine) -> None:
    """neonize 0.5.2 cannot send under our id; whatsmeow stores the message's secret before sending.
    Offline, the real Go send gets that far (the recipient's LID is known) and then fails."""
    from wa_mqtt.engines import neonize_calls as calls

    phone = next_phone()
    store = fresh_store(tmp_path / "store.db")
    write_synthetic_device(store, phone)
    with sqlite3.connect(store) as db:  # no usync query for the recipient's LID
        db.execute("INSERT INTO whatsmeow_lid_map (lid, pn) VALUES ('123456789012345', '5511999999999')")
    events = Recorder()
    session = engine.open_session(phone, store, events)
    await session.start()
    assert (await events.next()).code == ErrorCode.DIAL_FAILED
    message = OutgoingMessage(to="5511999999999", text="once")
    key = calls.device_key(store, phone)
    first, second = calls.message_secret(key, "3EB0FIRST"), calls.message_secret(key, "3EB0SECOND")
    assert len(first) == 32 and first != second and first == calls.message_secret(key, "3EB0FIRST")

    # whatsmeow keeps the secret under its own id before the network part (which fails here)
    with pytest.raises(EngineError):
        await calls.send(session.client, message, calls.RecentMessages(), engine.media_policy, phone, first)
    whatsmeow_id = calls.sent_with_secret(store, first)
    assert whatsmeow_id is not None and whatsmeow_id.startswith("3EB0")

    # a retry finds it and sends nothing (offline, a real send would fail)
    result = await session.send(message, "3EB0FIRST", retry=True)
    assert (result.id, result.already_sent) == (whatsmeow_id, True)

    # a send that fails drops its record: its retry is sent, not taken for delivered
    with pytest.raises(EngineError) as failure:
        await session.send(message, "3EB0SECOND")
    assert failure.value.code == "not_connected"
    assert calls.sent_with_secret(store, second) is None

    sent: list[E.Message] = []

    async def send_message(to: object, built: E.Message) -> N.SendResponse:  # the network part of a send
        sent.append(built)
        return N.SendResponse(ID="OUT1", Timestamp=1_795_000_000, ServerID=0, DebugTimings=N.MessageDebugTimings())

    session.client.send_message = send_message
    result = await session.send(message, "3EB0SECOND", retry=True)
    assert (result.id, result.already_sent) == ("OUT1", False)
    assert sent[0].messageContextInfo.messageSecret == second and sent[0].conversation == "once"
    await session.close()


# -- issue 14: presence, a stop during pairing, a dead event pump ---------------------------------------
async def restored_session(tmp_path: Path, engine: NeonizeEngine, events: Recorder) -> NeonizeSession:
    phone = next_phone()
    store = fresh_store(tmp_path / "store.db")
    write_synthetic_device(store, phone)
    session = engine.open_session(phone, store, events)
    await session.start()
    assert (await events.next()).code == ErrorCode.DIAL_FAILED  # offline
    return session


async def test_presence_and_pair_codes_reach_go(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The configured presence goes to Go's SendPresence on every connect (offline Go answers that the
    websocket is not connected: the call was made, and a failure is only logged)."""
    engine = NeonizeEngine(stop_timeout=5, presence="unavailable")
    events = Recorder()
    session = await restored_session(tmp_path, engine, events)
    with pytest.raises(EngineError) as refused:
        await calls.send_presence(session.client, "available")
    assert refused.value.code == "not_connected"
    with pytest.raises(PairPhoneError, match="not connected"):  # the real binding, with our parameters
        await calls.pair_code(session.client, session.phone)
    caplog.set_level(logging.DEBUG, logger="wa_mqtt.engines.neonize_engine")
    await go_event(session, N.Connected(status=True))
    assert (await events.next()).kind == "connected"
    for _ in range(100):
        if "presence unavailable not sent: " in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "presence unavailable not sent: " in caplog.text and "websocket not connected" in caplog.text
    await session.close()
    await engine.aclose()


async def test_a_stop_during_pairing_that_cannot_end_neonize_asks_for_a_new_process(tmp_path: Path) -> None:
    """Go's connect thread never returns after a stop during QR pairing (qrchan.go keeps its channel
    open): the stop does not wait for it, and the session says its process must be replaced."""
    engine = NeonizeEngine(stop_timeout=5, pairing_stop_grace=0.3)
    events = Recorder()
    session = engine.open_session(next_phone(), tmp_path / "store.db", events)
    await session.start("qr")
    assert (await events.next()).code == ErrorCode.DIAL_FAILED
    assert session.recycle_reason is None
    stuck = asyncio.Event()
    session._watch = asyncio.create_task(stuck.wait())  # where Go's Neonize() would still be blocked
    loop = asyncio.get_running_loop()
    began = loop.time()
    await session.stop()
    assert loop.time() - began < 2
    assert session.recycle_reason is not None and "during pairing" in session.recycle_reason
    await session.close()
    await engine.aclose()


async def test_a_clean_stop_keeps_the_process(tmp_path: Path, engine: NeonizeEngine) -> None:
    session = await restored_session(tmp_path, engine, Recorder())
    await session.stop()
    assert session.recycle_reason is None
    await session.close()


async def test_a_dead_event_pump_reports_the_lost_ban_and_asks_for_a_new_process(tmp_path: Path,
                                                                                 engine: NeonizeEngine) -> None:
    """neonize cannot encode a ban code it does not know: the marshal error ends Go's event pump and
    Neonize() returns it. The ban (code and expiry from whatsmeow's log line) still reaches the bridge."""
    events = Recorder()
    session = await restored_session(tmp_path, engine, events)
    client = session.client
    logging.getLogger("whatsmeow.Client").warning(
        'Temporary ban connect failure: <failure code="106" expire="7200" reason="402"/>')

    async def go_neonize_returned() -> None:  # what neonize's connect task raises with Go's returned text
        raise NeonizeError("proto: required field neonize.TemporaryBan.Code not set")

    await session._watch_connect(client, asyncio.create_task(go_neonize_returned()))
    ban = await events.next()
    assert ban.kind == "temporary_ban" and ban.code == "106"
    assert 7100 < (ban.expires_at - datetime.now(UTC)).total_seconds() <= 7200
    assert session.recycle_reason is not None and "event pump" in session.recycle_reason
    await session.stop()
    assert session.recycle_reason is not None  # the child answers its stop with it
    await session.close()
