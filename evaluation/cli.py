"""Command line: `python -m evaluation score {coco-caption,vqa} ...`, `python -m evaluation generate ...` and
`python -m evaluation run ...` (the benchmark harness; see --help).

Every command prints ONE JSON object on stdout (its result) and logs to stderr. To add a command,
write an `_add_<name>_command(commands)` that creates its sub-parser and sets `handler`, and call it
in `build_parser`: a handler takes the parsed arguments and returns the JSON-able result dict.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

from common import exit_codes
from common.errors import UserError

log = logging.getLogger("evaluation")

EPILOG = """\
examples:
  python -m evaluation score coco-caption --predictions preds.json --annotations captions_val2014.json
  python -m evaluation score vqa --predictions answers.json \\
      --questions v2_OpenEnded_mscoco_val2014_questions.json --annotations v2_mscoco_val2014_annotations.json
  python -m evaluation generate --model export/metalm.safetensors --input examples.jsonl --output preds.jsonl
  torchrun --nproc-per-node 2 -m evaluation generate --model RUN/checkpoints/step_00001200 --input ex.jsonl \\
      --output preds.jsonl --num-beams 3 --demos demos.jsonl --demo-style encoder
  python -m evaluation run --config configs/eval/shapes.yaml --model runs/demo/checkpoints

