"""A channel the node does not run, or runs from an older revision than its newest, seen by
monitoring: ``/health``'s channels and ``degraded``, ``tie_channel_up`` and
``tie_channel_revision_fallback``, against an engine in-process over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from console_testing import PASSWORD, sign_in
from tie_testing import RunningEngine, api_token, engine_config, wait_until

from router import audit, governance
from router.auth.users import add_user
from router.channel_control import set_paused
from router.channel_health import channel_health
from router.cli import main
from router.config import EngineConfig
from router.governance.deploy import mark_deployed
from router.store.database import Store

TOKEN = "tie_channel-health-viewer"


def channel_text(name: str, port: int = 0, transform: str = "") -> str:
    return f"name: {name}\nsource:\n  mllp: {{host: 127.0.0.1, port: {port}}}\n{transform}"


def state(name: str, revision: int | None) -> dict[str, object]:
    """A channel in ``/health`` running the newest deployed revision (or none)."""
    return {
        "state": name,
        "revision": revision,
        "deployed": revision,
        "fallback": False,
        "restartable": True,
    }


def serving(running: RunningEngine) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}", timeout=10)


def channel_up(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
    return {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tie_channel_up{")
    }


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_governed_channel_left_out_at_start_is_degraded_not_down(
    tmp_path: Path,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its approved mapping code is gone from disk: the node stays in the load balancer
    (200) for the channel it runs, and says which one it left out and why."""
    config = engine_config(tmp_path, store_url, governance="governed")
    config.channels.mkdir()
    (config.channels / "orders.yaml").write_text(
        channel_text("orders", transform="transform: tidy:f\n")
    )
    (config.channels / "results.yaml").write_text(channel_text("results"))
    (config.mappings / "tidy.py").write_text("def f(message):\n    return message\n")
    RunningEngine(config, None).stop()  # the files become approved revision 1 of each
    (config.mappings / "tidy.py").write_text("def f(message):\n    return None\n")
    monkeypatch.delitem(sys.modules, "tie_mappings.tidy", raising=False)  # as a new process
    api_token(store_url, "viewer", name="scraper", token=TOKEN)

    running = RunningEngine(config, None, http=True)
    try:
        set_paused(running.store, "results", True, actor="test")
        with running.store.begin() as conn:
            add_user(conn, "sam", ["support"], PASSWORD, actor="test")
        with serving(running) as client:
            health = client.get("/health")
            up = channel_up(client)
        console = sign_in(f"http://127.0.0.1:{running.http_port}", "sam")
        try:
            dashboard = console.get("/").text
        finally:
            console.close()
    finally:
        running.stop()

    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["degraded"]) == ("ok", True)
    assert body["channels"]["results"] == state("paused", 1)
    assert body["channels"]["orders"] == state("left-out", None)  # why: signed in only
    assert up == {"orders": 0.0, "results": 1.0}
    row = re.search(r'<tr class="attention">(.*?)</tr>', dashboard, re.S).group(1)
    assert ">orders</a>" in row and "status-left-out" in row
    assert "is not the code approved with it" in row
    assert 'action="/channels/orders/pause"' not in dashboard  # nothing runs to pause
    assert any(
        r.levelno == logging.ERROR and "channel orders: revision #1 cannot run" in r.message
        for r in caplog.records
    )


def test_a_channel_whose_listener_failed_to_start_is_named(
    tmp_path: Path, store_url: str, taken_port: int
) -> None:
    """A reload adds a channel on a port another program holds: the rule that makes
    ``/health`` 503 stays, and the body names the channel and the cause."""
    config = engine_config(tmp_path, store_url)
    config.channels.mkdir()
    (config.channels / "orders.yaml").write_text(channel_text("orders"))
    api_token(store_url, "viewer", name="scraper", token=TOKEN)
    running = RunningEngine(config, None, http=True)
    try:
        with serving(running) as client:
            healthy = client.get("/health").json()
            (config.channels / "intake.yaml").write_text(channel_text("intake", taken_port))
            running.call(running.engine.reload("olly"))
            health = wait_until(lambda: (r := client.get("/health")).status_code == 503 and r)
            up = channel_up(client)
            why = channel_health(running.engine)["intake"]
    finally:
        running.stop()

    assert (healthy["degraded"], healthy["channels"]) == (False, {"orders": state("running", 1)})
    body = health.json()
    assert (body["listeners"], body["degraded"]) == (False, True)
    assert body["channels"]["orders"] == state("running", 1)
    assert body["channels"]["intake"] == state("failed", 1)
    assert why.state == "failed" and f"cannot listen on 127.0.0.1:{taken_port}" in why.reason
    assert up == {"intake": 0.0, "orders": 1.0}


