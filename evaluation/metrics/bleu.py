"""Corpus BLEU-1..4 exactly as coco-caption's `Bleu(4)` (pycocoevalcap bleu_scorer.py) computes it.

Inputs are tokenized captions (space-separated tokens, see `caption_tokenize`), one hypothesis and
one or more references per image. The details that make coco-caption's BLEU differ from other BLEUs:

- corpus level: clipped n-gram matches, n-gram counts and lengths are summed over all images
  before the precisions are formed (not an average of sentence BLEUs);
- clipping: a hypothesis n-gram counts at most as often as it occurs in the one reference where it
  occurs most;
- effective reference length "closest": per image, the reference length nearest to the hypothesis
  length, the shorter one on a tie; summed over images;
- smoothing: each precision is (matches + 1e-15) / (ngrams + 1e-9), so a zero precision gives a tiny
  score, not an error; BLEU-k is the k-th root of the product of precisions 1..k;
- brevity penalty: ratio = (hyp_len + 1e-15) / (ref_len + 1e-9); if ratio < 1 every BLEU-k is
  multiplied by exp(1 - 1/ratio) (no penalty when the hypotheses are longer).

Per-image scores use the same formulas on one image (coco-caption reports them as well).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

_TINY = 1e-15  # added to matches, so that 0 matches give ~0 and not 0/0
_SMALL = 1e-9  # added to denominators to avoid division by zero


@dataclass
class BleuResult:
    scores: list[float]  # corpus BLEU-1..max_n
    per_image: dict[Hashable, list[float]]  # image id -> its own BLEU-1..max_n
    hypothesis_length: int  # total tokens in the hypotheses
    reference_length: int  # total effective ("closest") reference length


def ngram_counts(tokens: Sequence[str], max_n: int) -> Counter:
    """Counts of all 1..max_n-grams of `tokens` (tuples as keys)."""
    counts: Counter = Counter()
    for k in range(1, max_n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


def _closest_length(ref_lengths: Sequence[int], hyp_length: int) -> int:
    return min(ref_lengths, key=lambda r: (abs(r - hyp_length), r))


def _bleu_from_counts(
    matches: Sequence[float], totals: Sequence[float], hyp_len: float, ref_len: float
) -> list[float]:
    scores = []
    product = 1.0
    for k, (m, t) in enumerate(zip(matches, totals), start=1):
        product *= (m + _TINY) / (t + _SMALL)
        scores.append(product ** (1.0 / k))
    ratio = (hyp_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def corpus_bleu(
    hypotheses: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], max_n: int = 4
) -> BleuResult:
    """coco-caption BLEU-1..max_n of tokenized `hypotheses` against tokenized `references` (same keys)."""
    if set(hypotheses) != set(references):
        raise ValueError("hypotheses and references must have the same image ids")
    if not hypotheses:
        raise ValueError("BLEU needs at least one image")
    total_matches = [0] * max_n
    total_ngrams = [0] * max_n
    hyp_len_sum = 0
    ref_len_sum = 0
    per_image: dict[Hashable, list[float]] = {}
    for image_id, hypothesis in hypotheses.items():
        refs = references[image_id]
        if not refs:
            raise ValueError(f"image {image_id!r} has no reference caption")
        max_ref_counts: Counter = Counter()
        for ref in refs:
            max_ref_counts |= ngram_counts(ref.split(), max_n)  # `|` keeps the max of each count
        hyp_tokens = hypothesis.split()
        matches = [0] * max_n
        for ngram, count in ngram_counts(hyp_tokens, max_n).items():
            matches[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        ngrams = [max(0, len(hyp_tokens) - k + 1) for k in range(1, max_n + 1)]
        ref_len = _closest_length([len(r.split()) for r in refs], len(hyp_tokens))

        per_image[image_id] = _bleu_from_counts(matches, ngrams, len(hyp_tokens), ref_len)
        for k in range(max_n):
            total_matches[k] += matches[k]
            total_ngrams[k] += ngrams[k]
        hyp_len_sum += len(hyp_tokens)
        ref_len_sum += ref_len
    scores = _bleu_from_counts(total_matches, total_ngrams, hyp_len_sum, ref_len_sum)
    return BleuResult(scores, per_image, hyp_len_sum, ref_len_sum)
