"""Evaluation of trained MetaLM checkpoints: the stage after training.

`evaluation.metrics` holds the scorers, written to reproduce the reference toolkits' numbers:
COCO captioning BLEU-1..4 and CIDEr-D (as coco-caption / pycocoevalcap computes them, with a Python
tokenizer in place of its Java one), the official VQA v2 accuracy, and multiple-choice accuracy from
per-choice log-likelihoods. `python -m evaluation score ...` scores a predictions file against
annotation files and prints one JSON object of metrics (see `evaluation/cli.py`).

The harness (`python -m evaluation run --config EVAL.yaml --model PATH`, evaluation/run_cli.py) runs the
benchmarks of an EVAL.yaml (evaluation/harness_config.py; task kinds in evaluation/tasks/: caption, vqa,
multiple_choice, perplexity; zero- or k-shot) on a model at any TP/DP layout, writes a results JSON and
logs MLflow metrics `eval/<task>/<metric>`; training's `eval.harness` runs it during training
(evaluation/hook.py).

The dependency points one way: evaluation may import the training code (to load a model), but
nothing in `training/` imports `evaluation` at module level (the one late import: `Trainer.eval_harness`,
for `eval.harness`). Importing this package is cheap (no torch).
"""
