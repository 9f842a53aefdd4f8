"""Command line: `python -m data_prep {tokenizer,pairs,text,tasks,inspect,verify,synth} ...` (see --help)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from common import exit_codes
from common.errors import UserError

log = logging.getLogger("data_prep")

EPILOG = """\
typical flow (what `scripts/demo_data.sh OUT` runs):
  python -m data_prep synth --output OUT/raw
  python -m data_prep tokenizer --input OUT/raw/text/train.jsonl OUT/raw/pairs --model-type bpe --vocab-size 512 --output OUT/tokenizer
  python -m data_prep pairs --input OUT/raw/pairs/train-*.tar --tokenizer OUT/tokenizer --image-size 32 --output OUT/shards/pairs-train --workers 2
  python -m data_prep text --input OUT/raw/text/train.jsonl --tokenizer OUT/tokenizer --seq-len 128 --output OUT/shards/text-train
  python -m data_prep verify OUT/shards/pairs-train OUT/shards/text-train
  python -m data_prep inspect OUT/shards/pairs-train --images-out OUT/inspect
  python -m data_prep tasks --input shapes_vqa=OUT/raw/tasks/shapes_vqa_train.jsonl OUT/raw/tasks/shapes_text_train.jsonl --tokenizer OUT/tokenizer --image-size 32 --output OUT/shards/tasks-train

long input lists: put one argument per line in a file and pass @FILE (e.g. --input @tars.txt).

