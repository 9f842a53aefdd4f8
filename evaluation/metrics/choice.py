"""Multiple-choice accuracy from per-choice log-likelihoods (the lm-evaluation-harness `acc`/`acc_norm`).

For each example the model scores every candidate continuation by its summed log-likelihood; the
prediction is the candidate with the highest score (the first one on a tie). `accuracy` uses the raw
sums; `accuracy_length_normalized` divides each sum by the candidate's length first, which removes
the bias towards short candidates. The caller chooses the length unit and should say which: the
harness uses the candidate's length in UTF-8 bytes, token counts are another common choice.
Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def best_choice(scores: Sequence[float]) -> int:
    """Index of the highest score; the first one on a tie."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


def _check(loglikelihoods, labels, lengths) -> None:
    if len(loglikelihoods) != len(labels):
        raise ValueError(f"{len(loglikelihoods)} examples of log-likelihoods but {len(labels)} labels")
    if not labels:
        raise ValueError("multiple-choice accuracy needs at least one example")
    if lengths is not None and len(lengths) != len(labels):
        raise ValueError(f"{len(lengths)} examples of lengths but {len(labels)} labels")
    for i, (scores, label) in enumerate(zip(loglikelihoods, labels)):
        if not scores:
            raise ValueError(f"example {i} has no choices")
        if any(math.isnan(s) for s in scores):
            raise ValueError(f"example {i} has a NaN log-likelihood: {list(scores)}")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(scores):
            raise ValueError(f"example {i}: label {label!r} is not a choice index in [0, {len(scores)})")
        if lengths is not None:
            if len(lengths[i]) != len(scores):
                raise ValueError(f"example {i}: {len(scores)} choices but {len(lengths[i])} lengths")
            if any(not n > 0 for n in lengths[i]):
                raise ValueError(f"example {i}: choice lengths must be positive, got {list(lengths[i])}")


def choice_accuracy(
    loglikelihoods: Sequence[Sequence[float]],
    labels: Sequence[int],
    lengths: Sequence[Sequence[float]] | None = None,
) -> dict[str, float]:
    """{"accuracy", "num_examples"} and, given `lengths`, "accuracy_length_normalized".

    loglikelihoods[i][j]: summed log-likelihood of choice j of example i (-inf allowed);
    labels[i]: index of the correct choice; lengths[i][j]: length of choice j (> 0).
    """
    _check(loglikelihoods, labels, lengths)
    n = len(labels)
    correct = sum(best_choice(s) == y for s, y in zip(loglikelihoods, labels))
    result: dict[str, float] = {"accuracy": correct / n, "num_examples": n}
    if lengths is not None:
        correct_norm = sum(
            best_choice([s / length for s, length in zip(scores, lens)]) == y
            for scores, lens, y in zip(loglikelihoods, lengths, labels)
        )
        result["accuracy_length_normalized"] = correct_norm / n
    return result
