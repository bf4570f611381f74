"""``python run.py <command>``: the engine's command line (the ``tie`` script)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from router.cli import (
    admin_commands,
    audit_commands,
    commands,
    directory_commands,
    governance_commands,
    job_commands,
    replay_commands,
    user_commands,
)
from router.cli.output import STORE_PROBLEMS, CommandError, store_problem
from router.store.migrate import SchemaTooNew


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tie", description="tie integration engine")
    parser.add_argument("--config", help="engine.yaml (default: $TIE_CONFIG or config/engine.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    replay_commands.register(sub)
    admin_commands.register(sub)
    audit_commands.register(sub)
    governance_commands.register(sub)  # after admin_commands: it adds to ``channel``
    directory_commands.register(sub)
    job_commands.register(sub)
    user_commands.register(sub)
    _accept_config_after_command(parser)
    return parser


def _accept_config_after_command(parser: argparse.ArgumentParser) -> None:
    """``run.py serve --config PATH`` works as well as ``run.py --config PATH serve``.

    The default is suppressed so that a command without the option keeps the top-level value.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.add_argument("--config", default=argparse.SUPPRESS, help="engine.yaml")
                _accept_config_after_command(command)


def _handle(args: argparse.Namespace) -> int:
    """Run the command; one that records an actor (``--actor``, default the OS user) has
    every audit event it writes keep the OS user who ran it too (detail ``os_user``)."""
    if not hasattr(args, "actor"):
        return int(args.handler(args) or 0)
    from router.audit import run_by

    with run_by(commands.os_user()):
        return int(args.handler(args) or 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request at INFO: the FHIR routes and the proxy make one per message.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code = _handle(args)
        sys.stdout.flush()  # here, where a reader that went away is caught
        return code
    except BrokenPipeError:
        # ``run.py messages | head``: the reader has what it wanted. Quiet, with the shell's
        # code for SIGPIPE; stdout goes to /dev/null so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except SchemaTooNew as exc:  # a downgrade, or an older node on a newer node's store
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except STORE_PROBLEMS as exc:
        if args.verbose:
            raise
        print(f"error: {store_problem(args, exc)} (-v for details)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
