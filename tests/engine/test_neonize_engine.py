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
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from wa_mqtt.engines import neonize_calls as calls
from wa_mqtt.engines.base import EngineError, EngineEvent, EngineSession, SimControllable
from wa_mqtt.engines.neonize_engine import NeonizeEngine, NeonizeSession, store_dsn
from wa_mqtt.model import ErrorCode, OutgoingMessage

from neonize_factories import Sends, everyone_on_whatsapp, jid, message_event, receipt_event, write_synthetic_device

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


async def restored(tmp_path: Path, engine: NeonizeEngine, phone: str | None = None,
                   lid_map: dict[str, str] | None = None) -> tuple[NeonizeSession, Recorder]:
    """A session on a synthetic stored device (tmp_path/store.db, with `lid_map` in whatsmeow_lid_map),
    started offline: the dial failure it reports first is taken."""
    phone = phone or next_phone()
    store = fresh_store(tmp_path / "store.db")
    write_synthetic_device(store, phone)
    with sqlite3.connect(store) as db:
        db.executemany("INSERT INTO whatsmeow_lid_map (lid, pn) VALUES (?, ?)", list((lid_map or {}).items()))
    events = Recorder()
    session = engine.open_session(phone, store, events)
    await session.start()
    assert (await events.next()).code == ErrorCode.DIAL_FAILED  # offline
    return session, events


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
    session, events = await restored(tmp_path, engine)
    group = jid("120363012345678901", "g.us")
    await go_event(session, message_event(E.Message(extendedTextMessage=E.ExtendedTextMessage(
        text="lunch?", contextInfo=E.ContextInfo(stanzaID="OLDER"))), msg_id="M1", chat=group,
        sender=jid("5511777777777", device=4)))
    assert (await events.next()).message.id == "M1"

    session.client.send_message = sent = Sends()
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

    session, _events = await restored(tmp_path, engine,  # no usync query for the recipient's LID
                                      lid_map={"123456789012345": "5511999999999"})
    phone, store = session.phone, tmp_path / "store.db"
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

    session.client.send_message = sent = Sends()
    session.client.is_on_whatsapp = everyone_on_whatsapp
    result = await session.send(message, "3EB0SECOND", retry=True)
    assert (result.id, result.already_sent) == ("OUT1", False)
    built = sent[0][1]
    assert built.messageContextInfo.messageSecret == second and built.conversation == "once"
    await session.close()


LID_KNOWN, LID_NEW = "123456789012345", "987654321098765"


async def test_lid_senders_are_resolved_through_the_store_lid_map_in_order(tmp_path: Path,
                                                                           engine: NeonizeEngine) -> None:
    """get_pn_from_lid against the real store; a message waiting for a lookup keeps its place."""
    session, events = await restored(tmp_path, engine, lid_map={LID_KNOWN: "5511555555555"})
    text = E.Message(conversation="x")
    await go_event(session, message_event(text, msg_id="M1", chat=jid(LID_KNOWN, "lid"), sender=jid(LID_KNOWN, "lid")))
    await go_event(session, message_event(text, msg_id="M2", chat=jid(LID_NEW, "lid"), sender=jid(LID_NEW, "lid")))
    await go_event(session, message_event(text, msg_id="M3"))
    got = [(await events.next()).message for _ in range(3)]
    assert [(m.id, m.sender, m.sender_lid, m.chat) for m in got] == [
        ("M1", "5511555555555", f"{LID_KNOWN}@lid", "5511555555555@s.whatsapp.net"),
        ("M2", None, f"{LID_NEW}@lid", f"{LID_NEW}@lid"),  # never the LID digits as a phone
        ("M3", "5511999999999", None, "5511999999999@s.whatsapp.net")]
    # a message that carries the phone alongside teaches the session the pair (whatsmeow stores it too)
    await go_event(session, message_event(text, msg_id="M4", sender=jid(LID_NEW, "lid"), chat=jid(LID_NEW, "lid"),
                                          sender_alt=jid("5511444444444")))
    await go_event(session, message_event(text, msg_id="M5", sender=jid(LID_NEW, "lid"), chat=jid(LID_NEW, "lid")))
    assert [(await events.next()).message.sender for _ in range(2)] == ["5511444444444", "5511444444444"]
    await session.close()


