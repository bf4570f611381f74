"""``run.py``'s commands, driven as an operator would, against a store on SQLite and PostgreSQL.

Search and replay data is seeded the way sources store it (``write_inbound``)
and processed by the real ``Processor``; ``send``, ``show`` and ``resend`` run
against a live engine with a python-hl7 laboratory downstream.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text
from tie_testing import Hl7Receiver, RunningEngine, free_ports, wait_until

from router import audit
from router.cli import main
from router.config import TRANSPORTS, load_channels, load_engine
from router.connectors.hl7_inbound import hl7_inbound
from router.engine import compile_channels, open_store
from router.processing import Processor
from router.store.database import Store
from router.store.inbound import Inbound, utcnow, write_inbound
from router.store.migrate import alembic_config, upgrade
from router.store.queries import PREVIEW
from router.store.schema import audit_events, deliveries, messages

ROOT = Path(__file__).resolve().parents[2]
OS_USER = f"{getpass.getuser()}@{socket.gethostname()}"


def oml(control_id: str, placer: str, surname: str = "JONES") -> bytes:
    return (
        f"MSH|^~\\&|EPR|RXX|LAB|RYY|20240101120000||OML^O21^OML_O21|{control_id}|P|2.5.1\r"
        f"PID|1||9434765919^^^NHS^NH||{surname}^JOHN\r"
        f"ORC|NW|{placer}\r"
        f"OBR|1|{placer}||FBC^Full blood count^L"
    ).encode()


def adt(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|PAS|RXX|EPR|RXX|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
        "PID|1||9434765919^^^NHS^NH||JONES^JOHN"
    ).encode()


def oru(control_id: str, placer: str, surname: str) -> bytes:
    return (
        f"MSH|^~\\&|LAB|RYY|EPR|RXX|20240101120000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
        f"PID|1||9434765919^^^NHS^NH||{surname}^JOHN\r"
        f"OBR|1|{placer}|FILL-{placer}|FBC^Full blood count^L\r"
        "OBX|1|NM|HB^Haemoglobin^L||130|g/L"
    ).encode()


# --- workspace: engine.yaml and channels in a tmp folder ------------------------------------


@dataclass
class Workspace:
    config: Path
    orders_port: int
    results_port: int

    def store(self) -> Store:
        store = open_store(load_engine(self.config))
        upgrade(store)
        return store


def write_workspace(root: Path, store_url: str, lab_port: int) -> Workspace:
    orders_port, results_port = free_ports(2)
    for folder in ("channels", "mappings"):
        (root / folder).mkdir(exist_ok=True)
    engine = {
        "store": store_url,
        "channels": "channels",
        "mappings": "mappings",
        "http": {"host": "127.0.0.1", "port": 0},
        "node": "cli-test",
        "dispatch": {"poll_interval": "100ms", "lease": "30s"},
    }
    orders = {
        "name": "orders",
        "source": {"mllp": {"host": "127.0.0.1", "port": orders_port}},
        "correlate": {"placer_order": "ORC-2.1"},
        "filter": [{"field": "MSH-9.1", "in": ["OML", "ORM"]}],
        "destinations": {
            "lab": {
                "mllp": {"host": "127.0.0.1", "port": lab_port},
                "retry": {"max_attempts": 3, "backoff": ["100ms", "1s"]},
            }
        },
    }
    results = {
        "name": "results",
        "source": {"mllp": {"host": "127.0.0.1", "port": results_port}},
        "correlate": {"placer_order": "OBR-2.1"},
        "filter": [{"field": "MSH-9.1", "equals": "ORU"}],
        "destinations": {},
    }
    (root / "engine.yaml").write_text(yaml.safe_dump(engine))
    for channel in (orders, results):
        (root / "channels" / f"{channel['name']}.yaml").write_text(yaml.safe_dump(channel))
    return Workspace(root / "engine.yaml", orders_port, results_port)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    """Run ``run.py`` in-process: ``cli(config, *args) -> Run``."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    monkeypatch.delenv("TIE_CONFIG", raising=False)
    monkeypatch.delenv("TIE_TOKEN", raising=False)

    def run(config: Path, *args: str) -> Run:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def workspace(tmp_path: Path, store_url: str) -> Workspace:
    return write_workspace(tmp_path, store_url, lab_port=free_ports(1)[0])


@dataclass
class Seeded:
    workspace: Workspace
    store: Store
    ids: dict[str, int]
    processor: Processor


@pytest.fixture
def seeded(workspace: Workspace) -> Iterator[Seeded]:
    """Five messages of different channels, types, times and outcomes, then processed."""
    config = load_engine(workspace.config)
    store = workspace.store()
    now = utcnow()
    items = {
        "ORD-1": hl7_inbound(
            "orders", oml("ORD-1", "PLACER-1", "SMITH"), received_at=now - timedelta(days=3)
        ),
        "ORD-2": hl7_inbound(
            "orders", oml("ORD-2", "PLACER-2"), received_at=now - timedelta(hours=2)
        ),
        "ADT-1": hl7_inbound("orders", adt("ADT-1"), received_at=now - timedelta(hours=1)),
        "RES-1": hl7_inbound(
            "results", oru("RES-1", "PLACER-1", "SMITH"), received_at=now - timedelta(minutes=10)
        ),
        "JUNK": Inbound(
            "orders",
            b"\x00\x01 not hl7",
            status="error",
            error="rejected: no MSH segment",
            received_at=now - timedelta(minutes=5),
        ),
    }
    with store.begin() as conn:
        write_inbound(conn, list(items.values()))
    with store.read() as conn:
        by_uuid = {r.uuid: r.id for r in conn.execute(select(messages.c.uuid, messages.c.id))}
    processor = Processor(store, compile_channels(config, load_channels(config.channels)))
    assert processor.run_once() == 4
    yield Seeded(workspace, store, {k: by_uuid[v.uuid] for k, v in items.items()}, processor)
    store.dispose()


def count(store: Store, table: Any, *where: Any) -> int:
    with store.read() as conn:
        return conn.scalar(select(func.count()).select_from(table).where(*where)) or 0


def audit_log(store: Store, action: str) -> list[Any]:
    with store.read() as conn:
        return list(
            conn.execute(
                select(audit_events)
                .where(audit_events.c.action == action)
                .order_by(audit_events.c.id)
            )
        )


# --- check ------------------------------------------------------------------------------


def test_check_accepts_the_bundled_configuration(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--config",
            str(ROOT / "config/engine.yaml"),
            "check",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "ok  lab-orders" in result.stdout
    assert "ok  lab-results" in result.stdout


BROKEN = {
    "unknown key": (
        "name: broken\nsource: {mllp: {port: 2575, hots: localhost}}\n",
        "source.mllp.hots: unknown key: did you mean host? "
        "(keys here: host, port, max_frame, idle_timeout, max_connections, tls)",
    ),
    "bad duration": (
        "name: broken\nsource: {mllp: {port: 2575}}\ndestinations:\n  lab:\n"
        "    mllp: {host: 127.0.0.1, port: 2576}\n    retry: {backoff: [1x, 5m]}\n",
        "destinations.lab.retry.backoff[0]: '1x' is not a duration",
    ),
    "bad field path": (
        "name: broken\nsource: {mllp: {port: 2575}}\nfilter:\n  - field: MSH-x\n    equals: ORU\n",
        "filter[0].field: bad field path 'MSH-x'",
    ),
    "missing source": ("name: broken\ndestinations: {}\n", "source: missing: this key is required"),
    "two transports": (
        "name: broken\nsource: {mllp: {port: 2575}}\ndestinations:\n  lab:\n"
        "    mllp: {host: 127.0.0.1, port: 2576}\n    file: {directory: out}\n",
        f"destinations.lab: a destination needs exactly one of {', '.join(TRANSPORTS)} "
        "(found mllp, file)",
    ),
    "invalid yaml": (
        "name: broken\nsource: {mllp: {port: 2575}\ndestinations: {}\n",
        "line 3, column 1: invalid YAML",
    ),
    "name is not the file name": (
        "name: other\nsource: {mllp: {port: 2575}}\n",
        "name: must match the file name 'broken'",
    ),
    "channel destination to a missing channel": (
        "name: broken\nsource: {mllp: {port: 2575}}\ndestinations:\n"
        "  onward: {channel: {channel: nowhere}}\n",
        "destinations.onward.channel.channel: no channel named 'nowhere'",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_names_file_key_path_and_problem(tmp_path, cli, case):
    workspace = write_workspace(tmp_path, f"sqlite:///{tmp_path / 'tie.db'}", lab_port=2576)
    broken = tmp_path / "channels" / "broken.yaml"
    content, expected = BROKEN[case]
    broken.write_text(content)

    run = cli(workspace.config, "check")

    assert run.code == 2
    assert f"{broken}: {expected}" in run.err
    assert "orders.yaml" not in run.err, "only the broken file is blamed"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("nosuch",), "error: no channel named 'nosuch'"),
        (("orders", "nosuch", "other"), "error: no channel named 'nosuch', 'other'"),
        (("--cases", "nowhere"), "error: --cases nowhere: not a folder"),
    ],
)
def test_check_refuses_a_channel_or_case_folder_that_does_not_exist(tmp_path, cli, args, problem):
    """A mistyped name ran no test case and passed."""
    workspace = write_workspace(tmp_path, f"sqlite:///{tmp_path / 'tie.db'}", lab_port=2576)
    run = cli(workspace.config, "check", *args)
    assert run.code == 2
    assert run.err == problem + "\n"


