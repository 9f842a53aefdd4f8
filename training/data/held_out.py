"""Held-out image-text samples read straight from a val shard (no loader, same on every rank): the
caption samples during training, the learning check and evaluation use them."""

from __future__ import annotations


def held_out_pairs(cfg, n: int) -> list[dict]:
    """The first n image-text samples of the first `pairs` val stream: decoded image, caption ids, text."""
    from streaming.base.local import LocalDataset

    from data_prep.shard_meta import read_shard_meta
    from training.data.loader import RowSpec, decode_image

    spec = RowSpec.from_configs(cfg.data, cfg.model)
    for s in cfg.data.val:
        if read_shard_meta(s.path).get("kind") != "pairs":
            continue
        ds = LocalDataset(local=s.path)
        out = []
        for i in range(min(n, len(ds))):
            x = ds[i]
            out.append(
                {
                    "image": decode_image(x["image"], spec),
                    "caption_ids": x["caption_ids"],
                    "caption": x["caption"],
                    "key": x["key"],
                }
            )
        return out
    return []
