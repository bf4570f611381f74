"""MSH header reading, ACK building/reading and strict (hl7apy) conformance of every ACK."""

import re
from dataclasses import replace
from pathlib import Path

import pytest

from router.hl7v2 import (
    AckError,
    AckResult,
    Er7Error,
    Er7Message,
    MshHeader,
    StructureError,
    ack_code,
    build_ack,
    build_reject,
    parse_ack,
    parse_header,
    parse_structured,
    should_send,
    validate_strict,
    wants_commit_ack,
)
from router.hl7v2.ack import _full_ack, _plain_ack

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
ORU_NHS = "ORU_R01_nhs_nwgmsa_v251.hl7"
OML_NHS = "OML_O21_nhs_nwgmsa_v251.hl7"
OML_CDC = "OML_O21_v251_cdc_ochsner.hl7"
ORU_V23 = "ORU_R01_v23_cdc_epic_mayo.hl7"
ORU_V24 = "ORU_R01_v24_python-hl7_GHH.hl7"
# Samples whose own MSH-3..6 are valid for hl7apy, so that ACKs copying them can be.
CONFORMANT = [ORU_V23, ORU_V24, ORU_NHS, OML_NHS]
OML_NHS_ID = "9612365d-52a4-4fab-87e7-8a09d753f095"
OUTCOMES = ["accept", "error", "reject"]
HOSTILE = "bad | field ^ comp ~ rep \\ esc & sub\r\nsecond line\x1c\x0b" + "x" * 300


def header(name: str) -> MshHeader:
    return parse_header((DATA / name).read_bytes())


def ack_for(name: str, mode: str, outcome: str) -> bytes:
    """An ACK in original ("") or enhanced ("AL") mode, with an ERR unless accepted."""
    original = replace(header(name), accept_ack_type=mode)
    error = None if outcome == "accept" else AckError("207", HOSTILE, "MSH^1^10")
    return build_ack(original, ack_code(original, outcome), text=HOSTILE, error=error)


# --- parse_header ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            ORU_NHS,
            ("2.5.1", "ORU^R01^ORU_R01", "ORU", "R01", "5051095-201905141025", "T", "AL", ""),
        ),
        (OML_NHS, ("2.5.1", "OML^O21^OML_O21", "OML", "O21", OML_NHS_ID, "T", "AL", "")),
        (OML_CDC, ("2.5.1", "OML^O21^OML_O21", "OML", "O21", "29", "D", "AL", "NE")),
        (ORU_V23, ("2.3", "ORU^R01", "ORU", "R01", "169066674328696234", "D", "", "")),
        (ORU_V24, ("2.4", "ORU^R01", "ORU", "R01", "CNTRL-3456", "P", "", "")),
    ],
)
def test_parse_header_samples(name: str, expected: tuple[str, ...]) -> None:
    h = header(name)
    assert (
        h.version,
        h.message_type,
        h.message_code,
        h.trigger_event,
        h.control_id,
        h.processing_id,
        h.accept_ack_type,
        h.app_ack_type,
    ) == expected
    assert (h.field_sep, h.encoding, h.charset) == ("|", "^~\\&", "")


def test_parse_header_raw_fields() -> None:
    h = header(OML_CDC)
    assert h.sending_app == "13^1.2.840.114350.1.13.286.2.7.2.695071^ISO"
    assert h.sending_facility == "4169"
    assert h.receiving_app == "Natus.LA.STAG^2.16.840.1.114222.4.3.26.3.2"
    assert h.receiving_facility.startswith("Louisiana Office of Public Health Laboratory^")


def test_parse_header_reads_only_the_first_line() -> None:
    first = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A04^ADT_A01|X1|P|2.4"
    for end in (b"\r", b"\n", b"\r\n"):
        h = parse_header(b"\x0b  " + first + end + b"\xff\xfe not ER7 at all\x00")
        assert (h.control_id, h.trigger_event, h.version) == ("X1", "A04", "2.4")


