"""`python -m wa_mqtt sessions list|backup|restore|remove`: the sessions folder from the command line.

These act on files directly. `backup` and `list` are safe while the bridge runs (online backup API,
read-only checks); stop the bridge before `restore` or `remove`, or use the MQTT commands instead.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from .accounts.backups import (
    BackupError, backup_store, check_backup, check_store, list_backups, restore_from_backup,
)
from .accounts.store import SessionStore
from .config import Config
from .model import is_phone


def _out(line: str) -> None:
    print(line, file=sys.stdout)


def run_sessions_command(config: Config, args: argparse.Namespace) -> int:
    store = SessionStore(config.sessions_dir)
    command = args.sessions_command
    phone = getattr(args, "phone", None)
    if phone is not None and not is_phone(phone):
        print(f"wa_mqtt: {phone!r} is not a phone number (international, digits only)", file=sys.stderr)
        return 2
    if phone is not None and command != "backup" and phone not in store.account_phones():
        print(f"wa_mqtt: no account {phone} in {config.sessions_dir}", file=sys.stderr)
        return 1
    now = datetime.now(timezone.utc)
    if command == "list":
        phones = store.account_phones()
        if not phones:
            _out(f"no accounts in {config.sessions_dir}")
        for item in phones:
            paths = store.paths(item)
            meta = store.read_meta(item)
            problem = check_store(paths.store)
            backups = list_backups(paths.backups)
            good = [b for b in backups if check_backup(b, config.backups.key) is None]
            _out(f"{item}  name={meta.get('name') or '-'}  last_connected={meta.get('last_connected') or '-'}  "
                 f"store={'ok' if problem is None else problem}  backups={len(backups)} ({len(good)} good)"
                 + (f" newest good {good[0].name}" if good else ""))
        return 0
    if command == "backup":
        phones = [phone] if phone else store.account_phones()
        failed = 0
        for item in phones:
            paths = store.paths(item)
            try:
                made = backup_store(paths.store, paths.backups, config.backups.keep, now, config.backups.key)
            except (BackupError, OSError) as exc:
                failed += 1
                _out(f"{item}: backup failed: {exc}")
            else:
                _out(f"{item}: {made}")
        return 1 if failed else 0
    if command == "restore":
        paths = store.paths(phone)
        used = restore_from_backup(paths.store, paths.backups, args.backup, now=now, key=config.backups.key)
        if used is None:
            _out(f"{phone}: no good backup{' named ' + args.backup if args.backup else ''}; nothing changed")
            return 1
        _out(f"{phone}: store restored from {used.name} (the previous store was kept aside)")
        return 0
    if command == "remove":
        store.remove(phone)
        _out(f"{phone}: removed")
        return 0
    return 2
