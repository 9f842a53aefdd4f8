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
import resource
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


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the pairs workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Timing:
    """Best wall time and best CPU time over repeated runs."""

    def __init__(self):
        self.wall = self.cpu = float("inf")

    def run(self, fn) -> None:
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn()
        self.wall = min(self.wall, time.perf_counter() - t0)
        self.cpu = min(self.cpu, cpu_seconds() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
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
        bare, p1, p2, enc_loop, enc_batch, txt = (Timing() for _ in range(6))
        for _ in range(args.repeats):  # interleaved, so a burst of load hits all of them alike
            bare.run(lambda: bare_image_loop(images, args.image_size, 95))
            p1.run(pairs(1))
            p2.run(pairs(2))
            enc_loop.run(lambda: [sp.encode(d) for d in docs])
            enc_batch.run(lambda: sp.encode(docs, num_threads=1))
            txt.run(text)
        enc = min((enc_loop, enc_batch), key=lambda t: t.wall)
        enc_cpu = min(enc_loop.cpu, enc_batch.cpu)
        n = len(images)
        print(f"  {'':46s} {'wall':>14s} {'cpu':>14s}   ratio (wall / cpu)")
        rows = [
            ("bare image loop (decode+resize/crop+encode)", bare, n, "images/s", ""),
            (
                "pairs --workers 1",
                p1,
                n,
                "images/s",
                f"vs bare: {bare.wall / p1.wall:.2f} / {bare.cpu / p1.cpu:.2f}   (target >= 0.8)",
            ),
            (
                "pairs --workers 2",
                p2,
                n,
                "images/s",
                f"2 workers / 1 worker: {p1.wall / p2.wall:.2f} wall   (target >= 1.7); "
                f"on 2 idle cores at most {2 * p1.cpu / p2.cpu:.2f} (= 2 x cpu(1 worker) / cpu(2 workers))",
            ),
            ("bare sp.encode (best of per-doc / batch)", enc, n_tokens, "tokens/s", ""),
            (
                "text --workers 1 (seq-len 2048)",
                txt,
                n_tokens,
                "tokens/s",
                f"vs bare: {enc.wall / txt.wall:.2f} / {enc_cpu / txt.cpu:.2f}   (target >= 0.7)",
            ),
        ]
        for name, t, count, unit, ratio in rows:
            print(f"  {name:46s} {count / t.wall:>8.0f} {unit:8s}{count / t.cpu:>8.0f} {unit:8s} {ratio}")
        print(
            f"load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
            "(other users' work disturbs wall times; cpu times are robust to it)"
        )


if __name__ == "__main__":
    main()
