"""What an outgoing text costs: its encoding (GSM-7 or UCS-2) and segment count.

Carriers bill per segment. A text is GSM-7 when every character is in the GSM
03.38 basic set or its extension table (the extension characters
``^ { } \\ [ ~ ] | €`` and form feed take two septets each, an escape and the
character). One character outside both makes the whole text UCS-2, which
counts UTF-16 code units (an emoji outside the BMP is two).

========  ================  ============================
encoding  one segment       each segment when split
========  ================  ============================
GSM-7     up to 160 septets 153 septets (7 bytes of UDH)
UCS-2     up to 70 units    67 units
========  ================  ============================

A split never cuts an escape pair or a surrogate pair in two (carriers move
the whole character to the next segment), so a long text can need one
segment more than ``ceil(units / 153)``.

Pure functions, no I/O: the ``send_text`` handler calls :func:`analyse` for
its result and metric, and :func:`to_gsm` when the payload asks to replace
typographic look-alikes (curly quotes, dashes) that would force UCS-2.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

Encoding = Literal["GSM-7", "UCS-2"]

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""GSM 03.38 default alphabet (3GPP TS 23.038 6.2.1) minus the escape code 0x1B."""

GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
"""The extension table: each is sent as ESC + character, two septets."""

SINGLE = {"GSM-7": 160, "UCS-2": 70}
"""Units that fit in a text sent as one segment."""
PER_SEGMENT = {"GSM-7": 153, "UCS-2": 67}
"""Units per segment of a concatenated text (the rest carries the UDH)."""

LOOKALIKES: dict[str, str] = {
    # single quotes and apostrophes
    "\u2018": "'",  # LEFT SINGLE QUOTATION MARK
    "\u2019": "'",  # RIGHT SINGLE QUOTATION MARK (also the typographic apostrophe)
    "\u201a": "'",  # SINGLE LOW-9 QUOTATION MARK
    "\u201b": "'",  # SINGLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2032": "'",  # PRIME
    "\u02bc": "'",  # MODIFIER LETTER APOSTROPHE
    # double quotes
    "\u201c": '"',  # LEFT DOUBLE QUOTATION MARK
    "\u201d": '"',  # RIGHT DOUBLE QUOTATION MARK
    "\u201e": '"',  # DOUBLE LOW-9 QUOTATION MARK
    "\u201f": '"',  # DOUBLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2033": '"',  # DOUBLE PRIME
    # dashes and hyphens
    "\u2010": "-",  # HYPHEN
    "\u2011": "-",  # NON-BREAKING HYPHEN
    "\u2012": "-",  # FIGURE DASH
    "\u2013": "-",  # EN DASH
    "\u2014": "-",  # EM DASH
    "\u2015": "-",  # HORIZONTAL BAR
    "\u2212": "-",  # MINUS SIGN
    # dots
    "\u2026": "...",  # HORIZONTAL ELLIPSIS
    "\u2024": ".",  # ONE DOT LEADER
    # spaces that print as a space
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u2000": " ",
    "\u2001": " ",
    "\u2002": " ",  # EN SPACE
    "\u2003": " ",  # EM SPACE
    "\u2004": " ",
    "\u2005": " ",
    "\u2006": " ",
    "\u2007": " ",  # FIGURE SPACE
    "\u2008": " ",
    "\u2009": " ",  # THIN SPACE
    "\u200a": " ",  # HAIR SPACE
    "\u202f": " ",  # NARROW NO-BREAK SPACE
    "\u205f": " ",  # MEDIUM MATHEMATICAL SPACE
}
"""Characters outside GSM-7 that look like GSM-7 ones (what word processors and
phones substitute as you type). Only look-alikes: accented letters, emoji or
invisible characters are never changed or dropped."""


@dataclass(frozen=True)
class Segmentation:
    """The cost of one text.

    ``units`` are septets for GSM-7 and UTF-16 code units for UCS-2;
    ``ucs2_forced_by`` lists the distinct characters outside GSM-7, in order
    of first appearance (empty for GSM-7).
    """

    encoding: Encoding
    units: int
    segments: int
    ucs2_forced_by: list[str]

    @property
    def fixable(self) -> bool:
        """UCS-2 only because of look-alikes: :func:`to_gsm` would make it GSM-7."""
        return bool(self.ucs2_forced_by) and all(c in LOOKALIKES for c in self.ucs2_forced_by)