async def test_own_device_traffic_is_dropped_and_undecryptable_messages_are_published(tmp_path: Path,
                                                                                       engine: NeonizeEngine) -> None:
    session, events = await restored(tmp_path, engine)
    me = jid(session.phone, device=7)
    sync = E.Message(protocolMessage=E.ProtocolMessage(type=E.ProtocolMessage.HISTORY_SYNC_NOTIFICATION))
    await go_event(session, message_event(sync, msg_id="SYNC", from_me=True, chat=jid(session.phone), sender=me))
    info = message_event(None, msg_id="LOCKED").Info
    await go_event(session, N.UndecryptableMessage(Info=info, IsUnavailable=False,
                                                   DecryptFailMode=N.UndecryptableMessage.DECRYPT_FAIL_SHOW))
    await go_event(session, message_event(E.Message(conversation="now readable"), msg_id="LOCKED"))
    first, second = (await events.next()).message, (await events.next()).message
    assert (first.id, first.type, first.text) == ("LOCKED", "undecryptable", None)
    assert (second.id, second.type, second.text) == ("LOCKED", "text", "now readable")
    await session.close()


async def test_answers_use_the_addressing_the_message_came_with(tmp_path: Path, engine: NeonizeEngine) -> None:
    """A message from a LID is replied to and reacted to with the LID, even when asked by phone."""
    session, events = await restored(tmp_path, engine, lid_map={LID_KNOWN: "5511555555555"})
    await go_event(session, message_event(E.Message(conversation="hi"), msg_id="L1", chat=jid(LID_KNOWN, "lid"),
                                          sender=jid(LID_KNOWN, "lid", device=3)))
    message = (await events.next()).message
    assert (message.chat, message.sender_jid) == ("5511555555555@s.whatsapp.net", f"{LID_KNOWN}@lid")
    session.client.send_message = sent = Sends()
    assert await session.react(message.chat, "L1", "👍", sender=message.sender) == "OUT1"
    to, reaction = sent[0]
    assert (to.User, to.Server) == (LID_KNOWN, "lid")  # the chat as the message came
    assert reaction.reactionMessage.key.remoteJID == f"{LID_KNOWN}@lid"
    await session.send(OutgoingMessage(to=f"{LID_KNOWN}@lid", text="reply", reply_to="L1"))
    to, reply = sent[1]
    assert (to.User, to.Server) == (LID_KNOWN, "lid")  # a LID is sent to as given: no lookup
    assert reply.extendedTextMessage.contextInfo.participant == f"{LID_KNOWN}@lid"
    await session.close()


async def test_phones_are_resolved_once_before_sending(tmp_path: Path, engine: NeonizeEngine) -> None:
    session, _events = await restored(tmp_path, engine)
    asked: list[tuple[str, ...]] = []
    sent = Sends()
    brazil = {"+5511988887777": "551188887777"}  # typed with the ninth digit; WhatsApp knows it without

    async def is_on_whatsapp(*numbers: str) -> list[N.IsOnWhatsAppResponse]:  # the network part of a lookup
        asked.append(numbers)
        return [N.IsOnWhatsAppResponse(Query=f"{n}@c.us", JID=jid(brazil.get(n, n.lstrip("+"))),
                                       IsIn=n != "+5511000000000") for n in numbers]

    session.client.is_on_whatsapp, session.client.send_message = is_on_whatsapp, sent
    for to in ("5511988887777", "5511988887777@s.whatsapp.net", "120363012345678901@g.us", f"{LID_NEW}@lid"):
        await session.send(OutgoingMessage(to=to, text="hi"))
    assert [(j.User, j.Server) for j, _ in sent] == [
        ("551188887777", "s.whatsapp.net"), ("551188887777", "s.whatsapp.net"),
        ("120363012345678901", "g.us"), (LID_NEW, "lid")]
    assert asked == [("+5511988887777",)]  # once: the answer is cached; groups and LIDs are not looked up
    with pytest.raises(EngineError) as failure:
        await session.send(OutgoingMessage(to="5511000000000", text="hi"))
    assert failure.value.code == "not_on_whatsapp" and len(sent) == 4
    checks = await session.check(["5511000000000", "+5511988887777", "4915100000009"])
    assert [(c.number, c.on_whatsapp, c.jid) for c in checks] == [
        ("5511000000000", False, None), ("5511988887777", True, "551188887777@s.whatsapp.net"),
        ("4915100000009", True, "4915100000009@s.whatsapp.net")]
    assert asked[1:] == [("+5511000000000",), ("+4915100000009",)]  # each number asked once, "no account" too
    await session.close()


