"""The benchmark scripts still run and print their JSON: a change to the engine's internals
once broke ``bench/ingest_cpu.py`` unnoticed. Tiny runs; the figures are not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(script: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_ingest_cpu_measures_the_path_it_names():
    # Enough messages for several of the kernel's CPU accounting ticks (4 ms): with 40, a
    # busy machine could credit the run none, and user time read as 0.
    result = _bench("ingest_cpu.py", "--messages", "400", "--batch", "8")
    assert (result["messages"], result["batch"], result["settled_on_receipt"]) == (400, 8, True)
    assert result["user_us_per_msg"] > 0


def test_mllp_runs_every_scenario_and_checks_the_store():
    result = _bench("mllp.py", "--messages", "40", "--stores", "sqlite", "--connections", "1,2")
    runs = [
        (s["scenario"], s["store"], s["connections"], s["messages"]) for s in result["scenarios"]
    ]
    assert runs == [
        ("baseline", None, 1, 40),
        ("baseline", None, 2, 40),
        ("ingest", "sqlite", 1, 40),
        ("ingest", "sqlite", 2, 40),
        ("end_to_end", "sqlite", 1, 40),
        ("end_to_end", "sqlite", 2, 40),
    ]
    for row in result["scenarios"][2:]:
        assert row["engine_written_kib_per_msg"] > 0  # every message is written to the WAL
        commits = row["group_commit"]  # scraped from the engine's /metrics
        assert commits["commits"] >= 40 / row["connections"] and commits["commit_ms_mean"] > 0
        assert 1.0 <= commits["messages_per_commit"] <= row["connections"]
    ceilings = result["machine"]["store_commit"]["sqlite"], result["machine"]["store_commit_8"]
    assert ceilings[0]["msg_per_s"] == ceilings[0]["commits_per_s"] > 0
    eight = ceilings[1]["sqlite"]
    assert eight["msg_per_s"] == pytest.approx(8 * eight["commits_per_s"], rel=1e-3)


def test_fhir_compares_the_engine_with_bare_validation():
    result = _bench("fhir.py", "--messages", "40", "--proxy-requests", "20", "--entries", "5")
    assert result["bundle"]["entries"] == 5
    for route in ("accept", "bars"):
        measured = result["process_message"][route]
        assert measured["sequential"]["messages"] == 16
        assert measured["concurrent"]["messages"] == 20
        assert measured["validation_around"]["p50_ms"] > 0
        assert measured["sequential"]["paired_validation"]["p50_ms"] > 0
    assert result["process_message"]["bars"]["sequential"]["paired_receiver"]["p50_ms"] > 0
    assert "paired_receiver" not in result["process_message"]["accept"]["sequential"]
    assert result["proxy"]["requests"] == 20
    assert set(result["targets"]) == {
        "accept_added_at_most_25_percent",
        "bars_added_at_most_25_percent",
        "proxy_added_at_most_2_ms_p50",
    }


def test_a_store_filled_for_the_read_benchmark_answers_it(tmp_path):
    """``bench/fill_store.py`` and ``bench/store_queries.py`` on a tiny store: a million
    messages is for measuring by hand, never in the suite."""
    url = f"sqlite:///{tmp_path / 'big.db'}"
    assert _bench("fill_store.py", "--store", url, "--messages", "3000")["messages"] == 3000
    figures = _bench("store_queries.py", "--store", url)
    assert "dashboard (console /, /api/channels)" in figures
    assert all(isinstance(ms, int) for ms in figures.values())


def test_mllp_tls_runs_the_engine_scenarios_over_tls():
    result = _bench(
        "mllp.py", "--messages", "20", "--stores", "sqlite", "--connections", "1", "--only", "b,c",
        "--tls",
    )  # fmt: skip
    runs = [(s["scenario"], s["tls"], s["messages"]) for s in result["scenarios"]]
    assert runs == [("ingest", True, 20), ("end_to_end", True, 20)]


def test_replay_times_a_bulk_resend_and_reprocess_and_checks_the_audit():
    """The script asserts each item was done and audited once and the chain verifies."""
    result = _bench("replay.py", "--messages", "30", "--stores", "sqlite")
    for command in ("resend", "reprocess"):
        figures = result["stores"]["sqlite"][command]
        assert figures["items"] == 30 and figures["items_per_s"] > 0
