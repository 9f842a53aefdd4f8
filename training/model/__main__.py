"""`python -m training.model PRESET [key=value ...] [--tp N --dp N --zero S --precision P]`.

Parameter counts per component (all / trainable / frozen, as `model.freeze` and the encoders'
`trainable_layers` leave them) and the model-state memory of one rank for a layout (meta device: nothing
is allocated, no weights are read)."""

from __future__ import annotations

import argparse
import logging
import sys

from common.errors import UserError
from common.exit_codes import USER_ERROR


def main(argv: list[str] | None = None) -> int:
    from training.config.loader import parse_overrides
    from training.model.config import PRESETS, build_model_config
    from training.model.memory import rank_memory
    from training.model.metalm import meta_model

    ap = argparse.ArgumentParser(
        prog="python -m training.model",
        description="Print MetaLM parameter counts per component, trainable and frozen (no weights allocated).",
    )
    ap.add_argument("preset", help=f"one of: {', '.join(PRESETS)}")
    ap.add_argument(
        "overrides",
        nargs="*",
        help="model settings (the keys of a config file's model: section), e.g. vocab_size=32000 "
        "decoder.num_layers=12",
    )
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size for the per-rank estimate")
    ap.add_argument("--dp", type=int, default=1, help="data-parallel size for the per-rank estimate")
    ap.add_argument("--zero", type=int, default=1, choices=[0, 1, 2, 3], help="ZeRO stage (default 1)")
    ap.add_argument(
        "--precision", default="bf16", choices=["bf16", "fp16", "fp32"], help="training precision"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        problems: list[str] = []
        cfg = build_model_config({"preset": args.preset, **parse_overrides(args.overrides)}, problems)
        if not problems:  # checks beyond types only on a config that built cleanly (as load_config does)
            problems = cfg.problems(tp=args.tp, check_files=False)  # no weights are read here
        if args.zero == 3 and args.tp > 1:
            problems.append(
                "ZeRO-3 works only with tp=1 (DeepSpeed has no TP + ZeRO-3 training): use --zero 2"
            )
        if problems:
            raise UserError(problems)
        model = meta_model(cfg)
        counts = model.parameter_counts()
        trainable = model.parameter_counts(trainable=True)
        mem = rank_memory(cfg, args.tp, args.dp, args.zero, args.precision)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    print(
        f"MetaLM preset {cfg.preset}: vocab {cfg.vocab_size}, seq {cfg.max_seq_len}, image {cfg.image_size}px, "
        f"{cfg.image_slots} slots/image ({cfg.connector.kind} connector)"
    )
    print(f"  {'component':<15} {'parameters':>15}  {'trainable':>15}  {'frozen':>15}")
    for k, v in counts.items():
        t = trainable[k]
        print(f"  {k:<15} {v:>15,d}  {t:>15,d}  {v - t:>15,d}  ({v / 1e6:,.1f}M)")
    print(
        f"one rank at tp={args.tp} dp={args.dp} ZeRO-{args.zero} {args.precision}: {mem.params / 1e6:,.1f}M parameters "
        f"({mem.trainable / 1e6:,.1f}M trainable); model states {mem.total_gib:.2f} GiB = weights "
        f"{mem.weights_gib:.2f} + grads {mem.grads_gib:.2f} + optimizer {mem.optimizer_gib:.2f} (activations extra)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