def test_parse_header_defaults_version_and_decodes_latin_1() -> None:
    raw = "MSH|^~\\&|Hôpital|B|C|D|1||ADT^A01|X1|P|||||||8859/1\rPID|1".encode("latin-1")
    h = parse_header(raw)
    assert h.version == "2.5"
    assert h.sending_app == "Hôpital"
    assert h.charset == "8859/1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "no MSH segment"),
        (b"\x00\x01\xff garbage", "no MSH segment"),
        (b"PID|1||42\rMSH|^~\\&|A", "no MSH segment"),
        (b"MSH|^~|A|B|C|D|1||ADT^A01|X1|P|2.5", "invalid encoding characters"),
        (b"MSH|^^\\&|A|B|C|D|1||ADT^A01|X1|P|2.5", "invalid encoding characters"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01||P|2.5", r"empty MSH-10 \(message control id\)"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01", r"empty MSH-10 \(message control id\)"),
        (b"MSH|^~\\&|A|B|C|D|1|||X1|P|2.5", r"missing MSH-9 \(message type\)"),
        (b"MSH|^~\\&|A|B|C|D|1||^A01|X1|P|2.5", r"missing MSH-9 \(message type\)"),
    ],
)
def test_parse_header_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(Er7Error, match=reason):
        parse_header(raw)


# --- modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "on_success", "on_failure"),
    [
        ("", True, True),
        ("AL", True, True),
        ("NE", False, False),
        ("ER", False, True),
        ("SU", True, False),
    ],
)
def test_should_send(mode: str, on_success: bool, on_failure: bool) -> None:
    h = replace(header(ORU_V24), accept_ack_type=mode)
    assert should_send(h, success=True) is on_success
    assert should_send(h, success=False) is on_failure


@pytest.mark.parametrize(
    ("mode", "app_mode", "enhanced"),
    [
        ("", "", False),
        ("AL", "", True),
        ("NE", "", True),
        ("ER", "", True),
        ("SU", "", True),
        ("XX", "", False),
        ("", "AL", True),  # MSH-16 alone: enhanced mode all the same
        ("", "NE", True),
        ("", "XX", False),
    ],
)
def test_wants_commit_ack_and_ack_code(mode: str, app_mode: str, enhanced: bool) -> None:
    h = replace(header(ORU_V24), accept_ack_type=mode, app_ack_type=app_mode)
    assert wants_commit_ack(h) is enhanced
    codes = ["CA", "CE", "CR"] if enhanced else ["AA", "AE", "AR"]
    assert [ack_code(h, outcome) for outcome in OUTCOMES] == codes


# --- build_ack ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [ORU_NHS, OML_NHS, OML_CDC, ORU_V23, ORU_V24])
def test_ack_swaps_sender_and_receiver_and_echoes_control_id(name: str) -> None:
    original = Er7Message((DATA / name).read_bytes())
    ack = Er7Message(build_ack(parse_header((DATA / name).read_bytes()), "AA"))
    assert [ack.get(f"MSH-{n}") for n in (3, 4, 5, 6)] == [
        original.get(f"MSH-{n}") for n in (5, 6, 3, 4)
    ]
    assert ack.get("MSA-1") == "AA"
    assert ack.get("MSA-2") == original.get("MSH-10")
    assert ack.get("MSH-11") == original.get("MSH-11")
    assert ack.get("MSH-12") == original.get("MSH-12")
    assert ack.segment_names() == ["MSH", "MSA"]


@pytest.mark.parametrize(
    ("name", "message_type"),
    [
        (ORU_V23, "ACK^R01"),
        (ORU_V24, "ACK^R01^ACK"),
        (ORU_NHS, "ACK^R01^ACK"),
        (OML_NHS, "ACK^O21^ACK"),
    ],
)
def test_ack_message_type_by_version(name: str, message_type: str) -> None:
    assert Er7Message(build_ack(header(name), "AA")).get("MSH-9") == message_type


