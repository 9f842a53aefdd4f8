"""RoBERTa / GPT-2 byte-level BPE without `transformers` (its slow RobertaTokenizer, step for step).

Encoding a text:
1. `add_prefix_space`: a space before a text that does not start with whitespace (off by default, as
   RoBERTa was pretrained).
2. GPT-2 pre-tokenization: `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`.
   transformers runs it with the `regex` module, which is not a project dependency: here the same
   pattern runs on the standard `re` with \\p{L}, \\p{N} spelled out from `unicodedata` and \\s as
   Unicode White_Space (data_prep/hf_vocab_chars.py). The only difference: characters unassigned in
   this Python's Unicode version but letters/numbers in `regex`'s newer one (recent CJK extensions and
   scripts) are grouped as "other" symbols. Their bytes still encode and decode losslessly.
3. Each pre-token's UTF-8 bytes become printable characters (GPT-2's bytes_to_unicode: a space is "Ġ").
4. Merges in rank order (the line order of merges.txt): repeatedly merge every left-to-right,
   non-overlapping occurrence of the best-ranked adjacent pair. A piece missing from vocab.json (only
   possible with a vocabulary lacking some of the 256 byte symbols) becomes the unknown token.
Literal special-token strings ("<s>", "<mask>", ...) are plain text here; the caller
(data_prep/hf_vocab.py) splits out the project's own `<image>` `</image>` `</d>`.

Decoding concatenates the pieces' bytes and decodes UTF-8 (invalid sequences become U+FFFD, as
transformers' errors="replace"). So decode(encode(text)) == text whenever the vocabulary has all 256
byte symbols (RoBERTa's has) and add_prefix_space is off; a lone surrogate (possible from a JSON
"\\ud800" escape) is encoded as its bytes instead of failing, and decodes as U+FFFD marks. Unlike
transformers, decoding never applies `clean_up_tokenization_spaces` (a tokenizer_config.json value is
ignored) and puts no spaces around special tokens.

merges.txt: a first line starting with "#version" is a header; blank lines are skipped (transformers'
slow tokenizer always drops the first and the last line, which is the same for files it wrote).
"""

from __future__ import annotations

import functools
import re

from data_prep.hf_vocab_chars import WHITE_SPACE, CharMap, bmp_class, stand_in

CACHE_LIMIT = 200_000  # cached pre-tokens; the cache is emptied when it reaches this size


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (transformers' `bytes_to_unicode`)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.cache
def _pattern() -> re.Pattern:
    letters, numbers, space = bmp_class("L"), bmp_class("N"), WHITE_SPACE
    return re.compile(
        rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+| ?[^{space}{letters}{numbers}]+"
        rf"|[{space}]+(?![^{space}])|[{space}]+"
    )


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_STAND_INS = CharMap(stand_in)


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokenization of `text` (see the module docstring)."""
    pattern = _pattern()
    if text.isascii() or not _ASTRAL.search(text):
        return pattern.findall(text)
    mapped = _ASTRAL.sub(lambda m: _STAND_INS[ord(m.group())], text)  # same length, BMP only
    return [text[m.start() : m.end()] for m in pattern.finditer(mapped)]


def parse_merges(text: str) -> list[tuple[str, str]]:
    """Merge pairs of merges.txt, in rank order; ValueError naming the first malformed line."""
    lines = text.splitlines()
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        pair = line.split()
        if len(pair) != 2:
            raise ValueError(f"line {n}: {line[:80]!r} is not two space-separated symbols")
        merges.append((pair[0], pair[1]))
    return merges


class ByteLevelBPE:
    """Encode text to the ids of `vocab` (piece -> id) with `merges`; decode pieces."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        unk_id: int,
        *,
        add_prefix_space: bool = False,
    ):
        self.vocab = vocab
        self.unk_id = unk_id
        self.add_prefix_space = add_prefix_space
        self.ranks = dict(zip(merges, range(len(merges))))  # a repeated merge keeps its last rank
        b2u = bytes_to_unicode()
        self._byte_chars = [b2u[b] for b in range(256)]
        self._char_bytes = {ch: b for b, ch in b2u.items()}
        self._cache: dict[str, list[int]] = {}
        self._piece_bytes: dict[str, bytes] = {}

    def prepare(self, text: str) -> str:
        """Whole-text step before the caller splits out special tokens: the optional prefix space."""
        if self.add_prefix_space and text and not text[0].isspace():
            return " " + text
        return text

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for token in pretokenize(text):
            got = cache.get(token)
            if got is None:
                data = token.encode("utf-8", "surrogatepass")  # a lone surrogate: its bytes, not a crash
                symbols = "".join(map(self._byte_chars.__getitem__, data))
                vocab, unk = self.vocab, self.unk_id
                got = [vocab.get(p, unk) for p in self._bpe(symbols)]
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[token] = got
            ids.extend(got)
        return ids

    def _bpe(self, symbols: str) -> list[str]:
        word = list(symbols)
        ranks = self.ranks
        while len(word) > 1:
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            first, second = best
            merged, i, n = [], 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def piece_bytes(self, piece: str) -> bytes:
        """The bytes a vocabulary piece stands for (a character outside the byte map: its UTF-8)."""
        got = self._piece_bytes.get(piece)
        if got is None:
            cb = self._char_bytes
            got = b"".join(bytes((cb[ch],)) if ch in cb else ch.encode("utf-8") for ch in piece)
            self._piece_bytes[piece] = got
        return got

    def decode(self, pieces: list[str], literals: frozenset[str] = frozenset()) -> str:
        """Text of `pieces`; `literals` (special tokens) are inserted as they are spelled."""
        data = b"".join(p.encode("utf-8") if p in literals else self.piece_bytes(p) for p in pieces)
        return data.decode("utf-8", errors="replace")
