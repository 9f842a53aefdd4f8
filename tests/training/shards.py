"""A tiny but real dataset for training tests: a sentencepiece tokenizer and MDS shards (DESIGN.md 4).

Written directly with streaming.MDSWriter (fast, no CLI): image-text pairs whose caption is determined
by the image (solid colour -> colour word), packed text sequences with document starts, and the
stats.json files the training config validation reads.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from streaming import MDSWriter

from common.special_tokens import END_DOC_ID

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (240, 240, 20)}
SIZES = ["small", "large"]
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "far", "away", "home", "tree", "sky"]


def write_tokenizer(out: Path) -> object:
    from data_prep.tokenizer import train_tokenizer_model
    from data_prep.tokenizer import write_tokenizer as write

    rng = np.random.default_rng(0)
    texts = [f"a {s} {c} square" for c in COLOURS for s in SIZES] * 20
    texts += [" ".join(rng.choice(WORDS, size=8)) for _ in range(200)]
    return write(train_tokenizer_model(texts, vocab_size=64), out, "unigram")


def write_pairs(out: Path, tok, n: int, image_size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    cols = {"image": "bytes", "caption_ids": "ndarray:int32", "caption": "str", "key": "str", "source": "str"}
    names = list(COLOURS)
    with MDSWriter(out=str(out), columns=cols, size_limit=1 << 16) as w:
        for i in range(n):
            c, s = names[int(rng.integers(len(names)))], SIZES[int(rng.integers(2))]
            img = Image.new("RGB", (image_size, image_size), (250, 250, 250))
            half = image_size // 4 if s == "small" else 2
            img.paste(COLOURS[c], (half, half, image_size - half, image_size - half))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            caption = f"a {s} {c} square"
            w.write(
                {
                    "image": buf.getvalue(),
                    "caption_ids": np.array(tok.encode(caption), dtype=np.int32),
                    "caption": caption,
                    "key": f"{seed}{i:06d}",
                    "source": "test",
                }
            )
    _stats(out, "pairs", tok, n, image_size=image_size)
    return out


def write_text(out: Path, tok, n: int, seq_len: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    with MDSWriter(
        out=str(out), columns={"tokens": "ndarray:int32", "doc_starts": "ndarray:int32"}, size_limit=1 << 16
    ) as w:
        for _ in range(n):
            toks, starts = [], []
            while len(toks) < seq_len:
                starts.append(len(toks))
                toks += tok.encode(" ".join(rng.choice(WORDS, size=int(rng.integers(5, 20))))) + [END_DOC_ID]
            w.write(
                {
                    "tokens": np.array(toks[:seq_len], dtype=np.int32),
                    "doc_starts": np.array(starts, dtype=np.int32),
                }
            )
    _stats(out, "text", tok, n, seq_len=seq_len)
    return out


def write_tasks(out: Path, tok, n: int, image_size: int = 32, seed: int = 0) -> Path:
    """Finetuning task shards (data_prep/tasks.py columns): half "what colour?" questions about an image
    (image -> vision encoder, question -> language encoder, answer from the decoder), half a text task
    whose answer is in the encoder-side sentence."""
    from data_prep.shard_meta import TASK_COLUMNS, join_images

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    with MDSWriter(out=str(out), columns=TASK_COLUMNS, size_limit=1 << 16) as w:
        for i in range(n):
            c, s = names[int(rng.integers(len(names)))], SIZES[int(rng.integers(2))]
            images, segments = [], []
            if i % 2 == 0:
                img = Image.new("RGB", (image_size, image_size), (250, 250, 250))
                half = image_size // 4 if s == "small" else 2
                img.paste(COLOURS[c], (half, half, image_size - half, image_size - half))
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                images.append(buf.getvalue())
                segments.append(tok.encode("what colour is the square"))
            else:
                segments.append(tok.encode(f"the {s} square is {c}"))
            w.write(
                {
                    "key": f"t{seed}{i:06d}",
                    "dataset": "colours",
                    "template_id": 0,
                    **join_images(images),
                    "encoder_segments": segments,
                    "decoder_prompt_ids": tok.encode("a"),
                    "target_ids": np.array(tok.encode(c), dtype=np.int32),
                    "target": c,
                    "answers": [c],
                    "choices": [],
                    "label": -1,
                    "question_id": i,
                    "image_id": i if images else -1,
                }
            )
    _stats(out, "tasks", tok, n, image_size=image_size)
    return out


def _stats(out: Path, kind: str, tok, n: int, **extra) -> None:
    stats = {
        "kind": kind,
        "tokenizer": {"vocab_size": tok.vocab_size, "sha256": tok.sha256},
        "samples": n,
        "skipped": {},
        **extra,
    }
    (out / "stats.json").write_text(json.dumps(stats))


def make_dataset(root: Path, pairs: int = 256, texts: int = 64) -> Path:
    """root/{tokenizer, pairs-train, pairs-val, text-train, text-val, tasks-train, tasks-val}; returns root."""
    tok = write_tokenizer(root / "tokenizer")
    write_pairs(root / "pairs-train", tok, pairs, seed=1)
    write_pairs(root / "pairs-val", tok, 64, seed=2)
    write_text(root / "text-train", tok, texts, seed=3)
    write_text(root / "text-val", tok, 16, seed=4)
    write_tasks(root / "tasks-train", tok, 128, seed=5)
    write_tasks(root / "tasks-val", tok, 32, seed=6)
    return root


def config_overrides(root: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides for configs/debug.yaml that point it at a make_dataset() folder and a tmp run dir."""
    ov = {
        "data.tokenizer": root / "tokenizer",
        "data.train.0.path": root / "pairs-train",
        "data.train.1.path": root / "text-train",
        "data.val.0.path": root / "pairs-val",
        "data.val.1.path": root / "text-val",
        "data.num_workers": 0,
        "train.run_dir": run_dir,
        "tracking.uri": f"sqlite:///{run_dir.parent / 'mlflow.db'}",
        "train.log_interval": 1,
        "train.global_batch_size": 8,
        "train.micro_batch_size": 8,
        "eval.batches": 2,
        "eval.interval_steps": 0,
        "eval.caption_samples": 2,
        "eval.caption_max_new_tokens": 6,
        "optim.warmup_steps": 2,
        "data.span_min_len": 4,
        "data.span_max_len": 12,
        "train.peak_tflops": 0.15,
    }
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]