def test_msh_16_alone_gets_a_commit_ack_always() -> None:
    h = replace(header(ORU_V24), accept_ack_type="", app_ack_type="AL")
    assert should_send(h, success=True) and should_send(h, success=False)
    ack = Er7Message(build_ack(h, ack_code(h, "accept")))
    assert (ack.get("MSA-1"), ack.get("MSH-15"), ack.get("MSH-16")) == ("CA", "NE", "NE")


def test_ack_header_fields() -> None:
    h = header(ORU_NHS)
    raw = build_ack(h, "CA")
    assert b"\n" not in raw
    assert not raw.endswith(b"\r")
    assert raw.count(b"\r") == 1
    ack = Er7Message(raw)
    assert re.fullmatch(r"\d{14}", ack.get("MSH-7") or "")
    control_id = ack.get("MSH-10") or ""
    assert re.fullmatch(r"[0-9a-f]{20}", control_id)
    assert control_id != Er7Message(build_ack(h, "CA")).get("MSH-10")
    assert (ack.get("MSH-15"), ack.get("MSH-16")) == ("NE", "NE")  # enhanced: no ACK of an ACK
    original_mode = Er7Message(build_ack(header(ORU_V24), "AA"))
    assert original_mode.get("MSH-15") is None
    assert len(original_mode.segments[0].split("|")) == 12  # nothing after MSH-12


@pytest.mark.parametrize(
    ("processing_id", "version", "answered", "message_type"),
    [
        ("P", "2.5.1^GBR^2.0", ("P", "2.5.1^GBR^2.0"), "ACK^A01^ACK"),  # all components
        ("T^A", "2.3.1^GBR", ("T^A", "2.3.1^GBR"), "ACK^A01^ACK"),  # 2.3.1: has MSG.3
        ("P", "2.3^GBR", ("P", "2.3^GBR"), "ACK^A01"),
        ("", "", ("P", "2.5"), "ACK^A01^ACK"),  # required in the ACK: filled in when empty
    ],
)
def test_ack_echoes_msh_11_and_msh_12_as_they_came(
    processing_id: str, version: str, answered: tuple[str, str], message_type: str
) -> None:
    raw = f"MSH|^~\\&|A|F|B|G|20240101||ADT^A01^ADT_A01|C1|{processing_id}|{version}\rPID|1"
    ack = Er7Message(build_ack(parse_header(raw.encode()), "AA"))
    assert (ack.get("MSH-11"), ack.get("MSH-12"), ack.get("MSH-9")) == (*answered, message_type)


def test_ack_uses_given_timestamp_and_control_id() -> None:
    ack = Er7Message(build_ack(header(ORU_V24), "AA", control_id="C1", timestamp="20240102030405"))
    assert (ack.get("MSH-7"), ack.get("MSH-10")) == ("20240102030405", "C1")


def test_ack_keeps_the_original_delimiters() -> None:
    raw = b"MSH#!~\\&#APP#FAC#RCV#RFAC#20240101##ADT!A01!ADT_A01#X1#P#2.5\rPID#1\r"
    error = AckError("101", "PID-3 missing: a#b!c", "PID!1!3")
    ack_bytes = build_ack(parse_header(raw), "AE", text="x#y!z", error=error)
    assert ack_bytes.startswith(b"MSH#!~\\&#RCV#RFAC#APP#FAC#")
    ack = Er7Message(ack_bytes)
    assert ack.get("MSH-9") == "ACK!A01!ACK"
    assert ack.get("MSA-3") == "x#y!z"
    assert ack.get("ERR-3.1") == "101"
    assert ack.get("ERR-8") == "PID-3 missing: a#b!c"
    validate_strict(ack_bytes)


def test_ack_without_text_has_no_msa_3() -> None:
    assert build_ack(header(ORU_V24), "AA", control_id="C1").endswith(b"\rMSA|AA|CNTRL-3456")