def test_check_names_engine_yaml_problems(tmp_path, cli):
    config = tmp_path / "engine.yaml"
    config.write_text("store: sqlite:///tie.db\nchannels: channels\nhttp: {prot: 8080}\n")
    run = cli(config, "check")
    assert run.code == 2
    assert f"{config}: http.prot: unknown key: did you mean port? (keys here: host, port)" in (
        run.err
    )


def test_paths_in_engine_yaml_are_relative_to_its_folder(tmp_path, cli, monkeypatch):
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    write_workspace(tmp_path / "conf", "sqlite:///unused.db", lab_port=2576)
    config = conf / "engine.yaml"
    config.write_text(
        "store: sqlite:///../data/relative.db\nchannels: channels\nmappings: mappings\n"
    )
    monkeypatch.chdir(elsewhere)

    checked = cli(config, "check")
    upgraded = cli(config, "db", "upgrade")

    assert checked.code == 0, checked.err
    assert "ok  orders" in checked.out and "ok  results" in checked.out
    assert upgraded.code == 0, upgraded.err
    assert (tmp_path / "data" / "relative.db").stat().st_size > 0
    assert list(elsewhere.iterdir()) == []


def test_serve_names_the_channel_whose_port_is_taken(tmp_path):
    workspace = write_workspace(tmp_path, f"sqlite:///{tmp_path / 'tie.db'}", lab_port=2576)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", workspace.orders_port))
        holder.listen()
        result = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), "--config", str(workspace.config), "serve"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert (
        f"error: channel orders cannot listen on 127.0.0.1:{workspace.orders_port}: "
        "Address already in use"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    # What had started is stopped: no worker is reported dead (an ERROR a night shift chases).
    assert "ERROR" not in result.stderr


def test_serve_names_the_http_port_when_it_is_taken(tmp_path):
    """uvicorn would log its own line and exit 3; the engine says which setting to change."""
    workspace = write_workspace(tmp_path, f"sqlite:///{tmp_path / 'tie.db'}", lab_port=2576)
    engine = yaml.safe_load(workspace.config.read_text())
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        engine["http"]["port"] = port
        workspace.config.write_text(yaml.safe_dump(engine))
        result = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), "--config", str(workspace.config), "serve"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert (
        f"error: HTTP cannot listen on 127.0.0.1:{port}: Address already in use "
        "(http.host and http.port in engine.yaml)"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert "ERROR" not in result.stderr


# --- db upgrade -------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_on_an_empty_database(tmp_path, store_url, cli):
    if store_url.startswith("sqlite"):
        (tmp_path / "tie.db").touch()
    workspace = write_workspace(tmp_path, store_url, lab_port=2576)
    heads = set(ScriptDirectory.from_config(alembic_config(store_url)).get_heads())

    first = cli(workspace.config, "db", "upgrade")
    again = cli(workspace.config, "db", "upgrade")

    assert (first.code, again.code) == (0, 0)
    assert "latest schema" in first.out
    engine = create_engine(store_url)
    try:
        inspector = inspect(engine)
        tables = set(inspector.get_table_names())
        schema = inspector.default_schema_name
        with engine.connect() as conn:
            versions = set(conn.scalars(text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()
    assert {"messages", "deliveries", "attempts", "correlations", "audit_events"} <= tables
    assert versions == heads  # every migration branch at its head
    if store_url.startswith("postgresql"):
        assert schema != "public", "the upgrade must land in the schema named by the URL"


def test_db_upgrade_names_the_migrations_it_ran_then_that_none_were_needed(
    tmp_path, empty_store_url, cli
):
    """An operator upgrading a store the first version made is told what changed."""
    workspace = write_workspace(tmp_path, empty_store_url, lab_port=2576)
    old = Store(empty_store_url)
    try:
        upgrade(old, "0001")
    finally:
        old.dispose()
    script = ScriptDirectory.from_config(alembic_config(empty_store_url))
    later = {s.revision for s in script.walk_revisions()} - {"0001"}

    first = cli(workspace.config, "db", "upgrade")
    again = cli(workspace.config, "db", "upgrade")

    assert (first.code, again.code) == (0, 0)
    lines = first.out.splitlines()
    assert lines[0] == f"applied {len(later)} migration(s):"
    assert {line.split()[0] for line in lines[1:-1]} == later
    assert "  replay_0001" in first.out
    assert "Failed deliveries that already have a resent copy become" in first.out
    assert lines[-1] == "database is at the latest schema"
    assert again.out == "database is at the latest schema: nothing to do\n"


def test_a_store_newer_than_this_tie_is_refused_in_one_line(tmp_path, store_url, cli):
    """A downgrade, or an older node on a store a newer node migrated: every command and
    ``serve`` refuse with the reason and what to do, not alembic's traceback."""
    workspace = write_workspace(tmp_path, store_url, lab_port=2576)
    assert cli(workspace.config, "db", "upgrade").code == 0
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('future_0001')"))
    finally:
        engine.dispose()

    runs = [cli(workspace.config, *command) for command in (("db", "upgrade"), ("messages",))]
    served = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--config", str(workspace.config), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    for code, err in [(r.code, r.err) for r in runs] + [(served.returncode, served.stderr)]:
        assert code == 1
        refusal = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(refusal) == 1, err
        assert "newer than this version of tie" in refusal[0]
        assert "future_0001" in refusal[0]
        assert "Traceback" not in err


@pytest.mark.parametrize("command", [("messages",), ("show", "1"), ("db", "upgrade")])
def test_an_unreachable_store_is_one_line_without_the_password(tmp_path, cli, command):
    [port] = free_ports(1)
    config = tmp_path / "engine.yaml"
    config.write_text(f"store: postgresql+psycopg://tie:s3cret@127.0.0.1:{port}/tie\n")

    run = cli(config, *command)

    assert run.code == 1
    assert run.err.startswith(
        f"error: store postgresql+psycopg://tie:***@127.0.0.1:{port}/tie (store in {config}): "
    )
    assert len(run.err.splitlines()) == 1
    assert "s3cret" not in run.err


def test_an_unreachable_store_from_tie_store_says_so(tmp_path, cli, monkeypatch):
    """TIE_STORE overrides engine.yaml's store: the line says which one to fix."""
    [port] = free_ports(1)
    config = tmp_path / "engine.yaml"
    config.write_text("store: sqlite:///tie.db\n")
    monkeypatch.setenv("TIE_STORE", f"postgresql+psycopg://tie@127.0.0.1:{port}/tie")

    run = cli(config, "messages")

    assert run.code == 1
    assert run.err.startswith(
        f"error: store postgresql+psycopg://tie@127.0.0.1:{port}/tie (TIE_STORE): "
    )


# --- messages and show ------------------------------------------------------------------


def test_messages_filters(seeded, cli):
    ids = seeded.ids
    name = {v: k for k, v in ids.items()}
    day_ago = (utcnow() - timedelta(days=1)).isoformat()

    def found(*args: str) -> list[str]:
        run = cli(seeded.workspace.config, "messages", "--json", *args)
        assert run.code == 0, run.err
        return [name[row["id"]] for row in run.json()]

    assert found() == ["JUNK", "RES-1", "ADT-1", "ORD-2", "ORD-1"]
    assert found("--channel", "results") == ["RES-1"]
    assert found("--status", "filtered") == ["ADT-1"]
    assert found("--status", "error") == ["JUNK"]
    assert found("--channel", "orders", "--status", "processed") == ["ORD-2", "ORD-1"]
    assert found("--since", "1d") == ["JUNK", "RES-1", "ADT-1", "ORD-2"]
    assert found("--until", day_ago) == ["ORD-1"]
    assert found("--since", "3h", "--until", "30m") == ["ADT-1", "ORD-2"]
    assert found("--type", "OML") == ["ORD-2", "ORD-1"]
    assert found("--type", "ORU^R01") == ["RES-1"]
    assert found("--control-id", "ORD-2") == ["ORD-2"]
    assert found("--key", "PLACER-1") == ["RES-1", "ORD-1"]
    assert found("--text", "SMITH") == ["RES-1"], "text search looks back one day by default"
    assert found("--text", "SMITH", "--since", "7d") == ["RES-1", "ORD-1"]
    assert found("--limit", "2") == ["JUNK", "RES-1"]
    assert found("--limit", "2", "--before", str(ids["RES-1"])) == ["ADT-1", "ORD-2"]

    table = cli(seeded.workspace.config, "messages", "--channel", "orders", "--status", "error")
    assert table.code == 0
    header, *rows = table.out.splitlines()
    assert header.split() == [
        "ID",
        "RECEIVED_AT",
        "CHANNEL",
        "STATUS",
        "MESSAGE_TYPE",
        "CONTROL_ID",
        "DELIVERIES",
        "ERROR",
    ]
    assert len(rows) == 1
    assert rows[0].split()[0] == str(ids["JUNK"])
    assert "rejected: no MSH segment" in rows[0]


def test_messages_finds_and_shows_the_deliveries_that_failed(seeded, cli):
    """A message whose delivery failed is ``processed``, with no error of its own: the
    listing says how its deliveries stand, and --delivery-status finds those that failed,
    so the operator woken at 3 a.m. need not open every message to find them."""
    ids = seeded.ids
    name = {v: k for k, v in ids.items()}
    with seeded.store.begin() as conn:
        for ref, status in (("ORD-1", "failed"), ("ORD-2", "sent")):
            conn.execute(
                deliveries.update()
                .where(deliveries.c.message_id == ids[ref])
                .values(status=status, last_error="lab down" if status == "failed" else None)
            )

    run = cli(seeded.workspace.config, "messages", "--json", "--delivery-status", "failed")
    assert run.code == 0, run.err
    assert [(name[r["id"]], r["deliveries"]) for r in run.json()] == [("ORD-1", {"failed": 1})]
    table = cli(seeded.workspace.config, "messages", "--channel", "orders")
    header, *rows = table.out.splitlines()
    cells = {r.split()[0]: r for r in rows}
    start = header.index("DELIVERIES")
    assert cells[str(ids["ORD-1"])][start:].startswith("failed 1 ")
    assert cells[str(ids["ORD-2"])][start:].startswith("sent 1 ")
    assert cells[str(ids["ADT-1"])][start:].startswith("- ")
    with pytest.raises(SystemExit):
        cli(seeded.workspace.config, "messages", "--delivery-status", "faild")


def test_messages_rejects_a_time_that_is_neither_iso_nor_an_age(seeded, cli):
    with pytest.raises(SystemExit) as exit_:
        cli(seeded.workspace.config, "messages", "--since", "yesterday-ish")
    assert exit_.value.code == 2


@pytest.mark.parametrize(
    ("command", "option", "valid"),
    [
        (("messages",), ("--status", "done"), "'received', 'validating', 'processed'"),
        (("messages",), ("--status", "Error"), "'filtered', 'error'"),
        (
            ("resend", "--channel", "orders", "--reason", "x", "--dry-run"),
            ("--delivery-status", "faild"),
            "'failed', 'sent', 'resent', 'cancelled'",
        ),
    ],
)
def test_an_unknown_status_is_refused_with_the_valid_ones(
    tmp_path, cli, capsys, command, option, valid
):
    """``--status failed`` (a delivery status) matched nothing: it read as "nothing failed"."""
    with pytest.raises(SystemExit) as exit_:
        cli(tmp_path / "engine.yaml", *command, *option)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{option[1]}'" in err
    assert valid in err


@pytest.mark.parametrize(
    "command", [("messages",), ("reprocess", "--reason", "x", "--dry-run")], ids=str
)
def test_a_delivery_status_given_as_status_points_to_delivery_status(
    tmp_path, cli, capsys, command
):
    """``messages --status failed`` is what support types at 3 a.m. for failed deliveries:
    the refusal names the option that finds them, not only the message statuses."""
    with pytest.raises(SystemExit) as exit_:
        cli(tmp_path / "engine.yaml", *command, "--status", "failed")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --status: 'failed' is a delivery status, not a message's" in err
    assert "run.py messages --delivery-status failed" in err
    assert "'received', 'validating', 'processed', 'filtered', 'error'" in err


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("messages", "--limit", "0"), "argument --limit: '0' must be 1 or more"),
        (("messages", "--limit", "-1"), "argument --limit: '-1' must be 1 or more"),
        (("messages", "--before", "x"), "argument --before: 'x' is not a whole number"),
        (
            ("show", "99999999999999999999"),
            "argument id: '99999999999999999999' is beyond any number in the store",
        ),
        (
            ("reprocess", "urn:tie:message:99999999999999999999", "--reason", "x"),
            "argument id: '99999999999999999999' is beyond any number in the store",
        ),
        (("resend", "0", "--reason", "x"), "argument id: '0' must be 1 or more"),
        (("send", "orders", "a.hl7", "--timeout", "0"), "'0' must be more than 0 seconds"),
    ],
)
def test_numbers_out_of_range_are_refused_before_the_store_sees_them(
    tmp_path, cli, capsys, args, problem
):
    """``--limit -1`` listed everything on SQLite and was a traceback on PostgreSQL; a
    number beyond BIGINT was an OverflowError; ``--limit 0`` silently meant 50."""
    with pytest.raises(SystemExit) as exit_:
        cli(tmp_path / "engine.yaml", *args)
    assert exit_.value.code == 2
    assert problem in capsys.readouterr().err


