"""kind: perplexity -- mean loss per token and perplexity on text shards (`python -m data_prep text`).

data: `path`, an MDS text shard folder (index.json + stats.json of kind "text", written with the model's
tokenizer). Each sample (file order; `limit` keeps the first N) is one row, cut to model.max_seq_len + 1
tokens as the training loader cuts it, scored by the model's own forward (the training loss).

Rows: by default plain causal rows, NO non-causal spans (`span_sampling: false`): every target token after
the first carries loss, so the figure is an ordinary language-model perplexity that does not depend on span
settings or seeds, comparable across runs. `span_sampling: true` lays the rows out as training does (spans
from data.span_* of the model's run, seeded by data.shuffle_seed and the sample's index): targets inside a
span carry no loss, like the run's validation loss.

Metrics: `loss` (nats per loss token) and `perplexity` = exp(loss); counts in the results JSON. The
predictions file is JSONL: per sample its index, summed loss and number of loss tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from common.errors import UserError
from evaluation.inputs import Problems
from evaluation.tasks.base import Item, Task, batches, dp_share


class PerplexityTask(Task):
    kind = "perplexity"

    def read(self, files, problems: Problems, *, demos: bool) -> list[Item]:
        from data_prep.shard_meta import read_shard_meta

        path = self.path(files.path)
        try:
            meta = read_shard_meta(path)
        except UserError as e:
            problems.add(f"task {self.name}: {e}")
            return []
        if meta.get("kind") != "text":
            problems.add(
                f"task {self.name}: {path} holds {meta.get('kind')} shards; perplexity reads text shards"
            )
            return []
        self.meta = meta
        n = int(meta.get("samples") or 0)
        return [Item(i, f"{path}, sample {i}", {}) for i in range(n)]

    def render(self, item: Item, problems: Problems, *, label: bool = False):
        from evaluation.generate_cli import Record

        return Record(item.where, [], [], "", extra={"key": item.key})

    def check_fit(self, tokenizer, train_cfg, problems: Problems) -> None:
        from data_prep.shard_meta import compatibility_problems

        for p in compatibility_problems(
            self.meta,
            self.path(self.cfg.data.path),
            tokenizer_sha256=tokenizer.sha256,
            vocab_size=tokenizer.vocab_size,
            kind="text",
        ):
            problems.add(f"task {self.name}: {p}")

    def _rows(self, indices: list[int], dataset, spec):
        """Text rows as the training loader makes them (training.data.loader.sample_to_row), spans or not."""
        import numpy as np

        from training.data.semicausal import span_rng, text_row

        fraction = spec.span_fraction if self.cfg.span_sampling else 0.0
        rows = []
        for i in indices:
            x = dataset[i]
            tokens = np.asarray(x["tokens"])[: spec.max_seq_len + 1]
            starts = x.get("doc_starts", np.zeros(1, dtype=np.int32))
            rng = span_rng(spec.seed, 0, i)
            rows.append(text_row(tokens, starts, rng, spec.span_min_len, spec.span_max_len, fraction))
        return rows

    def predict(self, runner) -> dict[int, dict]:
        import torch
        from streaming.base.local import LocalDataset

        from training.data.semicausal import collate

        model, cfg = runner.model, self.cfg
        dataset = LocalDataset(local=str(self.path(cfg.data.path)))
        dev = model.embedding.weight.device
        out: dict[int, dict] = {}
        was_training = model.training
        model.eval()
        try:
            for chunk in batches(dp_share(len(self.items), runner.topology), cfg.batch_size):
                idx = [
                    i if i is not None else 0 for i in chunk
                ]  # padding: every DP rank makes the same calls
                batch = collate(
                    self._rows(idx, dataset, runner.builder.spec), model.cfg.image_slots, model.cfg.image_size
                )
                batch = batch.to(dev)
                with torch.no_grad():
                    losses = model(batch, reduction="none").float().sum(dim=1)
                counts = batch.loss_mask.sum(dim=1)
                for i, loss, n in zip(chunk, losses.tolist(), counts.tolist()):
                    if i is not None:
                        out[i] = {"loss_sum": loss, "tokens": int(n)}
        finally:
            model.train(was_training)
        return out

    def write_predictions(self, predictions: dict[int, dict], path: Path) -> None:
        with path.open("w", encoding="utf-8") as f:
            for i in range(len(self.items)):
                f.write(json.dumps({"index": i, **predictions[i]}) + "\n")

    def score(self, path: Path) -> tuple[dict[str, float], dict]:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        total = sum(r["loss_sum"] for r in rows)
        tokens = sum(r["tokens"] for r in rows)
        if tokens == 0:
            raise UserError(f"task {self.name}: the samples of {self.cfg.data.path} have no loss tokens")
        loss = total / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}, {
            "num_sequences": len(rows),
            "num_tokens": tokens,
            "span_sampling": self.cfg.span_sampling,
        }
