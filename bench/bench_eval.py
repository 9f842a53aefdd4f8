"""Evaluation benchmarks, every ratio measured in this one run (the machine is shared and noisy).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_eval.py [--preset small] [--rounds 3] [--dtype fp32]

On one MetaLM (random weights, TP=1, this process), in interleaved rounds (best of each):
1. generation (evaluation.generate, greedy, what `python -m evaluation run` does for caption / VQA): a batch
   of examples, each an image + an encoder text + a decoder prompt, `--new-tokens` generated tokens each
   (</s> disabled so every row generates all of them): generated tokens/s WITH the KV cache vs WITHOUT
   it (the decoder re-run over the whole sequence each step);
2. multiple-choice scoring (evaluation.generate.score_choices: one batched forward per example, its
   choices as rows): examples/s;
3. training tokens/s of the same model: a plain PyTorch step (forward, backward, clip, AdamW) on text rows
   of `--train-seq` tokens (bench/bench_training.py shows the full DeepSpeed stack reaches >= 0.9 of that);
and the ratios: KV-cache speedup, generated tokens/s / training tokens/s, scored tokens/s / training
tokens/s. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.process_setup import setup_process  # noqa: E402

setup_process()


def build_model(preset: str, dtype: torch.dtype):
    from parallel import ParallelConfig, init_distributed
    from training.model import MetaLM, model_config_from_preset

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        from parallel.local_ranks import free_port

        os.environ["MASTER_PORT"] = str(free_port())
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    topo = init_distributed(ParallelConfig(tp=1))
    cfg = model_config_from_preset(preset)
    return MetaLM(cfg, topo, params_dtype=dtype), cfg


def examples(cfg, n: int, rng: np.random.Generator, enc_len: int = 16, prompt_len: int = 4):
    from evaluation.generate import Example

    v = cfg.vocab_size
    return [
        Example(
            [torch.randn(3, cfg.image_size, cfg.image_size)],
            [rng.integers(10, v, enc_len).tolist()],
            rng.integers(10, v, prompt_len).tolist(),
        )
        for _ in range(n)
    ]


def time_generation(model, exs, new_tokens: int, use_cache: bool) -> float:
    """Generated tokens/s (greedy, every row generates `new_tokens`)."""
    from evaluation.generate import generate_hypotheses

    t0 = time.perf_counter()
    hyps = generate_hypotheses(
        model, exs, max_new_tokens=new_tokens, eos_id=-1, batch_size=len(exs), use_cache=use_cache
    )
    dt = time.perf_counter() - t0
    assert all(len(h.tokens) == new_tokens for h in hyps)
    return sum(len(h.tokens) for h in hyps) / dt


def time_scoring(model, exs, choices) -> tuple[float, float]:
    """(examples/s, scored choice tokens/s) of score_choices."""
    from evaluation.generate import score_choices

    t0 = time.perf_counter()
    scores = score_choices(model, exs, choices)
    dt = time.perf_counter() - t0
    return len(exs) / dt, sum(c.num_tokens for s in scores for c in s) / dt


def train_batches(cfg, n: int, micro: int, seq: int, rng: np.random.Generator):
    from common.special_tokens import EOS_ID
    from training.data.semicausal import collate, span_rng, text_row

    out = []
    for b in range(n):
        rows = []
        for i in range(micro):
            tokens = np.concatenate([rng.integers(10, cfg.vocab_size, seq), [EOS_ID]])
            rows.append(text_row(tokens, np.zeros(1, np.int32), span_rng(0, b, i), 16, 32, 0.25))
        out.append(collate(rows, cfg.image_slots, cfg.image_size))
    return out


def time_training(model, opt, batch) -> float:
    """Tokens/s of one plain training step (forward, backward, clip, AdamW)."""
    from common.special_tokens import PAD_ID

    model.train()
    t0 = time.perf_counter()
    loss = model(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    return float((batch.tokens != PAD_ID).sum()) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", help="model preset (small: CPU benchmarks; debug: seconds)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="parameter dtype")
    ap.add_argument("--batch", type=int, default=8, help="examples generated together")
    ap.add_argument("--new-tokens", type=int, default=32, help="generated tokens per example")
    ap.add_argument("--mc-examples", type=int, default=8, help="multiple-choice examples per round")
    ap.add_argument("--choices", type=int, default=4, help="choices per example (4-8 tokens each)")
    ap.add_argument("--train-seq", type=int, default=256, help="tokens per training row")
    ap.add_argument("--train-micro", type=int, default=4, help="rows per training step")
    args = ap.parse_args()

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model, cfg = build_model(args.preset, dtype)
    gen = examples(cfg, args.batch, rng)
    mc = examples(cfg, args.mc_examples, rng)
    choices = [
        [rng.integers(10, cfg.vocab_size, int(rng.integers(4, 9))).tolist() for _ in range(args.choices)]
        for _ in mc
    ]
    seq = min(args.train_seq, cfg.max_seq_len - 1)
    batches = train_batches(cfg, 2, args.train_micro, seq, rng)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    # warm-up (allocator, first-call costs), then interleaved rounds
    time_generation(model, gen[:2], 4, True)
    time_generation(model, gen[:2], 4, False)
    time_scoring(model, mc[:1], choices[:1])
    time_training(model, opt, batches[0])
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = max(best.get(name, 0.0), value)

    for r in range(args.rounds):
        keep("gen_tok_s_cache", time_generation(model, gen, args.new_tokens, True))
        keep("gen_tok_s_no_cache", time_generation(model, gen, args.new_tokens, False))
        ex_s, tok_s = time_scoring(model, mc, choices)
        keep("mc_examples_s", ex_s)
        keep("mc_scored_tok_s", tok_s)
        keep("train_tok_s", time_training(model, opt, batches[r % len(batches)]))
    ratios = {
        "kv_cache_speedup": best["gen_tok_s_cache"] / best["gen_tok_s_no_cache"],
        "gen_cache_vs_train": best["gen_tok_s_cache"] / best["train_tok_s"],
        "gen_no_cache_vs_train": best["gen_tok_s_no_cache"] / best["train_tok_s"],
        "mc_scored_tok_vs_train": best["mc_scored_tok_s"] / best["train_tok_s"],
    }
    load = os.getloadavg()[0]
    print(
        f"\npreset {args.preset}, {args.dtype}, {torch.get_num_threads()} threads, load average {load:.1f}; "
        f"best of {args.rounds} interleaved rounds\n"
    )
    print("| measure | result |\n|---|---|")
    print(
        f"| generated tokens/s, KV cache ({args.batch} x {args.new_tokens} new tokens, greedy) | "
        f"{best['gen_tok_s_cache']:.0f} |"
    )
    print(
        f"| generated tokens/s, no cache (decoder re-run over the whole sequence) | {best['gen_tok_s_no_cache']:.0f} |"
    )
    print(f"| **KV-cache speedup** | **{ratios['kv_cache_speedup']:.2f}x** |")
    print(
        f"| multiple-choice examples/s ({args.choices} choices, one forward each) | {best['mc_examples_s']:.1f} |"
    )
    print(f"| multiple-choice scored choice tokens/s | {best['mc_scored_tok_s']:.0f} |")
    print(
        f"| training tokens/s (plain step, {args.train_micro} x {seq} tokens) | {best['train_tok_s']:.0f} |"
    )
    print(f"| generated tokens/s (cache) / training tokens/s | {ratios['gen_cache_vs_train']:.3f} |")
    print(f"| generated tokens/s (no cache) / training tokens/s | {ratios['gen_no_cache_vs_train']:.3f} |")
    print(f"| scored tokens/s / training tokens/s | {ratios['mc_scored_tok_vs_train']:.3f} |")
    print(json.dumps({"preset": args.preset, "dtype": args.dtype, **best, **ratios}))
    from parallel import destroy_distributed

    destroy_distributed()


if __name__ == "__main__":
    main()
