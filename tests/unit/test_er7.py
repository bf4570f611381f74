"""The lazy ER7 reader, field paths, escapes and batch splitting, on the real samples."""

from pathlib import Path

import pytest

from router.hl7v2 import (
    ANY,
    Er7Error,
    Er7Message,
    FieldPath,
    escape,
    parse_path,
    split_messages,
    unescape,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
ORU_NHS = "ORU_R01_nhs_nwgmsa_v251.hl7"  # CR-separated, v2.5.1
OML_NHS = "OML_O21_nhs_nwgmsa_v251.hl7"  # CR-separated, v2.5.1
OML_CDC = "OML_O21_v251_cdc_ochsner.hl7"  # LF-separated, v2.5.1, 4 OBX, subcomponents
ORU_V23 = "ORU_R01_v23_cdc_epic_mayo.hl7"  # LF-separated, v2.3, NTE comments
ORU_V24 = "ORU_R01_v24_python-hl7_GHH.hl7"  # CR-separated, v2.4
SAMPLES = [ORU_NHS, OML_NHS, OML_CDC, ORU_V23, ORU_V24]


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def message(name: str) -> Er7Message:
    return Er7Message(sample(name))


# --- paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("MSH-9", FieldPath("MSH", None, 9, None, None, None)),
        ("MSH-9.1", FieldPath("MSH", None, 9, None, 1, None)),
        ("PID-3(2).1", FieldPath("PID", None, 3, 2, 1, None)),
        ("PID-3.1.2", FieldPath("PID", None, 3, None, 1, 2)),
        ("OBX(2)-5", FieldPath("OBX", 2, 5, None, None, None)),
        ("OBX(*)-3.1", FieldPath("OBX", ANY, 3, None, 1, None)),
        ("PID-3(*).1", FieldPath("PID", None, 3, ANY, 1, None)),
        ("obx(3)-5(2).4.1", FieldPath("OBX", 3, 5, 2, 4, 1)),
        ("ZU1-12", FieldPath("ZU1", None, 12, None, None, None)),
    ],
)
def test_parse_path_forms(path: str, expected: FieldPath) -> None:
    assert parse_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        "PID",
        "PID-",
        "PID-0",
        "PID-3(0)",
        "OBX(0)-5",
        "PID-3.0",
        "PID-3.1.0",
        "PI-3",
        "PIDX-3",
        "1ID-3",
        "PID-3.",
        "PID-3..1",
        "PID-3.1.2.3",
        "PID-a",
        "PID-3(x)",
        "PID-3.1(2)",
        "PID-3-4",
    ],
)
def test_parse_path_rejects_malformed(path: str) -> None:
    with pytest.raises(ValueError, match="bad field path"):
        parse_path(path)


def test_parse_path_is_cached() -> None:
    assert parse_path("PID-3(2).1") is parse_path("PID-3(2).1")


# --- MSH numbering --------------------------------------------------------------------------


def test_msh_numbering_follows_hl7() -> None:
    msg = message(ORU_NHS)
    assert msg.get("MSH-1") == "|"
    assert msg.get("MSH-2") == "^~\\&"
    assert msg.get("MSH-3") == "iGene"
    assert msg.get("MSH-4") == "699X0"
    assert msg.get("MSH-5") == "EPIC"
    assert msg.get("MSH-6") == "R0A"
    assert msg.get("MSH-7") == "20190514102527+0200"
    assert msg.get("MSH-8") is None
    assert msg.get("MSH-9") == "ORU^R01^ORU_R01"
    assert msg.get("MSH-9.2") == "R01"
    assert msg.get("MSH-10") == "5051095-201905141025"
    assert msg.get("MSH-11") == "T"
    assert msg.get("MSH-12") == "2.5.1"
    assert msg.get("MSH-15") == "AL"
    assert msg.get("MSH-16") is None


def test_msh_2_is_never_split_or_unescaped() -> None:
    msg = message(ORU_NHS)
    assert msg.get_all("MSH-2") == ["^~\\&"]
    assert msg.get("MSH-2.1") == "^~\\&"
    assert msg.get("MSH-2.2") is None
    assert msg.get("MSH-2(2)") is None


def test_msh_components_of_an_hd() -> None:
    msg = message(OML_CDC)
    assert msg.get("MSH-3") == "13^1.2.840.114350.1.13.286.2.7.2.695071^ISO"
    assert msg.get("MSH-3.2") == "1.2.840.114350.1.13.286.2.7.2.695071"
    assert msg.get("MSH-3.3") == "ISO"
    assert msg.get("MSH-16") == "NE"