@pytest.mark.parametrize("name", [ORU_NHS, OML_NHS])
def test_err_layout_v25(name: str) -> None:
    error = AckError("207", "database | down", "MSH^1^10")
    ack = Er7Message(build_ack(header(name), "CE", error=error))
    assert ack.get("ERR-1") is None
    assert ack.get("ERR-2") == "MSH^1^10"
    assert ack.get("ERR-3") == "207^Application internal error^HL70357"
    assert ack.get("ERR-4") == "E"
    assert ack.get("ERR-8") == "database | down"
    assert "ERR||MSH^1^10|207^Application internal error^HL70357|E||||database \\F\\ down" in (
        ack.segments
    )


@pytest.mark.parametrize("name", [ORU_V23, ORU_V24])
def test_err_layout_v23_v24(name: str) -> None:
    error = AckError("204", "unknown patient & ward", "PID^1^3")
    ack = Er7Message(build_ack(header(name), "AE", error=error))
    assert ack.segments[-1] == "ERR|PID^1^3^204&unknown patient \\T\\ ward&HL70357"
    assert ack.get("ERR-1.4.2") == "unknown patient & ward"
    assert ack.get("ERR-2") is None
    assert ack.get("ERR-3") is None


def test_err_without_location_or_text() -> None:
    v25 = Er7Message(build_ack(header(ORU_NHS), "AR", error=AckError("200", "")))
    assert v25.segments[-1] == "ERR|||200^Unsupported message type^HL70357|E"
    v23 = Er7Message(build_ack(header(ORU_V23), "AR", error=AckError("200", "")))
    assert v23.segments[-1] == "ERR|^^^200&Unsupported message type&HL70357"


@pytest.mark.parametrize("name", CONFORMANT)
def test_texts_are_escaped_single_line_and_bounded(name: str) -> None:
    raw = ack_for(name, "", "error")
    for forbidden in (b"\n", b"\x1c", b"\x0b"):
        assert forbidden not in raw
    ack = Er7Message(raw)
    assert len(raw.split(b"\r")) == 3
    msa_3 = ack.segments[1].split("|")[3]
    assert len(msa_3) <= 80
    assert (ack.get("MSA-3") or "").startswith("bad | field ^ comp ~ rep \\ esc & sub second line")
    err = ack.segments[2].split("|")
    if ack.get("MSH-12") in ("2.3", "2.4"):
        assert len(err[1]) <= 80  # ERR-1 (ELD) is 80 characters in all
    else:
        assert 190 <= len(err[8]) <= 200
        assert (ack.get("ERR-8") or "").startswith("bad | field ^ comp")


def test_truncation_never_cuts_an_escape() -> None:
    ack = Er7Message(build_ack(header(ORU_NHS), "AE", text="|" * 100))
    msa_3 = ack.segments[1].split("|")[3]
    assert msa_3 == "\\F\\" * 26
    assert ack.get("MSA-3") == "|" * 26


def test_msa_3_is_withdrawn_from_v27() -> None:
    error = AckError("207", "broken")
    v27 = Er7Message(
        build_ack(replace(header(ORU_NHS), version="2.7"), "AE", text="t", error=error)
    )
    assert v27.get("MSA-3") is None
    assert v27.get("ERR-8") == "broken"
    v26 = Er7Message(build_ack(replace(header(ORU_NHS), version="2.6"), "AE", text="t"))
    assert v26.get("MSA-3") == "t"


def test_ack_copies_charset_and_encodes_with_it() -> None:
    raw = "MSH|^~\\&|A|B|C|D|1||ADT^A01^ADT_A01|X1|P|2.5||||||8859/1\r".encode("latin-1")
    ack = build_ack(parse_header(raw), "AE", text="refusé")
    assert ack.endswith("|refusé".encode("latin-1"))
    assert Er7Message(ack).get("MSH-18") == "8859/1"
    validate_strict(ack)


