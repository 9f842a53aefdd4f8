"""BLEU and CIDEr-D against the reference implementation (pycocoevalcap) and hard-coded values.

pycocoevalcap is a test-only dependency; its Bleu and Cider scorers are pure Python. Its
PTBTokenizer needs Java and is never used: both implementations get the same tokenized strings.
The hard-coded tests run without pycocoevalcap, so a drift is caught everywhere.
"""

import math
import random

import pytest

from evaluation.metrics.bleu import corpus_bleu
from evaluation.metrics.caption import score_captions
from evaluation.metrics.caption_tokenize import tokenize_caption
from evaluation.metrics.cider import cider_d

TOL = 1e-6


def _reference(hyps, refs):
    """(BLEU-1..4, per-image BLEU lists, CIDEr, per-image CIDEr) from pycocoevalcap."""
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    res = {k: [v] for k, v in hyps.items()}
    bleu, bleu_per_image = bleu_mod.Bleu(4).compute_score(refs, res, verbose=0)
    cider, cider_per_image = cider_mod.Cider().compute_score(refs, res)
    return bleu, bleu_per_image, float(cider), [float(c) for c in cider_per_image]


def _assert_matches_reference(hyps, refs):
    ref_bleu, ref_bleu_images, ref_cider, ref_cider_images = _reference(hyps, refs)
    bleu = corpus_bleu(hyps, refs)
    cider = cider_d(hyps, refs)
    assert bleu.scores == pytest.approx(ref_bleu, abs=TOL, rel=0)
    assert cider.score == pytest.approx(ref_cider, abs=TOL, rel=0)
    # pycocoevalcap returns per-image scores in the key order of its inputs
    for j, image_id in enumerate(refs):
        assert bleu.per_image[image_id] == pytest.approx([ref_bleu_images[k][j] for k in range(4)], abs=TOL)
        assert cider.per_image[image_id] == pytest.approx(ref_cider_images[j], abs=TOL)


def _random_caption(rng, vocab, max_len=14):
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, max_len)))


@pytest.mark.parametrize("seed", range(20))
def test_random_sets_with_repeated_words_match_pycocoevalcap(seed):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(rng.randint(2, 10))]  # a small vocabulary repeats words a lot
    num_images = rng.randint(1, 25)
    hyps = {i: _random_caption(rng, vocab) for i in range(num_images)}
    refs = {i: [_random_caption(rng, vocab) for _ in range(rng.randint(1, 6))] for i in range(num_images)}
    _assert_matches_reference(hyps, refs)


def test_no_overlap_matches_pycocoevalcap():
    rng = random.Random(7)
    hyps = {i: _random_caption(rng, ["cat", "sat", "mat"]) or "cat" for i in range(6)}
    refs = {i: [_random_caption(rng, ["dog", "ran", "far"]) or "dog" for _ in range(5)] for i in range(6)}
    _assert_matches_reference(hyps, refs)
    assert cider_d(hyps, refs).score == 0.0
    assert corpus_bleu(hyps, refs).scores[3] < 1e-10


def test_single_image_matches_pycocoevalcap():
    hyps = {"img": "a cat sitting on a mat"}
    refs = {"img": ["a cat sits on the mat", "a black cat on a mat", "cat on mat"]}
    _assert_matches_reference(hyps, refs)
    # with one image every reference n-gram has df = N = 1, so every tf-idf weight is 0
    assert cider_d(hyps, refs).score == 0.0


def test_empty_and_long_hypotheses_match_pycocoevalcap():
    hyps = {1: "", 2: "a", 3: "a dog " * 12, 4: "a dog runs in the park"}
    refs = {
        1: ["a dog runs", "a dog is running"],
        2: ["a", "a dog"],
        3: ["a dog", "a dog a dog"],
        4: ["a dog runs in a park", "the dog runs in the park", "dog in park"],
    }
    _assert_matches_reference(hyps, refs)


def test_score_captions_tokenizes_then_matches_pycocoevalcap():
    preds = {1: "A man's horse, on the beach.", 2: "Two dogs (brown) playing!", 3: "A t-shirt on a bed..."}
    refs = {
        1: ["A man and his horse on a beach.", "The man's horse at the beach"],
        2: ["Two brown dogs playing in the grass.", "Dogs playing.", "Two dogs play"],
        3: ["A t-shirt lying on a bed", "A shirt on the bed."],
    }
    ref_bleu, _, ref_cider, _ = _reference(
        {k: tokenize_caption(v) for k, v in preds.items()},
        {k: [tokenize_caption(c) for c in v] for k, v in refs.items()},
    )
    scores = score_captions(preds, refs)
    assert [scores[f"BLEU-{k}"] for k in range(1, 5)] == pytest.approx(ref_bleu, abs=TOL, rel=0)
    assert scores["CIDEr-D"] == pytest.approx(ref_cider, abs=TOL, rel=0)


