"""A revision carries the mapping code its channel names: a change of that code alone is a
proposal the approver sees (its diff), and code changed after the proposal is not approved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tie_testing import engine_config

from router import governance
from router.auth.users import add_user
from router.governance.deploy import bootstrap
from router.governance.mapping_code import sources
from router.store.database import Store

CHANNEL = (
    "name: adt\nsource:\n  mllp: {host: 127.0.0.1, port: 0}\n"
    "transform: adt_map:normalise\n"
    "destinations:\n  epr:\n    mllp: {host: 127.0.0.1, port: 9}\n"
)
HELPER = "def ward(text):\n    return text.upper()\n"
MAPPING = "from .wards import ward\n\n\ndef normalise(message):\n    return message.raw\n"


@pytest.fixture
def governed(store: Store, tmp_path: Path):
    config = engine_config(tmp_path, store.url, governance="governed")
    config.channels.mkdir()
    (config.channels / "adt.yaml").write_text(CHANNEL)
    (config.mappings / "adt_map.py").write_text(MAPPING)
    (config.mappings / "wards.py").write_text(HELPER)
    (config.mappings / "unrelated.py").write_text("X = 1\n")
    with store.begin() as conn:
        add_user(conn, "erin", ["engineer"], None, actor="test")
        add_user(conn, "ada", ["approver"], None, actor="test")
    assert bootstrap(store, config) == ["adt"]
    return config


def test_the_code_a_channel_names_is_its_modules_and_what_they_import(store, governed):
    baseline = governance.get_revision(store, "adt", 1)
    assert baseline.mappings == {"adt_map.py": MAPPING, "wards.py": HELPER}
    assert baseline.mappings_sha256 is not None


def test_a_change_of_a_helper_alone_is_a_proposal_whose_diff_shows_the_code(store, governed):
    (governed.mappings / "wards.py").write_text(HELPER.replace("upper", "lower"))
    proposal = governance.propose(store, governed, "adt", CHANNEL, actor="erin", reason="wards")
    assert proposal.number == 2
    text = governance.diff(store, "adt").text
    assert "--- mappings/wards.py #1\n+++ mappings/wards.py #2\n" in text
    assert "-    return text.upper()\n+    return text.lower()\n" in text
    assert "adt.yaml" not in text  # the YAML did not change
    assert governance.approve(store, governed, "adt", 2, actor="ada").state == "approved"


def test_code_changed_after_the_proposal_is_not_approved(store, governed):
    (governed.mappings / "wards.py").write_text(HELPER.replace("upper", "lower"))
    governance.propose(store, governed, "adt", CHANNEL, actor="erin")
    (governed.mappings / "wards.py").write_text(HELPER.replace("upper", "title"))
    with pytest.raises(governance.GovernanceError, match="mapping code changed on disk"):
        governance.approve(store, governed, "adt", 2, actor="ada")
    assert governance.get_revision(store, "adt", 2).state == "proposed"


def test_code_the_channel_does_not_use_is_no_change(store, governed):
    (governed.mappings / "unrelated.py").write_text("X = 2\n")
    with pytest.raises(governance.GovernanceError, match="no change"):
        governance.propose(store, governed, "adt", CHANNEL, actor="erin")


def test_a_package_mapping_brings_its_package_and_its_absolute_imports(tmp_path):
    from router.config.loading import channel_from_text

    folder = tmp_path / "m"
    (folder / "lab").mkdir(parents=True)
    (folder / "lab" / "__init__.py").write_text("")
    (folder / "lab" / "orders.py").write_text("from tie_mappings.codes import C\n")
    (folder / "codes.py").write_text("C = 1\n")
    text = CHANNEL.replace("adt_map:normalise", "lab.orders:normalise")
    channel = channel_from_text(text, tmp_path / "adt.yaml")
    assert list(sources(folder, channel)) == ["codes.py", "lab/__init__.py", "lab/orders.py"]


def test_a_listing_leaves_the_code_out_and_one_revision_has_it(store, governed):
    [listed] = governance.list_revisions(store, "adt")
    assert (listed.mappings, listed.mappings_sha256 is not None) == ({}, True)
    assert governance.get_revision(store, "adt", 1).mappings["wards.py"] == HELPER


def test_a_rollback_to_a_revision_that_ran_other_code_says_to_restore_it(store, governed):
    (governed.mappings / "wards.py").write_text(HELPER.replace("upper", "lower"))
    governance.propose(store, governed, "adt", CHANNEL, actor="erin")
    governance.approve(store, governed, "adt", 2, actor="ada")
    with pytest.raises(governance.GovernanceError, match="#1 ran other mapping code"):
        governance.rollback(store, governed, "adt", 1, actor="erin")
    (governed.mappings / "wards.py").write_text(HELPER)  # restored from git
    assert governance.rollback(store, governed, "adt", 1, actor="erin").number == 3
