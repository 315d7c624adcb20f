"""`python -m wa_mqtt sessions list|backup|restore|remove`: the sessions folder from the command line.

These act on files directly. `backup` and `list` are safe while the bridge runs (online backup API,
read-only checks). `restore` and `remove` hold the sessions folder's lock and the account's while they
work: they refuse (exit 2) while a bridge runs on the folder or an engine process has the store open,
unless `--force`, and a bridge started meanwhile refuses to start.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from datetime import UTC, datetime

from .accounts.backups import (
    BackupError,
    backup_store,
    check_backup,
    check_store,
    list_backups,
    restore_from_backup,
)
from .accounts.store import SessionStore
from .config import Config
from .folder_lock import FolderBusy, lock_folder
from .model import is_phone


def _out(line: str) -> None:
    print(line, file=sys.stdout)


def run_sessions_command(config: Config, args: argparse.Namespace) -> int:
    if config.store.url is not None:
        return _postgres_sessions(config, args)
    store = SessionStore(config.sessions_dir)
    command = args.sessions_command
    phone = getattr(args, "phone", None)
    if phone is not None and not is_phone(phone):
        print(f"wa_mqtt: {phone!r} is not a phone number (international, digits only)", file=sys.stderr)
        return 2
    if phone is not None and command != "backup" and phone not in store.account_phones():
        print(f"wa_mqtt: no account {phone} in {config.sessions_dir}", file=sys.stderr)
        return 1
    now = datetime.now(UTC)
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
    if command in ("restore", "remove") and phone is not None:
        with contextlib.ExitStack() as held:
            if not args.force:
                refusal = _hold(held, config, store, phone, command)
                if refusal is not None:
                    print(f"wa_mqtt: {refusal}", file=sys.stderr)
                    return 2
            return _restore(config, store, phone, args.backup, now) if command == "restore" else _remove(store, phone)
    return 2


def _hold(held: contextlib.ExitStack, config: Config, store: SessionStore, phone: str, command: str) -> str | None:
    """Take the sessions folder's lock, then the account's, into `held`; why not, when one is in use."""
    try:
        held.enter_context(lock_folder(config.sessions_dir))
    except FolderBusy as exc:
        who = f"a wa_mqtt bridge (PID {exc.pid})" if exc.pid else "a wa_mqtt bridge"
        how = (f"remove the account through it ({config.mqtt.base_topic}/bridge/request/remove "
               f'{{"phone": "{phone}"}}) or stop it first' if command == "remove" else "stop it first")
        return f"{who} is running on {exc.folder}: {how}; --force acts anyway"
    except OSError:
        pass  # a folder that cannot carry a lock (read-only) has no bridge holding it either
    try:
        held.enter_context(lock_folder(store.paths(phone).root))
    except FolderBusy as exc:
        who = f"process {exc.pid}" if exc.pid else "another process"
        return (f"the store of {phone} is open in {who} (an engine process still closing?): "
                "try again in a moment; --force acts anyway")
    except OSError:
        pass
    return None


def _restore(config: Config, store: SessionStore, phone: str, backup: str | None, now: datetime) -> int:
    paths = store.paths(phone)
    used = restore_from_backup(paths.store, paths.backups, backup, now=now, key=config.backups.key)
    if used is None:
        _out(f"{phone}: no good backup{' named ' + backup if backup else ''}; nothing changed")
        return 1
    _out(f"{phone}: store restored from {used.name} (the previous store was kept aside)")
    return 0


def _remove(store: SessionStore, phone: str) -> int:
    store.remove(phone)
    _out(f"{phone}: removed")
    return 0


def _postgres_sessions(config: Config, args: argparse.Namespace) -> int:
    """With `store.url` the sessions are schemas in PostgreSQL (store/pg_sessions.py): listed from there;
    backups and restores are PostgreSQL's (pg_dump / pg_restore); `remove` goes through a bridge."""
    from .store import pg_sessions
    from .store.pg import PgUnavailable, masked

    url = config.store.url
    assert url is not None
    command = args.sessions_command
    phone = getattr(args, "phone", None)
    if phone is not None and not is_phone(phone):
        print(f"wa_mqtt: {phone!r} is not a phone number (international, digits only)", file=sys.stderr)
        return 2
    where = f"PostgreSQL at {masked(url)}"
    if command in ("backup", "restore"):
        _out(f"the sessions are in {where} (store.url): no file {command}s of them; "
             + ("back the database up with pg_dump (e.g. pg_dump -Fc), see docs/scaling.md" if command == "backup"
                else "restore the database with pg_restore, see docs/scaling.md"))
        return 0 if command == "backup" else 2
    if command == "remove" and not args.force:
        print(f"wa_mqtt: the sessions are in {where}, shared by every bridge of the cluster: remove the account "
              f"through a bridge ({config.mqtt.base_topic}/bridge/request/remove {{\"phone\": \"{phone}\"}}); "
              "--force drops its schema anyway", file=sys.stderr)
        return 2
    try:
        if command == "remove" and phone is not None:
            dropped = pg_sessions.drop_account(url, phone)
            SessionStore(config.sessions_dir).remove(phone)
            _out(f"{phone}: {'removed' if dropped else 'no session in PostgreSQL; local folder removed'}")
            return 0 if dropped else 1
        schemas = pg_sessions.session_schemas(url)
        _out(f"sessions in {where}: no file checks or backups here (pg_dump)")
        if not schemas:
            _out("no accounts")
        for item in schemas:
            linked = pg_sessions.has_device(url, item)
            _out(f"{item}  schema={pg_sessions.account_schema(item)}  linked={'yes' if linked else 'no'}")
    except PgUnavailable as exc:
        print(f"wa_mqtt: {exc}", file=sys.stderr)
        return 2
    return 0
