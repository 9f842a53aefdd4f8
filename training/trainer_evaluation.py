"""The Trainer's held-out figures at step boundaries: validation loss, caption samples and the evaluation
harness hook (`eval.harness`). A mixin of `training.trainer.Trainer`: it uses the trainer's engine,
loaders, topology and tracker; `evaluation/` is imported lazily in exactly one place (`eval_harness`)."""

from __future__ import annotations

import importlib
import logging

import torch

log = logging.getLogger("training.trainer")


class EvaluationSteps:
    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean loss per loss token over `eval.batches` held-out micro-batches per DP rank."""
        if self.val_loader is None:
            return None
        self.engine.eval()
        total = torch.zeros(2, dtype=torch.float64)
        for i, batch in enumerate(self.val_loader):
            if i >= self.cfg.eval.batches:
                break
            batch = self.to_device(batch)
            total += torch.tensor(
                [float(self.engine(batch, reduction="sum")), batch.num_loss_tokens()], dtype=torch.float64
            )
        self.engine.train()
        total = self.dp_sum(total)
        val = float(total[0] / total[1].clamp(min=1))
        log.info("step %d: validation loss %.4f (%d tokens)", self.step, val, int(total[1]))
        self.tracker.log_metrics({"val_loss": val}, self.step)
        self.tracker.flush()
        return val

    @torch.no_grad()
    def caption_samples(self, n: int) -> list[dict]:
        """Greedy captions for the first n held-out images (same images on every rank; all ranks run)."""
        from training.data.held_out import held_out_pairs

        pairs = held_out_pairs(self.cfg, n)
        if not pairs:
            return []
        images = torch.stack([p["image"] for p in pairs]).to(self.topo.device, self.dtype)
        self.engine.eval()
        try:
            with self.full_parameters():
                out = self.engine.module.generate(images, max_new_tokens=self.cfg.eval.caption_max_new_tokens)
        finally:
            self.engine.train()
        return [{"key": p["key"], "true": p["caption"], "ids": ids} for p, ids in zip(pairs, out)]

    def log_captions(self) -> None:
        from training.config.tokenizer import run_tokenizer

        samples = self.caption_samples(self.cfg.eval.caption_samples)
        if self.topo.rank != 0 or not samples:
            return
        tok = run_tokenizer(self.cfg.data.tokenizer)
        lines = [f"{s['key']}\ttrue: {s['true']}\tgenerated: {tok.decode(s['ids'])}" for s in samples]
        text = "\n".join(lines) + "\n"
        log.info("step %d caption samples:\n%s", self.step, text)
        self.tracker.log_text(text, f"captions/step_{self.step:08d}.txt")

    def eval_harness(self):
        """The eval.harness benchmarks (evaluation/hook.py TrainingHook, built once). THE one place the training
        loop reaches `evaluation`: imported here, late, never at module level (evaluation imports training)."""
        if self._harness is None:
            self._harness = importlib.import_module("evaluation.hook").TrainingHook(self.cfg, self.topo)
        return self._harness

    def run_eval_harness(self) -> None:
        """COLLECTIVE (all ranks): eval.harness on the current weights, MLflow eval/<task>/<metric> at this step.
        ZeRO-3: inside one parameter gather; every DP rank makes the same model calls (the harness pads)."""
        with self.not_a_hang(), self.full_parameters():
            self.eval_harness().run(self.engine.module, self.step, self.tracker)
