"""`python -m data_prep inspect DIR`: counts, token statistics and a few decoded samples.

For image-text shards the sample images are written to a folder (with their captions in the
file names and in `captions.txt`) so a person can look at them; for task shards the images of the
shown examples, with `samples.txt` holding each example's encoder segments, prompt and target.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from common.special_tokens import END_DOC_ID, PAD_ID, UNK_ID
from data_prep.shard_meta import read_shard_meta, split_images
from data_prep.tokenizer import Tokenizer, load_tokenizer
from data_prep.verify import shard_readers


def _percentiles(lengths: list[int]) -> dict:
    a = np.asarray(lengths)
    return {
        "mean": round(float(a.mean()), 2),
        "p50": int(np.percentile(a, 50)),
        "p95": int(np.percentile(a, 95)),
        "max": int(a.max()),
        "min": int(a.min()),
    }


def _task_ids(s: dict) -> np.ndarray:
    parts = [np.asarray(seg, dtype=np.int64) for seg in s["encoder_segments"]]
    prompt = np.asarray(s["decoder_prompt_ids"], dtype=np.int64)
    return np.concatenate([*parts, prompt, s["target_ids"]]).astype(np.int64)


def _show_tasks(shown: list[dict], tok: Tokenizer | None, out_dir: Path | None) -> list[str]:
    """Decoded task examples; their images (and samples.txt) go to `out_dir`."""

    def text(ids) -> str:
        return repr(tok.decode(ids)) if tok else str(list(ids)[:32])

    lines, listing = [], []
    for n, s in enumerate(shown):
        lines.append(
            f"    [{n}] key={s['key']} dataset={s['dataset']} template={s['template_id']} "
            f"images={len(s['image_sizes'])} label={s['label']} choices={s['choices']}"
        )
        for j, seg in enumerate(s["encoder_segments"]):
            lines.append(f"        encoder[{j}]: {text(seg)}")
        lines.append(f"        decoder prompt: {text(s['decoder_prompt_ids'])}")
        lines.append(
            f"        target: {text(s['target_ids'])} (text {s['target']!r}; answers {s['answers'][:3]})"
        )
        names = []
        if out_dir and s["image_sizes"]:
            out_dir.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^A-Za-z0-9]+", "_", s["target"])[:40].strip("_")
            for j, data in enumerate(split_images(s)):
                names.append(f"{n:03d}_{j}_{s['dataset']}_{slug}.jpg")
                (out_dir / names[-1]).write_bytes(data)
        segs = " | ".join(text(seg) for seg in s["encoder_segments"])
        listing.append(
            f"{n}\t{s['key']}\timages={','.join(names) or '-'}\tencoder={segs}\t"
            f"prompt={text(s['decoder_prompt_ids'])}\ttarget={text(s['target_ids'])}"
        )
    if out_dir and any(s["image_sizes"] for s in shown):
        (out_dir / "samples.txt").write_text("\n".join(listing) + "\n")
        n_img = sum(len(s["image_sizes"]) for s in shown)
        lines.append(f"  wrote {n_img} images to {out_dir}/ (examples in samples.txt)")
    return lines


def inspect_shards(
    directory: str | Path,
    tokenizer_dir: str | Path | None = None,
    num_samples: int = 5,
    images_out: str | Path | None = None,
) -> str:
    """A human-readable report (returned as text); writes sample images for pairs and task shards."""
    d = Path(directory)
    meta = read_shard_meta(d)
    kind = meta["kind"]
    tok: Tokenizer | None = load_tokenizer(tokenizer_dir) if tokenizer_dir else None
    if tok is not None and tok.sha256 != meta["tokenizer"]["sha256"]:
        tok_note = "  (WARNING: this tokenizer is not the one the shards were built with)"
    else:
        tok_note = ""
    lines = [
        f"{d}: {kind} shards",
        f"  stats.json: samples={meta['samples']} tokens={meta['tokens']} "
        f"images={meta.get('images', 0)} skipped={meta.get('skipped', {})}",
        f"  tokenizer: vocab {meta['tokenizer']['vocab_size']}, sha256 {meta['tokenizer']['sha256'][:12]}...{tok_note}",
    ]
    vocab = meta["tokenizer"]["vocab_size"]
    counts = np.zeros(vocab, dtype=np.int64)
    lengths, shown, n_shards = [], [], 0
    docs_per_seq = []
    task_lengths: dict[str, list[int]] = {
        "encoder": [],
        "segments": [],
        "prompt": [],
        "target": [],
        "images": [],
    }
    for info, reader in shard_readers(d):
        n_shards += 1
        for i in range(info["samples"]):
            s = reader.get_item(i)
            if kind == "tasks":
                ids = _task_ids(s)
                for name, n in (
                    ("encoder", sum(len(seg) for seg in s["encoder_segments"])),
                    ("segments", len(s["encoder_segments"])),
                    ("prompt", len(s["decoder_prompt_ids"])),
                    ("target", len(s["target_ids"])),
                    ("images", len(s["image_sizes"])),
                ):
                    task_lengths[name].append(n)
            else:
                ids = s["caption_ids"] if kind == "pairs" else s["tokens"]
            counts += np.bincount(ids, minlength=vocab)[:vocab]
            lengths.append(len(ids))
            if kind == "text":
                docs_per_seq.append(len(s["doc_starts"]))
            if len(shown) < num_samples:
                shown.append(s)
    total = int(counts.sum())
    lines.append(f"  shards: {n_shards}, samples read: {len(lengths)}, tokens read: {total}")
    if kind == "pairs":
        lines.append(
            f"  image size: {meta['image_size']} px; caption tokens per sample: {_percentiles(lengths)}"
        )
    elif kind == "tasks":
        datasets = {k: v.get("samples") for k, v in meta.get("datasets", {}).items()}
        lines.append(f"  datasets: {datasets}; image size: {meta.get('image_size', '-')} px")
        for name, label in (
            ("images", "images"),
            ("segments", "encoder segments"),
            ("encoder", "encoder tokens"),
            ("prompt", "decoder prompt tokens"),
            ("target", "target tokens"),
        ):
            lines.append(f"  {label} per example: {_percentiles(task_lengths[name])}")
        for part in ("encoder_tokens", "target_tokens"):
            if part in meta:
                lines.append(
                    f"  {part}: truncated {meta[part].get('truncated')} (limit {meta[part].get('limit')})"
                )
    else:
        lines.append(
            f"  seq_len: {meta['seq_len']}; documents: {meta.get('documents')}; "
            f"segments per sequence: {_percentiles(docs_per_seq)}; "
            f"</d> tokens: {counts[END_DOC_ID]}; padding: {counts[PAD_ID]}"
        )
    lines.append(
        f"  distinct tokens: {int((counts > 0).sum())}; <unk> rate: {counts[UNK_ID] / max(total, 1):.4%}"
    )

    def piece(i: int) -> str:
        return tok.id_to_piece(i) if tok else str(i)

    top_ids = [int(i) for i in np.argsort(-counts, kind="stable")[:15] if counts[i] > 0]
    top = ", ".join(f"{piece(i)!r}:{counts[i]}" for i in top_ids)
    lines.append(f"  most frequent: {top}")
    out_dir = Path(images_out) if images_out else None
    if out_dir and kind == "pairs":
        out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "tasks":
        lines.append(f"  first {len(shown)} samples:")
        lines.extend(_show_tasks(shown, tok, out_dir))
        return "\n".join(lines)
    captions_txt = []
    lines.append(f"  first {len(shown)} samples:")
    for n, s in enumerate(shown):
        if kind == "pairs":
            decoded = tok.decode(s["caption_ids"]) if tok else s["caption_ids"][:32].tolist()
            lines.append(f"    [{n}] key={s['key']} source={s['source']} caption={s['caption']!r}")
            lines.append(f"        decoded ids={decoded!r}")
            if out_dir:
                slug = re.sub(r"[^A-Za-z0-9]+", "_", s["caption"])[:60].strip("_")
                name = f"{n:03d}_{slug}.jpg"
                (out_dir / name).write_bytes(s["image"])
                captions_txt.append(f"{name}\t{s['caption']}")
        else:
            text = tok.decode(s["tokens"][:64]) if tok else s["tokens"][:32].tolist()
            lines.append(f"    [{n}] doc_starts={s['doc_starts'].tolist()[:10]} first tokens: {text!r}")
    if out_dir and captions_txt:
        (out_dir / "captions.txt").write_text("\n".join(captions_txt) + "\n")
        lines.append(f"  wrote {len(captions_txt)} images to {out_dir}/ (captions in captions.txt)")
    return "\n".join(lines)
