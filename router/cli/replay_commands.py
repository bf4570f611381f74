"""CLI commands ``reprocess``, ``resend`` and ``cancel``: one id or a search, a reason, a
dry run."""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from router import cancel, replay
from router.cli.commands import acting
from router.cli.filters import add_filters, has_search, search_filter
from router.cli.output import (
    CommandError,
    add_json,
    message_ref,
    open_store,
    positive_int,
    print_json,
)
from router.store.database import Store
from router.store.queries import find_message_id, search_query
from router.store.schema import messages

MAX_BULK = 100_000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reprocess", help="run stored messages through their channel again")
    p.add_argument(
        "id",
        nargs="?",
        type=message_ref,
        help="one message (number or UUID); or use the search options",
    )
    p.add_argument(
        "--again",
        action="store_true",
        help="with a search: also messages already reprocessed (their copies ran already)",
    )
    _common(p)
    p.set_defaults(handler=reprocess)

    p = sub.add_parser("resend", help="queue deliveries' payloads again to their destinations")
    p.add_argument(
        "id", nargs="?", type=positive_int, help="one delivery id; or use the search options"
    )
    p.add_argument("--destination", help="with a search: only deliveries to this destination")
    p.add_argument(
        "--delivery-status",
        default="failed",
        choices=replay.FINISHED,
        help="with a search: deliveries in this status (default: failed); a delivery still "
        "to be sent is never resent (it would go twice)",
    )
    p.add_argument(
        "--again",
        action="store_true",
        help="with a search: also deliveries already resent (their copies went already)",
    )
    _common(p)
    p.set_defaults(handler=resend)

    p = sub.add_parser("cancel", help="stop queued or retrying deliveries: never sent")
    p.add_argument(
        "id", nargs="?", type=positive_int, help="one delivery id; or use the search options"
    )
    p.add_argument("--destination", help="with a search: only deliveries to this destination")
    _common(p)
    p.set_defaults(handler=cancel_deliveries)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    p.add_argument("--dry-run", action="store_true", help="list what would happen, change nothing")
    p.add_argument("--actor", help="who is doing it (default: the OS user)")
    p.add_argument(
        "--rate",
        type=float,
        default=replay.RATE,
        help=f"at most this many per second (default {replay.RATE:g}; 0: no limit)",
    )
    add_filters(p)
    add_json(p)


def reprocess(args: argparse.Namespace) -> int:
    store = open_store(args)
    who = acting(args, store, "support")
    ids = _message_ids(store, args)
    if args.id is None and not args.again:
        ids = _not_superseded(store, ids)
    return _run(
        args,
        ids,
        plan=lambda: replay.plan_reprocess(store, ids),
        act=lambda batch: replay.reprocess_many(
            store, batch, reason=args.reason, actor=who, again=args.id is not None or args.again
        ),
    )


def resend(args: argparse.Namespace) -> int:
    store = open_store(args)
    who = acting(args, store, "support")
    if args.id is not None:
        with store.read() as conn:
            if not replay.delivery_exists(conn, args.id):
                raise CommandError(f"no delivery {args.id}")
        ids = [args.id]
    else:
        chosen = _message_ids(store, args)
        with store.read() as conn:
            found = replay.deliveries_of(
                conn,
                chosen,
                status=args.delivery_status,
                destination=args.destination,
                again=args.again,
            )
        if found.synchronous:
            print(f"{found.synchronous} {replay.SYNCHRONOUS_LEFT_OUT}", file=sys.stderr)
        ids = found.ids
    return _run(
        args,
        ids,
        plan=lambda: replay.plan_resend(store, ids),
        act=lambda batch: replay.resend_many(
            store, batch, reason=args.reason, actor=who, again=args.id is not None or args.again
        ),
    )


def cancel_deliveries(args: argparse.Namespace) -> int:
    """One delivery, or those still to be sent of the messages a search finds."""
    store = open_store(args)
    who = acting(args, store, "support")
    if args.id is not None:
        with store.read() as conn:
            if not replay.delivery_exists(conn, args.id):
                raise CommandError(f"no delivery {args.id}")
        ids = [args.id]
    else:
        chosen = _message_ids(store, args)
        with store.read() as conn:
            ids = cancel.waiting_of(conn, chosen, destination=args.destination)
    return _run(
        args,
        ids,
        plan=lambda: cancel.plan_cancel(store, ids),
        act=lambda batch: cancel.cancel_many(store, batch, reason=args.reason, actor=who),
    )


def _not_superseded(store: Store, ids: list[int]) -> list[int]:
    """``ids`` less the messages a newer reprocessed copy stands for, saying which on stderr:
    reprocessing them again would send their payloads to the receivers once more."""
    with store.read() as conn:
        newer = replay.superseded(conn, ids)
    if newer:
        shown = ", ".join(f"#{old} as #{new}" for old, new in list(newer.items())[:10])
        more = ", ..." if len(newer) > 10 else ""
        print(
            f"skipped {len(newer)} message(s) already reprocessed ({shown}{more}); "
            "--again includes them",
            file=sys.stderr,
        )
    return [i for i in ids if i not in newer]


def _message_ids(store: Store, args: argparse.Namespace) -> list[int]:
    with store.read() as conn:
        if args.id is not None:
            found = find_message_id(conn, str(args.id))
            if found is None:
                raise CommandError(f"no message {args.id}")
            return [found]
        if not has_search(args):
            raise CommandError("give an id or at least one search option (e.g. --status error)")
        query = search_query(
            search_filter(args, default_limit=MAX_BULK), conn.dialect.name, (messages.c.id,)
        )
        return sorted(conn.scalars(query))


def _run(args: argparse.Namespace, ids: list[int], *, plan, act) -> int:  # type: ignore[no-untyped-def]
    if not args.reason.strip():
        raise CommandError("--reason must say why")
    if not ids:
        print("nothing matches")
        return 0
    if args.dry_run:
        results = plan()
        if args.json:
            print_json([r.__dict__ for r in results])
        else:
            for r in results:
                print(f"would {r.description}")
            print(f"dry run: {len(results)} item(s), nothing changed")
        return 0
    done: list[replay.ReplayResult] = []
    pace = replay.Pace(args.rate)
    with tqdm(total=len(ids), unit="msg", disable=len(ids) < 2 or args.json) as progress:
        for batch in pace.batches(ids):
            try:
                done.extend(act(batch))
            except (LookupError, replay.NotFinished) as exc:
                before = f" ({len(done)} done before it)" if done else ""
                raise CommandError(f"{exc}{before}") from exc
            progress.update(len(batch))
            time.sleep(pace.pause(len(batch)))
    if args.json:
        print_json([r.__dict__ for r in done])
    else:
        for r in done:
            print(r.description)
    return 0
