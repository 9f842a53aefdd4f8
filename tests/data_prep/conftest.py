"""Shared fixtures for data_prep tests: a small synthetic dataset and a tokenizer trained on it."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data_prep.synth import synth
from data_prep.tokenizer import build_tokenizer


@pytest.fixture(scope="session")
def raw_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    synth(out, num_images=48, num_val_images=16, image_size=48, num_docs=120, num_val_docs=10, per_tar=20)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(raw_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    build_tokenizer(
        [raw_data / "text" / "train.jsonl", raw_data / "pairs"], out, vocab_size=300, model_type="bpe"
    )
    return out


def jpeg_bytes(size=(40, 30), colour=(200, 30, 30), fmt="JPEG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 128).save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_coco(root: Path, images: list[dict], annotations: list[dict]) -> Path:
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path
