"""Data-prep throughput against bare loops over the same inputs (ratios measured in one run).

  pairs (1 worker) images/s  /  bare PIL decode + resize/crop + JPEG encode loop   target >= 0.8
  pairs 2 workers / 1 worker                                                       target >= 1.7
  text (1 worker) tokens/s  /  bare SentencePieceProcessor.encode                  target >= 0.7

Inputs are generated: photo-like JPEGs (smooth colour fields + grain, 320x240, q90) in an
img2dataset-style tar, resized to 224 px; and a JSONL corpus of real prose-like text taken from
the Python sources in this environment, with a 4k-piece tokenizer. Each timing is the best of
--repeats runs, interleaved, because the machine is shared.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_data_prep.py
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from data_prep.pairs import PairsConfig, build_pairs  # noqa: E402
from data_prep.text import TextConfig, build_text  # noqa: E402
from data_prep.tokenizer import build_tokenizer, load_tokenizer  # noqa: E402


def photo_like(rng: np.random.Generator, w: int, h: int) -> bytes:
    low = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-24, 25, size=(h, w, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_tar(path: Path, n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    words = "a photo of the red blue green small large dog cat house tree car sky at in on near".split()
    images = []
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            img = photo_like(rng, 320, 240)
            caption = " ".join(rng.choice(words, size=int(rng.integers(5, 16)))).encode()
            for name, data in ((f"{i:09d}.jpg", img), (f"{i:09d}.txt", caption)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            images.append(img)
    return images


def bare_image_loop(images: list[bytes], size: int, quality: int) -> None:
    for data in images:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size, size))
        img = img.convert("RGB")
        w, h = img.size
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
        img.save(io.BytesIO(), format="JPEG", quality=quality)


def make_corpus(path: Path, max_bytes: int) -> list[str]:
    import email

    root = Path(email.__file__).parents[1]  # the standard library: real prose in docstrings/comments
    docs, total = [], 0
    for f in sorted(root.rglob("*.py")):
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    with open(path, "w", encoding="utf-8") as out:
        for d in docs:
            out.write(json.dumps({"text": d}) + "\n")
    return docs


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--text-mb", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp_str:
        tmp = Path(tmp_str)
        t0 = time.perf_counter()
        images = make_tar(tmp / "bench-00000.tar", args.images)
        docs = make_corpus(tmp / "corpus.jsonl", int(args.text_mb * 1e6))
        tok_dir = tmp / "tok"
        build_tokenizer(
            [tmp / "corpus.jsonl"], tok_dir, vocab_size=4000, model_type="bpe", max_sentences=200_000
        )
        sp = load_tokenizer(tok_dir).sp
        print(
            f"setup: {len(images)} images 320x240 -> {args.image_size}px, {len(docs)} documents "
            f"({sum(map(len, docs)) / 1e6:.1f} MB), load {os.getloadavg()[0]:.1f}, {time.perf_counter() - t0:.0f} s"
        )

        def pairs(workers: int):
            cfg = PairsConfig(
                inputs=[tmp / "bench-00000.tar"],
                tokenizer=tok_dir,
                output=tmp / f"p{workers}",
                image_size=args.image_size,
                workers=workers,
                progress=False,
                force=True,
            )
            return lambda: build_pairs(cfg)

        def text():
            cfg = TextConfig(
                inputs=[tmp / "corpus.jsonl"],
                tokenizer=tok_dir,
                output=tmp / "t",
                seq_len=2048,
                progress=False,
                force=True,
            )
            return build_text(cfg)

        n_tokens = sum(len(x) for x in sp.encode(docs, num_threads=1))
        t_bare = t_p1 = t_p2 = t_enc_loop = t_enc_batch = t_text = float("inf")
        for _ in range(args.repeats):  # interleaved, so a burst of load hits all of them alike
            t_bare = min(t_bare, best(lambda: bare_image_loop(images, args.image_size, 95), 1))
            t_p1 = min(t_p1, best(pairs(1), 1))
            t_p2 = min(t_p2, best(pairs(2), 1))
            t_enc_loop = min(t_enc_loop, best(lambda: [sp.encode(d) for d in docs], 1))
            t_enc_batch = min(t_enc_batch, best(lambda: sp.encode(docs, num_threads=1), 1))
            t_text = min(t_text, best(text, 1))
        t_enc = min(t_enc_loop, t_enc_batch)
        n = len(images)
        rows = [
            ("bare image loop (decode+resize/crop+encode)", f"{n / t_bare:.0f} images/s", ""),
            (
                "pairs --workers 1",
                f"{n / t_p1:.0f} images/s",
                f"ratio vs bare: {t_bare / t_p1:.2f} (target >= 0.8)",
            ),
            (
                "pairs --workers 2",
                f"{n / t_p2:.0f} images/s",
                f"2 workers / 1 worker: {t_p1 / t_p2:.2f} (target >= 1.7)",
            ),
            ("bare sp.encode (best of per-doc loop / batch)", f"{n_tokens / t_enc / 1e6:.2f} M tokens/s", ""),
            (
                "text --workers 1 (seq-len 2048)",
                f"{n_tokens / t_text / 1e6:.2f} M tokens/s",
                f"ratio vs bare: {t_enc / t_text:.2f} (target >= 0.7)",
            ),
        ]
        for name, rate, ratio in rows:
            print(f"  {name:48s} {rate:>18s}   {ratio}")
        print(
            f"load average after: {os.getloadavg()[0]:.1f} (2 cores; other users' work disturbs these numbers)"
        )


if __name__ == "__main__":
    main()
