"""Command line: `python -m wa_mqtt [flags]` runs the bridge; subcommands check config and manage sessions.

Exit codes: 0 clean stop, 2 invalid configuration or usage or a data file newer than this version, 1
anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config
from .config_migrations import describe

log = logging.getLogger("wa_mqtt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wa_mqtt", description="WhatsApp <-> MQTT bridge")
    parser.add_argument("--version", action="version", version=f"wa_mqtt {__version__}")
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default ./config.yaml)")
    parser.add_argument("--engine", choices=["neonize", "sim"], help="override `engine`")
    parser.add_argument("--mqtt-url", help="override `mqtt.url` (mqtt://user:pass@host:1883)")
    parser.add_argument("--sessions-dir", type=Path, help="override `sessions_dir`")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override `log_level`")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the bridge (the default)")
    sub.add_parser("check-config", help="validate the config and print the effective values (secrets masked)")
    sessions = sub.add_parser("sessions", help="list / back up / restore / remove stored sessions")
    sessions_sub = sessions.add_subparsers(dest="sessions_command", required=True)
    sessions_sub.add_parser("list", help="stored accounts with their store health and backups")
    backup = sessions_sub.add_parser("backup", help="back up one or every store now")
    backup.add_argument("phone", nargs="?")
    restore = sessions_sub.add_parser("restore", help="replace a store by a backup (the newest good one by default)")
    restore.add_argument("phone")
    restore.add_argument("backup", nargs="?")
    remove = sessions_sub.add_parser("remove", help="delete an account's folder (store, metadata, backups)")
    remove.add_argument("phone")
    pair = sub.add_parser("pair", help="link a number: shows the QR code in this terminal")
    pair.add_argument("phone")
    pair.add_argument("--method", choices=["qr", "code"], default="qr")
    return parser


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.engine:
        overrides["engine"] = args.engine
    if args.mqtt_url:
        overrides["mqtt"] = {"url": args.mqtt_url}
    if args.sessions_dir:
        overrides["sessions_dir"] = str(args.sessions_dir)
    if args.log_level:
        overrides["log_level"] = args.log_level
    return overrides


def setup_logging(level: str) -> None:
    """Configure logging before anything imports neonize (which calls basicConfig itself)."""
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr, force=True,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for noisy in ("amqtt", "transitions", "websockets", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level.upper())))


def warn_if_secrets_readable(path: Path, config: Config) -> None:
    """A config file (or key file) holding secrets should not be readable by other users."""
    candidates: list[Path] = []
    if any(url and "@" in url for url in (config.mqtt.url, config.proxy)) and path.exists():
        candidates.append(path)
    if config.mqtt.key_file:
        candidates.append(Path(config.mqtt.key_file))
    for candidate in candidates:
        try:
            mode = candidate.stat().st_mode
        except OSError:
            continue
        if mode & 0o004:
            log.warning("%s holds a secret and is readable by every user on this machine: chmod 600 %s",
                        candidate, candidate)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, cli_overrides=cli_overrides(args))
    except ConfigError as exc:
        print(f"wa_mqtt: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    if config.migrations_applied:  # logged here: logging is set up only once the config is read
        log.info("%s", describe(str(args.config), config.migrations_applied))
    warn_if_secrets_readable(args.config, config)
    command = args.command or "run"
    if command == "check-config":
        import json

        print(json.dumps(config.masked(), indent=2))
        return 0
    if command == "sessions":
        from .sessions_cli import run_sessions_command

        return run_sessions_command(config, args)
    if command == "pair":
        from .pair_cli import run_pair

        return asyncio.run(run_pair(config, args.phone, args.method))
    return asyncio.run(run_bridge(config, args.config, cli_overrides(args)))


async def run_bridge(config: Config, config_path: Path | None = None,
                     overrides: dict[str, Any] | None = None) -> int:
    from .app import App
    from .schema import SchemaError, SchemaTooNewError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await App(config, config_path=config_path, cli_overrides=overrides).run(stop)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except SchemaError as exc:  # one of the data files: too new (like an invalid config: 2) or its upgrade failed
        log.error("cannot start: %s", exc)
        return 2 if isinstance(exc, SchemaTooNewError) else 1