exit codes: 0 ok (result JSON on stdout), 1 unexpected error, 2 bad input or flags (all problems
found are listed on stderr; nothing is scored).
"""

_MISSING_HELP = (
    "error if an annotated {item} has no prediction (default: score only the predicted {item}s and "
    "report how many were left out as num_missing, with a warning on stderr)"
)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=100)


def _score_coco_caption(args: argparse.Namespace) -> dict:
    from evaluation.metrics.caption import read_coco_caption_inputs, score_captions

    inputs = read_coco_caption_inputs(args.predictions, args.annotations, args.require_all)
    scores = score_captions(inputs.predictions, inputs.references)
    return {**scores, "num_images": len(inputs.predictions), "num_missing": inputs.num_missing}


def _score_vqa(args: argparse.Namespace) -> dict:
    from evaluation.metrics.vqa import read_vqa_inputs, score_vqa

    inputs = read_vqa_inputs(args.predictions, args.questions, args.annotations, args.require_all)
    return {**score_vqa(inputs.predictions, inputs.annotations), "num_missing": inputs.num_missing}


def _add_score_command(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser(
        "score",
        help="score a predictions file against annotation files",
        description="Score predictions made by a model against a benchmark's annotation files. "
        "Inputs are validated before anything is scored.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = score.add_subparsers(dest="task", required=True, metavar="TASK")

    p = tasks.add_parser(
        "coco-caption",
        help="BLEU-1..4 and CIDEr-D, as coco-caption computes them",
        description=_wrap(
            "BLEU-1..4 and CIDEr-D (n=4, sigma=6) exactly as coco-caption (pycocoevalcap) "
            "computes them, on captions tokenized by a Python imitation of its Java PTB tokenizer "
            "(lowercase, punctuation removed; see evaluation/metrics/caption_tokenize.py). Scores are on "
            "coco-caption's scale (BLEU in [0, 1]; papers quote x100). Only predicted images are scored; "
            "their references define CIDEr-D's document frequencies. Prints "
            '{"BLEU-1", ..., "BLEU-4", "CIDEr-D", "num_images", "num_missing"}.'
        ),
        epilog="example:\n  python -m evaluation score coco-caption --predictions preds.json "
        "--annotations captions_val2014.json\n\n"
        'preds.json: [{"image_id": 42, "caption": "a dog on a couch"}, ...] (COCO results format, '
        "one per image)\n"
        'captions_val2014.json: {"images": [{"id": 42, ...}], "annotations": [{"image_id": 42, '
        '"caption": "..."}, ...]}',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--predictions", required=True, help="COCO results JSON: list of {image_id, caption}")
    p.add_argument("--annotations", required=True, help="COCO captions annotations JSON")
    p.add_argument("--require-all", action="store_true", help=_MISSING_HELP.format(item="image"))
    p.set_defaults(handler=_score_coco_caption)

    p = tasks.add_parser(
        "vqa",
        help="VQA v2 accuracy, as the official vqaEval.py computes it",
        description=_wrap(
            "Official VQA v2 accuracy: answers normalized as vqaEval.py does, each question "
            "scored as the mean over the 10 leave-one-out subsets of the human answers of "
            "min(1, matches/3). Reported like the official code: percent rounded to 2 decimals. Prints "
            '{"overall", "per_answer_type", "per_question_type", "num_questions", "num_missing"}. '
            "The official tools require an answer for every annotated question: use --require-all for that."
        ),
        epilog="example:\n  python -m evaluation score vqa --predictions answers.json "
        "--questions v2_OpenEnded_mscoco_val2014_questions.json "
        "--annotations v2_mscoco_val2014_annotations.json\n\n"
        'answers.json: [{"question_id": 262148000, "answer": "yes"}, ...] (VQA results format)',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--predictions", required=True, help="VQA results JSON: list of {question_id, answer}")
    p.add_argument("--questions", required=True, help='VQA questions JSON ({"questions": [...]})')
    p.add_argument("--annotations", required=True, help='VQA annotations JSON ({"annotations": [...]})')
    p.add_argument("--require-all", action="store_true", help=_MISSING_HELP.format(item="question"))
    p.set_defaults(handler=_score_vqa)


def _add_generate_command(commands: argparse._SubParsersAction) -> None:
    from evaluation import generate_cli  # no torch at import: the module imports it when run

    p = commands.add_parser(
        "generate",
        help="generate answers with a trained model (encoder-side inputs, in-context demonstrations)",
        description=generate_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="exported .safetensors (config.yaml beside it) or checkpoint folder"
    )
    p.add_argument(
        "--tokenizer", help="tokenizer folder (default: tokenizer/ beside the export, else the config's)"
    )
    p.add_argument(
        "--input", required=True, help="JSONL examples: image(s), encoder (list of strings), prompt"
    )
    p.add_argument("--output", required=True, help="JSONL predictions, one per input line, in order")
    p.add_argument("--demos", help="JSONL in-context demonstrations (the input fields plus label)")
    p.add_argument(
        "--demo-style",
        choices=("encoder", "decoder"),
        default="encoder",
        help="demonstration inputs through the language encoder (the paper) or as decoder tokens (GPT-style)",
    )
    p.add_argument("--max-new-tokens", type=int, default=20, help="longest answer in tokens (default 20)")
    p.add_argument("--num-beams", type=int, default=1, help="1: greedy; else beam search (default 1)")
    p.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        help="beam score = summed log-probability / length ** this (default 1.0: mean log-probability)",
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="examples decoded together per replica (default 8)"
    )
    p.add_argument("--tp", type=int, help="tensor-parallel size (default: all processes in one TP group)")
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="parameter dtype (auto: bf16 on GPU, fp32 on CPU)",
    )
    p.set_defaults(handler=generate_cli.run)


def _add_run_command(commands: argparse._SubParsersAction) -> None:
    from evaluation import run_cli  # no torch at import: the module imports it when run

    p = commands.add_parser(
        "run",
        help="run the benchmarks of an EVAL.yaml on a model: results JSON + MLflow eval/<task>/<metric>",
        description=run_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_cli.add_arguments(p)
    p.set_defaults(handler=run_cli.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Evaluation of MetaLM: benchmark metrics that reproduce the reference toolkits.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_score_command(commands)
    _add_generate_command(commands)
    _add_run_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.handler(args)
    except UserError as e:
        log.error("%s", e)
        return exit_codes.USER_ERROR
    if result is not None:  # None: a non-zero rank of a multi-process command
        print(json.dumps(result))
    return exit_codes.OK
