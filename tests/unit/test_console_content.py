"""How the console shows content: HL7 v2 fields numbered as HL7 numbers them, JSON
indented, anything unreadable shown as it came (and always escaped by the templates)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from router.console.content import view
from router.console.templating import age, templates


def test_hl7_fields_are_numbered_from_msh_1_the_field_separator():
    shown = view(b"MSH|^~\\&|LAB|R0A|||||ORU^R01|42|P|2.5.1\rPID|1||9449305552^^^NHS^NH\r", "hl7v2")
    assert shown.kind == "hl7"
    msh, pid = shown.segments
    assert [(f.name, f.value) for f in msh.fields[:3]] == [
        ("MSH-1", "|"),
        ("MSH-2", "^~\\&"),
        ("MSH-3", "LAB"),
    ]
    assert msh.fields[0].repetitions == [["|"]] and msh.fields[1].repetitions == [["^~\\&"]]
    assert ("MSH-10", "42") in [(f.name, f.value) for f in msh.fields]
    assert pid.fields[1].name == "PID-3"
    assert pid.fields[1].repetitions == [["9449305552", "", "", "NHS", "NH"]]


def test_a_repeating_field_is_split_into_its_repetitions_then_components():
    shown = view(b"MSH|^~\\&|PAS|R0A\rPID|1||633^^^R0A^MR~9449305552^^^NHS^NH\r", "hl7v2")
    pid3 = shown.segments[1].fields[1]
    assert pid3.repetitions == [["633", "", "", "R0A", "MR"], ["9449305552", "", "", "NHS", "NH"]]


def test_json_is_indented_and_text_that_is_not_hl7_is_kept():
    assert view(b'{"resourceType":"Bundle"}', "fhir+json").text == (
        '{\n  "resourceType": "Bundle"\n}'
    )
    broken = view(b"MSH|", "hl7v2")
    assert broken.kind == "text" and broken.problem and broken.text == "MSH|"
    assert view(b"\xff\xfe binary", "application/octet-stream").text == "\ufffd\ufffd binary"


def test_templates_escape_whatever_their_name():
    hostile = "<script>alert(1)</script>"
    page = templates.env.from_string("{{ value }}").render(value=hostile)
    assert page == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_age_reads_at_a_glance():
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert age(now - timedelta(seconds=42), now) == "42s"
    assert age(now - timedelta(minutes=3, seconds=5), now) == "3m 5s"
    assert age(now - timedelta(hours=5, minutes=1), now) == "5h 1m"
    assert age(now - timedelta(days=3), now) == "3d"
