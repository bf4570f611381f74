"""The CLI's tables (``print_table``): one word a cell, so columns line up and split."""

from __future__ import annotations

from router.cli.output import print_table


def test_an_empty_value_is_a_dash_like_a_missing_one(capsys):
    """A rejected frame whose MSH-9 and MSH-10 are empty is stored with empty strings: a
    blank cell would shift every later column of its row when read by eye or by ``awk``."""
    rows = [
        {"id": 14, "message_type": "", "control_id": "", "error": "rejected: missing MSH-9"},
        {"id": 12, "message_type": None, "control_id": None, "error": "rejected: no MSH"},
    ]
    print_table(rows, ["id", "message_type", "control_id", "error"])
    _, *lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [["14", "-", "-"], ["12", "-", "-"]]
