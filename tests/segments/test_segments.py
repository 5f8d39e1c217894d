"""Encoding and segment counts of outgoing texts (handlers/segments.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.segments import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    LOOKALIKES,
    PER_SEGMENT,
    SINGLE,
    analyse,
    describe,
    septets,
    to_gsm,
    ucs2_warning,
)

GSM_CHARS = sorted(GSM7_BASIC | GSM7_EXTENSION)
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=400)
lookalike_or_gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS + sorted(LOOKALIKES)), max_size=400)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_plain_gsm_text_segments(length: int, segments: int) -> None:
    """Plain GSM-7: 160 septets fit in one segment, then 153 per segment."""
    seg = analyse("a" * length)
    assert (seg.encoding, seg.units, seg.segments, seg.ucs2_forced_by) == ("GSM-7", length, segments, [])


def test_empty_text_is_one_segment() -> None:
    """An empty text still costs one (empty) message."""
    seg = analyse("")
    assert (seg.encoding, seg.units, seg.segments) == ("GSM-7", 0, 1)


@pytest.mark.parametrize("char", sorted(GSM7_EXTENSION))
def test_extension_characters_count_two_septets(char: str) -> None:
    """Each extension character (^ { } \\ [ ~ ] | € form feed) takes two septets and stays GSM-7."""
    seg = analyse("a" + char)
    assert (seg.encoding, seg.units) == ("GSM-7", 3)


def test_extension_characters_push_a_text_over_one_segment() -> None:
    """80 euro signs fill one segment (160 septets); one more character makes it two."""
    assert analyse("€" * 80).segments == 1
    assert analyse("€" * 80 + "a").segments == 2
    assert analyse("Price: 10€ [incl. VAT]").units == len("Price: 10€ [incl. VAT]") + 3


def test_escape_pair_is_never_split_across_segments() -> None:
    """306 septets with a euro sign across the 153 boundary need three segments, not two."""
    text = "a" * 152 + "€" + "a" * 152
    seg = analyse(text)
    assert seg.units == 306
    assert seg.segments == 3
    assert analyse("a" * 151 + "€" + "a" * 153).segments == 2


@pytest.mark.parametrize(("length", "segments"), [(70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_text_segments(length: int, segments: int) -> None:
    """UCS-2: 70 units fit in one segment, then 67 per segment."""
    seg = analyse("ж" * length)
    assert (seg.encoding, seg.units, seg.segments, seg.ucs2_forced_by) == ("UCS-2", length, segments, ["ж"])


def test_one_curly_quote_makes_the_whole_text_ucs2() -> None:
    """A single curly apostrophe turns a one-segment GSM-7 text into a two-segment UCS-2 one, and says so."""
    straight = (
        "Hi Sam, your order's ready for pickup at our Main St store until 8 pm today. Reply STOP to opt out."
    )
    curly = straight.replace("'", "\u2019")
    assert 70 < len(straight) <= 160
    assert analyse(straight).encoding == "GSM-7"
    assert analyse(straight).segments == 1
    seg = analyse(curly)
    assert (seg.encoding, seg.units, seg.segments, seg.ucs2_forced_by) == (
        "UCS-2",
        len(straight),
        2,
        ["\u2019"],
    )
    assert seg.fixable
    assert analyse(to_gsm(curly)) == analyse(straight)


def test_em_dash_forces_ucs2() -> None:
    """An em dash is outside GSM-7; to_gsm turns it into a hyphen."""
    seg = analyse("Open 9—5")
    assert seg.encoding == "UCS-2"
    assert seg.ucs2_forced_by == ["\u2014"]
    assert to_gsm("Open 9—5") == "Open 9-5"


def test_forcing_characters_are_distinct_and_in_order() -> None:
    """ucs2_forced_by lists each offending character once, in order of first appearance."""
    assert analyse("\u201cHi\u201d \u2014 it\u2019s \u201cok\u201d").ucs2_forced_by == [
        "\u201c",
        "\u201d",
        "\u2014",
        "\u2019",
    ]


def test_emoji_outside_the_bmp_count_two_units() -> None:
    """An emoji outside the BMP is a surrogate pair: two UTF-16 units."""
    assert analyse("😀").units == 2
    assert analyse("a" * 68 + "😀").segments == 1
    assert analyse("a" * 69 + "😀").segments == 2
    assert analyse("😀" * 35).segments == 1
    assert analyse("😀" * 36).segments == 2


def test_surrogate_pair_is_never_split_across_segments() -> None:
    """An emoji across the 67-unit boundary moves whole to the next segment."""
    seg = analyse("ж" * 66 + "😀" + "ж" * 66)
    assert seg.units == 134
    assert seg.segments == 3
    assert analyse("ж" * 65 + "😀" + "ж" * 67).segments == 2


def test_gsm_alphabet_details() -> None:
    """Capital Ç is GSM-7 but ç is not; ¤, ¡, ¿, Greek capitals are; a tab and a raw ESC are not."""
    assert analyse("ÇΔΦΓΛΩΠΨΣΘΞ¤¡¿").encoding == "GSM-7"
    for char in ("ç", "\t", "\x1b", "á", "`"):
        assert septets(char) is None, char
    assert analyse("Garçon").ucs2_forced_by == ["ç"]


def test_to_gsm_replaces_lookalikes() -> None:
    """Curly quotes, dashes, ellipsis and non-breaking spaces become their GSM-7 equivalents."""
    text = "\u201cHi\u201d \u2013 it\u2019s\u00a010\u202fam\u2026 \u2018ok\u2019"
    assert to_gsm(text) == "\"Hi\" - it's 10 am... 'ok'"
    assert analyse(to_gsm(text)).encoding == "GSM-7"


def test_to_gsm_leaves_everything_else() -> None:
    """Accented letters, emoji and invisible characters are kept: only look-alikes change."""
    text = "café ç 😀 \u200b naïve"
    assert to_gsm(text) == text
    seg = analyse(text)
    assert seg.encoding == "UCS-2"
    assert not seg.fixable


def test_fixable_only_when_every_forcing_character_is_a_lookalike() -> None:
    """fixable: UCS-2 and all forcing characters have a GSM-7 look-alike."""
    assert analyse("it\u2019s").fixable
    assert not analyse("it\u2019s 😀").fixable
    assert not analyse("plain").fixable


def test_describe_names_the_character() -> None:
    """A log line names the character by code point and Unicode name."""
    assert describe("\u2019") == "U+2019 RIGHT SINGLE QUOTATION MARK"
    assert describe("😀") == "U+1F600 GRINNING FACE"


def test_lookalike_table_maps_only_to_gsm() -> None:
    """Every look-alike is outside GSM-7 and every replacement is inside it."""
    for source, target in LOOKALIKES.items():
        assert septets(source) is None, describe(source)
        assert all(septets(c) is not None for c in target), describe(source)


def test_ucs2_warning_names_the_characters_without_the_text() -> None:
    """The warning names each forcing character and what replacing look-alikes saves; nothing for GSM-7."""
    text = "Hi Sam, it\u2019s ready" + "." * 60
    assert ucs2_warning(text) == {
        "forced_by": ["U+2019 RIGHT SINGLE QUOTATION MARK"],
        "segments": 2,
        "lookalikes_only": True,
        "segments_with_lookalikes_replaced": 1,
    }
    assert ucs2_warning("plain text") is None
    warning = ucs2_warning("Bon app\u00e9tit \U0001f37d")
    assert warning == {
        "forced_by": ["U+1F37D FORK AND KNIFE WITH PLATE"],
        "segments": 1,
        "lookalikes_only": False,
    }
    assert "Sam" not in str(ucs2_warning(text))


@given(lookalike_or_gsm_text)
def test_to_gsm_output_is_gsm7_when_only_lookalikes_force_ucs2(text: str) -> None:
    """A text whose only non-GSM characters are look-alikes is GSM-7 after to_gsm."""
    converted = to_gsm(text)
    assert analyse(converted).encoding == "GSM-7"
    assert len(converted) >= len(text)
    assert analyse(text).fixable == (analyse(text).encoding == "UCS-2")


@given(st.text(max_size=50))
def test_to_gsm_never_drops_a_character_that_is_not_a_lookalike(text: str) -> None:
    """to_gsm keeps every character that has no look-alike, in order."""
    converted = iter(to_gsm(text))
    assert all(c in converted for c in text if c not in LOOKALIKES)  # a subsequence, in order
    assert to_gsm(to_gsm(text)) == to_gsm(text)


@given(st.text(max_size=300), st.text(max_size=300))
def test_segments_never_decrease_as_text_grows(head: str, tail: str) -> None:
    """Appending characters never lowers the segment count."""
    assert analyse(head + tail).segments >= analyse(head).segments


@given(gsm_text, gsm_text)
def test_segments_never_decrease_as_gsm_text_grows(head: str, tail: str) -> None:
    """Appending GSM-7 characters (extension ones included) never lowers the segment count."""
    assert analyse(head + tail).segments >= analyse(head).segments


@given(st.text(max_size=600))
def test_units_and_segment_bounds(text: str) -> None:
    """Units are septets or UTF-16 units; segments are within one of ceil(units / per segment)."""
    seg = analyse(text)
    if seg.encoding == "UCS-2":
        assert seg.units == len(text.encode("utf-16-le")) // 2
        assert seg.ucs2_forced_by
    else:
        assert seg.units == sum(septets(c) or 0 for c in text)
    if seg.units <= SINGLE[seg.encoding]:
        assert seg.segments == 1
    else:
        naive = math.ceil(seg.units / PER_SEGMENT[seg.encoding])
        # a two-unit character that would straddle a boundary wastes at most one unit per segment
        assert naive <= seg.segments <= math.ceil(seg.units / (PER_SEGMENT[seg.encoding] - 1))


README_TEXT = (
    "Hi Sam, your order's ready for pickup at our Main St store until 8 pm today. "
    "Bring your ID and this code: 4821. Reply STOP to opt out of these texts."
)


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("Your order is ready.", "GSM-7", 20, 1),
        ("Price: 10€ [VAT incl.] ~ pay at {store}", "GSM-7", 45, 1),
        ("On our way \U0001f69a", "UCS-2", 13, 1),
        ("Garçon, l'addition", "UCS-2", 18, 1),
        (README_TEXT, "GSM-7", 149, 1),
        (README_TEXT.replace("'", "\u2019"), "UCS-2", 149, 3),
        ("Open 9\u20135 \u2014 see you soon\u2026", "UCS-2", 24, 1),
        (to_gsm("Open 9\u20135 \u2014 see you soon\u2026"), "GSM-7", 26, 1),
    ],
)
def test_readme_examples(text: str, encoding: str, units: int, segments: int) -> None:
    """The examples in the README's "Segments and encoding" section are what analyse() says."""
    seg = analyse(text)
    assert (seg.encoding, seg.units, seg.segments) == (encoding, units, segments)


