"""`python -m data_prep synth`: a seeded sample dataset for demos, tests and the learning check.

Images: one big, filled, high-contrast shape on a white background. The caption is a pure
function of the image, with almost no filler so each caption token carries image information:
`"{size} {colour} {shape} {row} {column}"`, e.g. "large red circle top left" (3 sizes x 7
colours x 5 shapes x 3x3 positions). Written as img2dataset-style webdataset tars
(`KEY.jpg`, `KEY.txt`, `KEY.json`), plus a small JSONL text corpus, plus (`task_synth`) held-out
COCO-format captioning and VQA v2-format evaluation sets and finetuning task files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from common.errors import UserError

log = logging.getLogger(__name__)

SIZES = {"small": 0.3, "medium": 0.42, "large": 0.56}  # shape extent as a fraction of the image side
COLOURS = {
    "red": (220, 20, 30),
    "green": (20, 150, 40),
    "blue": (20, 50, 220),
    "yellow": (235, 195, 0),
    "purple": (130, 30, 170),
    "orange": (250, 120, 0),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class ShapeSpec:
    size: str
    colour: str
    shape: str
    row: int
    col: int

    @property
    def caption(self) -> str:
        return f"{self.size} {self.colour} {self.shape} {ROWS[self.row]} {COLUMNS[self.col]}"


def random_spec(rng: random.Random) -> ShapeSpec:
    return ShapeSpec(
        rng.choice(list(SIZES)),
        rng.choice(list(COLOURS)),
        rng.choice(SHAPES),
        rng.randrange(3),
        rng.randrange(3),
    )


def draw_shape(spec: ShapeSpec, px: int, rng: random.Random) -> Image.Image:
    """Render `spec` at `px` x `px` (4x supersampled for clean edges), with a small seeded jitter."""
    ss = 4
    W = px * ss
    cell = W / 3
    r = W * SIZES[spec.size] / 2
    # Centre of the grid cell plus a small jitter, pulled inside the image: big shapes stay
    # big at 32 px (recognisable) and the 3x3 positions stay clearly apart.
    cx = cell * (spec.col + 0.5) + rng.uniform(-0.04, 0.04) * W
    cy = cell * (spec.row + 0.5) + rng.uniform(-0.04, 0.04) * W
    cx = min(max(cx, r + ss), W - r - ss)
    cy = min(max(cy, r + ss), W - r - ss)
    img = Image.new("RGB", (W, W), BACKGROUND)
    d = ImageDraw.Draw(img)
    fill = COLOURS[spec.colour]
    if spec.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif spec.shape == "square":
        s = r * 0.85
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif spec.shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif spec.shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # cross
        t = r * 0.38
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    return img.resize((px, px), Image.Resampling.LANCZOS)


_WORDS = (
    "the a one each every some many few this that model data image picture shape colour "
    "language learns reads sees writes small large red green blue bright dark round sharp "
    "corner edge line side top bottom left right middle centre and or but with of on in at "
    "near far above below beside under over is are was were has have will can may quickly "
    "slowly often never always text token sentence word story paper page book light"
).split()
_TEMPLATES = (
    "the {size} {colour} {shape} sits at the {row} {col} of the picture.",
    "a {shape} is {colour} and {size}.",
    "we drew a {colour} {shape} near the {row} {col}.",
    "{w1} {w2} {w3} {w4} {w5}.",
    "the {w1} {w2} {w3} the {w4} and the {w5} {w6}.",
    "{w1} {w2} a {size} {shape} {w3} {w4}.",
)


def random_document(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 12)):
        words = {f"w{i}": rng.choice(_WORDS) for i in range(1, 7)}
        sentence = rng.choice(_TEMPLATES).format(
            size=rng.choice(list(SIZES)),
            colour=rng.choice(list(COLOURS)),
            shape=rng.choice(SHAPES),
            row=rng.choice(ROWS),
            col=rng.choice(COLUMNS),
            **words,
        )
        sentences.append(sentence[0].upper() + sentence[1:])
    return " ".join(sentences)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # deterministic archives
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_pairs_tars(
    out_dir: Path, split: str, n: int, px: int, rng: random.Random, per_tar: int, shard_offset: int = 0
) -> list[Path]:
    """img2dataset layout: `{split}-{shard:05d}.tar` with `KEY.jpg`, `KEY.txt`, `KEY.json`."""
    paths = []
    for shard_no, start in enumerate(range(0, n, per_tar)):
        path = out_dir / f"{split}-{shard_no:05d}.tar"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(n, start + per_tar)):
                spec = random_spec(rng)
                img = draw_shape(spec, px, rng)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=95)
                key = f"{shard_offset + shard_no:05d}{i - start:04d}"
                meta = {
                    "key": key,
                    "caption": spec.caption,
                    "status": "success",
                    "width": px,
                    "height": px,
                    "size": spec.size,
                    "colour": spec.colour,
                    "shape": spec.shape,
                    "row": ROWS[spec.row],
                    "column": COLUMNS[spec.col],
                }
                _add(tar, f"{key}.jpg", buf.getvalue())
                _add(tar, f"{key}.txt", spec.caption.encode())
                _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        os.replace(tmp, path)
        paths.append(path)
    return paths


def write_text_corpus(path: Path, n_docs: int, rng: random.Random) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n_docs):
            f.write(json.dumps({"id": i, "text": random_document(rng)}) + "\n")
    os.replace(tmp, path)


def synth(
    output: Path,
    num_images: int = 3000,
    num_val_images: int = 300,
    image_size: int = 64,
    num_docs: int = 2000,
    num_val_docs: int = 200,
    seed: int = 0,
    per_tar: int = 1000,
    num_eval_images: int = 64,
    num_task_images: int = 256,
) -> dict:
    """Write DIR/pairs/{train,val}-NNNNN.tar, DIR/text/{train,val}.jsonl, DIR/eval/ and DIR/tasks/
    (see task_synth); same seed, same bytes."""
    from data_prep.task_synth import write_eval_and_tasks

    problems = []
    if num_images < 1 or num_val_images < 0:
        problems.append("--num-images must be >= 1 and --num-val-images >= 0")
    if image_size < 16:
        problems.append(f"--image-size {image_size}: must be at least 16")
    if per_tar < 1:
        problems.append(f"--per-tar {per_tar}: must be at least 1")
    if num_eval_images < 0 or num_task_images < 0:
        problems.append("--num-eval-images and --num-task-images must be >= 0")
    if problems:
        raise UserError(problems)
    t0 = time.perf_counter()
    pairs_dir, text_dir = output / "pairs", output / "text"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    text_dir.mkdir(parents=True, exist_ok=True)
    for stale in list(pairs_dir.glob("train-*.tar")) + list(pairs_dir.glob("val-*.tar")):
        stale.unlink()  # a previous run with more images must not leave extra tars
    # Separate streams per split so val does not change when --num-images does.
    train = write_pairs_tars(
        pairs_dir, "train", num_images, image_size, random.Random(f"{seed}-train"), per_tar
    )
    val = (
        write_pairs_tars(
            pairs_dir,
            "val",
            num_val_images,
            image_size,
            random.Random(f"{seed}-val"),
            per_tar,
            shard_offset=90000,
        )
        if num_val_images
        else []
    )
    write_text_corpus(text_dir / "train.jsonl", num_docs, random.Random(f"{seed}-text-train"))
    write_text_corpus(text_dir / "val.jsonl", num_val_docs, random.Random(f"{seed}-text-val"))
    # After the pretraining data and from their own RNG streams: the files above are unchanged.
    extra = write_eval_and_tasks(
        output, image_size, seed, num_eval_images, num_task_images, pairs_tars=train + val
    )
    log.info(
        "synth: %d train + %d val images (%d px), %d + %d documents, %d + %d eval images, "
        "%d task images in %.1f s -> %s",
        num_images,
        num_val_images,
        image_size,
        num_docs,
        num_val_docs,
        num_eval_images,
        num_eval_images,
        num_task_images,
        time.perf_counter() - t0,
        output,
    )
    return {
        "train_tars": [str(p) for p in train],
        "val_tars": [str(p) for p in val],
        "text": [str(text_dir / "train.jsonl"), str(text_dir / "val.jsonl")],
        **extra,
    }
