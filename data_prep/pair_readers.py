"""Image-text sources: img2dataset webdataset tars, COCO captions JSON, JSONL/CSV manifests.

Each reader is built (and validated: a bad whole input is a UserError before any shard is
written) from one input path, then yields `RawPair`s in a deterministic order. A pair that is
already known to be bad carries a `skip` reason; images are decoded later, in the workers.
"""

from __future__ import annotations

import csv
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from data_prep.text_sources import open_lines

log = logging.getLogger(__name__)

FORMATS = ("auto", "webdataset", "coco", "jsonl", "csv")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# Members img2dataset writes beside the image and caption; ignored without counting.
KNOWN_EXTS = IMAGE_EXTS + ("txt", "json", "cls", "npy")
IMAGE_FIELDS = ("image", "image_path", "file_name", "filename", "path")
CAPTION_FIELDS = ("caption", "text")


@dataclass
class RawPair:
    """One image-text sample as read, before image decoding and tokenization."""

    key: str  # unique within its source (tar key, COCO image/annotation id, manifest row)
    source: str  # file name of the input it came from
    caption: str | None = None
    image_bytes: bytes | None = None  # set by readers that hold the bytes (tars)
    image_path: str | None = None  # set by readers that point at files (COCO, manifests)
    skip: str | None = None  # reason, when the reader already knows the sample is bad


def detect_format(path: Path) -> str:
    """The pairs format of an input path by its type (directory of tars, .tar, .json, ...)."""
    name = path.name.lower()
    if path.is_dir() or name.endswith(".tar"):
        return "webdataset"
    if name.endswith(".json"):
        return "coco"
    if name.endswith(".jsonl") or name.endswith(".jsonl.zst"):
        return "jsonl"
    if name.endswith(".csv") or name.endswith(".tsv"):
        return "csv"
    raise UserError(
        f"pairs input {path}: cannot tell its format from the name; pass --format webdataset|coco|jsonl|csv"
    )


