"""The Home Assistant blueprint of docs/blueprints (issue 16): valid YAML with `!input` tags, every
input used and every `!input` declared, and templates Jinja can parse (Home Assistant's dialect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

BLUEPRINT = Path(__file__).resolve().parents[2] / "docs" / "blueprints" / "whatsapp_yes_no_poll.yaml"


class _Input(str):
    pass


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!input", lambda loader, node: _Input(loader.construct_scalar(node)))


def _walk(node: Any) -> list[Any]:
    found = [node]
    if isinstance(node, dict):
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


def test_blueprint_inputs_and_templates() -> None:
    data = yaml.load(BLUEPRINT.read_text(encoding="utf-8"), Loader=_Loader)
    assert data["blueprint"]["domain"] == "automation"
    declared = set(data["blueprint"]["input"])
    body = {k: v for k, v in data.items() if k != "blueprint"}
    used = {str(v) for v in _walk(body) if isinstance(v, _Input)}
    assert used == declared
    env = jinja2.Environment()
    templates = [v for v in _walk(body) if isinstance(v, str) and not isinstance(v, _Input) and "{{" in v]
    assert len(templates) >= 6
    for template in templates:
        env.parse(template)