# --- repetitions, components, subcomponents ----------------------------------------------


def test_field_repetitions() -> None:
    msg = message(ORU_NHS)
    assert msg.get("PID-3") == "633^^^R0A^MR"
    assert msg.get("PID-3(2)") == "9449305552^^^NHS^NH"
    assert msg.get("PID-3(2).1") == "9449305552"
    assert msg.get("PID-3(2).4") == "NHS"
    assert msg.get("PID-3(3)") is None
    assert msg.get_all("PID-3.1") == ["633", "9449305552"]
    assert msg.get_all("PID-3(*).5") == ["MR", "NH"]
    assert msg.get_all("PID-3(2).5") == ["NH"]


def test_subcomponents() -> None:
    msg = message(OML_CDC)
    assert msg.get("SPM-2.2.1") == "24LADH-318X0008"
    assert msg.get("SPM-2.2.2") == "Beaker"
    assert msg.get("SPM-2.2.3") is None
    assert msg.get("SPM-2.1") is None  # SPM-2 starts with an empty component


def test_non_leaf_paths_return_raw_text() -> None:
    msg = message(OML_CDC)
    assert msg.get("SPM-2") == "^24LADH-318X0008&Beaker"
    assert msg.get("SPM-2.2") == "24LADH-318X0008&Beaker"
    assert msg.get("PID-5") == "PKUSS^GIRL BEAKER"


def test_segment_repetitions() -> None:
    msg = message(OML_CDC)
    assert msg.get("OBX-3.1") == "57714-8"
    assert msg.get("OBX(2)-5") == "No"
    assert msg.get("OBX(4)-3.2") == "Name of Formula(s)"
    assert msg.get("OBX(5)-3") is None
    codes = ["57714-8", "82312-0", "67704-7", "PLT3280"]
    assert msg.get_all("OBX(*)-3.1") == codes
    assert msg.get_all("OBX-3.1") == codes
    assert msg.get_all("OBX(2)-3.1") == ["82312-0"]
    assert msg.get("OBX(*)-3.1") == "57714-8"


def test_get_without_index_means_the_first_and_star_the_first_non_empty() -> None:
    raw = "MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\rPID|1||^^^X~42^^^NHS\rOBX|1\rOBX|2|ST|C2\r"
    msg = Er7Message(raw)
    assert msg.get("PID-3.1") is None  # the first repetition's PID-3.1 is empty
    assert msg.get("PID-3(*).1") == "42"
    assert msg.get_all("PID-3.1") == ["42"]
    assert msg.get("OBX-3") is None  # the first OBX has no OBX-3
    assert msg.get("OBX(*)-3") == "C2"
    assert msg.get_all("OBX-3") == ["C2"]


def test_get_all_skips_empty_values() -> None:
    msg = message(ORU_V23)
    assert msg.segment_names().count("NTE") == 28
    notes = msg.get_all("NTE-3")
    assert len(notes) == 25  # three NTE carry an empty NTE-3
    assert notes[0] == "This individual DOES NOT have the factor V Leiden F5"
    assert msg.get("NTE(8)-3") is None
    assert msg.get("OBR-3(2).2") == "MAYO"


def test_absent_segments_and_fields() -> None:
    msg = message(ORU_NHS)
    assert msg.get("ZZZ-1") is None
    assert msg.get_all("ZZZ-1") == []
    assert msg.get("NTE-3") is None
    assert msg.get("PID-2") is None  # present but empty
    assert msg.get("PID-99") is None
    assert msg.get("PID-5.9") is None
    assert msg.get("PID(2)-3") is None
    assert msg.get("MSH-30") is None


def test_segment_names_and_segments() -> None:
    msg = message(OML_CDC)
    names = msg.segment_names()
    assert names[:9] == ["MSH", "PID", "PD1", "NK1", "PV1", "IN1", "GT1", "ORC", "OBR"]
    assert names[9:] == ["OBX", "OBX", "OBX", "OBX", "SPM"]
    segments = msg.segments
    assert len(segments) == 14
    assert segments[-1].startswith("SPM|1|")
    segments.clear()  # a copy: the message is unaffected
    assert msg.get("SPM-1") == "1"


def test_segment_ids_in_paths_are_case_insensitive() -> None:
    msg = message(ORU_NHS)
    assert msg.get("pid-3(2).1") == msg.get("PID-3(2).1") == "9449305552"


# --- escapes ---------------------------------------------------------------------------------


