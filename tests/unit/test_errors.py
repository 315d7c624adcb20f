"""One error vocabulary: the codes docs/mqtt-api.md documents are exactly `ErrorCode`, each has a message,
and every exception the bridge answers with is a `BridgeError` carrying one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wa_mqtt import errors
from wa_mqtt.accounts.manager import UnknownAccount
from wa_mqtt.accounts.store import StorageError
from wa_mqtt.disk_full import DiskFull
from wa_mqtt.engines.base import EngineError
from wa_mqtt.errors import MESSAGES, BridgeError, ErrorCode
from wa_mqtt.media import MediaRefused
from wa_mqtt.mqtt.api import ApiError

DOC = (Path(__file__).resolve().parents[2] / "docs" / "mqtt-api.md").read_text(encoding="utf-8")


def documented_status_codes() -> set[str]:
    """The backticked words of the paragraph that starts "`error_code` values:" (up to its blank line)."""
    paragraph = DOC.split("`error_code` values:", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", paragraph))


def documented_response_codes() -> set[str]:
    """The first column of the table under "| code | when |"."""
    table = DOC.split("| code | when |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE))


def test_the_documented_codes_are_the_enum() -> None:
    status, response = documented_status_codes(), documented_response_codes()
    assert len(status) >= 13 and len(response) >= 12  # the parser found the lists
    assert status == set(errors.STATUS_CODES)
    assert response == set(errors.RESPONSE_CODES)
    assert status | response == {code.value for code in ErrorCode}


def test_every_code_has_a_message_that_says_what_to_do() -> None:
    assert set(MESSAGES) == set(ErrorCode)
    for code, message in MESSAGES.items():
        assert message.strip() and "{" not in message, code  # plain text: no placeholder left unfilled
    assert set(errors.DETAIL_FORMATS) <= errors.STATUS_CODES


@pytest.mark.parametrize(("error", "code", "message"), [
    (ApiError("invalid_json", "payload is not valid JSON"), ErrorCode.INVALID_JSON, "payload is not valid JSON"),
    (ApiError(ErrorCode.FORBIDDEN, "to: not allowed"), ErrorCode.FORBIDDEN, "to: not allowed"),
    (EngineError("websocket not connected", code="not_connected"), ErrorCode.NOT_CONNECTED, "websocket not connected"),
    (EngineError("refused"), ErrorCode.ENGINE_ERROR, "refused"),
    (MediaRefused("too_large", "image.base64: too big"), ErrorCode.TOO_LARGE, "image.base64: too big"),
    (StorageError("cannot write the session folder /x: Permission denied"), ErrorCode.STORAGE_ERROR,
     "cannot write the session folder /x: Permission denied"),
    (DiskFull("the data disk is full: nothing was sent"), ErrorCode.DISK_FULL, "the data disk is full: nothing was sent"),
    (UnknownAccount("5511900000009"), ErrorCode.UNKNOWN_ACCOUNT,
     'no account 5511900000009; link it first with bridge/request/pair {"phone": "5511900000009"}'),
])
def test_every_refusal_is_a_bridge_error_with_its_code(error: BridgeError, code: ErrorCode, message: str) -> None:
    assert isinstance(error, BridgeError) and type(error.code) is ErrorCode
    assert error.code == code and error.message == message == str(error)


def test_a_refusal_without_words_says_its_code_message() -> None:
    assert ApiError(ErrorCode.EXPIRED).message == MESSAGES[ErrorCode.EXPIRED]
    assert str(DiskFull()) == MESSAGES[ErrorCode.DISK_FULL]


def test_a_storage_error_is_still_an_os_error() -> None:
    with pytest.raises(OSError, match="read-only"):
        raise StorageError("cannot write the session folder /x: Read-only file system (read-only)")


def test_a_code_outside_the_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError):
        EngineError("x", code="no_such_code")
