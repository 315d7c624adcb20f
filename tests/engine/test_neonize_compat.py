"""The neonize the suite runs against (issue 14): inside the range pyproject.toml allows, and offering every
piece of neonize the engine reaches past its public API. Run it after moving to a new neonize release:
a failure here names what changed before a user meets it."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from neonize.aioze.client import NewAClient
from neonize.proto import Neonize_pb2 as N
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def neonize_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [line] = [r for r in project["dependencies"] if r.startswith("neonize")]
    return Requirement(line)


def test_the_dependency_is_a_range_that_holds_the_installed_release() -> None:
    requirement = neonize_requirement()
    specs = {spec.operator for spec in requirement.specifier}
    assert specs == {">=", "<"}, "a range: a fixed neonize release must reach users without ours"
    assert requirement.specifier.contains(version("neonize")), (version("neonize"), str(requirement.specifier))


def test_what_the_engine_uses_beyond_neonizes_public_api_is_there(tmp_path: Path) -> None:
    client = NewAClient(str(tmp_path / "store.db"), uuid="compat-check", new_device=True)
    try:
        assert hasattr(client, "_NewAClient__client")  # the Go binding: pair codes with a valid display name
        assert hasattr(client._NewAClient__client, "PairPhone")
        assert hasattr(client, "_NewAClient__onLoginStatus")  # the end of the QR window
        assert hasattr(client, "_stop_finalizer")  # disarmed: it would stop a later client with the same uuid
        assert {"phone", "clientDisplayName", "clientType", "showPushNotification"} <= set(
            N.PairPhoneParams.DESCRIPTOR.fields_by_name)
    finally:
        client._stop_finalizer.detach()
