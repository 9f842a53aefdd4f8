"""Does the model use the image? Caption loss on held-out pairs with the true image vs. shuffled images.

    torchrun --nproc-per-node 2 -m training.learning_check --config runs/debug/config.yaml [--pairs 256]

Loads the newest checkpoint of the run (same TP layout as training), computes the mean caption loss
per caption token with each pair's own image and with the images rolled by one across each batch,
prints both, the gap (shuffled - true, nats per caption token) and PASS/FAIL against `--min-gap`,
prints generated captions next to the true ones, writes RUN_DIR/learning_check.json and logs the
figures to the run's MLflow run. Exit 0 when the gap reaches --min-gap, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from common import exit_codes
from common.errors import UserError
from training.data.held_out import held_out_pairs

log = logging.getLogger(__name__)


@torch.no_grad()
def caption_loss_gap(model, cfg, pairs: list[dict], batch_size: int, device, dtype=torch.float32) -> dict:
    """Mean caption loss per caption token with true vs. shuffled (rolled by one) images."""
    from training.data import semicausal

    model.eval()
    true_sum = shuf_sum = tokens = 0.0
    k, size = cfg.model.image_slots, cfg.model.image_size
    for i in range(0, len(pairs) - 1, batch_size):
        chunk = pairs[i : i + batch_size]
        if len(chunk) < 2:
            break
        rows = [semicausal.pair_row(p["caption_ids"], p["image"], k, cfg.model.max_seq_len) for p in chunk]
        batch = semicausal.collate(rows, k, size).to(device)
        batch.images = batch.images.to(dtype)
        true_sum += float(model(batch, reduction="sum"))
        batch.images = batch.images.roll(1, dims=0)
        shuf_sum += float(model(batch, reduction="sum"))
        tokens += batch.num_loss_tokens()
    true_loss, shuf_loss = true_sum / max(tokens, 1), shuf_sum / max(tokens, 1)
    return {
        "pairs": len(pairs),
        "caption_tokens": int(tokens),
        "true_image_loss": true_loss,
        "shuffled_image_loss": shuf_loss,
        "gap": shuf_loss - true_loss,
    }


def report(r: dict, min_gap: float, step: int) -> str:
    verdict = "PASS" if r["gap"] >= min_gap else "FAIL"
    return (
        f"learning check at step {step} on {r['pairs']} held-out pairs ({r['caption_tokens']} caption tokens):\n"
        f"  caption loss with the true image:   {r['true_image_loss']:.4f} nats/token\n"
        f"  caption loss with shuffled images:  {r['shuffled_image_loss']:.4f} nats/token\n"
        f"  gap: {r['gap']:.4f} nats/token (required >= {min_gap}): {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    from training.entrypoint import add_launcher_args, run_with_trainer

    p = argparse.ArgumentParser(
        prog="python -m training.learning_check", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--config", required=True, help="the run's resolved config (RUN_DIR/config.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--pairs", type=int, default=256, help="held-out pairs to score (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass")
    p.add_argument("--min-gap", type=float, default=0.5, help="required gap in nats per caption token")
    p.add_argument("--captions", type=int, default=8, help="held-out images to caption and print")
    add_launcher_args(p)
    args = p.parse_args(argv)

    def check(trainer) -> int:
        if trainer.ckpt.loaded_path is None:
            raise UserError(
                f"no checkpoint under {trainer.run_dir.checkpoints}: train first "
                "(python -m training --config ...)"
            )
        cfg = trainer.cfg
        pairs = held_out_pairs(cfg, args.pairs)
        if len(pairs) < 2:
            raise UserError("the learning check needs a `pairs` stream with >= 2 samples in data.val")
        with trainer.full_parameters():
            r = caption_loss_gap(
                trainer.engine.module, cfg, pairs, args.batch_size, trainer.topo.device, trainer.dtype
            )
        r.update(step=trainer.step, min_gap=args.min_gap, passed=r["gap"] >= args.min_gap)
        samples = trainer.caption_samples(args.captions) if args.captions > 0 else []
        if trainer.topo.rank == 0:
            from training.config.tokenizer import run_tokenizer

            tok = run_tokenizer(cfg.data.tokenizer)
            caps = [
                f"  {s['key']}  true: {s['true']!r:<44} generated: {tok.decode(s['ids'])!r}" for s in samples
            ]
            r["captions"] = [
                {"key": s["key"], "true": s["true"], "generated": tok.decode(s["ids"])} for s in samples
            ]
            text = (
                "generated captions for held-out images:\n"
                + "\n".join(caps)
                + "\n"
                + report(r, args.min_gap, trainer.step)
            )
            print(text, flush=True)
            trainer.run_dir.learning_check.write_text(json.dumps(r, indent=1))
            trainer.start_tracking()
            trainer.tracker.log_metrics(
                {f"learning_check/{k}": r[k] for k in ("true_image_loss", "shuffled_image_loss", "gap")},
                trainer.step,
            )
            trainer.tracker.log_text(text, "learning_check.txt")
            trainer.tracker.finish("FINISHED")
        return exit_codes.OK if r["passed"] else exit_codes.FAILURE

    return run_with_trainer(args.config, args.overrides, check, name="learning_check", trains=False)


if __name__ == "__main__":
    sys.exit(main())