def test_a_channel_started_from_an_older_revision_is_a_fallback_everywhere(
    tmp_path: Path,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Revision 2 (new mapping code) is deployed, then yesterday's code is back on disk:
    the start runs revision 1, and nobody may take that for plain ``running``. ``/health``
    (public) gives the numbers and ``degraded``, never the reason; the signed-in views do."""
    config, tidy = two_revisions(tmp_path, store_url)
    tidy.write_text("def f(message):\n    return message.raw\n")  # an old commit deployed
    monkeypatch.delitem(sys.modules, "tie_mappings.tidy", raising=False)  # as a new process
    api_token(store_url, "support", name="scraper", token=TOKEN)

    running = RunningEngine(config, None, http=True)
    try:
        with serving(running) as client:
            health = client.get("/health")
            metrics = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
            api = client.get("/api/channels", headers={"authorization": f"Bearer {TOKEN}"})
        console = sign_in(f"http://127.0.0.1:{running.http_port}", "sam")
        try:
            dashboard = console.get("/").text
        finally:
            console.close()
    finally:
        running.stop()

    assert health.status_code == 200
    body = health.json()
    assert body["degraded"] is True
    assert body["channels"]["orders"] == {
        "state": "running",
        "revision": 1,
        "deployed": 2,
        "fallback": True,
        "restartable": True,
    }
    assert str(config.mappings) not in health.text  # public: no paths, no digests
    assert 'tie_channel_revision_fallback{channel="orders"} 1.0' in metrics
    assert 'tie_channel_up{channel="orders"} 1.0' in metrics
    (row,) = api.json()
    assert (row["state"], row["revision"], row["deployed"], row["fallback"]) == (
        "running",
        1,
        2,
        True,
    )
    assert row["reason"].startswith("revision #2 cannot run: its mapping code under")
    html = re.search(r'<tr class="attention">(.*?)</tr>', dashboard, re.S).group(1)
    assert "revision #1" in html and "fallback: newest deployed is #2" in html
    assert "is not the code approved with it" in html


def test_code_changing_under_a_running_engine_keeps_the_approved_revision_and_says_so(
    tmp_path: Path, store_url: str
) -> None:
    """Governed, revision 2 runs. Its approved code is then replaced on disk: the engine
    keeps the code it loaded, but a restart would not start it, so /health says so and the
    audit log has it. Then another node deploys revision 3, whose code is not on this
    node's disk: this node keeps revision 2 (never unapproved code) as a fallback, as a
    start would, and says so in /health, the audit log and the log."""
    config = engine_config(tmp_path, store_url, governance="governed")
    config.channels.mkdir()
    orders = config.channels / "orders.yaml"
    orders.write_text(channel_text("orders", transform="transform: tidy:f\n"))
    tidy = config.mappings / "tidy.py"
    tidy.write_text("def f(message):\n    return message.raw\n")
    running = RunningEngine(config, None, http=True)
    store, watcher = running.store, running.engine.watcher
    try:
        with store.begin() as conn:
            add_user(conn, "erin", ["engineer"], None, actor="test")
            add_user(conn, "ada", ["approver"], None, actor="test")
        tidy.write_text("def f(message):\n    return message.raw.upper()\n")
        governance.propose(store, config, "orders", orders.read_text(), actor="erin")
        governance.approve(store, config, "orders", 2, actor="ada")
        with serving(running) as client:
            wait_until(lambda: client.get("/health").json()["channels"]["orders"]["revision"] == 2)
            tidy.write_text("def f(message):\n    return b'not approved'\n")
            watcher.wake()
            stale = wait_until(lambda: (r := client.get("/health").json())["degraded"] and r)

            running.call(watcher.lock.acquire())  # another node deploys meanwhile
            try:
                tidy.write_text("def f(message):\n    return message.raw.lower()\n")
                governance.propose(store, config, "orders", orders.read_text(), actor="erin")
                governance.approve(store, config, "orders", 3, actor="ada")
                assert mark_deployed(store, "orders", 3, actor="engine@other-node")
                tidy.write_text("def f(message):\n    return b'not approved'\n")
            finally:
                running.call(_release(watcher.lock))
            watcher.wake()
            fell_back = wait_until(
                lambda: (r := client.get("/health").json())["channels"]["orders"]["fallback"] and r
            )
        with store.read() as conn:
            events = audit.events(conn, audit.EventFilter(actor="engine@test-node"))
    finally:
        running.stop()

    assert stale["status"] == "ok"
    assert stale["channels"]["orders"] == {
        "state": "running",
        "revision": 2,
        "deployed": 2,
        "fallback": False,
        "restartable": False,
    }
    assert fell_back["degraded"] is True
    assert fell_back["channels"]["orders"] == {
        "state": "running",
        "revision": 2,
        "deployed": 3,
        "fallback": True,
        "restartable": True,
    }
    assert str(config.mappings) not in str(fell_back)
    kinds = [(e["action"], e["details"]["number"], e["details"].get("running")) for e in events]
    assert ("revision.code-differs", 2, None) in kinds
    assert ("revision.fallback", 3, 2) in kinds
    assert [k for k in kinds if k[0] == "revision.fallback"] == [("revision.fallback", 3, 2)]


async def _release(lock: asyncio.Lock) -> None:
    lock.release()


def two_revisions(tmp_path: Path, store_url: str) -> tuple[EngineConfig, Path]:
    """A governed channel ``orders`` whose revision 1 (the file) ran, then revision 2 with
    new mapping code was approved and deployed; and its code file, holding revision 2's
    code. ``sam`` (support) can sign in."""
    config = engine_config(tmp_path, store_url, governance="governed")
    config.channels.mkdir()
    (config.channels / "orders.yaml").write_text(
        channel_text("orders", transform="transform: tidy:f\n")
    )
    tidy = config.mappings / "tidy.py"
    tidy.write_text("def f(message):\n    return message.raw\n")
    RunningEngine(config, None).stop()  # the files become approved revision 1
    store = Store(store_url)
    try:
        with store.begin() as conn:
            add_user(conn, "erin", ["engineer"], None, actor="test")
            add_user(conn, "ada", ["approver"], None, actor="test")
            add_user(conn, "sam", ["support"], PASSWORD, actor="test")
        tidy.write_text("def f(message):\n    return message.raw.upper()\n")
        text = (config.channels / "orders.yaml").read_text()
        governance.propose(store, config, "orders", text, actor="erin", reason="upper")
        governance.approve(store, config, "orders", 2, actor="ada")
        assert mark_deployed(store, "orders", 2, actor="test")
    finally:
        store.dispose()
    return config, tidy


def test_channel_list_shows_the_fallback_the_engine_on_this_host_runs(
    tmp_path: Path,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The store says revision 2 is deployed; the engine runs revision 1. ``run.py channel
    list`` reads the store, so it asks the engine its engine.yaml names (``/health``, as
    public as a load balancer's probe) which revision it runs; stopped, it says so."""
    config, tidy = two_revisions(tmp_path, store_url)
    tidy.write_text("def f(message):\n    return message.raw\n")  # an old commit deployed
    monkeypatch.delitem(sys.modules, "tie_mappings.tidy", raising=False)  # as a new process
    monkeypatch.delenv("TIE_STORE", raising=False)
    running = RunningEngine(config, None, http=True)
    port = running.http_port
    engine_yaml = tmp_path / "engine.yaml"
    engine_yaml.write_text(
        yaml.safe_dump(
            {
                "store": store_url,
                "channels": str(config.channels),
                "mappings": str(config.mappings),
                "governance": "governed",
                "node": "test-node",
                "http": {"host": "127.0.0.1", "port": port},
            }
        )
    )

    def channel_list(*options: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(engine_yaml), "channel", "list", *options])
        out, err = capsys.readouterr()
        return code, out, err

    try:
        table = channel_list()
        listing = channel_list("--json")
    finally:
        running.stop()
    stopped = channel_list()

    assert (table[0], table[2]) == (0, "")
    header, row = table[1].splitlines()
    assert header.split()[:3] == ["CHANNEL", "PAUSED", "RUNNING"]
    assert row.split()[:5] == ["orders", "False", "#1", "FALLBACK", "(newest"]
    (orders,) = json.loads(listing[1])
    assert orders["running"] == {
        "state": "running",
        "revision": 1,
        "deployed": 2,
        "fallback": True,
        "restartable": True,
    }
    assert stopped[0] == 0
    assert stopped[1].splitlines()[1].split()[:3] == ["orders", "False", "-"]
    assert stopped[2] == (
        f"no engine answers at http://127.0.0.1:{port}/health: "
        "the revision each channel runs is not shown\n"
    )


