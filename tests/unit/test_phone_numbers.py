"""worker.phone_numbers agrees with phonenumbers: parse_international with parse(text, None), is_valid
with is_valid_number, on every input."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from worker.phone_numbers import is_valid, parse_international


def _reference(text: str) -> phonenumbers.PhoneNumber | str:
    try:
        return phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        return f"{exc.error_type}: {exc}"


def _ours(text: str) -> phonenumbers.PhoneNumber | str:
    try:
        return parse_international(text)
    except phonenumbers.NumberParseException as exc:
        return f"{exc.error_type}: {exc}"


def _samples() -> list[str]:
    """Every country code's example numbers of every type, each with national prefixes and zeros in
    front, cut short and made long, and random digits after each country code."""
    rng = random.Random(16)
    texts: list[str] = []
    for country_code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        nationals: set[str] = set()
        for region in regions:
            for kind in range(12):  # every PhoneNumberType but UNKNOWN
                example = (
                    phonenumbers.example_number_for_non_geo_entity(country_code)
                    if region == "001"
                    else phonenumbers.example_number_for_type(region, kind)
                )
                if example is not None:
                    nationals.add(phonenumbers.national_significant_number(example))
        for national in list(nationals):
            for variant in ("0" + national, "1" + national, "8" + national, "00" + national, national[:-2],
                            national[:2], national + "5", national + "0123456789"):  # fmt: skip
                nationals.add(variant)
        for _ in range(30):
            nationals.add("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 16))))
        texts.extend(f"+{country_code}{national}" for national in nationals)
    # Digits that start with no country code, or with too few or too many digits in all.
    texts += ["+0123456789", "+999123456", "+12", "+1", "+123456789012345678", "+28888555333"]
    return texts


def test_agrees_with_phonenumbers_parse_on_every_country_code() -> None:
    texts = _samples()
    assert len(texts) > 15_000
    disagree = [text for text in texts if _ours(text) != _reference(text)]
    assert disagree == []


@pytest.mark.parametrize(
    "text",
    # The fullwidth digits are digits to phonenumbers (and to str.isdigit), not to the shortcut.
    ["+1 888-555-3333", "+1 (888) 555 3333", " +18885553333", "+18885553333 ", "+1888555333x12",
     "++18885553333", "+" + "".join(chr(0xFF10 + int(d)) for d in "18885553333"), "tel:+1-888-555-3333", "+18885553333;ext=5", "+", ""],
)  # fmt: skip
def test_text_that_is_not_plus_and_digits_goes_to_phonenumbers_itself(text: str) -> None:
    assert _ours(text) == _reference(text)


def test_a_number_in_e164_form_is_read_off_its_digits() -> None:
    number = parse_international("+18885553333")
    assert (number.country_code, number.national_number) == (1, 8885553333)
    assert phonenumbers.is_valid_number(number)


def test_is_valid_agrees_with_phonenumbers_is_valid_number_on_every_country_code() -> None:
    numbers = [number for number in map(_ours, _samples()) if not isinstance(number, str)]
    valid = [number for number in numbers if phonenumbers.is_valid_number(number)]
    # Both answers well represented: valid numbers of every kind, invalid ones of every country code.
    assert len(valid) > 1_500
    assert len(numbers) - len(valid) > 10_000
    assert len({number.country_code for number in valid}) > 200
    disagree = [number for number in numbers if is_valid(number) != phonenumbers.is_valid_number(number)]
    assert disagree == []


@pytest.mark.parametrize(
    ("text", "valid"),
    # +1: the US by its patterns, Canada and the Caribbean after it; +44: Guernsey, Jersey and the
    # Isle of Man by their leading digits; +7: Kazakhstan by its; a country code of one region.
    [("+12125550123", True), ("+14165550123", True), ("+12642920000", True), ("+15555550123", False),
     ("+447911123456", True), ("+447781123456", True), ("+77012345678", True), ("+33612345678", True),
     ("+33012345678", False), ("+8005551234", False), ("+80012345678", True)],
)  # fmt: skip
def test_is_valid_on_numbers_of_shared_country_codes(text: str, valid: bool) -> None:
    number = phonenumbers.parse(text, None)
    assert is_valid(number) is valid is phonenumbers.is_valid_number(number)