def test_prune_without_any_retention_policy_says_so(workspace, cli):
    run = cli(workspace.config, "prune", "--dry-run")
    assert run.code == 0
    assert run.err == (
        "no channel has a retention policy, so nothing is ever pruned: give a channel "
        "retention: {keep: 90d} (docs/channels.md#retention)\n"
    )


# What only ``serve``, ``send`` and ``check`` need: 2.4 s of CPU before each query at 3 a.m.
ENGINE_MODULES = ("router.engine", "router.gateway", "fastapi", "uvicorn")
STORE_COMMANDS = [
    ["db", "upgrade"],
    ["messages", "--json"],
    ["show", "1", "--json"],
    ["reprocess", "1", "--reason", "check", "--dry-run"],
    ["resend", "--channel", "orders", "--reason", "check", "--dry-run"],
    ["channel", "list"],
    ["channel", "pause", "orders"],
    ["channel", "resume", "orders"],
    ["audit", "verify"],
    ["audit", "list"],
    ["prune", "--dry-run"],
    ["holds", "list"],
    ["endpoints", "list"],
    ["jobs"],
    ["users", "list"],
]
_IMPORT_PROBE = """
import json, sys
from router.cli import main
config, commands, report = sys.argv[1], json.loads(sys.argv[2]), []
for command in commands:
    code = main(["--config", config, *command])
    report.append([command, code, [m for m in json.loads(sys.argv[3]) if m in sys.modules]])
print(json.dumps(report), file=open(sys.argv[4], "w"))
"""


def test_store_commands_do_not_import_the_engine(tmp_path):
    """A support engineer's ``messages``/``show`` at 3 a.m. opens the store, not the gateway,
    FastAPI and every connector: one fresh process runs them all in turn, as run.py would."""
    workspace = write_workspace(tmp_path, f"sqlite:///{tmp_path / 'tie.db'}", lab_port=2576)
    store = workspace.store()
    with store.begin() as conn:
        write_inbound(conn, [hl7_inbound("orders", adt("ADT-1"))])
    store.dispose()
    report = tmp_path / "report.json"
    args = [str(workspace.config), json.dumps(STORE_COMMANDS), json.dumps(ENGINE_MODULES)]
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, *args, str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text()) == [[c, 0, []] for c in STORE_COMMANDS]


@pytest.mark.parametrize("args", [("messages", "--json"), ("messages",)])
def test_a_reader_that_went_away_is_not_a_traceback(tmp_path, args):
    """``run.py messages | head``: head exits, and the write finds the pipe closed."""
    workspace = write_workspace(tmp_path, f"sqlite:///{tmp_path / 'tie.db'}", lab_port=2576)
    workspace.store().dispose()  # migrated: the first command on a new store logs that it did
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the command writes a byte
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), "--config", str(workspace.config), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_messages_shows_the_last_line_of_a_traceback(workspace, cli):
    """Every mapping failure began 'Traceback (most recent call last): File ...'."""
    error = (
        "Traceback (most recent call last):\n"
        '  File "/srv/tie/mappings/wards.py", line 12, in normalise\n'
        "    raise ValueError('ward mapping broken')\n"
        "ValueError: ward mapping broken\n"
    )
    store = workspace.store()
    try:
        with store.begin() as conn:
            write_inbound(conn, [Inbound("orders", oml("E-1", "P-1"), status="error", error=error)])
    finally:
        store.dispose()

    table = cli(workspace.config, "messages")
    as_json = cli(workspace.config, "messages", "--json")

    assert table.out.splitlines()[1].endswith("  ValueError: ward mapping broken")
    assert as_json.json()[0]["error"] == error, "JSON keeps the whole traceback"