exit codes: 0 ok, 1 verify found problems / unexpected error, 2 bad input or flags (nothing written),
130 interrupted (no partial output left at --output).
"""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so temporary output is cleaned up."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _paths(values: list[str]) -> list[Path]:
    return [Path(v) for v in values]


def _add_common_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        required=True,
        help="shard folder to create (written to a temp folder, moved in when complete)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1); output is identical for any value",
    )
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.add_argument("--shard-size-limit", default="64mb", help="MDS shard size limit (default 64mb)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Offline data preparation for MetaLM: tokenizer, image-text, text and finetuning-task "
        "MDS shards, checks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        fromfile_prefix_chars="@",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "tokenizer",
        help="train a sentencepiece tokenizer, or import a docked encoder's vocabulary (--import-hf)",
        description="Train a sentencepiece model from text files (.txt, .jsonl `text` field, "
        ".jsonl.zst) and/or the captions of pair sources (tars or folders of them, COCO JSON, "
        "CSV manifests): writes DIR/tokenizer.model + DIR/tokenizer.json. Or, with --import-hf, adopt "
        "the vocabulary of the pretrained language encoder (Hugging Face BERT/ELECTRA vocab.txt or "
        "RoBERTa vocab.json + merges.txt) so decoder tokens and encoder spans share it; tokenizer.json "
        "then maps each project id to its source embedding row (source_vocab.project_to_source). "
        "Special ids: <pad>=0 <s>=1 </s>=2 <unk>=3 <image>=4 </image>=5 </d>=6. Shards built with "
        "another tokenizer must be rebuilt.",
        epilog="examples:\n  python -m data_prep tokenizer --input corpus.jsonl.zst pairs/ "
        "--vocab-size 64000 --output tok/\n"
        "  python -m data_prep tokenizer --import-hf checkpoints/electra-large --output tok/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="text files and/or pair sources to train on")
    source.add_argument(
        "--import-hf",
        metavar="DIR",
        help="Hugging Face tokenizer folder (vocab.txt, or vocab.json + merges.txt; optional "
        "tokenizer_config.json) whose vocabulary becomes the project's",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        help="with --input: vocabulary size (a small corpus may give fewer)",
    )
    p.add_argument("--output", required=True, help="tokenizer folder")
    p.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram", help="default unigram")
    p.add_argument(
        "--character-coverage", type=float, default=0.9995, help="sentencepiece character_coverage"
    )
    p.add_argument(
        "--byte-fallback", action="store_true", help="unknown characters become byte tokens, not <unk>"
    )
    p.add_argument("--max-sentences", type=int, default=2_000_000, help="sample at most this many lines")
    p.add_argument("--threads", type=int, default=1, help="sentencepiece trainer threads")
    p.add_argument("--force", action="store_true", help="replace a different existing tokenizer")

    p = sub.add_parser(
        "pairs",
        help="image-text sources -> MDS shards",
        description="Decode, convert to RGB, resize the shorter side (bicubic), center-crop to "
        "--image-size, re-encode JPEG; normalize and tokenize captions; write MDS shards "
        "(columns image: bytes (a JPEG file), caption_ids: ndarray:int32, caption, key, source: "
        "str) with sha1+xxh64 shard hashes and stats.json. Bad samples are skipped and "
        "counted by reason in stats.json.",
        epilog="examples:\n"
        "  python -m data_prep pairs --input laion/00000.tar laion/00001.tar --tokenizer tok "
        "--output shards/laion --workers 8\n"
        "  python -m data_prep pairs --input annotations/captions_train2017.json --image-root "
        "train2017 --coco-captions all --tokenizer tok --output shards/coco\n"
        "  python -m data_prep pairs --input manifest.csv --tokenizer tok --output shards/mine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="webdataset .tar files or folders of them, COCO captions .json, .jsonl/.csv/.tsv manifests",
    )
    p.add_argument(
        "--format",
        choices=["auto", "webdataset", "coco", "jsonl", "csv"],
        default="auto",
        help="input format (auto: by file type)",
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer folder from `data_prep tokenizer`")
    p.add_argument("--image-size", type=int, default=224, help="output side in pixels (default 224)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of stored images (default 95)")
    p.add_argument("--max-caption-tokens", type=int, default=128, help="cut captions to this many tokens")
    p.add_argument(
        "--coco-captions",
        choices=["all", "first"],
        default="all",
        help="COCO: one sample per caption (all) or per image with its first caption",
    )
    p.add_argument(
        "--image-root",
        help="folder that COCO file_name / manifest image paths are relative to "
        "(default: the folder of the JSON/manifest)",
    )
    p.add_argument(
        "--image-field",
        help="manifest column with the image path (default: image|image_path|file_name|filename|path)",
    )
    p.add_argument("--caption-field", help="manifest column with the caption (default: caption|text)")
    _add_common_output(p)

    p = sub.add_parser(
        "text",
        help="text corpora -> packed token MDS shards",
        description="Tokenize documents and pack them into --seq-len sequences with </d> after "
        "each document; columns tokens (ndarray:int32, exactly seq-len) and doc_starts "
        "(ndarray:int32, offsets where document segments start, always with 0). The last "
        "partial sequence is dropped and counted in stats.json (dropped_tail_tokens).",
        epilog="example: python -m data_prep text --input pile/00.jsonl.zst --tokenizer tok "
        "--seq-len 2048 --output shards/pile --workers 8",
    )
    p.add_argument(
        "--input", nargs="+", required=True, help=".jsonl (one JSON object per line), .jsonl.zst, .txt"
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer folder from `data_prep tokenizer`")
    p.add_argument("--seq-len", type=int, required=True, help="tokens per packed sequence")
    p.add_argument("--text-field", default="text", help="JSONL field with the document (default text)")
    p.add_argument(
        "--txt-docs",
        choices=["file", "paragraph", "line"],
        default="file",
        help=".txt files: one document per file (default), per blank-line paragraph, or per line",
    )
    _add_common_output(p)

    p = sub.add_parser(
        "tasks",
        help="finetuning task data (JSONL, VQA v2, COCO captions) -> MDS task shards",
        description="Finetuning data for MetaLM, through the encoders. Each example is rendered with a\n"
        "template drawn from --templates (seeded by --seed and the example key: the same for any\n"
        "--workers) that says which images go to the vision encoder, which text segments to the\n"
        "language encoder (one span each), the decoder prompt (no loss) and the target. Images are\n"
        "resized + center-cropped as in `pairs`. Columns: key, dataset, template_id, images (list\n"
        "of JPEG bytes), encoder_segments (token id lists, no <s>), decoder_prompt_ids (list),\n"
        "target_ids (int32, no </s>), target, answers, choices, label, question_id, image_id\n"
        "(data_prep/tasks.py documents them; the template schema is in data_prep/task_templates.py\n"
        "and data_prep/templates/default.yaml). A template naming a field that an input's first\n"
        "example lacks is an error before anything is written. Bad examples are skipped and counted\n"
        "by reason in stats.json; too long encoder segments and targets are cut and counted.",
        epilog="examples:\n"
        "  python -m data_prep tasks --input mnli=mnli_train.jsonl flan=flan.jsonl.zst --tokenizer tok "
        "--max-per-dataset 30000 --output shards/multitask --workers 8\n"
        "  python -m data_prep tasks --format vqa --questions v2_OpenEnded_mscoco_train2014_questions.json "
        "--annotations v2_mscoco_train2014_annotations.json --image-root train2014 --tokenizer tok "
        "--output shards/vqa-train\n"
        "  python -m data_prep tasks --input captions_train2017.json --image-root train2017 "
        "--tokenizer tok --output shards/coco-caption-ft\n"
        "JSONL rows: any fields the templates name; optional image/images (paths relative to\n"
        "--image-root, default the file's folder), choices (list of str) + label (int), answers\n"
        "(list of str, references for scoring).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input",
        nargs="*",
        default=[],
        metavar="[NAME=]FILE",
        help="JSONL task files (.jsonl, .jsonl.zst) and COCO captions .json; NAME = the template set "
        "(default: file stem without a split suffix, e.g. mnli_train.jsonl -> mnli; COCO: coco_caption)",
    )
    p.add_argument(
        "--format",
        choices=["auto", "jsonl", "coco", "vqa"],
        default="auto",
        help="format of --input files (auto: by name); vqa: the input is --questions/--annotations",
    )
    p.add_argument(
        "--questions", metavar="[NAME=]Q.json", help="VQA v2 questions JSON (dataset name default: vqa)"
    )
    p.add_argument("--annotations", help="VQA v2 annotations JSON (target = multiple_choice_answer)")
    p.add_argument(
        "--image-pattern",
        action="append",
        help="VQA image file name under --image-root; repeat to try several (default: "
        "COCO_{split}_{image_id:012d}.jpg, then {image_id}.jpg; split = the questions' data_subtype)",
    )
    p.add_argument(
        "--image-root", help="folder image paths are relative to (default: each input file's folder)"
    )
    p.add_argument("--templates", help="YAML template file (default: data_prep/templates/default.yaml)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder from `data_prep tokenizer`")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of template draws and --max-per-dataset (default 0)"
    )
    p.add_argument(
        "--max-per-dataset",
        type=int,
        help="keep at most N examples per dataset, a seeded deterministic choice (the paper used 30000)",
    )
    p.add_argument(
        "--max-encoder-tokens",
        type=int,
        default=511,
        help="cut each encoder segment to this many tokens (default 511: + <s> = 512 encoder positions)",
    )
    p.add_argument("--max-target-tokens", type=int, default=128, help="cut targets to this many tokens")
    p.add_argument(
        "--coco-captions",
        choices=["all", "first"],
        default="all",
        help="COCO: one example per caption (all, for training) or per image (first, for evaluation)",
    )
    p.add_argument("--image-size", type=int, default=224, help="output side in pixels (default 224)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of stored images (default 95)")
    _add_common_output(p)

    p = sub.add_parser(
        "inspect",
        help="counts, token statistics and decoded samples of a shard folder",
        epilog="example: python -m data_prep inspect shards/coco --images-out /tmp/look",
    )
    p.add_argument("dir", help="shard folder")
    p.add_argument(
        "--tokenizer", help="tokenizer folder (default: the one recorded in stats.json, if present)"
    )
    p.add_argument("--samples", type=int, default=5, help="how many samples to decode (default 5)")
    p.add_argument("--images-out", help="write the sample images here (default: DIR.inspect beside DIR)")

    p = sub.add_parser(
        "verify",
        help="read every shard; check hashes, schema, every sample and stats.json",
        description="Exit 0 if every shard folder is complete and intact; otherwise exit 1 "
        "and name each bad shard.",
        epilog="example: python -m data_prep verify shards/coco shards/pile",
    )
    p.add_argument("dir", nargs="+", help="shard folder(s)")

    p = sub.add_parser(
        "synth",
        help="write a sample image-text + text dataset, held-out eval sets and finetuning tasks (seeded)",
        description="Images of one filled shape on white; caption = '{size} {colour} {shape} {row} "
        "{column}'\n(e.g. 'large red circle top left'), a function of the image. Writes:\n"
        "  DIR/pairs/{train,val}-NNNNN.tar  image-text pairs (img2dataset layout)\n"
        "  DIR/text/{train,val}.jsonl       a text corpus\n"
        "  DIR/eval/caption/  images/ + captions.json: COCO captions format, 3 reference captions\n"
        "                     per held-out image\n"
        "  DIR/eval/vqa/      images/ + questions.json + annotations.json: VQA v2 format, 2-4\n"
        "                     questions per held-out image ('what colour is the shape?', 'where is\n"
        "                     the shape?', 'what shape is it?', 'how big is the shape?'), 10\n"
        "                     annotator answers each (data_subtype synthval)\n"
        "  DIR/tasks/         finetuning tasks for `data_prep tasks`: shapes_vqa_train.jsonl +\n"
        "                     images/ ({image, question, answer} on training images) and\n"
        "                     shapes_text_{train,val}.jsonl (text-only entailment: {premise,\n"
        "                     hypothesis, choices [yes, no], label, answer}); tokenizer_text.txt\n"
        "                     (the default templates rendered on them: add it to the tokenizer's\n"
        "                     --input so prompt words and ':' '?' are in the vocabulary)\n"
        "  */image_specs.json image file name -> the drawn shape (the ground truth)\n"
        "Answers are functions of the image. Each set has its own seeded RNG stream and image ids;\n"
        "no eval image is identical to a pairs or task image (data_prep/task_synth.py).",
        epilog="examples:\n  python -m data_prep synth --output data/raw --num-images 3000\n"
        "  python -m data_prep tasks --input shapes_vqa=data/raw/tasks/shapes_vqa_train.jsonl "
        "data/raw/tasks/shapes_text_train.jsonl --tokenizer tok --image-size 32 --output shards/tasks\n"
        "  python -m data_prep tasks --format vqa --questions data/raw/eval/vqa/questions.json "
        "--annotations data/raw/eval/vqa/annotations.json --image-root data/raw/eval/vqa/images "
        "--tokenizer tok --image-size 32 --output shards/eval-vqa",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", required=True, help="folder to write into")
    p.add_argument("--num-images", type=int, default=3000, help="train images (default 3000)")
    p.add_argument("--num-val-images", type=int, default=300, help="held-out val images (default 300)")
    p.add_argument("--image-size", type=int, default=64, help="side in pixels (default 64)")
    p.add_argument("--num-docs", type=int, default=2000, help="train text documents (default 2000)")
    p.add_argument("--num-val-docs", type=int, default=200, help="val text documents (default 200)")
    p.add_argument("--per-tar", type=int, default=1000, help="samples per tar (default 1000)")
    p.add_argument(
        "--num-eval-images",
        type=int,
        default=64,
        help="held-out images for each of eval/caption and eval/vqa (default 64; 0: no DIR/eval)",
    )
    p.add_argument(
        "--num-task-images",
        type=int,
        default=256,
        help="images of tasks/shapes_vqa_train.jsonl (default 256; 0: no DIR/tasks)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "tokenizer":
        from data_prep.tokenizer import build_tokenizer, import_hf_tokenizer

        if args.import_hf is not None:
            if args.vocab_size is not None:
                raise UserError("--vocab-size: not used with --import-hf (the vocabulary is the encoder's)")
            import_hf_tokenizer(Path(args.import_hf), Path(args.output), args.force)
            return exit_codes.OK
        if args.vocab_size is None:
            raise UserError(
                "--vocab-size: required with --input (or import a vocabulary with --import-hf DIR)"
            )
        build_tokenizer(
            _paths(args.input),
            Path(args.output),
            args.vocab_size,
            args.model_type,
            args.force,
            args.character_coverage,
            args.byte_fallback,
            args.max_sentences,
            args.threads,
        )
    elif args.command == "pairs":
        from data_prep.pairs import PairsConfig, build_pairs

        stats = build_pairs(
            PairsConfig(
                inputs=_paths(args.input),
                tokenizer=Path(args.tokenizer),
                output=Path(args.output),
                format=args.format,
                image_size=args.image_size,
                jpeg_quality=args.jpeg_quality,
                max_caption_tokens=args.max_caption_tokens,
                workers=args.workers,
                coco_captions=args.coco_captions,
                image_root=Path(args.image_root) if args.image_root else None,
                image_field=args.image_field,
                caption_field=args.caption_field,
                shard_size_limit=args.shard_size_limit,
                force=args.force,
                progress=not args.no_progress,
            )
        )
        print(json.dumps({k: stats[k] for k in ("samples", "tokens", "skipped")}))
    elif args.command == "text":
        from data_prep.text import TextConfig, build_text

        stats = build_text(
            TextConfig(
                inputs=_paths(args.input),
                tokenizer=Path(args.tokenizer),
                output=Path(args.output),
                seq_len=args.seq_len,
                workers=args.workers,
                text_field=args.text_field,
                txt_docs=args.txt_docs,
                shard_size_limit=args.shard_size_limit,
                force=args.force,
                progress=not args.no_progress,
            )
        )
        print(json.dumps({k: stats[k] for k in ("samples", "tokens", "documents", "skipped")}))
    elif args.command == "tasks":
        from data_prep.task_templates import DEFAULT_TEMPLATES
        from data_prep.tasks import TasksConfig, build_tasks

        stats = build_tasks(
            TasksConfig(
                inputs=list(args.input),
                tokenizer=Path(args.tokenizer),
                output=Path(args.output),
                templates=Path(args.templates) if args.templates else DEFAULT_TEMPLATES,
                format=args.format,
                questions=args.questions,
                annotations=Path(args.annotations) if args.annotations else None,
                image_root=Path(args.image_root) if args.image_root else None,
                image_patterns=args.image_pattern,
                coco_captions=args.coco_captions,
                seed=args.seed,
                max_per_dataset=args.max_per_dataset,
                max_encoder_tokens=args.max_encoder_tokens,
                max_target_tokens=args.max_target_tokens,
                image_size=args.image_size,
                jpeg_quality=args.jpeg_quality,
                workers=args.workers,
                shard_size_limit=args.shard_size_limit,
                force=args.force,
                progress=not args.no_progress,
            )
        )
        datasets = {k: v["samples"] for k, v in stats["datasets"].items()}
        print(json.dumps({**{k: stats[k] for k in ("samples", "tokens", "skipped")}, "datasets": datasets}))
    elif args.command == "inspect":
        from data_prep.inspect_shards import inspect_shards
        from data_prep.shard_meta import read_shard_meta

        tokenizer = args.tokenizer
        if tokenizer is None:
            recorded = read_shard_meta(args.dir)["tokenizer"].get("path")
            tokenizer = recorded if recorded and Path(recorded).is_dir() else None
        images_out = args.images_out or f"{Path(args.dir).absolute()}.inspect"
        print(inspect_shards(args.dir, tokenizer, args.samples, images_out))
    elif args.command == "verify":
        from data_prep.verify import verify_shards

        bad = 0
        for d in args.dir:
            problems, summary = verify_shards(d)
            if problems:
                bad += 1
                print(f"FAIL {d}:\n" + "\n".join(f"  - {p}" for p in problems))
            else:
                print(
                    f"OK   {d}: {summary['kind']}, {summary['shards']} shard(s), {summary['samples']} samples, "
                    f"{summary['tokens']} tokens, hashes and schema verified"
                )
        return exit_codes.FAILURE if bad else exit_codes.OK
    elif args.command == "synth":
        from data_prep.synth import synth

        synth(
            Path(args.output),
            args.num_images,
            args.num_val_images,
            args.image_size,
            args.num_docs,
            args.num_val_docs,
            args.seed,
            args.per_tar,
            args.num_eval_images,
            args.num_task_images,
        )
    return exit_codes.OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    except UserError as e:
        log.error("%s", e)
        return exit_codes.USER_ERROR
    except KeyboardInterrupt:
        log.error("interrupted; no partial output was left at the output path")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
