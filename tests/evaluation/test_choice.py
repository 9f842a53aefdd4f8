"""Multiple-choice accuracy from per-choice log-likelihoods."""

import math

import pytest

from evaluation.metrics.choice import best_choice, choice_accuracy


def test_accuracy_and_length_normalized_accuracy():
    loglikelihoods = [
        [-1.0, -2.0, -3.0],  # picks 0, label 0: right either way (lengths equal)
        [-4.0, -6.0],  # raw picks 0 (wrong); per length -4/2 = -2 vs -6/6 = -1 picks 1 (right)
        [-5.0, -1.0],  # picks 1, label 0: wrong either way
        [-math.inf, -9.0],  # an impossible choice is allowed
    ]
    labels = [0, 1, 0, 1]
    lengths = [[1, 1, 1], [2, 6], [1, 1], [1, 3]]
    result = choice_accuracy(loglikelihoods, labels, lengths)
    assert result == {"accuracy": 0.5, "accuracy_length_normalized": 0.75, "num_examples": 4}
    assert choice_accuracy(loglikelihoods, labels) == {"accuracy": 0.5, "num_examples": 4}


def test_ties_pick_the_first_choice():
    assert best_choice([-1.0, -1.0, -2.0]) == 0
    assert choice_accuracy([[-1.0, -1.0]], [1])["accuracy"] == 0.0


@pytest.mark.parametrize(
    "loglikelihoods, labels, lengths, message",
    [
        ([[-1.0]], [0, 0], None, "labels"),
        ([], [], None, "at least one"),
        ([[-1.0, -2.0]], [2], None, "not a choice index"),
        ([[-1.0, -2.0]], [True], None, "not a choice index"),
        ([[float("nan"), -2.0]], [0], None, "NaN"),
        ([[]], [0], None, "no choices"),
        ([[-1.0, -2.0]], [0], [[1]], "lengths"),
        ([[-1.0, -2.0]], [0], [[1, 0]], "positive"),
    ],
)
def test_bad_arguments(loglikelihoods, labels, lengths, message):
    with pytest.raises(ValueError, match=message):
        choice_accuracy(loglikelihoods, labels, lengths)
