"""Filter and ``when`` conditions: each test, the combinators, repeated fields and bad input."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from router.conditions import Condition, compile_condition, compile_conditions, describe
from router.message import Message

# PID-3 repeats (hospital number, then NHS number) and OBX repeats, as real results do.
RAW = (
    b"MSH|^~\\&|LAB|699X0|EPR|R0A|20240101120000||ORU^R01^ORU_R01|CTRL-1|P|2.5.1\r"
    b"PID|1||633^^^R0A^MR~9449305552^^^NHS^NH||DOE^JANE\r"
    b"OBR|1|1601737^R0A|1001166717^699X0|CBC\r"
    b"OBX|1|NM|HB^Haemoglobin||135|g/L\r"
    b"OBX|2|NM|WBC^White cells||7.2|10*9/L\r"
    b"OBX|3|ST|NOTE^Comment||\r"
)


class Fields:
    """A FieldSource with fixed values per path: the conditions' logic without HL7."""

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    def values(self, path: str) -> list[str]:
        return self._values.get(path, [])


def holds(condition: dict[str, Any], source: Any = None) -> bool:
    source = source if source is not None else Message(RAW, "test")
    return compile_condition(Condition.model_validate(condition))(source)


def from_yaml(text: str) -> Condition:
    return Condition.model_validate(yaml.safe_load(text))


def test_equals_compares_the_whole_value():
    assert holds({"field": "MSH-9.1", "equals": "ORU"})
    assert not holds({"field": "MSH-9.1", "equals": "OR"})
    assert not holds({"field": "MSH-9.1", "equals": "oru"})


def test_in_passes_when_the_value_is_one_of_the_list():
    assert holds({"field": "MSH-9.1", "in": ["OML", "ORU"]})
    assert not holds({"field": "MSH-9.1", "in": ["OML", "ORM"]})


def test_matches_searches_anywhere_unless_anchored():
    assert holds({"field": "MSH-10", "matches": "TRL"})
    assert not holds({"field": "MSH-10", "matches": "^TRL"})
    assert holds({"field": "MSH-10", "matches": r"^CTRL-\d+$"})


def test_exists_true_and_false():
    assert holds({"field": "OBR-2.1", "exists": True})
    assert not holds({"field": "OBR-2.1", "exists": False})
    assert holds({"field": "ZZZ-1", "exists": False})
    assert not holds({"field": "ZZZ-1", "exists": True})


def test_an_empty_field_counts_as_absent():
    assert holds({"field": "OBX(3)-5", "exists": False})
    assert not holds({"field": "OBX(3)-5", "equals": ""})


def test_a_test_on_an_absent_field_fails():
    for test in ({"equals": "x"}, {"in": ["x"]}, {"matches": ".*"}):
        assert not holds({"field": "ZZZ-1", **test})


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"field": "PID-3.1", "equals": "9449305552"}, True),  # the second repetition
        ({"field": "PID-3.1", "equals": "633"}, True),  # the first
        ({"field": "PID-3.5", "in": ["NH"]}, True),
        ({"field": "OBX-5", "equals": "7.2"}, True),  # the second OBX segment
        ({"field": "OBX-3.1", "matches": "^WBC$"}, True),
        ({"field": "PID-3(1).1", "equals": "9449305552"}, False),  # only the first repetition
        ({"field": "PID-3(2).1", "equals": "9449305552"}, True),
        ({"field": "PID-3(*).1", "equals": "9449305552"}, True),
        ({"field": "OBX(1)-5", "equals": "7.2"}, False),  # only the first OBX
        ({"field": "OBX(2)-5", "equals": "7.2"}, True),
    ],
)
def test_a_repeated_field_passes_when_any_of_its_values_does(condition, expected):
    assert holds(condition) is expected


def test_not_equals_on_a_repeated_field_fails_when_any_value_equals():
    """``not`` negates the whole test: 'no value equals', not 'some value differs'."""
    assert not holds({"not": {"field": "PID-3.5", "equals": "MR"}})
    assert holds({"not": {"field": "PID-3.5", "equals": "PI"}})


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("{field: OBX-5, equals: 135}", "135", True),
        ("{field: OBX-5, equals: 7.2}", "7.2", True),
        ("{field: OBX-5, in: [1, 2, 135]}", "135", True),
        ("{field: OBX-5, equals: 135}", "135.0", False),
        ("{field: OBX-5, equals: 7.20}", "7.20", False),  # YAML reads 7.2: quote '7.20'
        ("{field: OBX-5, equals: '7.20'}", "7.20", True),
    ],
)
def test_yaml_numbers_are_compared_as_their_text(text, value, expected):
    predicate = compile_condition(from_yaml(text))
    assert predicate(Fields({"OBX-5": [value]})) is expected