def _encrypt_vote(secret: bytes, poll_id: str, poll_sender: str, voter: str, options: list[str]) -> E.PollEncValue:
    """A vote as the voter's phone encrypts it (whatsmeow msgsecret.go: HKDF-SHA256 key, AES-GCM)."""
    import hashlib
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = (poll_id + poll_sender + voter + "Poll Vote").encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
    plain = E.PollVoteMessage(selectedOptions=[hashlib.sha256(o.encode()).digest() for o in options])
    iv = os.urandom(12)
    payload = AESGCM(key).encrypt(iv, plain.SerializeToString(), f"{poll_id}\x00{voter}".encode())
    return E.PollEncValue(encPayload=payload, encIV=iv)


async def test_a_poll_goes_out_and_its_votes_come_back_as_option_texts(tmp_path: Path, engine: NeonizeEngine) -> None:
    """Issue 16: the poll carries the send's secret and its options are remembered; a vote, encrypted
    as a phone does, is decrypted by neonize's real decrypt_poll_vote and named by those options."""
    from wa_mqtt.engines import neonize_calls as calls
    from wa_mqtt.model import Poll

    voter = "5511999999999"
    session, events = await restored(tmp_path, engine)
    phone, store = session.phone, tmp_path / "store.db"

    sent = Sends("3EB0POLL1")
    session.client.send_message, session.client.is_on_whatsapp = sent, everyone_on_whatsapp
    poll = Poll(question="Turn the heating on?", options=["Yes", "No", "Later"], selectable=1)
    result = await session.send(OutgoingMessage(to=voter, poll=poll), "3EB0OURS")
    assert result.id == "3EB0POLL1"
    creation = sent[0][1].pollCreationMessage
    assert (creation.name, [o.optionName for o in creation.options], creation.selectableOptionsCount) == (
        "Turn the heating on?", ["Yes", "No", "Later"], 1)
    secret = calls.message_secret(calls.device_key(store, phone), "3EB0OURS")
    assert sent[0][1].messageContextInfo.messageSecret == secret
    assert (tmp_path / "polls.db").is_file()  # the options outlive the process

    # what whatsmeow records when it sends the poll
    with sqlite3.connect(store) as db:
        for poll_id in ("3EB0POLL1", "3EB0OTHER"):  # OTHER: sent by another copy of the bridge, options unknown
            db.execute("INSERT INTO whatsmeow_message_secrets VALUES (?, ?, ?, ?, ?)",
                       (f"{phone}:7@s.whatsapp.net", f"{voter}@s.whatsapp.net", f"{phone}@s.whatsapp.net", poll_id,
                        secret))

    def vote(msg_id: str, poll_id: str, options: list[str]) -> N.Message:
        key = MessageKey(remoteJID=f"{phone}@s.whatsapp.net", fromMe=False, ID=poll_id)
        update = E.PollUpdateMessage(pollCreationMessageKey=key, senderTimestampMS=1_795_000_000_000,
                                     vote=_encrypt_vote(secret, poll_id, f"{phone}@s.whatsapp.net",
                                                        f"{voter}@s.whatsapp.net", options))
        return message_event(E.Message(pollUpdateMessage=update), msg_id=msg_id, sender=jid(voter, device=3))

    await go_event(session, vote("V1", "3EB0POLL1", ["Later"]))
    await go_event(session, vote("V2", "3EB0POLL1", []))  # the vote withdrawn
    await go_event(session, vote("V3", "3EB0UNKNOWN", ["Yes"]))  # no secret for that poll
    await go_event(session, vote("V4", "3EB0OTHER", ["No"]))
    await go_event(session, message_event(E.Message(conversation="after"), msg_id="T1"))  # order is kept
    received = [(await events.next()).message for _ in range(5)]
    assert [m.id for m in received] == ["V1", "V2", "V3", "V4", "T1"]
    import hashlib
    assert received[3].payload()["poll_vote"] == {"poll_id": "3EB0OTHER", "selected": [],
                                                  "unresolved": [hashlib.sha256(b"No").hexdigest()]}
    assert [m.type for m in received[:3]] == ["poll_vote"] * 3
    assert received[0].payload()["poll_vote"] == {"poll_id": "3EB0POLL1", "selected": ["Later"]}
    assert received[1].payload()["poll_vote"] == {"poll_id": "3EB0POLL1", "selected": []}
    failed = received[2].payload()["poll_vote"]
    assert failed["poll_id"] == "3EB0UNKNOWN" and failed["selected"] == [] and "decrypt" in failed["error"]
    await session.close()


