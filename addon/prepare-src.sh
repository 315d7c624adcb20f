#!/usr/bin/env bash
# Copies the wa_mqtt package into addon/src/ so that a local add-on build (Supervisor "local
# add-on" or `docker build addon/`) installs this checkout instead of the PyPI release.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
rm -rf "$here/src"
mkdir -p "$here/src"
cp "$root/pyproject.toml" "$here/src/"
[ -f "$root/README.md" ] && cp "$root/README.md" "$here/src/"
cp -r "$root/wa_mqtt" "$here/src/wa_mqtt"
find "$here/src" -name '__pycache__' -type d -prune -exec rm -rf {} +
echo "copied the package into $here/src"
