"""`python -m training.model PRESET [key=value ...]`: parameter counts per component (meta device, no memory)."""

from __future__ import annotations

import argparse
import logging
import sys

from common.errors import UserError
from common.exit_codes import USER_ERROR


def _parse_value(v: str):
    import yaml

    return yaml.safe_load(v)


def main(argv: list[str] | None = None) -> int:
    from training.model.config import PRESETS, model_config_from_preset
    from training.model.metalm import count_parameters

    ap = argparse.ArgumentParser(
        prog="python -m training.model",
        description="Print MetaLM parameter counts per component (no weights allocated).",
    )
    ap.add_argument("preset", help=f"one of: {', '.join(PRESETS)}")
    ap.add_argument(
        "overrides", nargs="*", help="model settings, e.g. vocab_size=32000 decoder.num_layers=12"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        overrides = {}
        for o in args.overrides:
            if "=" not in o:
                raise UserError(f"override {o!r} is not key=value (e.g. decoder.num_layers=12)")
            k, v = o.split("=", 1)
            overrides[k] = _parse_value(v)
        cfg = model_config_from_preset(args.preset, **overrides)
        cfg.validate()
        counts = count_parameters(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    print(
        f"MetaLM preset {cfg.preset}: vocab {cfg.vocab_size}, seq {cfg.max_seq_len}, image {cfg.image_size}px, "
        f"{cfg.image_slots} slots/image ({cfg.connector.kind} connector)"
    )
    for k, v in counts.items():
        print(f"  {k:<15} {v:>15,d}  ({v / 1e6:,.1f}M)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