def test_messages_and_show_never_write_a_senders_control_characters(workspace, cli):
    hostile = "X\x1b[2J\x1b]0;owned\x07\x9b2J"  # C0 and C1 (CSI) escapes
    raw = (
        f"MSH|^~\\&|EPR|RXX|LAB|RYY|20240101||ADT^A01|{hostile}|P|2.5||||||8859/1\r"
        "PID|1||1||M\xdcLLER^J\xd6RG\x1b[8m\tHIDDEN"
    ).encode("latin-1")
    store = workspace.store()
    try:
        with store.begin() as conn:
            write_inbound(conn, [hl7_inbound("orders", raw)])
        with store.read() as conn:
            message_id = conn.scalar(select(messages.c.id))
    finally:
        store.dispose()

    table = cli(workspace.config, "messages")
    detail = cli(workspace.config, "show", str(message_id))

    assert table.code == detail.code == 0
    for out in (table.out, detail.out):
        assert not any(c in out for c in "\x1b\x07\x9b"), out
        assert "X\\x1b[2J\\x1b]0;owned\\x07\\x9b2J" in out
    assert "PID|1||1||M\u00dcLLER^J\u00d6RG\\x1b[8m\tHIDDEN" in detail.out, "MSH-18 decodes it"
    json_out = cli(workspace.config, "show", str(message_id), "--json")
    assert json_out.json()["control_id"] == hostile, "JSON keeps the value, escaped by JSON"


@dataclass
class Live:
    workspace: Workspace
    engine: RunningEngine
    lab: Hl7Receiver
    rejected: set[str]


@pytest.fixture
def live(tmp_path: Path, store_url: str) -> Iterator[Live]:
    """The engine running from a tmp engine.yaml; the lab answers AR to MSH-10s in ``rejected``."""
    rejected: set[str] = set()
    lab = Hl7Receiver(answer=lambda m: "AR" if str(m.segment("MSH")[10]) in rejected else "AA")
    workspace = write_workspace(tmp_path, store_url, lab.port)
    config = load_engine(workspace.config)
    engine = RunningEngine(config, load_channels(config.channels))
    try:
        yield Live(workspace, engine, lab, rejected)
    finally:
        engine.stop()
        lab.stop()


def delivery_statuses(store: Store, control_id: str) -> list[str]:
    with store.read() as conn:
        return list(
            conn.scalars(
                select(deliveries.c.status)
                .join(messages, messages.c.id == deliveries.c.message_id)
                .where(messages.c.control_id == control_id)
                .order_by(deliveries.c.id)
            )
        )


def send_file(live: Live, cli: Callable[..., Run], name: str, *payloads: bytes) -> Run:
    path = live.workspace.config.parent / name
    path.write_bytes(b"\n".join(p.replace(b"\r", b"\n") for p in payloads) + b"\n")
    return cli(live.workspace.config, "send", "orders", str(path), "--json")


# --- send -------------------------------------------------------------------------------


def test_send_splits_a_file_and_prints_the_acks(live, cli, tmp_path):
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"\r\n".join([oml("SEND-1", "P-1"), oml("SEND-2", "P-2"), adt("SEND-3")]))

    table = cli(live.workspace.config, "send", "orders", str(batch))

    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split() == ["FILE", "CONTROL_ID", "ACK", "TEXT"]
    assert [row.split()[1:3] for row in rows] == [
        ["SEND-1", "AA"],
        ["SEND-2", "AA"],
        ["SEND-3", "AA"],
    ]
    single = tmp_path / "single.hl7"
    single.write_bytes(oml("SEND-4", "P-4"))
    as_json = cli(live.workspace.config, "send", "orders", str(single), "--json")
    assert as_json.code == 0
    [answer] = as_json.json()
    assert (answer["file"], answer["control_id"], answer["ack"]) == (str(single), "SEND-4", "AA")
    assert "MSA|AA|SEND-4" in answer["raw_ack"]
    with live.engine.store.read() as conn:
        stored = set(conn.scalars(select(messages.c.control_id)))
    assert stored == {"SEND-1", "SEND-2", "SEND-3", "SEND-4"}
    wait_until(lambda: sorted(live.lab.control_ids()) == ["SEND-1", "SEND-2", "SEND-4"])


def test_send_exits_non_zero_when_a_message_is_not_accepted(live, cli):
    unreadable = oml("", "P-9")
    run = send_file(live, cli, "mixed.hl7", oml("GOOD-1", "P-1"), unreadable)

    assert run.code == 1
    good, bad = run.json()
    assert (good["control_id"], good["ack"]) == ("GOOD-1", "AA")
    assert bad["ack"] == "AR"
    assert "MSH-10" in bad["text"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"PID|1||123\nnot a message\n", "not HL7 v2: segment before the first MSH"),
        (b"\n\n", "no message"),
        (None, "No such file or directory"),
    ],
    ids=["junk", "empty", "missing"],
)
def test_send_names_a_file_that_holds_no_message(live, cli, tmp_path, content, problem):
    path = tmp_path / "bad.hl7"
    if content is not None:
        path.write_bytes(content)

    run = cli(live.workspace.config, "send", "orders", str(path))

    assert run.code == 1
    assert f"{path}: {problem}" in run.err
    assert count(live.engine.store, messages) == 0


def test_send_says_so_when_the_engine_is_not_listening(workspace, cli, tmp_path):
    path = tmp_path / "one.hl7"
    path.write_bytes(oml("LONELY-1", "P-1"))

    run = cli(workspace.config, "send", "orders", str(path))

    assert run.code == 1
    assert f"channel orders does not answer on 127.0.0.1:{workspace.orders_port}" in run.err


def test_send_refuses_a_source_it_would_bypass(workspace, cli, tmp_path):
    """Stored straight into a folder-polled (or FHIR, MESH) channel, a file would skip the
    source's own protocol: send says how that channel's senders reach it, and stores nothing."""
    (tmp_path / "channels" / "drop.yaml").write_text(
        "name: drop\nsource: {file: {directory: ../inbox}}\n"
    )
    path = tmp_path / "one.hl7"
    path.write_bytes(oml("DROP-1", "P-1"))

    run = cli(workspace.config, "send", "drop", str(path))

    assert run.code == 2
    assert run.err == (
        "error: channel drop has a file source: run.py send speaks MLLP to an mllp source and "
        f"stores into a channel source; put the files in {tmp_path / 'inbox'}\n"
    )
    store = workspace.store()
    try:
        with store.read() as conn:
            assert conn.execute(select(func.count()).select_from(messages)).scalar() == 0
    finally:
        store.dispose()


def test_send_keeps_the_answered_rows_when_the_peer_resets_the_connection(workspace, cli):
    """A peer that accepts SEND-1, then resets the connection on SEND-2: the operator must
    still see that SEND-1 was accepted (and that SEND-3 was never sent)."""
    listener = socket.create_server(("127.0.0.1", workspace.orders_port))

    def accept_one_then_reset() -> None:
        conn, _ = listener.accept()
        with conn:
            for answer in (b"MSH|^~\\&|LAB|RYY|EPR|RXX|2024||ACK|A1|P|2.5.1\rMSA|AA|SEND-1", None):
                received = b""
                while not received.endswith(b"\x1c\r"):
                    received += conn.recv(65536)
                if answer is not None:
                    conn.sendall(b"\x0b" + answer + b"\x1c\r")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    peer = threading.Thread(target=accept_one_then_reset)
    peer.start()
    path = workspace.config.parent / "three.hl7"
    path.write_bytes(b"\r\n".join([oml("SEND-1", "P-1"), oml("SEND-2", "P-2"), adt("SEND-3")]))
    try:
        run = cli(workspace.config, "send", "orders", str(path), "--json")
    finally:
        peer.join()
        listener.close()

    assert run.code == 1
    rows = run.json()
    assert [(r["control_id"], r["ack"]) for r in rows] == [("SEND-1", "AA"), ("SEND-2", None)]
    assert rows[1]["text"].startswith("connection lost: ")
    assert rows[1]["text"].endswith("; the rest were not sent")


# --- show -------------------------------------------------------------------------------


def test_show_prints_message_deliveries_and_attempts_and_audits_the_view(live, cli):
    assert send_file(live, cli, "one.hl7", oml("SHOW-1", "PLACER-7")).code == 0
    store = live.engine.store
    wait_until(lambda: delivery_statuses(store, "SHOW-1") == ["sent"])
    with store.read() as conn:
        row = conn.execute(
            select(messages.c.id, messages.c.uuid).where(messages.c.control_id == "SHOW-1")
        ).one()
    urn = f"urn:tie:message:{row.uuid}"

    by_number = cli(live.workspace.config, "show", str(row.id), "--actor", "alice")
    by_uuid = cli(live.workspace.config, "show", row.uuid)
    by_urn = cli(live.workspace.config, "show", urn, "--json")

    assert by_number.code == by_uuid.code == by_urn.code == 0
    assert by_number.out == by_uuid.out
    text_out = by_number.out
    assert urn in text_out
    assert "ORC|NW|PLACER-7\n" in text_out, "segments are printed one per line"
    assert "lab: sent, 1 attempt(s)" in text_out
    assert "attempt 1" in text_out and "MSA|AA|SHOW-1" in text_out
    assert "placer_order: PLACER-7" in text_out
    detail = by_urn.json()
    assert detail["uuid"] == row.uuid
    assert detail["raw"].startswith("MSH|^~\\&|EPR|RXX|LAB|RYY|")
    [delivery] = detail["deliveries"]
    assert delivery["status"] == "sent"
    [attempt] = delivery["attempt_log"]
    assert attempt["outcome"] == "sent"
    assert "MSA|AA|SHOW-1" in attempt["response"]
    # Dated like the timeline: retries can run over days.
    started = attempt["started_at"][:19].replace("T", " ")
    assert f"    attempt 1 {started} sent " in text_out

    views = audit_log(store, "view")
    assert [v.target for v in views] == [urn, urn, urn]
    assert views[0].actor == "alice"
    assert views[1].actor == OS_USER
    assert json.loads(views[0].details) == {"via": "cli", "os_user": OS_USER}


