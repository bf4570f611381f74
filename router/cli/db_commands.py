"""CLI commands ``db status``, ``db backup`` and ``db restore``: the store as an operator
needs to see it, copy it and put a copy back."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from router.cli.output import add_json, config_path, engine_config, print_json
from router.config import safe_store_url

if TYPE_CHECKING:
    from router.store.status import StoreStatus

# A status that hangs on an unreachable server is no status: libpq waits for TCP otherwise.
CONNECT_TIMEOUT = "10"


def register(db: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = db.add_parser(
        "status",
        help="schema against this version, pending migrations, size and backlog; "
        "exit 0 up to date, 1 behind or ahead, 2 unreachable",
    )
    add_json(status)
    status.set_defaults(handler=db_status)

    backup = db.add_parser(
        "backup",
        help="copy the running store and its blobs into FOLDER, consistently "
        "(SQLite: online backup; PostgreSQL: pg_dump)",
    )
    backup.add_argument("folder", type=Path, help="a new or empty folder")
    add_json(backup)
    backup.set_defaults(handler=db_backup)

    restore = db.add_parser(
        "restore",
        help="put a backup made by db backup in place of the store (every engine stopped): "
        "checked before and after, migrated, audited",
    )
    restore.add_argument("folder", type=Path, help="the folder db backup made")
    restore.add_argument("--force", action="store_true", help="replace a store that holds messages")
    restore.add_argument(
        "--engines-stopped",
        action="store_true",
        help="the engines seen lately (named when it refuses) are known not to be running",
    )
    restore.add_argument("--actor", help="who restores (default: the OS user)")
    add_json(restore)
    restore.set_defaults(handler=db_restore)


def db_status(args: argparse.Namespace) -> int:
    from router.store.opening import open_store
    from router.store.status import store_status

    config = engine_config(args)
    os.environ.setdefault("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT)
    store = open_store(config)
    try:
        status = store_status(store)
    finally:
        store.dispose()
    source = "TIE_STORE" if os.environ.get("TIE_STORE") else f"store in {config_path(args)}"
    url = safe_store_url(config.store)
    if args.json:
        record = asdict(status) | {"pending": [p._asdict() for p in status.pending]}
        print_json({"store": url, "source": source, **record})
    else:
        print(f"store       {url} ({source})")
        for line in _lines(status):
            print(line)
    return status.exit_code


def _lines(status: StoreStatus) -> list[str]:
    from router.store.status import AHEAD, BEHIND

    if not status.reachable:
        return [f"reachable   no: {status.error}"]
    lines = ["reachable   yes"]
    code = ", ".join(status.heads)
    if status.schema == BEHIND:
        lines.append(
            f"schema      BEHIND: {len(status.pending)} migration(s) pending "
            f"(run.py db upgrade); store at {', '.join(status.revisions) or 'no schema'}"
        )
        width = max(len(p.revision) for p in status.pending)
        lines += [f"  pending   {p.revision:<{width}}  {p.doc}" for p in status.pending]
    elif status.schema == AHEAD:
        lines.append(
            f"schema      AHEAD: the store has {', '.join(status.unknown)}, which this "
            f"version does not know (a newer tie migrated it)"
        )
    else:
        lines.append(f"schema      up to date ({code})")
    if status.database_bytes is not None:
        lines.append(f"database    {_bytes(status.database_bytes)}")
    lines.append(
        f"blobs       {status.blob_files} file(s), {_bytes(status.blob_bytes)} "
        f"in {status.blob_folder}"
    )
    if status.messages is not None:
        oldest = _time(status.oldest_message) if status.oldest_message else "none"
        lines.append(f"messages    {status.messages}, oldest received {oldest}")
    if status.backlog is not None:
        backlog = status.backlog
        oldest = f", oldest {_time(backlog.oldest_queued)}" if backlog.oldest_queued else ""
        lines.append(f"backlog     {backlog.unprocessed} message(s) received, not processed")
        lines.append(f"            {backlog.queued} delivery(ies) to send{oldest}")
    return lines


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def db_backup(args: argparse.Namespace) -> int:
    from router.cli.output import CommandError
    from router.store.backup import BackupError, back_up
    from router.store.opening import open_store

    store = open_store(engine_config(args))
    try:
        backup = back_up(store, args.folder)
    except BackupError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        store.dispose()
    complete = not backup.missing and not backup.corrupt
    if args.json:
        print_json(
            asdict(backup) | {"folder": str(backup.folder), "database": str(backup.database)}
        )
    else:
        print(f"database    {backup.database}")
        print(f"blobs       {backup.blobs} file(s), {_bytes(backup.blob_bytes)}")
        for sha256 in backup.missing:
            print(f"MISSING     blob {sha256}: a row of the copy names it, the blob folder has not")
        for sha256 in backup.corrupt:
            print(f"CORRUPT     blob {sha256}: its content is not its hash; not copied")
        print("backup complete" if complete else "backup INCOMPLETE: see the blobs above")
    return 0 if complete else 1


def db_restore(args: argparse.Namespace) -> int:
    from router.cli.commands import os_user
    from router.cli.output import CommandError
    from router.store.opening import open_store
    from router.store.restore import RestoreError, restore

    store = open_store(engine_config(args))
    try:
        done = restore(
            store,
            args.folder,
            actor=args.actor or os_user(),
            force=args.force,
            engines_stopped=args.engines_stopped,
        )
    except RestoreError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        store.dispose()
    if args.json:
        print_json(
            asdict(done)
            | {"folder": str(done.folder), "migrations": [m._asdict() for m in done.migrations]}
        )
        return 0
    print(f"restored    {done.database} from {done.folder}")
    print(f"blobs       {done.blobs} file(s), {_bytes(done.blob_bytes)}, each checked")
    for replaced in done.replaced:
        print(f"replaced    {replaced}")
    for applied in done.migrations:
        print(f"migrated    {applied.revision}  {applied.doc}")
    print("restore complete: start the engines")
    return 0
