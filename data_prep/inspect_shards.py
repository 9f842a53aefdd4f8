"""`python -m data_prep inspect DIR`: counts, token statistics and a few decoded samples.

For image-text shards the sample images are written to a folder (with their captions in the
file names and in `captions.txt`) so a person can look at them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from common.special_tokens import END_DOC_ID, PAD_ID, UNK_ID
from data_prep.shard_meta import read_shard_meta
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


def inspect_shards(
    directory: str | Path,
    tokenizer_dir: str | Path | None = None,
    num_samples: int = 5,
    images_out: str | Path | None = None,
) -> str:
    """A human-readable report (returned as text); writes sample images for pairs shards."""
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
    for info, reader in shard_readers(d):
        n_shards += 1
        for i in range(info["samples"]):
            s = reader.get_item(i)
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
        return tok.sp.id_to_piece(i) if tok else str(i)

    top_ids = [int(i) for i in np.argsort(-counts, kind="stable")[:15] if counts[i] > 0]
    top = ", ".join(f"{piece(i)!r}:{counts[i]}" for i in top_ids)
    lines.append(f"  most frequent: {top}")
    out_dir = Path(images_out) if images_out else None
    if out_dir and kind == "pairs":
        out_dir.mkdir(parents=True, exist_ok=True)
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
