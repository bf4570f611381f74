"""CLI command ``jobs``: the DPS handoff jobs with their statistics and undelivered outputs,
and ``jobs close``: support's audited end for a failed job nothing else will end."""

from __future__ import annotations

import argparse
from typing import Any

from router.cli.commands import acting
from router.cli.output import (
    CommandError,
    add_json,
    engine_config,
    open_store,
    positive_int,
    print_json,
    print_table,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("jobs", help="DPS handoff jobs with their statistics; close a failed one")
    p.add_argument("--limit", type=positive_int, default=200)
    add_json(p)
    p.set_defaults(handler=jobs)
    actions = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    close = actions.add_parser(
        "close", help="close a failed job that no resend or answer will end (audited)"
    )
    close.add_argument("job_id", metavar="ID")
    close.add_argument("--reason", required=True, help="why (kept on the job and audited)")
    close.add_argument("--actor", help="who is doing it (default: the OS user)")
    add_json(close)
    close.set_defaults(handler=close_job)


def jobs(args: argparse.Namespace) -> int:
    from router.dps.jobs import list_jobs

    overdue_after = engine_config(args).dps.overdue_after
    rows = list_jobs(open_store(args), args.limit, overdue_after)
    if args.json:
        print_json(rows)
    else:
        print_table([_flat(r) for r in rows], list(COLUMNS))
    return 0


def close_job(args: argparse.Namespace) -> int:
    from router.dps import closing

    store = open_store(args)
    who = acting(args, store, "support")
    try:
        closed = closing.close_job(store, args.job_id, reason=args.reason, actor=who)
    except (closing.NoSuchJob, closing.NotClosable, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        print_json(closed)
    else:
        print(f"job {args.job_id} closed (was {closed['closed_from']})")
    return 0


COLUMNS = (
    "job_id",
    "practice",
    "filename",
    "received_at",
    "status",
    "patients",
    "only_on_gp",
    "only_on_pds",
    "differences",
    "undelivered",
    "error",
)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A job as one table line: its statistics spread, each undelivered output named by its
    destination and the delivery to resend (``--json`` gives their errors), and a closed
    job's reason in place of its error (``--json`` gives both); an overdue one says so."""
    undelivered = [f"{m['destination']} #{m['delivery_id']}" for m in row["undelivered"]]
    flat = {**row, **(row.get("statistics") or {}), "undelivered": ", ".join(undelivered) or None}
    if row["status"] == "closed":
        from router.dps.closing import closure

        flat["error"] = closure(row)
    elif row["overdue"]:
        flat["error"] = f"overdue: no answer from DPS since {row['updated_at']:%Y-%m-%d %H:%M}"
    return flat
