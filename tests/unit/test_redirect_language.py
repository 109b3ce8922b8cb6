"""Accept-Language parsing and route language matching."""

from __future__ import annotations

import pytest

from qrmesh.redirect.domain.language import matches, preferred_languages


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", ()),
        ("sv", ("sv",)),
        ("sv-SE,sv;q=0.9,en-US;q=0.8,en;q=0.7", ("sv-se", "sv", "en-us", "en")),
        ("en;q=0.5, de, fr;q=0.8", ("de", "fr", "en")),
        # Ties keep header order.
        ("da;q=0.5,nb;q=0.5,nn;q=0.5", ("da", "nb", "nn")),
        # q=0 means "not this", * is no language.
        ("fr;q=0, *;q=0.5, it", ("it",)),
        ("*", ()),
        # Malformed entries are skipped, the rest kept.
        ("en;q=abc, de;q=2, nl;q=, 12, x-, sv;q=0.3, ;q=1, pt-BR", ("pt-br", "sv")),
        ("es;q=nan,ca;q=inf,eu;q=-0.1,gl;q=1.0", ("gl",)),
        # Spaces, case and underscores.
        ("  PT_br ;  Q=0.9 , en ", ("en", "pt-br")),
        ("zh-Hant-TW, zh;q=0.8", ("zh-hant-tw", "zh")),
        # Duplicates keep their best weight.
        ("en;q=0.2, de;q=0.5, en;q=0.9", ("en", "de")),
        # Subtags longer than 8 characters are not tags.
        ("abcdefghi, en-abcdefghi, en", ("en",)),
    ],
)
def test_preferred_languages(header: str, expected: tuple[str, ...]) -> None:
    assert preferred_languages(header) == expected


def test_at_most_ten_languages() -> None:
    header = ",".join(f"l{chr(97 + i)}" for i in range(15))
    result = preferred_languages(header)
    assert len(result) == 10
    assert result[0] == "la"
    assert result[-1] == "lj"


def test_long_headers_are_cut_at_a_complete_entry() -> None:
    header = "en;q=0.1," + ",".join(["de-de;q=0.5"] * 60) + ",sv"
    assert len(header) > 512
    assert preferred_languages(header) == ("de-de", "en")  # "sv" lies beyond 512 characters
    one_long_entry = "en-" + "-".join(["abcdefgh"] * 80)
    assert preferred_languages(one_long_entry) == ()


def test_malformed_input_never_raises() -> None:
    for header in [";;;", ",,,", "q=1", "en;q", "\x00", "é", "en;q=0.5;q=0.7", "-", "en--us"]:
        assert isinstance(preferred_languages(header), tuple)
    assert preferred_languages("en;q=0.5;q=0.7") == ("en",)


@pytest.mark.parametrize(
    ("wanted", "preferred", "expected"),
    [
        ({"pt"}, ("pt-br", "en"), True),
        ({"pt"}, ("pt",), True),
        ({"pt"}, ("pt-pt",), True),
        ({"pt-br"}, ("pt-br",), True),
        ({"pt-br"}, ("pt-pt",), False),
        ({"pt-br"}, ("pt",), False),
        ({"sv", "nb"}, ("nb-no", "en"), True),
        # Only the most preferred language counts.
        ({"pt"}, ("en", "pt-br"), False),
        ({"en"}, (), False),
        ({"zh"}, ("zh-hant-tw",), True),
        ({"zh-hant"}, ("zh-hant-tw",), False),
    ],
)
def test_matches(wanted: set[str], preferred: tuple[str, ...], expected: bool) -> None:
    assert matches(frozenset(wanted), preferred) is expected
