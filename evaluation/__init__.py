"""Evaluation of trained MetaLM checkpoints: the stage after training.

`evaluation.metrics` holds the scorers, written to reproduce the reference toolkits' numbers:
COCO captioning BLEU-1..4 and CIDEr-D (as coco-caption / pycocoevalcap computes them, with a Python
tokenizer in place of its Java one), the official VQA v2 accuracy, and multiple-choice accuracy from
per-choice log-likelihoods. `python -m evaluation score ...` scores a predictions file against
annotation files and prints one JSON object of metrics (see `evaluation/cli.py`).

The dependency points one way: evaluation may import the training code (to load a model), but
nothing in `training/` imports `evaluation`. Importing this package is cheap (no torch).
"""