def septets(char: str) -> int | None:
    """Septets ``char`` takes in GSM-7, or None when it is not in GSM-7."""
    if char in GSM7_BASIC:
        return 1
    if char in GSM7_EXTENSION:
        return 2
    return None


def _utf16_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


GSM7 = GSM7_BASIC | GSM7_EXTENSION
"""Every character a GSM-7 text can carry."""
_ONLY_BASIC = re.compile("[" + re.escape("".join(sorted(GSM7_BASIC))) + "]*")
_EXTENSION_CHAR = re.compile("[" + re.escape("".join(sorted(GSM7_EXTENSION))) + "]")


def analyse(text: str) -> Segmentation:
    """Encoding, units and segments of ``text`` (an empty text is one segment).

    The same answer as filling segments character by character (:func:`_analyse_by_char`),
    without a Python loop over the characters when nothing can straddle a segment
    boundary: a text of one-unit characters only fills ``per segment`` units a segment.
    """
    if _ONLY_BASIC.fullmatch(text) is not None:  # the common case: one septet a character
        return Segmentation("GSM-7", len(text), _uniform_segments(len(text), "GSM-7"), [])
    if GSM7.issuperset(text):
        units = len(text) + len(_EXTENSION_CHAR.findall(text))
        if units <= SINGLE["GSM-7"]:
            return Segmentation("GSM-7", units, 1, [])
        return _analyse_by_char(text)  # escape pairs may straddle a boundary
    forced = sorted(set(text).difference(GSM7), key=text.index)  # in order of first appearance
    if max(text) <= "\uffff":  # no surrogate pairs: one UTF-16 unit a character
        return Segmentation("UCS-2", len(text), _uniform_segments(len(text), "UCS-2"), forced)
    return _analyse_by_char(text)


def _uniform_segments(units: int, encoding: Encoding) -> int:
    """Segments of a text whose characters are one unit each."""
    if units <= SINGLE[encoding]:
        return 1
    return -(-units // PER_SEGMENT[encoding])


def _analyse_by_char(text: str) -> Segmentation:
    """:func:`analyse` one character at a time (escape and surrogate pairs kept whole)."""
    forced = list(dict.fromkeys(c for c in text if septets(c) is None))
    encoding: Encoding = "UCS-2" if forced else "GSM-7"
    sizes = [_utf16_units(c) for c in text] if forced else [septets(c) or 0 for c in text]
    return Segmentation(encoding, sum(sizes), _count_segments(sizes, encoding), forced)


def _count_segments(sizes: list[int], encoding: Encoding) -> int:
    """Fill segments in order without splitting a character's units."""
    if sum(sizes) <= SINGLE[encoding]:
        return 1
    capacity = PER_SEGMENT[encoding]
    segments, used = 1, 0
    for size in sizes:
        if used + size > capacity:
            segments, used = segments + 1, 0
        used += size
    return segments


def to_gsm(text: str) -> str:
    """``text`` with typographic look-alikes replaced by their GSM-7 equivalents."""
    return "".join(LOOKALIKES.get(c, c) for c in text)


def describe(char: str) -> str:
    """``U+2019 RIGHT SINGLE QUOTATION MARK``: a character named for a log line."""
    return f"U+{ord(char):04X} {unicodedata.name(char, 'UNNAMED')}"


def ucs2_warning(text: str, segmentation: Segmentation | None = None) -> dict[str, Any] | None:
    """Log fields for a text forced to UCS-2 (None when it is GSM-7): the characters
    that force it, by name, and the segments replacing look-alikes would leave.
    Never the text itself."""
    seg = segmentation or analyse(text)
    if seg.encoding == "GSM-7":
        return None
    fields: dict[str, Any] = {
        "forced_by": [describe(c) for c in seg.ucs2_forced_by],
        "segments": seg.segments,
        "lookalikes_only": seg.fixable,
    }
    if seg.fixable:
        fields["segments_with_lookalikes_replaced"] = analyse(to_gsm(text)).segments
    return fields
