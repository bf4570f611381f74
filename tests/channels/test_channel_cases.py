"""The channel golden tests, one pytest test per case folder (tests/channels/<channel>/<case>/).

The same cases ``python run.py check`` runs: the bundled channels, mappings and
config/endpoints.yaml, with no network. After an intended change, ``python run.py check
--update`` rewrites the golden files; review their diff before committing it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from router.channel_tests import Case, CaseRunner, compare, discover
from router.config import load_channels, load_engine
from router.directory.seeding import read_endpoints

HERE = Path(__file__).resolve().parent
CONFIG = load_engine(HERE.parents[1] / "config" / "engine.yaml")
CASES = discover(HERE)


@pytest.fixture(scope="module")
def runner() -> CaseRunner:
    return CaseRunner(
        load_channels(CONFIG.channels), CONFIG.mappings, read_endpoints(CONFIG.endpoints)
    )


def test_every_bundled_sample_has_a_case():
    samples = {p.name for p in (HERE.parent / "data" / "hl7v2").glob("*.hl7")}
    inputs = {case.input.read_bytes() for case in CASES if case.problem is None}
    missing = [
        s for s in samples if (HERE.parent / "data" / "hl7v2" / s).read_bytes() not in inputs
    ]
    assert not missing, f"samples with no channel test case: {missing}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_channel_case(case: Case, runner: CaseRunner):
    assert case.problem is None, f"{case.folder}: {case.problem}"
    result = compare(case, runner.run(case))
    assert result.passed, (
        f"\n{result.report()}\nIf the change is intended: python run.py check --update, "
        "then review the golden files' diff."
    )
