#!/usr/bin/env python3
"""Packs this repository's wa_mqtt source into the add-on's build context: `addon/wa_mqtt-source.tar`.

The Supervisor builds the add-on with the add-on folder as the Docker build context, so the bridge's
source has to be inside that folder; the Dockerfile installs exactly this archive, and nothing of
wa_mqtt comes from a package index. The archive holds `pyproject.toml`, `README.md` and `wa_mqtt/`
as they are in the working tree, and depends on their content only (sorted members, fixed times and
owners), so the same tree always gives the same bytes.

Run `python addon/pack_source.py` after changing the package; `--check` only reports whether the
archive is up to date (exit 1 if not). tests/unit/test_addon.py fails while it is stale.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

ADDON = Path(__file__).resolve().parent
ROOT = ADDON.parent
ARCHIVE = ADDON / "wa_mqtt-source.tar"
TOP = "wa_mqtt-source"  # the archive's top folder: a Python project pip can build
MTIME = 1_577_836_800  # 2020-01-01 for every member: content decides the bytes (and wheels need >= 1980)


def source_files(root: Path = ROOT) -> list[Path]:
    """What the package build needs, relative to `root`: the project file, the readme it names, the package."""
    package = sorted(path.relative_to(root) for path in (root / "wa_mqtt").rglob("*")
                     if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc")
    return [Path("pyproject.toml"), Path("README.md"), *package]


def pack(root: Path = ROOT) -> bytes:
    """The archive of `root`'s source, byte for byte reproducible."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for relative in source_files(root):
            data = (root / relative).read_bytes()
            member = tarfile.TarInfo(f"{TOP}/{relative.as_posix()}")
            member.size, member.mtime, member.mode = len(data), MTIME, 0o644
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report whether the archive is up to date")
    args = parser.parse_args(argv)
    fresh = pack()
    current = ARCHIVE.read_bytes() if ARCHIVE.exists() else b""
    if fresh == current:
        print(f"{ARCHIVE.relative_to(ROOT)} is up to date")
        return 0
    if args.check:
        print(f"{ARCHIVE.relative_to(ROOT)} is stale: run python addon/pack_source.py", file=sys.stderr)
        return 1
    ARCHIVE.write_bytes(fresh)
    print(f"wrote {ARCHIVE.relative_to(ROOT)} ({len(fresh)} bytes, {len(source_files())} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