@pytest.mark.parametrize(
    "text", ["{field: PID-8, equals: no}", "{field: PID-8, in: [GB, NO]}", "{field: X-1, in: [on]}"]
)
def test_an_unquoted_yaml_boolean_is_refused_with_advice(text):
    with pytest.raises(ValidationError, match="YAML boolean: quote the value"):
        from_yaml(text)


def test_a_quoted_word_that_yaml_would_read_as_boolean_works():
    predicate = compile_condition(from_yaml("{field: PID-8, in: [GB, 'NO']}"))
    assert predicate(Fields({"PID-8": ["NO"]}))


def test_any_holds_when_one_member_holds():
    assert holds(
        {"any": [{"field": "MSH-9.1", "equals": "OML"}, {"field": "OBX-5", "equals": "135"}]}
    )
    assert not holds(
        {"any": [{"field": "MSH-9.1", "equals": "OML"}, {"field": "ZZZ-1", "exists": True}]}
    )


def test_all_holds_only_when_every_member_holds():
    assert holds(
        {"all": [{"field": "MSH-9.1", "equals": "ORU"}, {"field": "OBX-5", "equals": "135"}]}
    )
    assert not holds(
        {"all": [{"field": "MSH-9.1", "equals": "ORU"}, {"field": "ZZZ-1", "exists": True}]}
    )


def test_empty_any_never_holds_and_empty_all_always_holds():
    assert not holds({"any": []})
    assert holds({"all": []})


def test_nesting():
    condition = from_yaml(
        """
        all:
          - field: MSH-9.1
            equals: ORU
          - any:
              - field: MSH-4.1
                equals: 699X0
              - not:
                  field: PID-3.5
                  equals: NH
          - not:
              any:
                - field: OBX-8
                  exists: true
                - field: MSH-11
                  equals: T
        """
    )
    predicate = compile_condition(condition)
    assert predicate(Message(RAW, "test"))
    assert not predicate(Message(RAW.replace(b"|P|2.5.1", b"|T|2.5.1"), "test"))
    assert not predicate(Message(RAW.replace(b"|LAB|699X0|", b"|LAB|OTHER|"), "test"))


def test_a_list_of_conditions_must_all_hold_and_an_empty_list_always_holds():
    conditions = [
        Condition.model_validate({"field": "MSH-9.1", "equals": "ORU"}),
        Condition.model_validate({"field": "PID-3.5", "equals": "NH"}),
    ]
    message = Message(RAW, "test")
    assert compile_conditions(conditions)(message)
    assert not compile_conditions([*conditions, Condition(field="ZZZ-1", exists=True)])(message)
    assert compile_conditions([])(message)


def test_conditions_read_the_same_path_from_a_fake_source():
    predicate = compile_conditions([Condition.model_validate({"field": "PV1-2", "in": ["I", "E"]})])
    assert predicate(Fields({"PV1-2": ["O", "E"]}))
    assert not predicate(Fields({"PV1-2": ["O"]}))
    assert not predicate(Fields({}))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"field": "MSH-9.1"}, "needs exactly one of equals, in, matches, exists, not, any, all"),
        ({"field": "MSH-9.1", "equals": "A", "in": ["A"]}, "(found equals, in)"),
        ({"equals": "A"}, "'equals' needs a 'field'"),
        ({"field": "MSH-9", "any": [{"field": "MSH-9", "exists": True}]}, "takes no 'field'"),
        ({"field": "MSH-9", "matches": "("}, "invalid regular expression"),
        ({"field": "PID3", "equals": "A"}, "bad field path 'PID3'"),
        ({"field": "PID-0", "equals": "A"}, "field number must be 1 or more"),
        ({"field": "MSH-9", "equal": "A"}, "Extra inputs are not permitted"),
        ({"not": [{"field": "MSH-9", "exists": True}]}, "not"),
        ({"any": {"field": "MSH-9", "exists": True}}, "any"),
        ({"field": "MSH-9", "exists": "maybe"}, "exists"),
    ],
)
def test_invalid_conditions_are_refused(data, problem):
    with pytest.raises(ValidationError) as caught:
        Condition.model_validate(data)
    assert problem in str(caught.value)


def test_a_nested_invalid_condition_is_refused():
    with pytest.raises(ValidationError, match="needs a 'field'"):
        Condition.model_validate({"all": [{"any": [{"equals": "A"}]}]})


def test_describe_reads_as_a_sentence():
    conditions = [
        Condition.model_validate(c)
        for c in (
            {"field": "MSH-9.1", "in": ["OML", "ORM"]},
            {"field": "MSH-11", "equals": "P"},
            {"not": {"field": "PID-3.1", "matches": "^TEST"}},
            {"any": [{"field": "OBR-2", "exists": True}, {"field": "ORC-2", "exists": False}]},
        )
    ]
    assert describe(conditions) == (
        "MSH-9.1 in [OML, ORM] and MSH-11 = 'P' and not (PID-3.1 matches /^TEST/) and "
        "any of (OBR-2 exists; ORC-2 is absent)"
    )
    assert describe([]) == "always"