def test_show_says_when_a_retrying_delivery_is_tried_next(seeded, cli):
    """A delivery being retried against a receiver that is down: when the next attempt is
    due tells support whether to wait for it or to look at the receiver now."""
    due = utcnow() + timedelta(minutes=4)
    with seeded.store.begin() as conn:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.message_id == seeded.ids["ORD-1"])
            .values(status="retrying", attempts=3, next_attempt_at=due, last_error="refused")
        )

    run = cli(seeded.workspace.config, "show", str(seeded.ids["ORD-1"]), "--actor", "sam")

    assert run.code == 0, run.err
    (line,) = [x for x in run.out.splitlines() if x.lstrip().startswith("#")]
    assert f"retrying, 3 attempt(s), next attempt {due:%Y-%m-%d %H:%M:%S} UTC, last" in line


def test_show_prints_the_head_of_a_large_message_and_says_how_much_there_is(workspace, cli):
    raw = oml("SHOW-BIG", "PLACER-8") + b"\rNTE|1||" + b"x" * (2 * PREVIEW) + b"END-OF-MESSAGE"
    store = workspace.store()
    try:
        with store.begin() as conn:
            write_inbound(conn, [hl7_inbound("orders", raw)])
        with store.read() as conn:
            message_id = conn.scalar(select(messages.c.id))
    finally:
        store.dispose()

    run = cli(workspace.config, "show", str(message_id))
    as_json = cli(workspace.config, "show", str(message_id), "--json").json()

    assert run.code == 0 and "ORC|NW|PLACER-8" in run.out
    assert "END-OF-MESSAGE" not in run.out
    assert f"[the first {PREVIEW:,} of {len(raw):,} bytes]" in run.out
    assert len(as_json["raw"]) == PREVIEW and as_json["raw_truncated"] is True


def test_show_an_unknown_message_fails(live, cli):
    run = cli(live.workspace.config, "show", "999999")
    assert run.code == 1
    assert "no message 999999" in run.err
    assert audit_log(live.engine.store, "view") == []


# --- resend -----------------------------------------------------------------------------


def test_resend_by_search_and_by_id(live, cli):
    store = live.engine.store
    live.rejected.update({"REJ-1", "REJ-2"})
    run = send_file(
        live, cli, "three.hl7", oml("REJ-1", "P-1"), oml("OK-1", "P-2"), oml("REJ-2", "P-3")
    )
    assert run.code == 0
    wait_until(lambda: delivery_statuses(store, "REJ-2") == ["failed"])
    assert delivery_statuses(store, "REJ-1") == ["failed"]
    assert delivery_statuses(store, "OK-1") == ["sent"]
    live.rejected.clear()
    before = (count(store, deliveries), count(store, audit_events))
    search = ("--channel", "orders", "--delivery-status", "failed")

    dry = cli(live.workspace.config, "resend", *search, "--reason", "lab fixed", "--dry-run")

    assert dry.code == 0, dry.err
    assert dry.out.count("would resend delivery") == 2
    assert "2 item(s), nothing changed" in dry.out
    assert (count(store, deliveries), count(store, audit_events)) == before

    bulk = cli(
        live.workspace.config, "resend", *search, "--reason", "lab fixed", "--actor", "alice"
    )

    assert bulk.code == 0, bulk.err
    assert "2/2" in bulk.err, "a bulk run shows its progress on stderr"
    wait_until(lambda: delivery_statuses(store, "REJ-1") == ["resent", "sent"])
    wait_until(lambda: delivery_statuses(store, "REJ-2") == ["resent", "sent"])
    with store.read() as conn:
        copies = list(
            conn.execute(
                select(deliveries.c.id, deliveries.c.resent_from, deliveries.c.payload)
                .where(deliveries.c.resent_from.is_not(None))
                .order_by(deliveries.c.id)
            )
        )
        originals = {
            r.id: r.payload
            for r in conn.execute(select(deliveries.c.id, deliveries.c.payload))
            if r.id in {c.resent_from for c in copies}
        }
    assert len(copies) == 2
    assert all(originals[c.resent_from] == c.payload for c in copies), "the payload as sent"
    events = audit_log(store, "resend")
    assert [(e.actor, json.loads(e.details)["reason"]) for e in events] == [
        ("alice", "lab fixed")
    ] * 2
    assert sorted(json.loads(e.details)["new_delivery"] for e in events) == [c.id for c in copies]
    assert sorted(live.lab.control_ids()) == ["OK-1", "REJ-1", "REJ-1", "REJ-2", "REJ-2"]

    repeat = cli(live.workspace.config, "resend", *search, "--reason", "lab fixed", "--dry-run")
    assert (repeat.code, repeat.out.strip()) == (0, "nothing matches"), "never sent a third time"
    again = cli(
        live.workspace.config, "resend", *search, "--again", "--reason", "again", "--dry-run"
    )
    assert again.out.count("again: already resent as #") == 2
    with store.read() as conn:
        rej_1 = conn.scalar(select(messages.c.id).where(messages.c.control_id == "REJ-1"))
    shown = cli(live.workspace.config, "show", str(rej_1))
    assert ": resent, 1 attempt(s), resent → #" in shown.out, "the failure stays in its attempts"

    with store.read() as conn:
        ok_delivery = conn.scalar(
            select(deliveries.c.id)
            .join(messages, messages.c.id == deliveries.c.message_id)
            .where(messages.c.control_id == "OK-1")
        )
    single = cli(live.workspace.config, "resend", str(ok_delivery), "--reason", "lab lost it")

    assert single.code == 0, single.err
    assert f"resent delivery {ok_delivery} as" in single.out
    wait_until(lambda: live.lab.control_ids().count("OK-1") == 2)
    [event] = audit_log(store, "resend")[2:]
    assert event.actor == OS_USER
    assert json.loads(event.details)["reason"] == "lab lost it"
    assert audit.verify(store).ok


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)])
def test_resend_an_unknown_delivery_says_so(seeded, cli, dry_run):
    run = cli(seeded.workspace.config, "resend", "9999", "--reason", "INC1", *dry_run)
    assert (run.code, run.err, run.out) == (1, "error: no delivery 9999\n", "")
    assert audit_log(seeded.store, "resend") == []


def test_resend_refuses_a_delivery_still_to_be_sent(seeded, cli):
    """The dispatcher still sends a queued delivery: its resend would send it twice."""
    store = seeded.store
    with store.read() as conn:
        queued = conn.scalar(
            select(deliveries.c.id).where(deliveries.c.message_id == seeded.ids["ORD-1"])
        )
    before = count(store, deliveries)

    run = cli(seeded.workspace.config, "resend", str(queued), "--reason", "INC1")
    dry = cli(seeded.workspace.config, "resend", str(queued), "--reason", "INC1", "--dry-run")

    assert (run.code, run.out) == (1, "")
    assert run.err.startswith(
        f"error: delivery {queued} is queued: it will still be sent, "
        "so a resend would send it twice"
    )
    assert (count(store, deliveries), audit_log(store, "resend")) == (before, [])
    assert dry.code == 0, dry.err
    assert f"would not resend delivery {queued} (queued)" in dry.out


def test_a_bulk_resend_cut_short_is_finished_by_running_it_again(seeded, cli, monkeypatch):
    """A run stopped midway (here: a failure in its second batch) keeps the batches it
    committed and none of the one it was in; the same command then resends the rest only."""
    store = seeded.store
    with store.begin() as conn:
        conn.execute(deliveries.update().values(status="failed"))
    failed = count(store, deliveries)
    assert failed == 2
    bulk = ("resend", "--channel", "orders", "--reason", "INC2", "--rate", "10")  # 1 a batch
    appended = audit.append_many

    def crash_second(conn: Any, *args: Any) -> str:
        if audit_log(store, "resend"):
            raise RuntimeError("killed mid-batch")
        return appended(conn, *args)

    monkeypatch.setattr(audit, "append_many", crash_second)
    with pytest.raises(RuntimeError):
        cli(seeded.workspace.config, *bulk)
    monkeypatch.undo()
    statuses = sorted(r.status for r in _deliveries(store))
    assert (statuses, len(audit_log(store, "resend"))) == (["failed", "queued", "resent"], 1)

    dry = cli(seeded.workspace.config, *bulk, "--dry-run")
    again = cli(seeded.workspace.config, *bulk)

    assert dry.out.count("would resend") == 1
    assert again.code == 0, again.err
    copies = [r.resent_from for r in _deliveries(store) if r.resent_from is not None]
    assert sorted(copies) == sorted(r.id for r in _deliveries(store) if r.status == "resent")
    assert len(copies) == len(set(copies)) == failed, "each resent once"
    assert len(audit_log(store, "resend")) == failed
    assert audit.verify(store).ok


