"""What a bridge loads at start: the heavy optional libraries only with the feature that needs them
(docs/performance.md, "Restore and memory"). A bridge without AI rules, web page, metrics, embedded
broker or PostgreSQL never imports aiohttp, amqtt, prometheus_client or psycopg; one whose accounts
are all linked never imports segno (QR codes), web page or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ON_DEMAND = ("aiohttp", "amqtt", "prometheus_client", "psycopg", "segno")

# the entry point's imports, then an App for a config without any of those features, as cli.py builds it
PROBE = """
import json, sys
import wa_mqtt.cli
from wa_mqtt.app import App
from wa_mqtt.config import Config

config = Config.model_validate({"mqtt": {"url": "mqtt://127.0.0.1:1883"}, "web": {"enabled": False}})
App(config)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
import wa_mqtt.features.web_page  # what web.enabled adds
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_a_bridge_without_optional_features_imports_none_of_their_libraries() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=30,
                           check=True)
    bare, with_page = (set(json.loads(line)) for line in probe.stdout.splitlines())
    assert "wa_mqtt" in bare and "pydantic" in bare  # the probe did import the bridge
    assert sorted(bare.intersection(ON_DEMAND)) == []
    assert sorted(with_page.intersection(ON_DEMAND)) == ["aiohttp"]
