"""A token's label: optional, trimmed, bounded and printable, as listings and terminals show it."""

from __future__ import annotations

import pytest

from router.auth.tokens import MAX_LABEL, check_label


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        (" PAS live ", "PAS live"),
        ("é" * MAX_LABEL, "é" * MAX_LABEL),
    ],
)
def test_a_label_is_trimmed_and_an_empty_one_is_none(given, kept):
    assert check_label(given) == kept


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("x" * (MAX_LABEL + 1), f"at most {MAX_LABEL}"),
        ("PAS\nlive", "printable"),
        ("PAS\tlive", "printable"),
        ("PAS\x1b[31mlive", "printable"),
    ],
)
def test_a_long_or_unprintable_label_is_refused(given, says):
    with pytest.raises(ValueError, match=says):
        check_label(given)
