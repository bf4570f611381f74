"""CLI command ``jobs``: the DPS handoff jobs with their statistics and undelivered outputs."""

from __future__ import annotations

import argparse
from typing import Any

from router.cli.output import add_json, open_store, positive_int, print_json, print_table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("jobs", help="DPS handoff jobs with their statistics")
    p.add_argument("--limit", type=positive_int, default=200)
    add_json(p)
    p.set_defaults(handler=jobs)


def jobs(args: argparse.Namespace) -> int:
    from router.dps.jobs import list_jobs

    rows = list_jobs(open_store(args), args.limit)
    if args.json:
        print_json(rows)
    else:
        print_table([_flat(r) for r in rows], list(COLUMNS))
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
    destination and the delivery to resend (``--json`` gives their errors)."""
    undelivered = [f"{m['destination']} #{m['delivery_id']}" for m in row["undelivered"]]
    return {**row, **(row.get("statistics") or {}), "undelivered": ", ".join(undelivered) or None}
