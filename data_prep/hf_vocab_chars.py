"""Character classes of BERT's and GPT-2's tokenizers without `transformers` or the `regex` module.

WordPiece (data_prep/wordpiece.py) maps text with `str.translate` tables that are filled lazily per
distinct character from transformers' own predicates (`unicodedata` categories), so they are exact.

Byte-level BPE (data_prep/bytelevel_bpe.py) needs GPT-2's pattern with \\p{L} and \\p{N}. `re` has
no \\p{..}, and `regex` is not a project dependency, so the classes are spelled out from
`unicodedata` for the Basic Multilingual Plane (which `re` matches with one bitmap lookup), and a
character above U+FFFF is first replaced by a BMP stand-in of its class (letter, number, other), so
the match spans are those of the original text. transformers runs the pattern with `regex`, whose
Unicode database is newer than this Python's (14.0 for Python 3.11): code points unassigned here
but letters/numbers there (about 27k, mostly recent CJK extension ideographs) count as "other"
symbols here. Every character assigned in this Python's Unicode version is classified identically.
"""

from __future__ import annotations

import functools
import unicodedata

# `regex`'s \s: the Unicode White_Space property (stable since Unicode 6.3), as a class body. Python's
# `re` \s also matches U+001C..U+001F (str.isspace), which `regex` does not: spell it out instead.
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# BMP stand-ins for characters above U+FFFF: a letter, a number and an "other" symbol, none of which
# occurs literally in GPT-2's pattern.
STAND_IN = {"L": "\u00aa", "N": "\u00b2", "other": "\u00a6"}


def is_cjk(cp: int) -> bool:
    """transformers BasicTokenizer._is_chinese_char: the CJK ideograph blocks."""
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def is_whitespace(ch: str) -> bool:
    """transformers `_is_whitespace`: space, tab, newline, carriage return, category Zs."""
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def is_control(ch: str) -> bool:
    """transformers `_is_control`: categories C* except tab, newline, carriage return."""
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def is_punctuation(ch: str) -> bool:
    """transformers `_is_punctuation`: non-alphanumeric printable ASCII, and categories P*."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class CharMap(dict):
    """A `str.translate` table computed on first sight of each character: `fn(ch)` -> str or None."""

    def __init__(self, fn):
        super().__init__()
        self._fn = fn

    def __missing__(self, cp: int):
        value = self._fn(chr(cp))
        self[cp] = value
        return value


def _class_body(cps: list[int]) -> str:
    ranges: list[list[int]] = []
    for cp in cps:
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(f"\\u{lo:04x}" if lo == hi else f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in ranges)


@functools.cache
def bmp_class(prefix: str) -> str:
    """`re` class body of the BMP code points whose general category starts with `prefix`."""
    return _class_body([cp for cp in range(0x10000) if unicodedata.category(chr(cp)).startswith(prefix)])


def stand_in(ch: str) -> str:
    """The BMP character that stands for `ch` (above U+FFFF) in GPT-2's pattern."""
    cat = unicodedata.category(ch)[0]
    return STAND_IN.get(cat, STAND_IN["other"])
