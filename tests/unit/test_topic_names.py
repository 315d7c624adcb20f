"""`is_topic_name`: what a client may publish to (MQTT 4.7), the ASCII fast path and the UTF-8 path alike."""

from __future__ import annotations

import pytest

from wa_mqtt.mqtt.topics import is_topic_name


@pytest.mark.parametrize(("topic", "valid"), [
    ("wa/491234567/response/send", True), ("réponse/ü", True), ("", False), ("a/+/b", False), ("a/#", False),
    ("a\x00b", False), ("é\x00", False), ("x" * 65535, True), ("x" * 65536, False), ("é" * 32767, True),
    ("é" * 32768, False), ("a\ud800", False),  # a lone surrogate: not UTF-8
])
def test_topic_names(topic: str, valid: bool) -> None:
    assert is_topic_name(topic) is valid
