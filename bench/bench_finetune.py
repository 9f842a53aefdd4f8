"""Finetuning with packed rows vs one example per row, on the same examples, measured in one run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_finetune.py [--preset small] [--examples 64] [--rounds 3]

Examples are shaped like the demo's task shards (an image or not, one or two encoder segments, a short
prompt, a 1-4 token target; lengths drawn with a fixed seed). Each round runs forward + backward + an
AdamW step over the same examples twice, in alternation: (a) micro-batches of `--micro` examples, one per
row, padded to the longest row; (b) the same micro-batches packed into rows of the decoder length
(`training/data/finetune.py`, attention kept inside each example). Reported: real (non-padding) tokens/s
of each and their ratio (fastest round of each), and the fraction of padding positions per batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.process_setup import setup_process  # noqa: E402

setup_process()


def make_examples(cfg, n: int, seed: int = 0) -> list:
    from training.data import finetune

    rng = np.random.default_rng(seed)
    size = cfg.vision_encoder.image_size
    vocab = cfg.vocab_size
    rows = []
    for _ in range(n):
        images = [torch.randn(3, size, size)] if rng.random() < 0.5 else []
        segments = [
            list(rng.integers(7, vocab, int(rng.integers(4, 24)))) for _ in range(int(rng.integers(1, 3)))
        ]
        prompt = list(rng.integers(7, vocab, int(rng.integers(1, 4))))
        target = list(rng.integers(7, vocab, int(rng.integers(1, 5))))
        rows.append(
            finetune.task_row(
                images, segments, prompt, target, cfg.image_slots, cfg.max_seq_len, cfg.span_max_len - 1
            )
        )
    return rows


def batches(cfg, rows: list, micro: int, pack: bool) -> list:
    from training.data import finetune, semicausal

    out = []
    for i in range(0, len(rows), micro):
        chunk = rows[i : i + micro]
        if pack:
            chunk = finetune.pack_rows(chunk, cfg.max_seq_len)
        b = semicausal.collate(chunk, cfg.image_slots, cfg.vision_encoder.image_size)
        b.real_positions = sum(len(r.seq) - 1 for r in chunk)  # image slots and spans count, padding not
        out.append(b)
    return out


def run(model, opt, bs: list) -> tuple[float, int]:
    t0 = time.perf_counter()
    for b in bs:
        loss = model(b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, sum(b.real_positions for b in bs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", help="model preset (debug, small)")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--micro", type=int, default=32, help="examples per micro-batch")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from parallel.config import ParallelConfig
    from parallel.groups import destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset
    from training.precision import cpu_model_name

    cfg = model_config_from_preset(args.preset, dropout=0.0, attention_dropout=0.0)
    topo = init_distributed(ParallelConfig(tp=1))
    model = MetaLM(cfg, topo)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rows = make_examples(cfg, args.examples)
    unpacked, packed = batches(cfg, rows, args.micro, False), batches(cfg, rows, args.micro, True)

    def pad_fraction(bs):
        return float(np.mean([1.0 - b.real_positions / b.tokens.numel() for b in bs]))

    print(f"cpu: {cpu_model_name()}, torch threads {torch.get_num_threads()}, preset {args.preset}, fp32")
    print(
        f"{args.examples} examples in micro-batches of {args.micro}: unpacked {sum(b.batch_size for b in unpacked)} "
        f"rows of <= {max(b.seq_len for b in unpacked)} positions, packed {sum(b.batch_size for b in packed)} rows "
        f"of <= {max(b.seq_len for b in packed)}"
    )
    run(model, opt, unpacked[:1])  # warm-up
    run(model, opt, packed[:1])
    best = {"unpacked": float("inf"), "packed": float("inf")}
    tokens = {}
    for _ in range(args.rounds):  # alternate: the machine is shared
        for name, bs in (("unpacked", unpacked), ("packed", packed)):
            dt, n = run(model, opt, bs)
            best[name] = min(best[name], dt)
            tokens[name] = n
    rate = {k: tokens[k] / best[k] for k in best}
    print(
        f"tokens/s (real positions: tokens, image slots, spans; fastest of {args.rounds} rounds): unpacked {rate['unpacked']:,.0f}, packed "
        f"{rate['packed']:,.0f} -> packed/unpacked {rate['packed'] / rate['unpacked']:.2f}"
    )
    print(
        f"padding per batch: unpacked {pad_fraction(unpacked):.1%}, packed {pad_fraction(packed):.1%} "
        "(fraction of the [B, T] decoder positions that are padding)"
    )
    destroy_distributed()


if __name__ == "__main__":
    main()