# -- analyse's shortcuts against the character-by-character count it replaced -----------------


def _reference(text: str) -> tuple[str, int, int, list[str]]:
    """The implementation before the shortcuts (issue 16), kept here as the specification."""
    forced = list(dict.fromkeys(c for c in text if septets(c) is None))
    encoding = "UCS-2" if forced else "GSM-7"
    sizes = [(2 if ord(c) > 0xFFFF else 1) for c in text] if forced else [septets(c) or 0 for c in text]
    if sum(sizes) <= SINGLE[encoding]:
        segments = 1
    else:
        segments, used = 1, 0
        for size in sizes:
            if used + size > PER_SEGMENT[encoding]:
                segments, used = segments + 1, 0
            used += size
    return encoding, sum(sizes), segments, forced


def _same_as_reference(text: str) -> None:
    seg = analyse(text)
    assert (seg.encoding, seg.units, seg.segments, seg.ucs2_forced_by) == _reference(text), repr(text)


_MIXED = st.sampled_from(
    GSM_CHARS + sorted(LOOKALIKES) + ["é", "ç", "\u00e1", "😀", "𝄞", "中", "\x00", "\x1b"]
)


@given(st.text(alphabet=_MIXED, max_size=700))
def test_analyse_equals_the_character_by_character_count(text: str) -> None:
    """GSM-7 (basic, extension), UCS-2 (BMP, astral), any length: the same as before the shortcuts."""
    _same_as_reference(text)


@given(st.text(max_size=400))
def test_analyse_equals_the_character_by_character_count_for_any_text(text: str) -> None:
    _same_as_reference(text)


@pytest.mark.parametrize("filler", ["a", "€", "é", "😀", "a€", "aé", "a😀", "€😀", "\n", "\r\n"])
@pytest.mark.parametrize(
    "length", [0, 1, 66, 67, 68, 69, 70, 71, 134, 135, 152, 153, 154, 159, 160, 161, 306, 307]
)
def test_analyse_equals_the_character_by_character_count_at_boundaries(filler: str, length: int) -> None:
    for text in ((filler * length)[:length], "a" * max(0, length - 1) + filler, filler + "b" * length):
        _same_as_reference(text)