async def test_incoming_media_is_downloaded_with_download_any_before_the_message_is_emitted(tmp_path: Path) -> None:
    """An image goes through neonize's real `download_any` (offline here: Go fails, nothing is kept) and,
    with the network part replaced, lands in media.dir/<phone>/ under a name from its id and type."""
    from wa_mqtt.engines.options import DownloadOptions

    engine = NeonizeEngine(stop_timeout=5, downloads=DownloadOptions(dir=tmp_path / "media", max_bytes=1000))
    session, events = await restored(tmp_path, engine)
    image = E.Message(imageMessage=E.ImageMessage(
        URL="https://mmg.whatsapp.net/v/t62.7118-24/x.enc", directPath="/v/t62.7118-24/x.enc",
        mimetype="image/jpeg", fileLength=5, mediaKey=b"k" * 32, fileSHA256=b"s" * 32, fileEncSHA256=b"e" * 32))
    await go_event(session, message_event(image, msg_id="IMG1"))
    failed = (await events.next()).message
    assert failed.id == "IMG1" and failed.media.error in ("download_failed", "expired") and failed.media.path is None
    assert not any((tmp_path / "media").rglob("*"))  # a failed download leaves nothing behind, not even a folder

    async def download_any(message: E.Message) -> bytes:  # the network part of a download
        assert message.imageMessage.mimetype == "image/jpeg"
        return b"jpeg!"
    session.client.download_any = download_any
    await go_event(session, message_event(image, msg_id="../../IMG2"))
    await go_event(session, message_event(E.Message(conversation="after"), msg_id="TXT"))
    text, saved = (await events.next()).message, (await events.next()).message
    assert text.id == "TXT"  # not held back by the download
    path = Path(saved.media.path)
    assert path.parent == tmp_path / "media" / session.phone and path.name == "______IMG2-image.jpg"
    assert path.read_bytes() == b"jpeg!" and saved.media.size == 5
    assert saved.media.sha256 == __import__("hashlib").sha256(b"jpeg!").hexdigest()

    async def lying(message: E.Message) -> bytes:  # declares 5 bytes, delivers 2,000
        return b"x" * 2000
    session.client.download_any = lying
    await go_event(session, message_event(image, msg_id="IMG3"))
    big = (await events.next()).message
    assert big.media.error == "too_large" and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    await session.close()
    await engine.aclose()