def _deliveries(store: Store) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(deliveries).order_by(deliveries.c.id)))


# --- reprocess --------------------------------------------------------------------------


def test_reprocess_needs_a_reason(seeded, cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(seeded.workspace.config, "reprocess", str(seeded.ids["ORD-1"]))
    assert exit_.value.code == 2
    assert "--reason" in capsys.readouterr().err
    assert count(seeded.store, messages) == 5


def test_reprocess_needs_an_id_or_a_search(seeded, cli):
    run = cli(seeded.workspace.config, "reprocess", "--reason", "why not")
    assert run.code == 1
    assert "give an id or at least one search option" in run.err
    assert count(seeded.store, messages) == 5


def test_reprocess_one_message_makes_a_linked_copy(seeded, cli):
    store, original = seeded.store, seeded.ids["ORD-1"]
    with store.read() as conn:
        uuid = conn.scalar(select(messages.c.uuid).where(messages.c.id == original))

    dry = cli(seeded.workspace.config, "reprocess", uuid, "--reason", "new mapping", "--dry-run")

    assert dry.code == 0
    assert f"would reprocess #{original} (processed) through orders" in dry.out
    assert count(store, messages) == 5
    assert audit_log(store, "reprocess") == []

    run = cli(
        seeded.workspace.config,
        "reprocess",
        f"urn:tie:message:{uuid}",
        "--reason",
        "new mapping",
        "--actor",
        "alice",
        "--json",
    )

    assert run.code == 0, run.err
    [result] = run.json()
    assert result["original"] == uuid
    with store.read() as conn:
        copy = conn.execute(select(messages).where(messages.c.uuid == result["copy"])).one()
    assert (copy.reprocessed_from, copy.status, copy.raw) == (
        original,
        "received",
        oml("ORD-1", "PLACER-1", "SMITH"),
    )
    [event] = audit_log(store, "reprocess")
    assert (event.actor, event.target) == ("alice", f"urn:tie:message:{uuid}")
    assert json.loads(event.details) == {
        "reason": "new mapping",
        "copy": f"urn:tie:message:{copy.uuid}",
        "os_user": OS_USER,
    }

    shown = cli(seeded.workspace.config, "show", str(original), "--json")
    timeline = [t["id"] for t in shown.json()["timeline"]]
    assert timeline == [original, seeded.ids["RES-1"], copy.id], "linked both ways, and by key"
    assert seeded.processor.run_once() == 1
    assert count(store, deliveries, deliveries.c.message_id == copy.id) == 1
    assert count(store, deliveries, deliveries.c.message_id == original) == 1, "the old is kept"


def test_reprocess_a_search_in_bulk(seeded, cli):
    store = seeded.store
    search = ("--channel", "orders", "--type", "OML")

    dry = cli(
        seeded.workspace.config, "reprocess", *search, "--reason", "fix", "--dry-run", "--json"
    )

    assert dry.code == 0
    assert sorted(r["original"] for r in dry.json()) == sorted(uuids(store, "ORD-1", "ORD-2"))
    assert count(store, messages) == 5

    run = cli(seeded.workspace.config, "reprocess", *search, "--reason", "mapping fixed")

    assert run.code == 0, run.err
    assert "2/2" in run.err, "a bulk run shows its progress on stderr"
    with store.read() as conn:
        copies = dict(
            conn.execute(
                select(messages.c.reprocessed_from, messages.c.control_id).where(
                    messages.c.reprocessed_from.is_not(None)
                )
            ).all()
        )
    assert copies == {seeded.ids["ORD-1"]: "ORD-1", seeded.ids["ORD-2"]: "ORD-2"}
    events = audit_log(store, "reprocess")
    assert sorted(e.target for e in events) == sorted(
        f"urn:tie:message:{u}" for u in uuids(store, "ORD-1", "ORD-2")
    )
    assert {e.actor for e in events} == {OS_USER}
    assert {json.loads(e.details)["reason"] for e in events} == {"mapping fixed"}


def test_a_bulk_reprocess_skips_messages_already_reprocessed(seeded, cli):
    """An original keeps its status, so the same search finds it again after it was
    reprocessed: only the newest copy of each message is taken, unless ``--again``."""
    config, store, ord1, ord2 = (
        seeded.workspace.config,
        seeded.store,
        seeded.ids["ORD-1"],
        seeded.ids["ORD-2"],
    )
    first = cli(config, "reprocess", str(ord1), "--reason", "INC1", "--json")
    assert first.code == 0, first.err
    with store.read() as conn:
        copy = conn.scalar(select(messages.c.id).where(messages.c.reprocessed_from == ord1))
    search = ("--channel", "orders", "--type", "OML", "--reason", "INC2")

    dry = cli(config, "reprocess", *search, "--dry-run")
    run = cli(config, "reprocess", *search)

    assert dry.out.splitlines() == [
        f"would reprocess #{ord2} (processed) through orders",
        f"would reprocess #{copy} (received) through orders",
        "dry run: 2 item(s), nothing changed",
    ]
    skipped = (
        f"skipped 1 message(s) already reprocessed (#{ord1} as #{copy}); --again includes them"
    )
    assert skipped in dry.err and skipped in run.err
    assert run.code == 0, run.err
    with store.read() as conn:
        copied = sorted(
            conn.scalars(
                select(messages.c.reprocessed_from).where(messages.c.reprocessed_from.is_not(None))
            )
        )
    assert copied == sorted([ord1, ord2, copy]), "ORD-1 once, then its copy: never twice"

    again = cli(config, "reprocess", *search, "--dry-run", "--again")
    one = cli(config, "reprocess", str(ord1), "--reason", "INC3", "--dry-run")

    assert (
        f"would reprocess #{ord1} (processed) through orders again: already reprocessed as #"
        in again.out
    )
    assert "dry run: 5 item(s)" in again.out, "the originals, two copies, a copy of a copy"
    assert one.out.startswith(f"would reprocess #{ord1} (processed) through orders again: ")


def uuids(store: Store, *control_ids: str) -> list[str]:
    with store.read() as conn:
        return list(
            conn.scalars(
                select(messages.c.uuid).where(
                    messages.c.control_id.in_(control_ids), messages.c.reprocessed_from.is_(None)
                )
            )
        )


def test_reprocess_honours_limit(seeded, cli):
    run = cli(
        seeded.workspace.config,
        "reprocess",
        "--channel",
        "orders",
        "--type",
        "OML",
        "--limit",
        "1",
        "--reason",
        "trial run on one",
    )

    assert run.code == 0, run.err
    assert count(seeded.store, messages, messages.c.reprocessed_from.is_not(None)) == 1


# --- channel pause / resume, audit verify ------------------------------------------------


def test_paused_channel_stores_but_does_not_process_until_resumed(seeded, cli):
    store = seeded.store
    paused = cli(seeded.workspace.config, "channel", "pause", "orders", "--reason", "incident")
    assert paused.code == 0, paused.err
    with store.begin() as conn:
        write_inbound(conn, [hl7_inbound("orders", oml("ORD-9", "PLACER-9"))])

    assert seeded.processor.run_once() == 0
    listing = cli(seeded.workspace.config, "channel", "list", "--json").json()
    assert {r["channel"]: (r["paused"], r["unprocessed"]) for r in listing} == {
        "orders": (True, 1),
        "results": (False, 0),
    }

    resumed = cli(seeded.workspace.config, "channel", "resume", "orders", "--actor", "ann")
    assert resumed.code == 0, resumed.err
    assert seeded.processor.run_once() == 1
    actions = [(e.actor, e.target) for e in audit_log(store, "pause") + audit_log(store, "resume")]
    assert actions == [(OS_USER, "channel:orders"), ("ann", "channel:orders")]


def test_channel_pause_refuses_an_unknown_channel(seeded, cli):
    run = cli(seeded.workspace.config, "channel", "pause", "nope")

    assert run.code == 1
    assert "no channel named 'nope'" in run.err


def test_audit_verify_reports_an_intact_and_a_broken_chain(seeded, cli):
    cli(seeded.workspace.config, "channel", "pause", "orders")
    cli(seeded.workspace.config, "channel", "resume", "orders")

    intact = cli(seeded.workspace.config, "audit", "verify", "--json")
    assert intact.code == 0
    assert intact.json()["ok"] is True and intact.json()["events"] == 2

    with seeded.store.begin() as conn:
        first = conn.scalar(select(func.min(audit_events.c.id)))
        conn.execute(
            audit_events.update().where(audit_events.c.id == first).values(actor="mallory")
        )
    broken = cli(seeded.workspace.config, "audit", "verify")
    assert broken.code == 1
    assert f"BROKEN at event {first}" in broken.out


def test_audit_verify_keeps_an_anchor_that_catches_a_cut_off_end(seeded, cli, tmp_path):
    anchor = tmp_path / "outside" / "audit-anchor.json"
    cli(seeded.workspace.config, "channel", "pause", "orders")
    first = cli(seeded.workspace.config, "audit", "verify", "--anchor", str(anchor))
    assert first.code == 0, first.err
    cli(seeded.workspace.config, "channel", "resume", "orders")
    second = cli(seeded.workspace.config, "audit", "verify", "--anchor", str(anchor), "--json")
    assert second.code == 0, second.err
    newest = second.json()["head"]
    assert json.loads(anchor.read_text()) == newest  # moved on to the newest event

    with seeded.store.begin() as conn:
        conn.execute(audit_events.delete().where(audit_events.c.id == newest["id"]))
    cut = cli(seeded.workspace.config, "audit", "verify", "--anchor", str(anchor))
    assert cut.code == 1
    assert f"BROKEN at event {newest['id']}" in cut.out
    assert json.loads(anchor.read_text()) == newest  # a failed verify keeps the anchor

    anchor.write_text("not an anchor")
    garbled = cli(seeded.workspace.config, "audit", "verify", "--anchor", str(anchor))
    assert garbled.code != 0 and "is not an audit anchor" in garbled.err


def _audited_night(seeded: Seeded, cli: Callable[..., Run]) -> None:
    """Last night's incident, by real commands: alice paused orders, bob resent its two
    failed deliveries once the lab was back, carol looked at one of the messages."""
    config = seeded.workspace.config
    with seeded.store.begin() as conn:
        conn.execute(deliveries.update().values(status="failed"))
    for args in (
        ("channel", "pause", "orders", "--reason", "INC7 lab down", "--actor", "alice"),
        ("resend", "--channel", "orders", "--reason", "INC7 lab back", "--actor", "bob"),
        ("show", str(seeded.ids["ORD-2"]), "--actor", "carol"),
    ):
        assert cli(config, *args).code == 0


def test_audit_list_answers_who_did_what_and_why_newest_first(seeded, cli):
    _audited_night(seeded, cli)
    config, store = seeded.workspace.config, seeded.store
    events = count(store, audit_events)

    every = cli(config, "audit", "list", "--json")
    resends = cli(config, "audit", "list", "--action", "resend", "--json").json()
    by_alice = cli(config, "audit", "list", "--actor", "alice", "--json").json()
    on_ord_2 = cli(config, "audit", "list", "--message", str(seeded.ids["ORD-2"]), "--json")
    table = cli(config, "audit", "list", "--action", "resend")

    assert (every.code, every.err) == (0, "")
    assert [e["action"] for e in every.json()] == ["view", "resend", "resend", "pause"]
    assert [e["id"] for e in every.json()] == sorted((e["id"] for e in every.json()), reverse=True)
    assert [(e["actor"], e["details"]["reason"], e["details"]["os_user"]) for e in resends] == [
        ("bob", "INC7 lab back", OS_USER)
    ] * 2
    assert [(e["action"], e["target"]) for e in by_alice] == [("pause", "channel:orders")]
    with store.read() as conn:
        uuid = conn.scalar(select(messages.c.uuid).where(messages.c.id == seeded.ids["ORD-2"]))
    assert [(e["action"], e["target"]) for e in on_ord_2.json()] == [
        ("view", f"urn:tie:message:{uuid}"),
        ("resend", f"urn:tie:message:{uuid}"),
    ]
    header, *lines = table.out.splitlines()
    assert header.split() == [
        "ID", "AT", "ACTOR", "OS_USER", "ACTION", "TARGET", "REASON", "VIA", "DETAILS"
    ]  # fmt: skip
    assert len(lines) == 2
    assert all(line.split()[3:6] == ["bob", OS_USER, "resend"] for line in lines)
    assert all("INC7 lab back" in line for line in lines)
    assert all("delivery=" in line and "new_delivery=" in line for line in lines)
    assert (count(store, audit_events), audit.verify(store).ok) == (events, True), (
        "reading the log records nothing"
    )


def test_audit_list_bounds_its_time_and_pages_with_a_hint(seeded, cli):
    _audited_night(seeded, cli)
    config = seeded.workspace.config
    view, resend, older_resend, pause = cli(config, "audit", "list", "--json").json()

    since = cli(config, "audit", "list", "--since", older_resend["at"], "--json").json()
    until = cli(config, "audit", "list", "--until", older_resend["at"], "--json").json()
    first = cli(config, "audit", "list", "--limit", "2")
    rest = cli(config, "audit", "list", "--limit", "2", "--before", str(resend["id"]), "--json")
    last = cli(config, "audit", "list", "--limit", "3", "--before", str(resend["id"]))

    assert [e["id"] for e in since] == [view["id"], resend["id"], older_resend["id"]]
    assert [e["id"] for e in until] == [pause["id"]], "until excludes its moment"
    assert len(first.out.splitlines()) == 3
    assert first.err == f"more: add --before {resend['id']} for the next 2, or a larger --limit\n"
    assert [e["id"] for e in rest.json()] == [older_resend["id"], pause["id"]]
    assert last.err == "", "the last page says nothing more"


def test_audit_list_claims_no_actor_once_users_exist(seeded, cli):
    """Reading the log records nothing (nor through the API), so, like ``audit verify``,
    it needs no role of the OS user who runs it, which is no user here."""
    _add_users(seeded.store)
    events = count(seeded.store, audit_events)

    run = cli(seeded.workspace.config, "audit", "list", "--action", "user-*", "--json")

    assert (run.code, run.err) == (0, "")
    assert {e["action"] for e in run.json()} == {"user-add", "user-disable"}
    assert count(seeded.store, audit_events) == events


def test_audit_list_names_a_message_it_cannot_find(seeded, cli):
    run = cli(seeded.workspace.config, "audit", "list", "--message", "9999")
    both = cli(seeded.workspace.config, "audit", "list", "--message", "1", "--target", "user:x")

    assert (run.code, run.err) == (1, "error: no message 9999\n")
    assert (both.code, both.err) == (1, "error: give --message or --target, not both\n")


# --- who acts: --actor ------------------------------------------------------------------


def _resend(s: Seeded) -> list[str]:
    with s.store.begin() as conn:
        found = conn.scalar(
            select(deliveries.c.id).where(deliveries.c.message_id == s.ids["ORD-1"])
        )
        conn.execute(deliveries.update().where(deliveries.c.id == found).values(status="failed"))
    return ["resend", str(found), "--reason", "INC1"]


def _prune(s: Seeded) -> list[str]:
    path = s.workspace.config.parent / "channels" / "results.yaml"
    results = yaml.safe_load(path.read_text()) | {"retention": {"keep": "1m"}}
    path.write_text(yaml.safe_dump(results))
    return ["prune"]


def _remove_endpoint(s: Seeded) -> list[str]:
    from router.directory import make_endpoint, parse_key, put_endpoint

    endpoint = make_endpoint(parse_key("ods:RXX2"), "x", "fhir", "https://example.org/fhir")
    with s.store.begin() as conn:
        put_endpoint(conn, endpoint, actor="setup")
    return ["endpoints", "remove", "ods:RXX2"]


def _revoke(s: Seeded) -> list[str]:
    from router.auth.tokens import issue_token

    with s.store.begin() as conn:
        token_id = issue_token(conn, "vic", ["viewer"], actor="setup")[0]
    return ["users", "token", "revoke", str(token_id)]


def _rotate(s: Seeded) -> list[str]:
    from router.auth.tokens import issue_token

    with s.store.begin() as conn:
        token_id = issue_token(conn, "vic", ["viewer"], actor="setup")[0]
    return ["users", "token", "rotate", str(token_id)]


def _reload(s: Seeded) -> list[str]:
    path = s.workspace.config.parent / "channels" / "orders.yaml"
    path.write_text(path.read_text() + "# changed\n")
    return ["reload"]


# command: (its arguments, after any setup it needs; the audit event it records; the role
# it needs: the API's for the same action).
ACTING = {
    "messages --text": (lambda s: ["messages", "--text", "SMITH"], "search", "support"),
    "show": (lambda s: ["show", str(s.ids["ORD-1"])], "view", "support"),
    "channel pause": (lambda s: ["channel", "pause", "orders"], "pause", "support"),
    "channel resume": (lambda s: ["channel", "resume", "orders"], "resume", "support"),
    "reprocess": (
        lambda s: ["reprocess", str(s.ids["ORD-2"]), "--reason", "INC1"],
        "reprocess",
        "support",
    ),
    "resend": (_resend, "resend", "support"),
    "prune": (_prune, "retention.prune", "admin"),
    "endpoints add": (
        lambda s: ["endpoints", "add", "ods:RXX1", "--interaction", "x", "--fhir", "https://a.b/"],
        "endpoint.put",
        "engineer",
    ),
    "endpoints remove": (_remove_endpoint, "endpoint.remove", "engineer"),
    "users disable": (lambda s: ["users", "disable", "vic"], "user-disable", "admin"),
    "users token revoke": (_revoke, "token-revoke", "admin"),
}
# Commands whose actor the four-eyes rules count (an owner, a credential's maker): they act
# with the actor's own credential ($TIE_TOKEN here), never a claimed --actor.
CREDENTIALED = {
    "reload": (_reload, "revision.deploy", "engineer"),
    "users add": (
        lambda s: ["users", "add", "bob", "--role", "viewer", "--no-password"],
        "user-add",
        "admin",
    ),
    "users token": (
        lambda s: ["users", "token", "vic", "--role", "viewer"],
        "token-issue",
        "admin",
    ),
    "users token rotate": (_rotate, "token-rotate", "admin"),
    "users roles": (
        lambda s: ["users", "roles", "vic", "--add", "support", "--reason", "rota"],
        "user-roles",
        "admin",
    ),
    "users enable": (
        lambda s: ["users", "enable", "gone", "--reason", "back"],
        "user-enable",
        "admin",
    ),
}
# One user per role; who lacks each role the commands need.
ROLE_HOLDERS = {"admin": "ada", "support": "sam", "engineer": "erin", "viewer": "vic"}
LACKING = {"support": "vic", "engineer": "sam", "admin": "erin"}
NEEDS_A_USER = {
    "users disable",
    "users token",
    "users token revoke",
    "users token rotate",
    "users roles",
    "users enable",
}


def _events(store: Store) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(audit_events).order_by(audit_events.c.id)))


