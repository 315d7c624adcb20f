"""`is_topic_name`: what a client may publish to (MQTT 4.7), the ASCII fast path and the UTF-8 path alike."""

from __future__ import annotations

import pytest

from wa_mqtt.mqtt.packets import check_topic
from wa_mqtt.mqtt.topics import has_unfit_character, is_topic_name


@pytest.mark.parametrize(("topic", "valid"), [
    ("wa/491234567/response/send", True), ("réponse/ü", True), ("", False), ("a/+/b", False), ("a/#", False),
    ("a\x00b", False), ("é\x00", False), ("x" * 65535, True), ("x" * 65536, False), ("é" * 32767, True),
    ("é" * 32768, False), ("a\ud800", False),  # a lone surrogate: not UTF-8
    # control characters and noncharacters (MQTT 1.5.4: SHOULD NOT; Mosquitto hangs up on them)
    ("a\x01", False), ("a\x1fb", False), ("a\x7f", False), ("é\x01", False), ("é\x80", False), ("\x9f", False),
    ("a\ufdd0", False), ("a\ufdef", False), ("a\ufffe", False), ("a\uffff", False), ("\U0001fffe", False),
    ("a\U0010ffff", False), ("a b~", True), ("\xa0\ufdcf\ufdf0\ufffd", True), ("a\U0001fffd😀", True),
])
def test_topic_names(topic: str, valid: bool) -> None:
    assert is_topic_name(topic) is valid


UNFIT = ["a\x00", "a\x01", "a\x1f", "\x7f", "é\x01", "é\x80", "\x9f", "a\ufdd0", "a\ufffe", "\U0001ffff",
         "a\U0010fffe", "a\ud800"]


@pytest.mark.parametrize("topic", UNFIT)
def test_what_the_bridge_publishes_follows_the_same_rule(topic: str) -> None:
    """`check_topic` (the publish itself) refuses what `is_topic_name` refuses for its characters."""
    assert has_unfit_character(topic) and not is_topic_name(topic)
    with pytest.raises(ValueError):
        check_topic(topic, True)
    assert check_topic(topic[:-1] + "ü", True) == (topic[:-1] + "ü").encode()


def test_the_ascii_fast_path_and_the_general_rule_agree_on_every_character() -> None:
    def unfit(code: int) -> bool:
        return (code <= 0x1F or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or 0xFDD0 <= code <= 0xFDEF
                or code & 0xFFFE == 0xFFFE)

    for code in range(0x110000):
        char = chr(code)
        assert has_unfit_character("é" + char) is unfit(code), hex(code)
        if code < 128:
            assert has_unfit_character(char) is unfit(code), hex(code)
