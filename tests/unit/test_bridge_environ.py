"""The bridge processes of the tests and benchmarks run this checkout's code, whatever is installed."""

from __future__ import annotations

import os
from pathlib import Path

from harness import CHECKOUT, bridge_environ


def test_bridge_imports_this_checkout_first() -> None:
    # bench/run.py without PYTHONPATH measured the shared editable install (another clone, an older
    # commit): the bridge runs in a directory of its own, so nothing else put this checkout on its path.
    assert (CHECKOUT / "wa_mqtt" / "__init__.py").is_file()
    assert bridge_environ({})["PYTHONPATH"] == str(CHECKOUT)
    elsewhere = os.pathsep.join(["/opt/other", str(CHECKOUT), ""])
    paths = bridge_environ({"PYTHONPATH": elsewhere})["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(CHECKOUT), "/opt/other"]
    assert Path(paths[0]).resolve() == Path(__file__).resolve().parent.parent.parent


def test_bridge_environment_keeps_the_rest_but_wa_mqtt_variables() -> None:
    environ = bridge_environ({"HOME": "/h", "WA_MQTT_LOG_LEVEL": "debug"}, {"EXTRA": "1"})
    assert environ["HOME"] == "/h" and environ["EXTRA"] == "1" and environ["PYTHONUNBUFFERED"] == "1"
    assert "WA_MQTT_LOG_LEVEL" not in environ