def _add_users(store: Store) -> None:
    from router.auth.users import add_user, disable_user

    with store.begin() as conn:
        for role, name in ROLE_HOLDERS.items():
            add_user(conn, name, [role], None, actor="setup")
        add_user(conn, "gone", ["admin"], None, actor="setup")
        disable_user(conn, "gone", actor="setup")


@pytest.mark.parametrize("command", sorted(ACTING))
def test_a_claimed_actor_must_hold_the_actions_role_once_users_exist(seeded, cli, command):
    """``--actor`` is only claimed: once there are users, it must name an active one with the
    role the API asks of a token for the same action, else exit 1 with nothing recorded
    (the default, the OS user, is no user). The audit keeps the OS user beside the actor."""
    argv, action, role = ACTING[command]
    _add_users(seeded.store)
    args = argv(seeded)
    before = _events(seeded.store)
    refusals = {
        "nobody": "'nobody' is not an active user",
        "gone": "'gone' is not an active user",
        LACKING[role]: f"'{LACKING[role]}' needs the {role} role",
    }
    what_to_do = f"give --actor NAME, an active user with the {role} role (run.py users list)"
    for who, problem in refusals.items():
        run = cli(seeded.workspace.config, *args, "--actor", who)
        assert (run.code, run.err) == (1, f"error: {problem}; {what_to_do}\n"), who
    run = cli(seeded.workspace.config, *args)
    assert (run.code, run.err) == (
        1,
        f"error: '{OS_USER}' is not an active user (no --actor: your OS user); {what_to_do}\n",
    )
    assert _events(seeded.store) == before

    run = cli(seeded.workspace.config, *args, "--actor", ROLE_HOLDERS[role])
    assert run.code == 0, run.err
    event = _events(seeded.store)[-1]
    assert (event.action, event.actor) == (action, ROLE_HOLDERS[role])
    assert json.loads(event.details)["os_user"] == OS_USER


