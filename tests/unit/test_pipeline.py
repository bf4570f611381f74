"""``router.pipeline.process``: filter, route, transform and plan deliveries, with no store."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from router import mappings
from router.config import ChannelConfig
from router.hl7v2.er7 import Er7Message
from router.hl7v2.header import read_header
from router.message import Message
from router.pipeline import KEY_LENGTH, CompiledChannel, Outcome, compile_channel, process
from router.store.blobs import BlobStore

OML = "OML_O21_nhs_nwgmsa_v251"  # PID-3: 633^^^R0A^MR~9449305552^^^NHS^NH, ORC-2 1601737^R0A
OML_ID = "9612365d-52a4-4fab-87e7-8a09d753f095"
ADT = (  # passes hl7apy's strict validation (every public sample has some flaw)
    b"MSH|^~\\&|EPR|R0A|LAB|699X0|20240101120000||ADT^A01^ADT_A01|ADT-1|P|2.5\r"
    b"EVN|A01|20240101120000\rPID|1||123^^^HOSP^MR||DOE^JOHN\rPV1|1|I"
)

Build = Callable[..., CompiledChannel]


@pytest.fixture
def build(tmp_path: Path) -> Build:
    """Compile a channel from its dict; ``modules`` are mapping files written and mounted first."""

    def _build(data: dict[str, Any], modules: dict[str, str] | None = None) -> CompiledChannel:
        folder = tmp_path / "mappings"
        folder.mkdir(exist_ok=True)
        for name, source in (modules or {}).items():
            (folder / f"{name}.py").write_text(textwrap.dedent(source))
        mappings.mount(folder)
        config = ChannelConfig.model_validate(
            {"name": "test", "source": {"mllp": {"port": 0}}, **data}
        )
        return compile_channel(config)

    return _build


@pytest.fixture
def oml(hl7_samples: dict[str, bytes]) -> bytes:
    return hl7_samples[OML]


def run(channel: CompiledChannel, raw: bytes, uuid: str = "uuid-1") -> Outcome:
    return process(channel, Message(raw, channel.name, uuid=uuid, id=1))


def file_dest(**extra: Any) -> dict[str, Any]:
    return {"file": {"directory": "out"}, **extra}


def with_control_id(raw: bytes, control_id: str) -> bytes:
    return raw.replace(OML_ID.encode(), control_id.encode())


# --- filter and router -----------------------------------------------------


def test_a_message_the_filter_refuses_is_filtered_with_a_readable_reason(build, hl7_samples):
    channel = build(
        {
            "filter": [
                {"field": "MSH-9.1", "in": ["OML", "ORM"]},
                {"field": "MSH-11", "equals": "T"},
            ],
            "destinations": {"lab": file_dest()},
        }
    )
    outcome = run(channel, hl7_samples["ORU_R01_nhs_nwgmsa_v251"])
    assert outcome.status == "filtered"
    assert outcome.reason == "filter not met: MSH-9.1 in [OML, ORM] and MSH-11 = 'T'"
    assert outcome.deliveries == []


def test_a_message_the_filter_accepts_goes_to_the_destination_unchanged(build, oml):
    channel = build(
        {"filter": [{"field": "MSH-9.1", "in": ["OML"]}], "destinations": {"lab": file_dest()}}
    )
    outcome = run(channel, oml)
    assert outcome.status == "processed"
    assert outcome.reason is None
    [delivery] = outcome.deliveries
    assert (delivery.destination, delivery.payload, delivery.content_type) == ("lab", oml, "hl7v2")


def test_every_destination_whose_when_matches_gets_a_delivery(build, oml):
    channel = build(
        {
            "destinations": {
                "by_sender": file_dest(when=[{"field": "MSH-4.1", "equals": "R0A"}]),
                "by_nhs_number": file_dest(when=[{"field": "PID-3.5", "equals": "NH"}]),
                "results_only": file_dest(when=[{"field": "MSH-9.1", "equals": "ORU"}]),
                "everything": file_dest(),
            }
        }
    )
    outcome = run(channel, oml)
    assert outcome.status == "processed"
    assert [d.destination for d in outcome.deliveries] == [
        "by_sender",
        "by_nhs_number",
        "everything",
    ]
    assert all(d.payload == oml for d in outcome.deliveries)


def test_a_message_no_route_takes_is_filtered_with_the_reason(build, oml):
    channel = build(
        {
            "destinations": {
                "results": file_dest(when=[{"field": "MSH-9.1", "equals": "ORU"}]),
                "adt": file_dest(when=[{"field": "MSH-9.1", "equals": "ADT"}]),
            }
        }
    )
    outcome = run(channel, oml)
    assert outcome.status == "filtered"
    assert outcome.reason == "no destination's 'when' matched"
    assert outcome.deliveries == []


def test_a_channel_without_destinations_processes_without_deliveries(build, oml):
    channel = build({"destinations": {}})
    outcome = run(channel, oml)
    assert (outcome.status, outcome.reason, outcome.deliveries) == ("processed", None, [])


def test_filter_and_when_read_the_received_message_not_the_transformed_one(build, oml):
    channel = build(
        {
            "filter": [{"field": "MSH-9.1", "equals": "OML"}],
            "transform": "m:to_oru",
            "destinations": {"lab": file_dest(when=[{"field": "MSH-9.1", "equals": "OML"}])},
        },
        {"m": "def to_oru(message):\n    return message.raw.replace(b'OML^O21', b'ORU^R01')\n"},
    )
    [delivery] = run(channel, oml).deliveries
    assert b"ORU^R01" in delivery.payload


# --- what a transform may return ---------------------------------------------


def test_a_transform_returning_none_filters_the_message(build, oml):
    channel = build(
        {"transform": "m:drop", "destinations": {"lab": file_dest()}},
        {"m": "def drop(message):\n    return None\n"},
    )
    outcome = run(channel, oml)
    assert outcome.status == "filtered"
    assert outcome.reason == "transform m:drop returned nothing"


def test_a_transform_returning_an_empty_list_is_processed_without_deliveries(build, oml):
    channel = build(
        {"transform": "m:nothing", "destinations": {"lab": file_dest()}},
        {"m": "def nothing(message):\n    return []\n"},
    )
    outcome = run(channel, oml)
    assert (outcome.status, outcome.deliveries) == ("processed", [])


def test_a_transform_returning_str_is_delivered_as_utf8(build, oml):
    channel = build(
        {"transform": "m:rename", "destinations": {"lab": file_dest()}},
        {"m": "def rename(message):\n    return message.text.replace('CHISLETT', 'CHISLÉTT')\n"},
    )
    [delivery] = run(channel, oml).deliveries
    assert "CHISLÉTT".encode() in delivery.payload
    assert delivery.content_type == "hl7v2"


def test_a_transform_returning_bytes_is_delivered_as_they_are(build, oml):
    channel = build(
        {"transform": "m:upper", "destinations": {"lab": file_dest()}},
        {"m": "def upper(message):\n    return message.raw.upper()\n"},
    )
    [delivery] = run(channel, oml).deliveries
    assert delivery.payload == oml.upper()


def test_a_transform_returning_a_list_makes_one_delivery_each_with_its_own_msh10(build, oml):
    channel = build(
        {"transform": "m:split", "destinations": {"lab": file_dest(), "copy": file_dest()}},
        {
            "m": """
            def split(message):
                control_id = message.get("MSH-10")
                return [message.raw.replace(control_id.encode(), f"{control_id}-{n}".encode())
                        for n in (1, 2)]
            """
        },
    )
    outcome = run(channel, oml)
    assert [(d.destination, d.idempotency_key) for d in outcome.deliveries] == [
        ("lab", f"{OML_ID}-1"),
        ("lab", f"{OML_ID}-2"),
        ("copy", f"{OML_ID}-1"),
        ("copy", f"{OML_ID}-2"),
    ]


def test_a_transform_returning_a_dict_gives_each_destination_its_own_payload(build, oml):
    channel = build(
        {
            "transform": "m:per_destination",
            "destinations": {"lab": file_dest(), "audit": file_dest(), "unmentioned": file_dest()},
        },
        {
            "m": """
            from router.message import Output

            def per_destination(message):
                return {
                    "lab": [message.raw, message.raw],
                    "audit": Output('{"id": "%s"}' % message.get("MSH-10"), "application/json"),
                }
            """
        },
    )
    outcome = run(channel, oml)
    assert outcome.status == "processed"
    assert [(d.destination, d.content_type) for d in outcome.deliveries] == [
        ("lab", "hl7v2"),
        ("lab", "hl7v2"),
        ("audit", "application/json"),
    ]
    assert outcome.deliveries[2].payload == f'{{"id": "{OML_ID}"}}'.encode()


def test_an_output_keeps_its_content_type_and_its_key_is_the_message_uuid(build, oml):
    channel = build(
        {"transform": "m:as_json", "destinations": {"api": file_dest()}},
        {
            "m": """
            from router.message import Output

            def as_json(message):
                return Output(b'{"resourceType": "Bundle"}', content_type="application/fhir+json")
            """
        },
    )
    [delivery] = run(channel, oml, uuid="3f1c0d7e-uuid").deliveries
    assert delivery.content_type == "application/fhir+json"
    assert delivery.payload == b'{"resourceType": "Bundle"}'
    assert delivery.idempotency_key == "3f1c0d7e-uuid"


def test_a_transform_returning_something_else_is_an_error(build, oml):
    channel = build(
        {"transform": "m:number", "destinations": {"lab": file_dest()}},
        {"m": "def number(message):\n    return 42\n"},
    )
    outcome = run(channel, oml)
    assert outcome.status == "error"
    assert "a mapping returned int; expected bytes, str, Output or a list" in outcome.reason


@pytest.mark.parametrize(
    ("channel_transform", "destination_transform"),
    [
        ("return [message.raw, {'lab': message.raw}]", "return output"),  # a dict in a list
        ("return message.raw", "return {'lab': output}"),  # a dict from a destination transform
    ],
)
def test_a_dict_anywhere_but_the_whole_channel_result_is_an_error(
    build, oml, channel_transform, destination_transform
):
    channel = build(
        {"transform": "m:produce", "destinations": {"lab": file_dest(transform="m:adjust")}},
        {
            "m": f"def produce(message):\n    {channel_transform}\n\n"
            f"def adjust(message, output):\n    {destination_transform}\n"
        },
    )
    outcome = run(channel, oml)
    assert outcome.status == "error"
    assert "TypeError: a mapping returned dict" in outcome.reason
    assert outcome.deliveries == []


def test_a_destination_transform_gets_the_message_and_each_channel_output(build, oml):
    channel = build(
        {
            "transform": "m:two",
            "destinations": {
                "lab": file_dest(transform="m:tag"),
                "plain": file_dest(),
            },
        },
        {
            "m": """
            from router.message import Output

            def two(message):
                return [message.raw, Output(b"second", "text/plain")]

            def tag(message, output):
                assert message.channel == "test"
                suffix = b"|" + message.get("MSH-9.1").encode()
                return Output(output.data + suffix, output.content_type)
            """
        },
    )
    outcome = run(channel, oml)
    assert [(d.destination, d.payload, d.content_type) for d in outcome.deliveries] == [
        ("lab", oml + b"|OML", "hl7v2"),
        ("lab", b"second|OML", "text/plain"),
        ("plain", oml, "hl7v2"),
        ("plain", b"second", "text/plain"),
    ]


def test_a_destination_transform_returning_none_skips_only_that_destination(build, oml):
    channel = build(
        {"destinations": {"lab": file_dest(transform="m:skip"), "archive": file_dest()}},
        {"m": "def skip(message, output):\n    return None\n"},
    )
    outcome = run(channel, oml)
    assert outcome.status == "processed"
    assert [d.destination for d in outcome.deliveries] == ["archive"]


def test_a_destination_transform_returning_str_keeps_the_content_type(build, oml):
    channel = build(
        {"destinations": {"lab": file_dest(transform="m:text")}},
        {"m": "def text(message, output):\n    return output.data.decode().lower()\n"},
    )
    [delivery] = run(channel, oml).deliveries
    assert delivery.payload == oml.lower()
    assert delivery.content_type == "hl7v2"


# --- errors ------------------------------------------------------------------


def test_a_raising_mapping_marks_the_message_error_with_its_traceback(build, oml, hl7_samples):
    channel = build(
        {"transform": "m:picky", "destinations": {"lab": file_dest()}},
        {
            "m": """
            def picky(message):
                if message.get("MSH-9.1") == "OML":
                    raise ValueError("no ward code in PV1-3")
                return message.raw
            """
        },
    )
    outcome = run(channel, oml)
    assert outcome.status == "error"
    assert outcome.deliveries == []
    assert outcome.reason.startswith("Traceback (most recent call last):")
    assert 'm.py", line 4, in picky' in outcome.reason
    assert outcome.reason.rstrip().endswith("ValueError: no ward code in PV1-3")
    assert ("control_id", OML_ID) in outcome.correlations

    other = run(channel, hl7_samples["ORU_R01_nhs_nwgmsa_v251"])
    assert other.status == "processed"
    assert len(other.deliveries) == 1


def test_a_raising_destination_transform_is_an_error_too(build, oml):
    channel = build(
        {"destinations": {"lab": file_dest(transform="m:boom")}},
        {"m": "def boom(message, output):\n    return {}['missing']\n"},
    )
    outcome = run(channel, oml)
    assert outcome.status == "error"
    assert "KeyError: 'missing'" in outcome.reason


def test_unreadable_hl7_is_an_error_with_the_reason(build):
    outcome = run(build({"destinations": {"lab": file_dest()}}), b"PID|1||633\rOBX|1")
    assert outcome.status == "error"
    assert outcome.reason == "unreadable HL7 v2: no MSH segment"


def test_strict_validation_failure_is_an_error_and_a_valid_message_passes(build, oml):
    channel = build({"validate": "strict", "destinations": {"lab": file_dest()}})
    refused = run(channel, oml)
    assert refused.status == "error"
    assert refused.reason.startswith("strict validation failed: ")
    assert "R0A is not an HL7 valid NM value" in refused.reason

    accepted = run(channel, ADT)
    assert accepted.status == "processed"
    assert [d.payload for d in accepted.deliveries] == [ADT]


def test_strict_validation_names_a_missing_segment(build):
    channel = build({"validate": "strict", "destinations": {}})
    outcome = run(channel, ADT.replace(b"EVN|A01|20240101120000\r", b""))
    assert outcome.status == "error"
    assert "Missing required child ADT_A01.EVN" in outcome.reason


# --- keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order_by", "key"),
    [
        ("PID-3.1", "633"),  # the first repetition only
        ("PID-3(2).1", "9449305552"),
        ("PID-3(*).1", "633"),
        ("ZZZ-1", ""),  # absent: every such message shares one lane
    ],
)
def test_order_by_is_the_first_value_of_its_path(build, oml, order_by, key):
    channel = build({"destinations": {"lab": file_dest(order_by=order_by)}})
    [delivery] = run(channel, oml).deliveries
    assert delivery.ordering_key == key


def test_without_order_by_the_ordering_key_is_empty(build, oml):
    channel = build({"destinations": {"lab": {"mllp": {"host": "127.0.0.1", "port": 2576}}}})
    [delivery] = run(channel, oml).deliveries
    assert delivery.ordering_key == ""


def test_the_ordering_key_is_cut_to_255_characters(build, oml):
    channel = build({"destinations": {"lab": file_dest(order_by="PID-5.1")}})
    [delivery] = run(channel, oml.replace(b"CHISLETT", b"X" * 300)).deliveries
    assert delivery.ordering_key == "X" * 255


def test_the_idempotency_key_is_the_payloads_msh10(build, oml):
    channel = build(
        {
            "transform": "m:renumber",
            "destinations": {"lab": file_dest(), "note": file_dest(transform="m:not_hl7")},
        },
        {
            "m": """
            def renumber(message):
                return message.raw.replace(message.get("MSH-10").encode(), b"NEW-10")

            def not_hl7(message, output):
                return b"free text, no MSH"
            """
        },
    )
    lab, note = run(channel, oml).deliveries
    assert lab.idempotency_key == "NEW-10"
    assert note.idempotency_key is None  # hl7v2 content that has no readable MSH


def test_an_untransformed_delivery_keeps_the_original_msh10(build, oml):
    channel = build({"destinations": {"lab": file_dest()}})
    [delivery] = run(channel, with_control_id(oml, "ORIGINAL-1")).deliveries
    assert delivery.idempotency_key == "ORIGINAL-1"


def test_correlation_keys_from_correlate_and_from_the_mapping(build, oml):
    channel = build(
        {
            "correlate": {"placer_order": "ORC-2.1", "patient": "PID-3.1", "missing": "ZZZ-1"},
            "transform": "m:tie",
            "destinations": {"lab": file_dest()},
        },
        {
            "m": """
            def tie(message):
                message.correlate("filler_order", message.get("ORC-3.1"))
                message.correlate("empty", None)
                return message.raw
            """
        },
    )
    outcome = run(channel, oml)
    assert outcome.status == "processed"
    assert outcome.correlations == [
        ("control_id", OML_ID),
        ("placer_order", "1601737"),
        ("patient", "633"),
        ("patient", "9449305552"),
        ("filler_order", "1001166717"),
    ]


def test_a_filtered_message_keeps_its_correlation_keys(build, hl7_samples):
    channel = build(
        {
            "correlate": {"placer_order": "OBR-2.1"},
            "filter": [{"field": "MSH-9.1", "equals": "OML"}],
            "destinations": {"lab": file_dest()},
        }
    )
    outcome = run(channel, hl7_samples["ORU_R01_nhs_nwgmsa_v251"])
    assert outcome.status == "filtered"
    assert ("placer_order", "1601737") in outcome.correlations


def test_a_correlation_key_name_too_long_for_the_store_is_that_messages_error(build, oml):
    channel = build(
        {"transform": "m:long_key", "destinations": {"lab": file_dest()}},
        {"m": "def long_key(message):\n    message.correlate('k' * 65, 'v')\n    return b''\n"},
    )
    outcome = run(channel, oml)
    assert outcome.status == "error"
    assert (
        f"ValueError: correlation key '{'k' * 65}' must have 1 to 64 characters" in outcome.reason
    )
    assert outcome.deliveries == []


def test_a_dict_naming_an_unknown_destination_is_an_error_not_a_lost_delivery(build, oml):
    channel = build(
        {"transform": "m:typo", "destinations": {"lab": file_dest()}},
        {"m": "def typo(message):\n    return {'lab': message.raw, 'labb': message.raw}\n"},
    )
    outcome = run(channel, oml)
    assert outcome.status == "error"
    assert "unknown destination(s): ['labb']" in outcome.reason
    assert outcome.deliveries == []


# --- the source's header ---------------------------------------------------


@pytest.mark.parametrize(
    "control_id",
    [OML_ID, "A\\T\\B", "A^B", "FIRST~SECOND", "A\\F\\B&C", ""],
)
def test_the_sources_header_decides_as_reading_the_message_does(build, oml, control_id):
    """On receipt, MSH-10 comes from the header the listener read to answer: the outcome
    (control id key, idempotency keys) must be what reading the message gives."""
    channel = build({"destinations": {"out": file_dest(), "copy": file_dest()}})
    raw = with_control_id(oml, control_id)
    header = read_header(raw)
    read = process(channel, Message(raw, channel.name, uuid="u"))
    heard = process(channel, Message(raw, channel.name, uuid="u", header=header))
    assert Message(raw, "c", header=header).control_id() == Message(raw, "c").get("MSH-10")
    assert heard == read
    assert [d.idempotency_key for d in heard.deliveries] == [control_id or None] * 2


def test_a_large_message_read_back_is_routed_on_msh_without_reading_all_of_it(build, oml, tmp_path):
    """The processor reads messages back without the source's header: MSH-10 comes from
    the first line, not from splitting the whole body (9 MB of it held the interpreter
    lock for some 100 ms while other connections' ACKs waited)."""
    channel = build({"destinations": {"out": file_dest()}})
    raw = oml + b"OBX|9|TX|||" + b"x" * 200_000 + b"\r"
    message = Message(BlobStore(tmp_path, threshold=1024).put(raw), channel.name, uuid="u")
    outcome = process(channel, message)
    assert (outcome.status, outcome.correlations) == ("processed", [("control_id", OML_ID)])
    assert [d.idempotency_key for d in outcome.deliveries] == [OML_ID]
    assert "er7" not in message.__dict__ and "raw" not in message.__dict__


@pytest.mark.parametrize(
    "raw",
    [
        b"MSH|^~\\&|" + b"A" * 70_000 + b"|F|LAB|R|20240101||ADT^A01|LONG-MSH|P|2.5\rPID|1\r",
        "MSH|^~\\&|EPR|H|LAB|R|20240101||ADT^A01|ORD-\u00e91|P|2.5\r".encode() + b"NTE|1||\xe9",
    ],
    ids=["msh-beyond-the-first-64KiB", "non-ascii-msh-10-in-latin-1-text"],
)
def test_msh_10_read_from_the_first_line_is_what_reading_the_message_gives(raw):
    assert Message(raw, "c").control_id() == Er7Message(raw).get("MSH-10")


def test_a_mapping_that_calls_sys_exit_is_an_error_not_the_end_of_the_processor(build, oml):
    channel = build(
        {"transform": "quit:go", "destinations": {"out": file_dest()}},
        {"quit": "import sys\ndef go(message):\n    sys.exit('bye')\n"},
    )
    outcome = run(channel, oml)
    assert outcome.status == "error"
    assert "SystemExit: bye" in (outcome.reason or "")


def test_an_idempotency_key_longer_than_the_store_keeps_is_cut(build, oml):
    long_id = "L" + "X" * 299
    channel = build({"destinations": {"out": file_dest()}})
    [delivery] = run(channel, with_control_id(oml, long_id)).deliveries
    assert delivery.idempotency_key == long_id[:KEY_LENGTH]