# A fixed case; the expected figures were computed once with pycocoevalcap 1.2 (Bleu(4) with
# option "closest", Cider() with n=4, sigma=6) on the tokenized strings below, and written here so
# that this test catches a drift even where pycocoevalcap is not installed.
FIXED_RAW_PREDICTIONS = {
    1: "A man riding a horse on a beach.",
    2: "A small dog sitting on the couch!",
    3: "A plate of pasta, on a table.",
}
FIXED_RAW_REFERENCES = {
    1: [
        "A man rides a horse on the beach.",
        "A person riding a brown horse along the shore",
        "Man on horseback at the beach...",
    ],
    2: ["A dog lies on a red couch.", "A small dog, sitting on the sofa."],
    3: ["A plate of food on a table.", "Pasta on a white plate"],
}
FIXED_TOKENIZED_PREDICTIONS = {
    1: "a man riding a horse on a beach",
    2: "a small dog sitting on the couch",
    3: "a plate of pasta on a table",
}
FIXED_TOKENIZED_REFERENCES = {
    1: [
        "a man rides a horse on the beach",
        "a person riding a brown horse along the shore",
        "man on horseback at the beach",
    ],
    2: ["a dog lies on a red couch", "a small dog sitting on the sofa"],
    3: ["a plate of food on a table", "pasta on a white plate"],
}
FIXED_BLEU = [0.9545454544586777, 0.8386592169431641, 0.7058520563588158, 0.5337399846486323]
FIXED_CIDER = 3.3425496016202056
FIXED_CIDER_PER_IMAGE = {1: 1.997602356561061, 2: 4.5065438722484075, 3: 3.5235025760511474}


def test_fixed_case_hard_coded_values():
    assert {k: tokenize_caption(v) for k, v in FIXED_RAW_PREDICTIONS.items()} == FIXED_TOKENIZED_PREDICTIONS
    assert {
        k: [tokenize_caption(c) for c in v] for k, v in FIXED_RAW_REFERENCES.items()
    } == FIXED_TOKENIZED_REFERENCES
    bleu = corpus_bleu(FIXED_TOKENIZED_PREDICTIONS, FIXED_TOKENIZED_REFERENCES)
    cider = cider_d(FIXED_TOKENIZED_PREDICTIONS, FIXED_TOKENIZED_REFERENCES)
    assert bleu.scores == pytest.approx(FIXED_BLEU, abs=TOL, rel=0)
    assert cider.score == pytest.approx(FIXED_CIDER, abs=TOL, rel=0)
    assert cider.per_image == pytest.approx(FIXED_CIDER_PER_IMAGE, abs=TOL, rel=0)
    scores = score_captions(FIXED_RAW_PREDICTIONS, FIXED_RAW_REFERENCES)
    assert scores["BLEU-4"] == pytest.approx(FIXED_BLEU[3], abs=TOL, rel=0)
    assert scores["CIDEr-D"] == pytest.approx(FIXED_CIDER, abs=TOL, rel=0)


def test_fixed_case_matches_pycocoevalcap_today():
    _assert_matches_reference(FIXED_TOKENIZED_PREDICTIONS, FIXED_TOKENIZED_REFERENCES)


def test_bleu_brevity_penalty_by_hand():
    # every n-gram of "a b c d" is in the reference: all precisions are 1 (up to the 1e-9 smoothing);
    # hypothesis length 4, reference length 6 -> brevity penalty exp(1 - 6/4) = exp(-0.5)
    bleu = corpus_bleu({0: "a b c d"}, {0: ["a b c d e f"]})
    assert bleu.scores == pytest.approx([math.exp(-0.5)] * 4, abs=1e-8)


def test_bleu_closest_reference_length_prefers_the_shorter_on_a_tie():
    # lengths 3 and 5 are both 1 away from 4: "closest" takes 3, so no brevity penalty (taking 5
    # would give exp(1 - 5/4) = 0.78)
    bleu = corpus_bleu({0: "a b c d"}, {0: ["a b c", "a b c d e"]})
    assert bleu.reference_length == 3
    assert bleu.scores[0] == pytest.approx(1.0, abs=1e-8)


def test_bleu_clips_repeated_words():
    # "the" occurs 7 times in the hypothesis but at most twice in one reference: unigram precision 2/7
    bleu = corpus_bleu({0: "the the the the the the the"}, {0: ["the cat is on the mat", "there is a cat"]})
    assert bleu.scores[0] == pytest.approx(2 / 7, abs=1e-8)


def test_cider_identical_captions_by_hand():
    # two images with no n-gram in common: every reference n-gram has df 1 and weight log(2); a
    # hypothesis equal to its only reference has cosine 1 at every order and no length penalty, so
    # each image scores 10 * mean(1, 1, 1, 1) = 10
    hyps = {1: "a red bus on the road", 2: "two cats sleeping together now"}
    refs = {1: ["a red bus on the road"], 2: ["two cats sleeping together now"]}
    assert cider_d(hyps, refs).score == pytest.approx(10.0, abs=1e-9)


def test_cider_length_penalty_counts_bigrams():
    # as in the reference code the Gaussian penalty compares bigram counts (words - 1), not words
    refs = {1: ["x y"], 2: ["p q r"], 3: ["m n"]}
    one_word = cider_d({1: "x", 2: "p q r", 3: "m n"}, refs).per_image[1]
    # image 1: "x" has weight log(3) (df 1 of 3 images) in both captions, so the order-1 cosine of
    # (x) against (x, y) is 1/sqrt(2); orders 2-4: no hypothesis n-grams, 0. Bigram counts 0 vs 1,
    # so delta = 1 and the penalty is exp(-1 / (2 * 6^2)). Score = 10 * mean over 4 orders.
    expected = 10 * (1 / math.sqrt(2)) * math.exp(-1 / (2 * 6.0**2)) / 4
    assert one_word == pytest.approx(expected, abs=1e-9)


def test_mismatched_ids_are_rejected():
    with pytest.raises(ValueError, match="same image ids"):
        corpus_bleu({1: "a"}, {2: ["a"]})
    with pytest.raises(ValueError, match="same image ids"):
        cider_d({1: "a"}, {2: ["a"]})
