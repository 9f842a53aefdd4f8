"""VQA v2 accuracy: answer normalization and leave-one-out accuracy, checked by hand.

The expected normalizations follow the official vqaEval.py (GT-Vision-Lab/VQA) rules, worked through
by hand in the comments.
"""

import pytest

from evaluation.metrics.vqa import VqaQuestion, question_accuracy, score_vqa
from evaluation.metrics.vqa_normalize import CONTRACTIONS, normalize_answer


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),  # lowercased, then number word -> digit
        ("none", "0"),  # the official number map includes "none"
        ("a dog.", "dog"),  # period not before a digit deleted, article dropped
        ("The Cat", "cat"),
        ("dont", "don't"),  # contraction table
        ("Whats", "what's"),
        ("Im", "im"),  # the table's "Im" key can never match after lowercasing (official quirk)
        ("yes!", "yes"),  # "!" not next to a space -> replaced by a space, then whitespace split
        ("yes, sir", "yes sir"),  # ", " occurs -> "," deleted
        ("1,000", "1000"),  # comma between digits -> every listed punctuation char is deleted
        ("1,000 (about)", "1000 about"),
        ("t-shirt", "t shirt"),  # "-" not next to a space -> space
        ("red / white", "red white"),  # "/ " occurs -> "/" deleted, the double space is split away
        ("3.5", "3.5"),  # period before a digit kept
        ("5.", "5"),
        ("10:30", "10:30"),  # ":" is not in the official punctuation list
        ("black & white", "black & white"),  # nor is "&"
        ("it's", "it's"),  # nor is the apostrophe
        ("  yes \n", "yes"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_contraction_table_is_the_official_one():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["wont"] == "won't"
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # sic, as in the official table


def _answers(matching: int, answer: str = "cat", other: str = "dog", total: int = 10) -> list[str]:
    return [answer] * matching + [other] * (total - matching)


@pytest.mark.parametrize(
    "matching, expected",
    [
        (0, 0.0),
        # 1 of 10: leaving out the matching human leaves 0 matches (0); the other 9 subsets hold 1
        # match (1/3): 9 * (1/3) / 10 = 0.3
        (1, 0.3),
        # 2 of 10: 2 subsets with 1 match (1/3), 8 with 2 (2/3): (2/3 + 16/3) / 10 = 0.6
        (2, 0.6),
        # 3 of 10: 3 subsets with 2 matches (2/3), 7 with 3 (1): (2 + 7) / 10 = 0.9 (not 1.0)
        (3, 0.9),
        # 4 of 10: every subset keeps at least 3 matches: 1.0
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_leave_one_out_accuracy(matching, expected):
    assert question_accuracy("cat", _answers(matching)) == pytest.approx(expected, abs=1e-12)


def test_prediction_and_humans_are_normalized_when_humans_disagree():
    # humans differ -> all normalized: "Two" -> "2", "2." -> "2", " 2 " -> "2": 3 matches -> 0.9
    assert question_accuracy("Two", ["2", "2.", " 2 "] + ["3"] * 7) == pytest.approx(0.9)
    assert question_accuracy("a dog.", ["dog"] * 4 + ["cat"] * 6) == pytest.approx(1.0)


def test_nothing_is_normalized_when_all_humans_agree():
    # official quirk: with ten identical human answers only whitespace is stripped
    assert question_accuracy("two", ["2"] * 10) == 0.0
    assert question_accuracy("Yes", ["yes"] * 10) == 0.0
    assert question_accuracy(" 2\n", ["2"] * 10) == 1.0


def _question(answers, answer_type, question_type):
    return VqaQuestion(list(answers), question_type, answer_type)


def test_score_vqa_breakdown_by_hand():
    annotations = {
        1: _question(["yes"] * 10, "yes/no", "is the"),  # "yes": 1.0
        2: _question(["no"] * 2 + ["yes"] * 8, "yes/no", "is the"),  # "no": 0.6
        3: _question(["2"] * 3 + ["3"] * 7, "number", "how many"),  # "Two" -> "2": 0.9
        4: _question(["red"] + ["blue"] * 9, "other", "what color is the"),  # "green": 0.0
    }
    predictions = {1: "yes", 2: "no", 3: "Two", 4: "green"}
    scores = score_vqa(predictions, annotations)
    assert scores == {
        "overall": 62.5,  # (1 + 0.6 + 0.9 + 0) / 4 = 0.625
        "per_answer_type": {"number": 90.0, "other": 0.0, "yes/no": 80.0},  # yes/no: (1 + 0.6) / 2
        "per_question_type": {"how many": 90.0, "is the": 80.0, "what color is the": 0.0},
        "num_questions": 4,
    }


def test_percent_rounded_to_two_decimals_like_the_official_code():
    annotations = {q: _question(["a1", "b"] * 5, "other", "what") for q in range(3)}
    scores = score_vqa({0: "a1", 1: "zzz", 2: "zzz"}, annotations)  # 1, 0, 0 -> 33.333...
    assert scores["overall"] == 33.33


def test_question_accuracy_needs_answers():
    with pytest.raises(ValueError):
        question_accuracy("yes", [])
