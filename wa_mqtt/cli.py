"""Command line: `python -m wa_mqtt [flags]` runs the bridge; subcommands check config and manage sessions.

Exit codes: 0 clean stop, 2 a setup problem (invalid configuration or usage, a missing `--config`
file, config.yaml or a data file from a newer release, the sessions folder in use by another bridge,
the embedded broker's or the web page's port taken), 1 anything else.
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
from .config import ENV_PREFIX, Config, ConfigError
from .config_loading import load_config, read_yaml
from .config_migrations import describe
from .config_secrets import file_secrets

log = logging.getLogger("wa_mqtt")

DEFAULT_CONFIG = Path("config.yaml")
EPILOG = f"""\
environment:
  Every config key can be set in the environment: {ENV_PREFIX}<KEY> for a
  top-level key, {ENV_PREFIX}<SECTION>__<KEY> (two underscores) for a key in a
  section. Values are read as YAML (true, 5, [a, b]). The environment
  overrides config.yaml; the flags above override both. For example:
    {ENV_PREFIX}ENGINE=sim  {ENV_PREFIX}LOG_LEVEL=debug
    {ENV_PREFIX}MQTT__URL=mqtt://user:pass@host:1883
    {ENV_PREFIX}OUTGOING__ALLOW_TO='[5511999999999]'
    {ENV_PREFIX}BACKUPS__ENCRYPTION_KEY=<a Fernet key>
  Every key, its default, its variable and whether a change needs a
  restart: docs/configuration.md

exit codes:
  0  clean stop (SIGTERM, Ctrl-C), or the command succeeded
  1  the command failed (pairing failed or timed out, a backup or restore
     failed), or the bridge stopped on an unexpected error
  2  a setup problem: invalid configuration or usage, a --config file that
     does not exist, the sessions folder in use by another bridge, the
     embedded broker's or the web page's port already taken
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wa_mqtt", description="WhatsApp <-> MQTT bridge",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wa_mqtt {__version__}")
    parser.add_argument("--config", type=Path, default=None,
                        help="config file (default ./config.yaml, optional; a file named here must exist)")
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
    for command in (restore, remove):
        command.add_argument("--force", action="store_true",
                             help="even while a bridge runs on this sessions folder (it is refused otherwise)")
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
    """A config file holding a secret itself (not one given by the environment or a flag), or the key
    file, should not be readable by other users."""
    candidates: list[tuple[Path, str]] = []
    try:
        in_file = file_secrets(read_yaml(path))
    except ConfigError:
        in_file = []
    if in_file:
        candidates.append((path, f"holds a secret ({', '.join(in_file)})"))
    if config.mqtt.key_file:
        candidates.append((Path(config.mqtt.key_file), "is a private key"))
    for candidate, what in candidates:
        try:
            mode = candidate.stat().st_mode
        except OSError:
            continue
        if mode & 0o004:
            log.warning("%s %s and is readable by every user on this machine: chmod 600 %s",
                        candidate, what, candidate)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config_path = args.config or DEFAULT_CONFIG
    if args.config is not None and not config_path.exists():
        print(f"wa_mqtt: the config file {config_path} does not exist (--config names a file that must exist; "
              f"without --config, ./{DEFAULT_CONFIG} is optional)", file=sys.stderr)
        return 2
    try:
        config = load_config(config_path, cli_overrides=cli_overrides(args))
    except ConfigError as exc:
        print(f"wa_mqtt: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    if config.migrations_applied:  # logged here: logging is set up only once the config is read
        log.info("%s", describe(str(config_path), config.migrations_applied))
    warn_if_secrets_readable(config_path, config)
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

        try:
            return asyncio.run(run_pair(config, args.phone, args.method))
        except KeyboardInterrupt:
            print("pairing cancelled", file=sys.stderr)
            return 130
    return asyncio.run(run_bridge(config, config_path, cli_overrides(args)))


async def run_bridge(config: Config, config_path: Path | None = None,
                     overrides: dict[str, Any] | None = None) -> int:
    from .app import App
    from .schema import SchemaError, SchemaTooNewError
    from .startup import StartupError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await App(config, config_path=config_path, cli_overrides=overrides).run(stop)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except SchemaError as exc:  # one of the data files: too new (like an invalid config: 2) or its upgrade failed
        log.error("cannot start: %s", exc)
        return 2 if isinstance(exc, SchemaTooNewError) else 1