# --- strict conformance (hl7apy) -----------------------------------------------------------


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("mode", ["", "AL"])
@pytest.mark.parametrize("name", CONFORMANT)
def test_every_ack_passes_strict_validation(name: str, mode: str, outcome: str) -> None:
    raw = ack_for(name, mode, outcome)
    assert Er7Message(raw).get("MSA-1") in (["CA", "CE", "CR"] if mode else ["AA", "AE", "AR"])
    validate_strict(raw)


@pytest.mark.parametrize("version", ["2.2", "2.3.1", "2.5", "2.6", "2.7", "2.8"])
def test_acks_for_other_versions_pass_strict_validation(version: str) -> None:
    h = replace(header(ORU_NHS), version=version)
    validate_strict(build_ack(h, "CE", text="t", error=AckError("207", "x", "MSH^1^10")))


def test_ack_inherits_the_originals_invalid_msh_values() -> None:
    # The Ochsner sample's MSH-6.1 is longer than IS(20); the ACK must copy it into MSH-4.
    with pytest.raises(StructureError, match="Louisiana Office of Public Health Laboratory"):
        validate_strict(ack_for(OML_CDC, "AL", "accept"))


def test_validate_strict_rejects_non_conformant_messages() -> None:
    good = build_ack(header(ORU_NHS), "AA", control_id="C1", timestamp="20240101000000")
    with pytest.raises(StructureError, match="MSA"):
        validate_strict(good.split(b"\rMSA")[0])
    with pytest.raises(StructureError, match="PID"):
        validate_strict(good + b"\rPID|1||42^^^NHS^NH||DOE^JOHN")
    with pytest.raises(StructureError, match="ERR_4"):
        validate_strict(good + b"\rERR|||207^Application internal error^HL70357")
    with pytest.raises(StructureError, match="not an HL7 valid date"):
        validate_strict(good.replace(b"20240101000000", b"2024010100000"))
    with pytest.raises(Er7Error, match="no MSH segment"):
        validate_strict(b"garbage")


def test_validate_strict_accepts_lf_separated_input() -> None:
    good = build_ack(header(ORU_V23), "AE", error=AckError("207", "x", "MSH^1^10"))
    validate_strict(good.replace(b"\r", b"\n"))


def test_parse_structured_groups_segments_and_refuses_to_drop_any() -> None:
    tree = parse_structured((DATA / ORU_V23).read_bytes())
    assert tree.name == "ORU_R01"
    assert [child.name for child in tree.children] == ["MSH", "ORU_R01_RESPONSE"]
    ack = build_ack(header(ORU_V23), "AA", control_id="C1")
    assert parse_structured(ack).name == "ACK"  # v2.3 MSH-9 is ACK^R01: no structure part
    with pytest.raises(StructureError, match="ZZZ"):
        parse_structured(ack + b"\rZZZ|1")


# --- build_reject ----------------------------------------------------------------------------


def test_reject_without_header_is_generic() -> None:
    raw = build_reject("no MSH segment")
    ack = Er7Message(raw)
    assert ack.get("MSH-3") == "TIE"
    assert ack.get("MSH-5") is None
    assert ack.get("MSH-9") == "ACK^^ACK"
    assert (ack.get("MSH-11"), ack.get("MSH-12")) == ("P", "2.5")
    assert ack.get("MSA-1") == "AR"
    assert ack.get("MSA-2") is None
    assert ack.get("MSA-3") == "no MSH segment"
    assert ack.get("ERR-3") == "102^Data type error^HL70357"
    assert ack.get("ERR-8") == "no MSH segment"
    # MSA-2 is required, but there is no control id to echo: the only strict failure.
    with pytest.raises(StructureError, match=r"Missing required child MSA\.MSA_2"):
        validate_strict(raw)
    validate_strict(raw.replace(b"MSA|AR||", b"MSA|AR|X|"))