@pytest.mark.parametrize("command", sorted(CREDENTIALED))
def test_an_owner_or_credential_maker_acts_with_their_own_credential(
    seeded, cli, monkeypatch, command
):
    """Once there are users, a claimed ``--actor`` is refused (exit 1, nothing recorded):
    the command acts as the holder of the token in $TIE_TOKEN, held to its roles. The audit
    keeps the OS user beside them."""
    from router.auth.tokens import issue_token
    from router.cli.credentials import TOKEN_VARIABLE

    argv, action, role = CREDENTIALED[command]
    _add_users(seeded.store)
    with seeded.store.begin() as conn:
        tokens = {
            name: issue_token(conn, name, [held], actor="setup")[1]
            for held, name in ROLE_HOLDERS.items()
        }
    args = argv(seeded)
    before = _events(seeded.store)
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    run = cli(seeded.workspace.config, *args, "--actor", ROLE_HOLDERS[role])
    assert run.code == 1 and "a name is only a claim" in run.err, run.err
    monkeypatch.setenv(TOKEN_VARIABLE, tokens[LACKING[role]])
    run = cli(seeded.workspace.config, *args)
    assert (run.code, run.err) == (
        1,
        f"error: '{LACKING[role]}' needs the {role} role (a token acts with the roles it "
        "was given)\n",
    )
    assert _events(seeded.store) == before

    monkeypatch.setenv(TOKEN_VARIABLE, tokens[ROLE_HOLDERS[role]])
    run = cli(seeded.workspace.config, *args)
    assert run.code == 0, run.err
    event = _events(seeded.store)[-1]
    assert (event.action, event.actor) == (action, ROLE_HOLDERS[role])
    assert json.loads(event.details)["os_user"] == OS_USER


@pytest.mark.parametrize("command", sorted(ACTING))
def test_a_label_only_command_acts_as_the_holder_of_the_token_given(
    seeded, cli, monkeypatch, command
):
    """$TIE_TOKEN proves who runs the command: without ``--actor`` it is recorded as the
    token's holder (the OS user beside them), held to the token's roles; a token that is
    not live, or a ``--actor`` naming someone else, is refused with nothing recorded."""
    from router.auth.tokens import issue_token
    from router.cli.credentials import TOKEN_VARIABLE

    argv, action, role = ACTING[command]
    _add_users(seeded.store)
    with seeded.store.begin() as conn:
        held = issue_token(conn, ROLE_HOLDERS[role], [role], actor="setup")[1]
        other = {name: kind for kind, name in ROLE_HOLDERS.items()}[LACKING[role]]
        lacking = issue_token(conn, LACKING[role], [other], actor="setup")[1]
        expired = issue_token(
            conn, ROLE_HOLDERS[role], [role], actor="setup", expires_at=utcnow() - timedelta(1)
        )[1]
    args = argv(seeded)
    before = _events(seeded.store)
    not_live = (
        f"error: ${TOKEN_VARIABLE} is not a live API token (revoked, expired, its user "
        "disabled, or mistyped)\n"
    )
    refusals = [
        (expired, [], not_live),
        ("tie_mistyped", [], not_live),
        (lacking, [], f"'{LACKING[role]}' needs the {role} role"),
        (held, ["--actor", LACKING[role]], "a command acts as the user whose credential"),
    ]
    for token, extra, problem in refusals:
        monkeypatch.setenv(TOKEN_VARIABLE, token)
        run = cli(seeded.workspace.config, *args, *extra)
        assert run.code == 1 and problem in run.err, (token, run.err)
    assert _events(seeded.store) == before

    monkeypatch.setenv(TOKEN_VARIABLE, held)
    run = cli(seeded.workspace.config, *args)
    assert run.code == 0, run.err
    event = _events(seeded.store)[-1]
    assert (event.action, event.actor) == (action, ROLE_HOLDERS[role])
    assert json.loads(event.details)["os_user"] == OS_USER


@pytest.mark.parametrize("command", sorted((set(ACTING) | set(CREDENTIALED)) - NEEDS_A_USER))
def test_any_actor_is_taken_while_there_are_no_users(seeded, cli, command):
    """A new install has nobody to name: any name goes, and the OS user is kept beside it."""
    argv, action, _ = {**ACTING, **CREDENTIALED}[command]
    run = cli(seeded.workspace.config, *argv(seeded), "--actor", "anyone")
    assert run.code == 0, run.err
    event = _events(seeded.store)[-1]
    assert (event.action, event.actor) == (action, "anyone")
    assert json.loads(event.details)["os_user"] == OS_USER


@pytest.mark.parametrize("command", ["reprocess", "users add"])  # one of each path
def test_a_token_given_while_there_are_no_users_is_refused(seeded, cli, monkeypatch, command):
    """No token can be valid on a store with no users (the wrong store, most likely): a
    command given one is refused, saying so, whether its actor is a label or a credential,
    rather than the token passed over for the claimed name. Nothing is recorded."""
    from router.cli.credentials import TOKEN_VARIABLE

    argv, _, _ = {**ACTING, **CREDENTIALED}[command]
    args = argv(seeded)
    before = _events(seeded.store)
    monkeypatch.setenv(TOKEN_VARIABLE, "tie_from_another_store")
    run = cli(seeded.workspace.config, *args, "--actor", "anyone")
    assert (run.code, run.err) == (
        1,
        f"error: ${TOKEN_VARIABLE} is set, but this store has no users, so no API token is "
        f"valid on it (is it the store you meant?): unset ${TOKEN_VARIABLE} to act as "
        "--actor until the first user is added\n",
    )
    assert _events(seeded.store) == before