def test_escapes_decoded_at_leaf_level_in_sample() -> None:
    msg = message(OML_CDC)
    assert msg.get("OBX(3)-5") == "Human Milk & Formula"
    assert "Human Milk \\T\\ Formula" in msg.to_er7().decode()


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("\\X0D0A\\", "\r\n"),
        ("caf\\XC3A9\\", "café"),
        ("line 1\\.br\\line 2", "line 1\nline 2"),
        ("\\H\\bold\\N\\ text", "bold text"),
        ("keep \\.sp\\ and \\C2842\\", "keep \\.sp\\ and \\C2842\\"),
        ("bad hex \\XZZ\\", "bad hex \\XZZ\\"),
        ("unterminated \\F", "unterminated \\F"),
        ("no escapes", "no escapes"),
    ],
)
def test_unescape(escaped: str, plain: str) -> None:
    assert unescape(escaped) == plain


def test_unescape_hex_uses_the_codec() -> None:
    assert unescape("caf\\XE9\\", codec="latin-1") == "café"


def test_unescape_hex_that_utf_8_cannot_read_is_latin_1() -> None:
    """Undeclared 8-bit text is read as latin-1; so are hex escapes of such bytes."""
    assert unescape("85 \\XB5\\mol/L") == "85 µmol/L"
    raw = b"MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\rOBX|1|NM|X||85|\\XB5\\mol/L\r"
    assert Er7Message(raw).get("OBX-6") == "µmol/L"
    assert unescape("caf\\XC3A9\\") == "café"  # what UTF-8 reads stays UTF-8


def test_get_decodes_escapes_in_components_and_subcomponents() -> None:
    raw = (
        "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5\r"
        "NTE|1||a\\S\\b^c\\T\\d&e\\F\\f\\R\\g\\E\\h\r"
        "NTE|2||\\H\\x\\N\\\r"
    )
    msg = Er7Message(raw)
    assert msg.get("NTE-3") == "a\\S\\b^c\\T\\d&e\\F\\f\\R\\g\\E\\h"  # not a leaf: raw
    assert msg.get("NTE-3.1") == "a^b"
    assert msg.get("NTE-3.2") == "c\\T\\d&e\\F\\f\\R\\g\\E\\h"  # has subcomponents: raw
    assert msg.get("NTE-3.2.1") == "c&d"
    assert msg.get("NTE-3.2.2") == "e|f~g\\h"
    assert msg.get("NTE(2)-3") == "x"


@pytest.mark.parametrize(
    "text", ["a|b^c~d\\e&f", "\\F\\ literally", "multi\r\nline", "plain", "", "é€"]
)
def test_escape_round_trips(text: str) -> None:
    escaped = escape(text)
    assert not set("|^~&\r\n") & set(escaped)
    assert unescape(escaped) == text


def test_escape_with_other_delimiters_and_truncation_character() -> None:
    escaped = escape("a#b!c|d", field_sep="#", encoding="!~\\&|")
    assert escaped == "a\\F\\b\\S\\c\\P\\d"
    assert unescape(escaped, field_sep="#", encoding="!~\\&|") == "a#b!c|d"


def test_other_delimiters_are_honoured() -> None:
    raw = "MSH#!~\\&#APP#FAC#RCV#RFAC#20240101##ADT!A01#X1#P#2.4\rPID#1##12!!!NHS~34\r"
    msg = Er7Message(raw)
    assert msg.field_sep == "#"
    assert msg.encoding == "!~\\&"
    assert msg.get("MSH-1") == "#"
    assert msg.get("MSH-9.2") == "A01"
    assert msg.get("PID-3.4") == "NHS"
    assert msg.get_all("PID-3.1") == ["12", "34"]


# --- separators, input types, charsets --------------------------------------------------


def test_lf_and_crlf_input_read_like_cr() -> None:
    cr = sample(ORU_NHS)
    for variant in (cr.replace(b"\r", b"\n"), cr.replace(b"\r", b"\r\n")):
        msg = Er7Message(variant)
        assert msg.get("PID-3(2).1") == "9449305552"
        assert msg.segment_names() == ["MSH", "PID", "PV1", "ORC", "OBR", "OBX"]
        assert msg.to_er7() == cr.rstrip(b"\r")


def test_lf_sample_normalises_to_cr() -> None:
    data = sample(OML_CDC)
    assert b"\r" not in data
    out = Er7Message(data).to_er7()
    assert out == data.strip().replace(b"\n", b"\r")
    assert not out.endswith(b"\r")