def test_a_channel_left_out_starts_from_an_older_revision_once_its_code_is_back(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither revision's code is on disk at start: the channel is left out. Restoring
    revision 1's code (not 2's) starts it from revision 1 while running, as a restart
    would, rather than waiting for a restart: a fallback, audited."""
    config, tidy = two_revisions(tmp_path, store_url)
    tidy.write_text("def f(message):\n    return b'not approved'\n")
    monkeypatch.delitem(sys.modules, "tie_mappings.tidy", raising=False)  # as a new process
    running = RunningEngine(config, None, http=True)
    try:
        with serving(running) as client:
            left_out = client.get("/health").json()["channels"]["orders"]
            tidy.write_text("def f(message):\n    return message.raw\n")  # revision 1's
            running.engine.watcher.wake()
            started = wait_until(
                lambda: (r := client.get("/health").json()["channels"]["orders"])["revision"] and r
            )
        with running.store.read() as conn:
            events = audit.events(conn, audit.EventFilter(actor="engine@test-node"))
    finally:
        running.stop()

    assert left_out["state"] == "left-out"
    assert started == {
        "state": "running",
        "revision": 1,
        "deployed": 2,
        "fallback": True,
        "restartable": True,
    }
    assert [e["action"] for e in reversed(events)] == ["revision.left-out", "revision.fallback"]
