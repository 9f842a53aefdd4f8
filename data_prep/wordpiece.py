"""BERT / ELECTRA WordPiece tokenization without `transformers` (its slow BertTokenizer, step for step).

Encoding a text:
1. `do_lower_case`: lowercase each character (transformers lowercases character by character before
   the basic tokenizer, so a final capital sigma becomes "σ", not "ς").
2. Remove NUL, U+FFFD and control/format/unassigned characters (categories C*, except tab, newline and
   carriage return); whitespace becomes a space.
3. `tokenize_chinese_chars`: spaces around CJK ideographs; then Unicode NFC; split on whitespace.
4. Per word: lowercase and strip accents (NFD, drop nonspacing marks) when `do_lower_case` (accents
   also when `strip_accents` is true; never when it is false); every punctuation character (Unicode P*
   and all non-alphanumeric printable ASCII) becomes its own word.
5. Greedy longest-match-first WordPiece: continuation pieces carry "##"; a word with a character no
   piece covers, or longer than `max_input_chars_per_word`, becomes one unknown token.
Literal special-token strings in the text ("[CLS]", "[MASK]", ...) are plain text here; the caller
(data_prep/hf_vocab.py) splits out the project's own `<image>` `</image>` `</d>`.

Decoding joins pieces with spaces, glues "##" continuations and, when `clean_up_tokenization_spaces`
(BertTokenizer's default), removes the space before . , ! ? and in English contractions, as
transformers' `decode` does. Lowercasing, accents and whitespace are not recovered.

Words are cached (bounded), so repeated words cost one dict lookup.
"""

from __future__ import annotations

import unicodedata

from data_prep.hf_vocab_chars import CharMap, is_cjk, is_control, is_punctuation, is_whitespace

MAX_INPUT_CHARS_PER_WORD = 100  # transformers' WordpieceTokenizer default (not configurable there)
CACHE_LIMIT = 200_000  # cached words; the cache is emptied when it reaches this size


def clean_up_tokenization(text: str) -> str:
    """transformers' `PreTrainedTokenizerBase.clean_up_tokenization`."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def _drop_marks(ch: str) -> str | None:
    return None if unicodedata.category(ch) == "Mn" else ch


def _split_punctuation(ch: str) -> str:
    return f" {ch} " if is_punctuation(ch) else ch


class WordPiece:
    """Encode text to the ids of `vocab` (piece -> id, "##" marks continuations); decode pieces."""

    def __init__(
        self,
        vocab: dict[str, int],
        unk_id: int,
        *,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        clean_up_tokenization_spaces: bool = True,
        max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
    ):
        self.vocab = vocab
        self.unk_id = unk_id
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.max_input_chars_per_word = max_input_chars_per_word
        self._max_piece_chars = max((len(p) for p in vocab), default=0)
        # steps 1-3 before NFC, all per character: one str.translate
        self._text_map = CharMap(self._map_char)
        self._marks_map = CharMap(_drop_marks)
        self._punct_map = CharMap(_split_punctuation)
        self._cache: dict[str, list[int]] = {}

    def _map_char(self, ch: str) -> str:
        out = []
        for c in ch.lower() if self.do_lower_case else ch:
            if c in ("\x00", "\ufffd") or is_control(c):
                continue
            if is_whitespace(c):
                out.append(" ")
            elif self.tokenize_chinese_chars and is_cjk(ord(c)):
                out.append(f" {c} ")
            else:
                out.append(c)
        return "".join(out)

    def prepare(self, text: str) -> str:
        """Whole-text step before the caller splits out special tokens (none for WordPiece)."""
        return text

    def encode(self, text: str) -> list[int]:
        text = text.translate(self._text_map)
        if not text.isascii():
            text = unicodedata.normalize("NFC", text)
        ids: list[int] = []
        cache = self._cache
        for word in text.split():
            got = cache.get(word)
            if got is None:
                got = self._encode_word(word)
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[word] = got
            ids.extend(got)
        return ids

    def _strip(self, word: str) -> str:
        if word.isascii():
            return word
        return unicodedata.normalize("NFD", word).translate(self._marks_map)

    def _encode_word(self, word: str) -> list[int]:
        if self.do_lower_case:
            word = word.lower()
            if self.strip_accents is not False:
                word = self._strip(word)
        elif self.strip_accents:
            word = self._strip(word)
        out: list[int] = []
        # punctuation characters become words of their own; transformers then re-splits on whitespace
        for w in word.translate(self._punct_map).split():
            out.extend(self._wordpiece(w))
        return out

    def _wordpiece(self, word: str) -> list[int]:
        n = len(word)
        if n > self.max_input_chars_per_word:
            return [self.unk_id]
        vocab, out, start = self.vocab, [], 0
        while start < n:
            prefix = "##" if start else ""
            end = min(n, start + self._max_piece_chars)  # no piece is longer: same result, less work
            while end > start:
                pid = vocab.get(prefix + word[start:end])
                if pid is not None:
                    break
                end -= 1
            else:
                return [self.unk_id]
            out.append(pid)
            start = end
        return out

    def decode(self, pieces: list[str], literals: frozenset[str] = frozenset()) -> str:
        """Text of `pieces`; `literals` (special tokens) stand alone, separated by spaces."""
        parts: list[str] = []
        run: list[str] = []

        def flush() -> None:
            if run:
                text = " ".join(run).replace(" ##", "").strip()
                if text:
                    parts.append(text)
                run.clear()

        for p in pieces:
            if p in literals:
                flush()
                parts.append(p)
            else:
                run.append(p)
        flush()
        text = " ".join(parts)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text
