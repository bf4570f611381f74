"""``run.py endpoints``: the directory seeded from endpoints.yaml, changed by an operator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from router.cli import main
from router.config import load_engine
from router.engine import open_store
from router.store.schema import audit_events

ENDPOINTS = {
    "endpoints": [
        {
            "dos": "111111111",
            "name": "Receiver",
            "fhir": "http://127.0.0.1:9101/fhir/R4",
            "interactions": ["servicerequest-request"],
        }
    ]
}


@pytest.fixture
def config(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TIE_STORE", raising=False)
    (tmp_path / "channels").mkdir()
    (tmp_path / "endpoints.yaml").write_text(yaml.safe_dump(ENDPOINTS))
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump({"store": store_url, "channels": "channels"}))
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--config", str(config), "endpoints", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_add_and_remove(config, capsys):
    code, out, _ = run(capsys, config, "list", "--json")
    assert code == 0
    assert [(r["kind"], r["identifier"], r["origin"]) for r in json.loads(out)] == [
        ("dos", "111111111", "config")
    ]

    code, out, _ = run(
        capsys,
        config,
        "add",
        "ods:g82080",
        "--interaction",
        "immunisation",
        "--interaction",
        "vaccination-cancelled",
        "--fhir",
        "https://gp.example/fhir/",
        "--scope",
        "all",
        "--actor",
        "alice",
        "--json",
    )
    assert code == 0
    added = json.loads(out)
    assert [(r["identifier"], r["interaction"], r["address"], r["scope"]) for r in added] == [
        ("G82080", "immunisation", "https://gp.example/fhir", "all"),
        ("G82080", "vaccination-cancelled", "https://gp.example/fhir", "all"),
    ]

    code, out, _ = run(capsys, config, "list", "ods:G82080")
    assert code == 0
    assert "immunisation" in out and "vaccination-cancelled" in out and "dos" not in out

    code, out, _ = run(
        capsys, config, "remove", "ods:G82080", "--interaction", "immunisation", "--json"
    )
    assert code == 0
    assert [r["interaction"] for r in json.loads(out)] == ["immunisation"]

    store = open_store(load_engine(config))
    try:
        with store.read() as conn:
            events = conn.execute(select(audit_events.c.actor, audit_events.c.action)).all()
    finally:
        store.dispose()
    assert ("alice", "endpoint.put") in events
    assert any(action == "endpoint.remove" for _, action in events)


def test_removing_a_seeded_entry_warns_that_the_file_brings_it_back(config, capsys):
    code, out, _ = run(capsys, config, "remove", "dos:111111111")
    assert code == 0
    assert "come back on the next start" in out
    code, out, _ = run(capsys, config, "list", "--json")
    assert [r["identifier"] for r in json.loads(out)] == ["111111111"]  # seeded again


@pytest.mark.parametrize(
    ("args", "code", "problem"),
    [
        (["add", "RYE", "--interaction", "x", "--fhir", "http://a"], 2, "names no kind"),
        (["add", "ods:RYE", "--interaction", "x", "--mllp", "lab"], 2, "host:port"),
        (["remove", "ods:NOPE"], 1, "no endpoint of ods:NOPE"),
    ],
)
def test_mistakes_are_reported_with_an_exit_code(config, capsys, args, code, problem):
    got, _, err = run(capsys, config, *args)
    assert got == code
    assert problem in err


def test_a_broken_endpoints_file_is_named(config, capsys):
    (config.parent / "endpoints.yaml").write_text("endpoints:\n  - {dos: '1', interactions: [x]}\n")
    code, _, err = run(capsys, config, "list")
    assert code == 2
    assert "endpoints.yaml: endpoints[0]" in err


def test_check_and_the_engine_refuse_a_broken_endpoints_file(config, capsys):
    (config.parent / "endpoints.yaml").write_text(
        "endpoints:\n  - {ods: RYE, fhir: 'ftp://x', interactions: [a]}\n"
    )
    code = main(["--config", str(config), "check"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "endpoints.yaml: endpoints[0]: a FHIR endpoint is an http(s) base URL" in err

    from router.config import ConfigError
    from router.engine import Engine

    with pytest.raises(ConfigError, match=r"endpoints\.yaml: endpoints\[0\]"):
        Engine(load_engine(config), {})
