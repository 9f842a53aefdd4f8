"""CIDEr-D exactly as coco-caption's `Cider()` (pycocoevalcap cider_scorer.py) computes it.

(coco-caption names it "CIDEr", but with clipping and the length penalty it is the CIDEr-D variant
of Vedantam et al. 2015.) Inputs are tokenized captions, one hypothesis and one or more references
per image. For n-grams of order 1..n (n=4):

- document frequency df(g): the number of evaluated images whose references contain g at least once;
  it is computed over the references of the images being scored (so the score of one image depends
  on the whole evaluated set), never over the hypotheses;
- tf-idf vector of a caption: weight(g) = count(g) * (log(N) - log(max(1, df(g)))), N = number of
  images, one vector and one L2 norm per order;
- similarity of a hypothesis h to a reference r, per order: sum over g in h of
  min(w_h(g), w_r(g)) * w_r(g) (the "clipping"), divided by |w_h| * |w_r| when both are non-zero,
  times the Gaussian length penalty exp(-(len_h - len_r)^2 / (2 sigma^2)), sigma = 6;
- image score: 10 * mean over orders of the mean over references of that similarity;
  corpus score: the mean of the image scores.

As in the reference code the "length" in the penalty is the number of bigrams of the caption, i.e.
its word count minus one (0 for an empty caption). With a single image every reference n-gram has
df = N = 1 and weight 0, so CIDEr-D of a one-image set is 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from evaluation.metrics.bleu import ngram_counts


@dataclass
class CiderResult:
    score: float  # mean over images
    per_image: dict[Hashable, float]


@dataclass
class _Vector:
    weights: list[dict[tuple, float]]  # one dict per n-gram order
    norms: list[float]
    length: int  # number of bigrams (see the module docstring)


def _vector(counts: Counter, n: int, df: Counter, log_num_images: float) -> _Vector:
    weights: list[dict[tuple, float]] = [{} for _ in range(n)]
    squares = [0.0] * n
    length = 0
    for ngram, tf in counts.items():
        order = len(ngram) - 1
        w = float(tf) * (log_num_images - math.log(max(1.0, df[ngram])))
        weights[order][ngram] = w
        squares[order] += w * w
        if order == 1:
            length += tf
    return _Vector(weights, [math.sqrt(s) for s in squares], length)


def _similarity(hyp: _Vector, ref: _Vector, n: int, sigma: float) -> list[float]:
    delta = float(hyp.length - ref.length)
    penalty = math.exp(-(delta**2) / (2 * sigma**2))
    values = []
    for order in range(n):
        ref_weights = ref.weights[order]
        value = 0.0
        for ngram, w in hyp.weights[order].items():
            w_ref = ref_weights.get(ngram, 0.0)
            value += min(w, w_ref) * w_ref
        if hyp.norms[order] != 0 and ref.norms[order] != 0:
            value /= hyp.norms[order] * ref.norms[order]
        values.append(value * penalty)
    return values


def cider_d(
    hypotheses: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
) -> CiderResult:
    """coco-caption CIDEr-D of tokenized `hypotheses` against tokenized `references` (same keys)."""
    if set(hypotheses) != set(references):
        raise ValueError("hypotheses and references must have the same image ids")
    if not hypotheses:
        raise ValueError("CIDEr-D needs at least one image")
    ref_counts = {i: [ngram_counts(r.split(), n) for r in references[i]] for i in hypotheses}
    df: Counter = Counter()
    for image_id, counts_list in ref_counts.items():
        if not counts_list:
            raise ValueError(f"image {image_id!r} has no reference caption")
        df.update({g for counts in counts_list for g in counts})
    log_num_images = math.log(float(len(hypotheses)))

    per_image: dict[Hashable, float] = {}
    for image_id, hypothesis in hypotheses.items():
        hyp = _vector(ngram_counts(hypothesis.split(), n), n, df, log_num_images)
        summed = [0.0] * n
        for counts in ref_counts[image_id]:
            ref = _vector(counts, n, df, log_num_images)
            summed = [a + b for a, b in zip(summed, _similarity(hyp, ref, n, sigma))]
        per_image[image_id] = sum(summed) / n / len(ref_counts[image_id]) * 10.0
    score = sum(per_image.values()) / len(per_image)
    return CiderResult(score, per_image)
