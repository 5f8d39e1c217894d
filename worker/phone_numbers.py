"""``phonenumbers.parse(text, None)`` and ``is_valid_number``, with less work for a number already in E.164 form.

Every texting command carries a recipient, and a campaign's recipients are all
different, so a cache of parsed numbers does not help there: ``parse`` costs
about 14 us of pure Python a number (extension, IDD and punctuation handling, a
dozen regular expressions), most of it for text that is only ``+`` and digits.
For such text the country code and the national number are read off the digits
here, with the same rules as ``parse``; whenever ``parse`` could read the digits
otherwise (no known country code, a national prefix it might strip, leading
zeros) the text goes to ``parse`` itself. ``tests/unit/test_phone_numbers.py``
checks the two agree on every country code's numbers.

:func:`is_valid` is ``phonenumbers.is_valid_number`` without its second look at
the same patterns (about half its cost for a North American number), and a region's
patterns are each tried once, as full matches compiled once (``phonenumbers`` tries
each with ``match`` and then ``fullmatch``, looking it up in ``re``'s cache each time).
"""

from __future__ import annotations

import functools
import re

import phonenumbers

_PLUS_DIGITS = re.compile(r"\+[1-9][0-9]{2,16}")
"""'+', a first digit that can start a country code, and at most 17 digits in all."""
_MIN_NATIONAL = 2
_MAX_NATIONAL = 17
"""phonenumbers' bounds on a national significant number (``_MIN_LENGTH_FOR_NSN``, ``_MAX_LENGTH_FOR_NSN``)."""


def parse_international(text: str) -> phonenumbers.PhoneNumber:
    """The same number as ``phonenumbers.parse(text, None)``, or its ``NumberParseException``."""
    if _PLUS_DIGITS.fullmatch(text):
        number = _from_digits(text[1:])
        if number is not None:
            return number
    return phonenumbers.parse(text, None)


def _from_digits(digits: str) -> phonenumbers.PhoneNumber | None:
    """The number ``parse`` reads from ``+`` and these digits, or None when only ``parse`` can tell."""
    for length in (1, 2, 3):  # parse takes the shortest known country code
        country_code = int(digits[:length])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[length:]
            break
    else:
        return None
    if not _MIN_NATIONAL <= len(national) <= _MAX_NATIONAL or national[0] == "0":
        return None  # too short or long (parse raises), or leading zeros (parse flags them)
    known, prefix = _national_prefix(country_code)
    if not known or (prefix is not None and prefix.match(national)):
        return None  # parse may strip a national prefix when what is left is still viable
    return phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))


@functools.cache
def _national_prefix(country_code: int) -> tuple[bool, re.Pattern[str] | None]:
    """Whether this country's metadata is there, and what ``parse`` might strip from the front
    of its national numbers (None: nothing)."""
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if metadata is None:
        return False, None
    pattern = metadata.national_prefix_for_parsing
    return True, (re.compile(pattern) if pattern else None)


def is_valid(number: phonenumbers.PhoneNumber) -> bool:
    """``phonenumbers.is_valid_number(number)``, the same answer.

    ``is_valid_number`` finds the number's region among those sharing its country code
    (for +1, the United States first, then Canada and the Caribbean), for a region without
    leading digits by matching the number against its patterns, then checks the number
    against that region's patterns again. The second check is the first one over: a region
    found by its patterns is valid. Only a region found by its leading digits is checked.
    ``tests/unit/test_phone_numbers.py`` compares the two on every country code's numbers.
    """
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(number.country_code or 0)
    if not regions:
        return False
    if len(regions) == 1:
        return bool(phonenumbers.is_valid_number_for_region(number, regions[0]))
    national = phonenumbers.national_significant_number(number)
    for region in regions:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region.upper(), None)
        if metadata is None:
            continue
        if metadata.leading_digits is not None:
            if re.match(metadata.leading_digits, national):  # as is_valid_number matches them
                return bool(phonenumbers.is_valid_number_for_region(number, region))
        elif _has_type(national, metadata):
            return True  # what is_valid_number_for_region would find again for this region
    return False


_FULL: dict[str, re.Pattern[str]] = {}
"""A description's national number pattern, compiled (the metadata's patterns: a bounded set)."""


def _matches(national: str, desc: phonenumbers.PhoneNumberDesc | None) -> bool:
    """``phonenumberutil._is_number_matching_desc``: the possible lengths, then the whole pattern."""
    if desc is None or not desc.national_number_pattern:
        return False
    if desc.possible_length and len(national) not in desc.possible_length:
        return False
    pattern = _FULL.get(desc.national_number_pattern)
    if pattern is None:
        pattern = _FULL[desc.national_number_pattern] = re.compile(desc.national_number_pattern)
    return pattern.fullmatch(national) is not None


def _has_type(national: str, metadata: phonenumbers.PhoneMetadata) -> bool:
    """``phonenumberutil._number_type_helper(national, metadata) != UNKNOWN``: the general pattern,
    then any type's (fixed line and mobile first: most numbers are one of them; the answer does
    not depend on the order). Mobile is not tried when its pattern is the fixed line's."""
    if not _matches(national, metadata.general_desc):
        return False
    if _matches(national, metadata.fixed_line):
        return True
    if not metadata.same_mobile_and_fixed_line_pattern and _matches(national, metadata.mobile):
        return True
    return any(
        _matches(national, desc)
        for desc in (
            metadata.premium_rate,
            metadata.toll_free,
            metadata.shared_cost,
            metadata.voip,
            metadata.personal_number,
            metadata.pager,
            metadata.uan,
            metadata.voicemail,
        )
    )