def _split_key(member_name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first dot of the basename, ext = the rest."""
    head, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext.lower() if dot else ""


class WebDatasetReader:
    """An img2dataset tar: members `KEY.jpg|png|webp` + `KEY.txt` [+ `KEY.json`], grouped by key."""

    format = "webdataset"

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise UserError(f"pairs input {path}: no such file")
        try:
            with tarfile.open(path, mode="r|*") as tar:
                tar.next()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"pairs input {path}: not a readable tar archive ({e})") from e

    def captions(self) -> Iterator[str]:
        for pair in self:
            if pair.caption:
                yield pair.caption

    def __iter__(self) -> Iterator[RawPair]:
        source = self.path.name
        group_key: str | None = None
        group: dict[str, bytes] = {}
        try:
            # Random-access mode: member data is read with one seek + read (stream mode copies
            # it through small buffers, which costs the main process more than the image work).
            with tarfile.open(self.path, mode="r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = _split_key(member.name)
                    f = tar.extractfile(member)
                    data = f.read() if f is not None else b""
                    if len(data) != member.size:
                        raise EOFError(f"member {member.name} is cut short")
                    if key != group_key:
                        if group_key is not None:
                            yield from self._emit(group_key, group, source)
                        group_key, group = key, {}
                    group.setdefault(ext, data)
                # tarfile stops quietly at a header cut short or a missing end-of-archive block;
                # a complete archive has at least one 512-byte zero block after the last member.
                if self.path.stat().st_size - tar.offset < tarfile.BLOCKSIZE:
                    raise EOFError("no end-of-archive block")
        except (tarfile.TarError, OSError, EOFError) as e:
            log.warning(
                "%s: truncated or corrupt tar after %s (%s); keeping the samples read so far",
                self.path,
                group_key,
                e,
            )
            yield RawPair(key="", source=source, skip="truncated_tar")
        # The members of the last group were read whole (a cut member raised before being added);
        # if the cut took its image or caption, _emit counts it as missing.
        if group_key is not None and group:
            yield from self._emit(group_key, group, source)

    @staticmethod
    def _emit(key: str, group: dict[str, bytes], source: str) -> Iterator[RawPair]:
        image_ext = next((e for e in IMAGE_EXTS if e in group), None)
        caption, caption_skip = None, None
        if "txt" in group:
            try:
                caption = group["txt"].decode("utf-8")
            except UnicodeDecodeError:
                caption_skip = "non_utf8_caption"
        elif "json" in group:
            try:
                meta = json.loads(group["json"])
                caption = meta.get("caption") if isinstance(meta, dict) else None
            except ValueError:
                caption = None
        if image_ext is None and caption is None and caption_skip is None:
            # Only stray files under this key (e.g. README, ._foo, *.parquet).
            for ext in group:
                if ext not in KNOWN_EXTS:
                    yield RawPair(key=key, source=source, skip="stray_file")
            if all(ext in KNOWN_EXTS for ext in group):
                yield RawPair(key=key, source=source, skip="missing_image")
            return
        if image_ext is None:
            yield RawPair(key=key, source=source, skip="missing_image")
            return
        if caption_skip is not None:
            yield RawPair(key=key, source=source, skip=caption_skip)
            return
        if caption is None:
            yield RawPair(key=key, source=source, skip="missing_caption")
            return
        yield RawPair(key=key, source=source, caption=caption, image_bytes=group[image_ext])


class CocoReader:
    """COCO captions JSON (`images` + `annotations`) with an image root folder."""

    format = "coco"

    def __init__(self, path: Path, image_root: Path | None, captions: str = "all"):
        self.path = path
        self.captions_mode = captions
        if not path.is_file():
            raise UserError(f"pairs input {path}: no such file")
        try:
            obj = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"pairs input {path}: not valid JSON ({e})") from e
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("images"), list)
            or not isinstance(obj.get("annotations"), list)
        ):
            raise UserError(
                f"pairs input {path}: not a COCO captions file (needs `images` and `annotations` lists)"
            )
        self.images = obj["images"]
        self.annotations = obj["annotations"]
        self.image_root = image_root if image_root is not None else path.parent
        if not self.image_root.is_dir():
            raise UserError(
                f"pairs input {path}: image root {self.image_root} is not a folder; pass --image-root"
            )

    def captions(self) -> Iterator[str]:
        for ann in self.annotations:
            if isinstance(ann, dict) and isinstance(ann.get("caption"), str):
                yield ann["caption"]

    def __iter__(self) -> Iterator[RawPair]:
        source = self.path.name
        by_image: dict[object, list[dict]] = {}
        for ann in self.annotations:
            if isinstance(ann, dict):
                by_image.setdefault(ann.get("image_id"), []).append(ann)
        seen = set()
        for img in self.images:
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                yield RawPair(
                    key=str(img.get("id", "?")) if isinstance(img, dict) else "?",
                    source=source,
                    skip="bad_record",
                )
                continue
            seen.add(img["id"])
            anns = by_image.get(img["id"], [])
            if not anns:
                yield RawPair(key=str(img["id"]), source=source, skip="missing_caption")
                continue
            if self.captions_mode == "first":
                anns = anns[:1]
            path = str(self.image_root / img["file_name"])
            for ann in anns:
                key = f"{img['id']}_{ann.get('id', len(seen))}"
                caption = ann.get("caption")
                if not isinstance(caption, str):
                    yield RawPair(key=key, source=source, skip="missing_caption")
                else:
                    yield RawPair(key=key, source=source, caption=caption, image_path=path)
        for image_id, anns in by_image.items():
            if image_id not in seen:  # annotations whose image is not listed
                for ann in anns:
                    yield RawPair(key=f"{image_id}_{ann.get('id')}", source=source, skip="missing_image")


def _has_bad_bytes(value) -> bool:
    """True for a csv field that held bytes that are not UTF-8 (decoded as lone surrogates)."""
    if isinstance(value, list):  # extra columns
        return any(_has_bad_bytes(v) for v in value)
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _pick_field(fields: list[str], candidates: tuple[str, ...], explicit: str | None) -> str | None:
    if explicit:
        return explicit if explicit in fields else None
    return next((c for c in candidates if c in fields), None)


class ManifestReader:
    """JSONL or CSV/TSV manifest: one row per sample with an image path and a caption."""

    def __init__(
        self,
        path: Path,
        kind: str,
        image_root: Path | None,
        image_field: str | None = None,
        caption_field: str | None = None,
    ):
        self.path, self.format = path, kind
        self.image_root = image_root if image_root is not None else path.parent
        if not path.is_file():
            raise UserError(f"pairs input {path}: no such file")
        fields = self._first_fields()
        self.image_field = _pick_field(fields, IMAGE_FIELDS, image_field)
        self.caption_field = _pick_field(fields, CAPTION_FIELDS, caption_field)
        if self.image_field is None or self.caption_field is None:
            raise UserError(
                f"pairs input {path}: {kind} manifest needs an image column ({image_field or '|'.join(IMAGE_FIELDS)}) "
                f"and a caption column ({caption_field or '|'.join(CAPTION_FIELDS)}); found {fields}. "
                "Pass --image-field/--caption-field"
            )

    def _first_fields(self) -> list[str]:
        try:
            if self.format == "csv":
                with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as f:
                    header = next(csv.reader(f, delimiter=self._delimiter()), None)
                return list(header or [])
            first = next((line for line in open_lines(self.path) if line.strip()), None)
            if first is None:
                return []
            obj = json.loads(first)
        except (ValueError, UnicodeDecodeError, OSError) as e:
            raise UserError(
                f"pairs input {self.path}: cannot be read as a {self.format} manifest ({e})"
            ) from e
        if not isinstance(obj, dict):
            raise UserError(f"pairs input {self.path}: JSONL rows must be objects")
        return list(obj)

    def _delimiter(self) -> str:
        return "\t" if self.path.name.lower().endswith(".tsv") else ","

    def _rows(self) -> Iterator[tuple[int, dict | None]]:
        if self.format == "csv":
            with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as f:
                for row_no, row in enumerate(csv.DictReader(f, delimiter=self._delimiter()), start=1):
                    yield row_no, None if any(_has_bad_bytes(v) for v in row.values()) else row
            return
        for row_no, line in enumerate(open_lines(self.path), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                obj = None
            yield row_no, obj if isinstance(obj, dict) else None

    def captions(self) -> Iterator[str]:
        for _, row in self._rows():
            if row and isinstance(row.get(self.caption_field), str):
                yield row[self.caption_field]

    def __iter__(self) -> Iterator[RawPair]:
        source = self.path.name
        for row_no, row in self._rows():
            key = f"row{row_no:09d}"
            if row is None:
                yield RawPair(key=key, source=source, skip="bad_record")
                continue
            image, caption = row.get(self.image_field), row.get(self.caption_field)
            if not isinstance(image, str) or not image:
                yield RawPair(key=key, source=source, skip="missing_image")
            elif not isinstance(caption, str):
                yield RawPair(key=key, source=source, skip="missing_caption")
            else:
                yield RawPair(
                    key=key, source=source, caption=caption, image_path=str(self.image_root / image)
                )


def open_pair_sources(
    inputs: list[Path],
    fmt: str = "auto",
    image_root: Path | None = None,
    coco_captions: str = "all",
    image_field: str | None = None,
    caption_field: str | None = None,
) -> list:
    """Readers for every input (a folder means all `*.tar` in it), all validated up front."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    readers, problems = [], []
    for path in inputs:
        try:
            if path.is_dir():
                tars = sorted(path.glob("*.tar"))
                if not tars:
                    raise UserError(f"pairs input {path}: folder holds no *.tar files")
                readers.extend(WebDatasetReader(t) for t in tars)
                continue
            if not path.exists():
                raise UserError(f"pairs input {path}: no such file")
            kind = detect_format(path) if fmt == "auto" else fmt
            if kind == "webdataset":
                readers.append(WebDatasetReader(path))
            elif kind == "coco":
                readers.append(CocoReader(path, image_root, coco_captions))
            else:
                readers.append(ManifestReader(path, kind, image_root, image_field, caption_field))
        except UserError as e:
            problems.append(str(e))
    if problems:
        raise UserError(problems)
    if not readers:
        raise UserError("pairs: no --input given")
    return readers