@pytest.mark.parametrize(("name", "code"), [(ORU_V23, "AR"), (ORU_V24, "AR"), (ORU_NHS, "CR")])
def test_reject_with_header(name: str, code: str) -> None:
    h = header(name)
    raw = build_reject("empty MSH-10 (message control id)", h, error_code="101")
    ack = Er7Message(raw)
    assert ack.get("MSA-1") == code
    assert ack.get("MSA-2") == h.control_id
    assert ack.get("MSH-3") == h.receiving_app
    assert parse_ack(raw).error == "empty MSH-10 (message control id)"
    assert "101" in (ack.get("ERR-3.1"), ack.get("ERR-1.4.1"))
    validate_strict(raw)


# --- parse_ack -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFORMANT)
def test_parse_ack_reads_built_acks(name: str) -> None:
    h = header(name)
    error = AckError("206", "record | locked")
    result = parse_ack(build_ack(h, "AE", text="try & retry", error=error))
    assert result.code == "AE"
    assert result.control_id == h.control_id
    assert result.text == "try & retry"
    assert result.error == "record | locked"
    accepted = parse_ack(build_ack(h, "AA"))
    assert (accepted.code, accepted.text, accepted.error) == ("AA", "", "")


def test_parse_ack_falls_back_to_err_3_text() -> None:
    raw = (
        b"MSH|^~\\&|A|B|C|D|1||ACK^R01^ACK|9|P|2.5\n"
        b"MSA|AE|X1\n"
        b"ERR|||207^Application internal error^HL70357|E\n"
    )
    result = parse_ack(raw)
    assert (result.code, result.control_id, result.text) == ("AE", "X1", "")
    assert result.error == "Application internal error"


def test_parse_ack_errors() -> None:
    with pytest.raises(Er7Error, match="no MSA segment"):
        parse_ack(b"MSH|^~\\&|A|B|C|D|1||ACK^R01^ACK|9|P|2.5\r")
    with pytest.raises(Er7Error, match="empty MSA-1"):
        parse_ack(b"MSH|^~\\&|A|B|C|D|1||ACK^R01^ACK|9|P|2.5\rMSA||X1\r")
    with pytest.raises(Er7Error, match="no MSH segment"):
        parse_ack(b"MSA|AA|X1\r")


_MSH = b"MSH|^~\\&|RECV|FAC|SEND|FAC|20261130120000||ACK^O21^ACK|A1|P|2.5.1"


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        (_MSH + b"\rMSA|AA|MSG00001\r", True),
        (_MSH + b"\r\nMSA|CA|MSG00001|all well\r\n", True),
        (_MSH + b"\rSFT|Vendor|1.0\rMSA|AE|MSG00001|try again", True),
        (_MSH + b"\rMSA|AA|MSG^00001\r", False),
        (_MSH + b"\rMSA|AE|MSG00001|rows \\T\\ columns\r", False),
        (_MSH + b"\rMSA|AR|MSG00001\rERR|||207^Application internal error^HL70357|E\r", False),
        (_MSH + b"|||||8859/1\rMSA|AE|MSG00001|r\xe9essayez\r", False),
        (_MSH + b"\rmsa|AA|MSG00001\r", False),
        (_MSH + b"\rMSA|AA|first\rMSA|AA|second\r", False),
        (_MSH + b"\rMSA\r", False),
        (_MSH + b"\rMSA||MSG00001\r", False),
    ],
)
def test_parse_ack_reads_a_plain_ack_straight_and_as_the_full_reader_would(
    raw: bytes, plain: bool
) -> None:
    assert (_plain_ack(raw) is not None) == plain
    try:
        expected: AckResult | str = _full_ack(raw)
    except Er7Error as exc:
        expected = str(exc)
    try:
        assert parse_ack(raw) == expected
    except Er7Error as exc:
        assert str(exc) == expected