def test_blank_lines_and_leading_whitespace_are_ignored() -> None:
    raw = b"\r\n  \nMSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r\n\r\n  \r\nPID|1||42\n\n"
    msg = Er7Message(raw)
    assert msg.segments == ["MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5", "PID|1||42"]
    assert msg.get("PID-3") == "42"


def test_str_and_bytes_input_agree() -> None:
    data = sample(ORU_V24)
    as_bytes, as_str = Er7Message(data), Er7Message(data.decode())
    assert as_bytes.segments == as_str.segments
    assert as_str.get("OBX(2)-5.2") == "182"


def test_msh_18_latin_1_decodes_bytes() -> None:
    raw = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5||||||8859/1\rPID|1||1||Zoë^Renée\r"
    msg = Er7Message(raw.encode("latin-1"))
    assert msg.codec == "latin-1"
    assert msg.get("PID-5.2") == "Renée"
    assert msg.to_er7() == raw.rstrip("\r").encode("latin-1")


def test_utf_8_is_the_default_and_undeclared_8_bit_bytes_are_read_one_a_character() -> None:
    good = Er7Message("MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rPID|1||1||Zoë\r".encode())
    assert good.codec == "utf-8"
    assert good.get("PID-5") == "Zoë"
    raw = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rPID|1||1||Zo\xeb"
    undeclared = Er7Message(raw)
    assert undeclared.codec == "latin-1"
    assert undeclared.get("PID-5") == "Zo\xeb"
    assert undeclared.to_er7() == raw
    declared = Er7Message(raw.replace(b"|2.5", b"|2.5||||||UNICODE UTF-8"))
    assert declared.codec == "utf-8"
    assert declared.get("PID-5") == "Zo\ufffd"


def test_msh_18_unicode_utf_8_and_hex_escape() -> None:
    raw = "MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rNTE|1||\\XC3A9\\ é\r"
    assert Er7Message(raw.encode()).get("NTE-3") == "é é"


# --- broken input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "no MSH segment"),
        (b"   \r\n", "no MSH segment"),
        (b"\x00\xff\xfe\x80junk|^~\\&", "no MSH segment"),
        (b"PID|1||42\rMSH|^~\\&|A", "no MSH segment"),
        (b"msh|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5", "no MSH segment"),
        (b"MSH", "invalid encoding characters"),
        (b"MSH|^~|A|B|C|D|1||ADT^A01|1|P|2.5", "invalid encoding characters"),
        (b"MSH|^~\\&#!|A|B|C|D|1||ADT^A01|1|P|2.5", "invalid encoding characters"),
        (b"MSH|^^\\&|A|B|C|D|1||ADT^A01|1|P|2.5", "invalid encoding characters"),
        (b"MSH|^~|&|A|B|C|D|1||ADT^A01|1|P|2.5", "invalid encoding characters"),
        (b"MSHA^~\\&A|B", "invalid encoding characters"),
        (b"MSH|^~ &|A|B|C|D|1||ADT^A01|1|P|2.5", "invalid encoding characters"),
    ],
)
def test_broken_input_raises_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(Er7Error, match=reason):
        Er7Message(raw)


def test_er7_error_is_a_value_error() -> None:
    assert issubclass(Er7Error, ValueError)


# --- batch files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_split_single_sample(name: str) -> None:
    data = sample(name)
    (only,) = split_messages(data)
    assert only == Er7Message(data).to_er7()
    assert only.startswith(b"MSH|")
    assert b"\n" not in only
    assert not only.endswith(b"\r")


def test_split_batch_with_envelope_blank_lines_and_mixed_line_ends() -> None:
    parts = [sample(name) for name in SAMPLES]
    data = (
        b"\xef\xbb\xbfFHS|^~\\&|TIE\r\nBHS|^~\\&|TIE\r\n\r\n"
        + b"\n\n".join(parts)
        + b"\r\nBTS|5\r\nFTS|1\r\n"
    )
    messages = split_messages(data)
    assert messages == [Er7Message(part).to_er7() for part in parts]
    assert [Er7Message(m).get("MSH-10") for m in messages] == [
        "5051095-201905141025",
        "9612365d-52a4-4fab-87e7-8a09d753f095",
        "29",
        "169066674328696234",
        "CNTRL-3456",
    ]


def test_split_empty_and_envelope_only() -> None:
    assert split_messages(b"") == []
    assert split_messages(b"FHS|^~\\&\nBHS|^~\\&\nBTS|0\nFTS|1\n") == []


def test_split_rejects_a_segment_before_the_first_msh() -> None:
    with pytest.raises(Er7Error, match="before the first MSH"):
        split_messages(b"PID|1||42\nMSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\n")