async def test_a_lid_senders_media_and_poll_vote_wait_for_the_lid_lookup_and_keep_their_order(tmp_path: Path) -> None:
    """Issues 14 x 15 x 16 in the pump: an image from a sender named by LID is looked up in the store's LID
    map, then downloaded (published with its file, its phone, LID and chat name); a vote from a LID sender
    (a lookup, then a Go decryption: deferred inside deferred) and a later text keep Go's order."""
    from wa_mqtt.engines.options import DownloadOptions

    engine = NeonizeEngine(stop_timeout=5, downloads=DownloadOptions(dir=tmp_path / "media", max_bytes=1000))
    session, events = await restored(tmp_path, engine, lid_map={LID_KNOWN: "5511555555555"})

    async def download_any(message: E.Message) -> bytes:  # the network part of a download
        return b"jpeg!"
    assert session.client is not None
    session.client.download_any = download_any
    image = E.Message(imageMessage=E.ImageMessage(
        URL="https://mmg.whatsapp.net/v/t62.7118-24/x.enc", directPath="/v/t62.7118-24/x.enc",
        mimetype="image/jpeg", fileLength=5, mediaKey=b"k" * 32, fileSHA256=b"s" * 32, fileEncSHA256=b"e" * 32))
    lid = jid(LID_KNOWN, "lid")
    await go_event(session, message_event(image, msg_id="IMG1", chat=lid, sender=lid))
    saved = (await events.next()).message
    assert (saved.id, saved.sender, saved.sender_lid, saved.chat, saved.chat_name) == (
        "IMG1", "5511555555555", f"{LID_KNOWN}@lid", "5511555555555@s.whatsapp.net", "Ana")
    assert saved.media.path is not None and Path(saved.media.path).read_bytes() == b"jpeg!"

    key = MessageKey(remoteJID=f"{session.phone}@s.whatsapp.net", fromMe=False, ID="3EB0NOSECRET")
    vote = E.Message(pollUpdateMessage=E.PollUpdateMessage(
        pollCreationMessageKey=key, senderTimestampMS=1_795_000_000_000,
        vote=E.PollEncValue(encPayload=b"x" * 32, encIV=b"i" * 12)))
    new = jid(LID_NEW, "lid")
    await go_event(session, message_event(vote, msg_id="V1", chat=new, sender=new))
    await go_event(session, message_event(E.Message(conversation="after"), msg_id="T1", chat=lid, sender=lid))
    voted, after = (await events.next()).message, (await events.next()).message
    assert (voted.id, voted.type, voted.sender, voted.sender_lid) == ("V1", "poll_vote", None, f"{LID_NEW}@lid")
    assert "decrypt" in voted.payload()["poll_vote"]["error"]  # no secret for that poll: still reported
    assert (after.id, after.sender) == ("T1", "5511555555555")
    await session.close()
    await engine.aclose()


async def test_the_watchdog_check_is_a_real_server_round_trip(tmp_path: Path, engine: NeonizeEngine) -> None:
    """`ping` is whatsmeow's GetBlocklist (an IQ to the server): on a restored client that is not
    connected the real library refuses it as `not_connected`, without a client too."""
    bare = engine.open_session("4915100000001", tmp_path / "bare.db", Recorder())
    with pytest.raises(EngineError) as failure:
        await bare.ping(1)
    assert failure.value.code == "not_connected"
    await bare.close()
    session, _events = await restored(tmp_path, engine)
    with pytest.raises(EngineError) as failure:
        await session.ping(5)
    assert failure.value.code == "not_connected", str(failure.value)
    await session.close()


# -- issue 14: presence, a stop during pairing, a dead event pump ---------------------------------------
async def test_presence_and_pair_codes_reach_go(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The configured presence goes to Go's SendPresence on every connect (offline Go answers that the
    websocket is not connected: the call was made, and a failure is only logged)."""
    engine = NeonizeEngine(stop_timeout=5, presence="unavailable")
    session, events = await restored(tmp_path, engine)
    with pytest.raises(EngineError) as refused:
        await calls.send_presence(session.client, "available")
    assert refused.value.code == "not_connected"
    with pytest.raises(PairPhoneError, match="not connected"):  # the real binding, with our parameters
        await calls.pair_code(session.client, session.phone)
    caplog.set_level(logging.DEBUG, logger="wa_mqtt.engines.neonize_refresh")
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
    session, _events = await restored(tmp_path, engine)
    await session.stop()
    assert session.recycle_reason is None
    await session.close()


async def test_a_dead_event_pump_reports_the_lost_ban_and_asks_for_a_new_process(tmp_path: Path,
                                                                                 engine: NeonizeEngine) -> None:
    """neonize cannot encode a ban code it does not know: the marshal error ends Go's event pump and
    Neonize() returns it. The ban (code and expiry from whatsmeow's log line) still reaches the bridge."""
    session, events = await restored(tmp_path, engine)
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
