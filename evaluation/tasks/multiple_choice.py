"""kind: multiple_choice -- pick the most likely choice (COPA / PIQA / StoryCloze / NLI style), accuracy.

data: `path`, a JSONL file with one example per line: its fields, a list of choice strings
(`choices_field`, default "choices") and the index of the right one (`label_field`, default "label"),
e.g. {"context": "...", "choices": ["...", "..."], "label": 1}. The format strings map any fields into
encoder texts and the decoder prompt: `data_prep synth`'s shapes_text_val.jsonl
({premise, hypothesis, choices, label}) is read with encoder ["Premise: {premise}", "Hypothesis:
{hypothesis}"] and prompt "Label:" (configs/eval/shapes.yaml). Extra fields: {label_text} (the right
choice: a demonstration's label) and {options} ("yes, maybe or no").
Default prompt: encoder ["{context}"], decoder prompt "", label "{label_text}".
demos: `path`, a JSONL file of the same layout (a train split).

Scoring (evaluation.generate.score_choices): each choice's summed log-likelihood as the continuation of
the prefix (its tokens only, no </s>). Metrics (evaluation.metrics.choice, fractions in [0, 1]):
`accuracy` (highest sum) and `accuracy_length_normalized` (highest sum / the choice's length in UTF-8
bytes, lm-evaluation-harness's acc_norm). The predictions file is JSONL: per example its key, label,
predicted index and the log-likelihoods.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.inputs import Problems
from evaluation.tasks.base import Item, Task, batches, dp_share, read_jsonl


def options_text(choices: list[str]) -> str:
    """ "a, b or c" (as the data_prep templates spell {options})."""
    return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]


class MultipleChoiceTask(Task):
    kind = "multiple_choice"
    default_encoder = ["{context}"]
    default_prompt = ""
    default_label = "{label_text}"

    def read(self, files, problems: Problems, *, demos: bool) -> list[Item]:
        path = self.path(files.path)
        cf, lf = self.cfg.choices_field, self.cfg.label_field
        items = []
        for n, obj in read_jsonl(path, "demonstrations" if demos else "multiple-choice", problems):
            where = f"{path}:{n}"
            choices, label = obj.get(cf), obj.get(lf)
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)
            ):
                problems.add(
                    f'{where}: "{cf}" must be a list of at least 2 non-empty strings, got {choices!r}'
                )
                continue
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
                problems.add(
                    f'{where}: "{lf}" must be the index of the right choice (0..{len(choices) - 1}), got {label!r}'
                )
                continue
            fields = {**obj, "label_text": choices[label], "options": options_text(choices)}
            items.append(Item(n, where, fields))
        return items

    def render(self, item: Item, problems: Problems, *, label: bool = False):
        rec = super().render(item, problems, label=label)
        rec.extra["choices"] = list(item.fields[self.cfg.choices_field])
        return rec

    def fit_targets(self, rec, tokenizer) -> list[list[int]]:
        return [tokenizer.encode(c) for c in rec.extra["choices"]]

    def predict(self, runner) -> dict[int, dict]:
        from evaluation.generate import score_choices

        cfg, b, tok = self.cfg, runner.builder, runner.tokenizer
        out: dict[int, dict] = {}
        for chunk in batches(dp_share(len(self.records), runner.topology), cfg.batch_size):
            idx = [i if i is not None else 0 for i in chunk]  # padding: every DP rank makes the same calls
            examples = [b.example(self.records[i]) for i in idx]
            choices = [[tok.encode(c) for c in self.records[i].extra["choices"]] for i in idx]
            demos = [[b.demonstration(d) for d in self.demos[i]] for i in idx] if cfg.num_shots else None
            scores = score_choices(
                runner.model, examples, choices, demonstrations=demos, demo_style=cfg.demo_style
            )
            for i, s in zip(chunk, scores):
                if i is not None:
                    out[i] = {
                        "loglikelihoods": [c.logprob for c in s],
                        "num_tokens": [c.num_tokens for c in s],
                    }
        return out

    def write_predictions(self, predictions: dict[int, dict], path: Path) -> None:
        from evaluation.metrics.choice import best_choice

        with path.open("w", encoding="utf-8") as f:
            for i, (it, rec) in enumerate(zip(self.items, self.records)):
                p = predictions[i]
                line = {
                    "key": it.key,
                    "label": it.fields[self.cfg.label_field],
                    "prediction": best_choice(p["loglikelihoods"]),
                    "choices": rec.extra["choices"],
                    "loglikelihoods": p["loglikelihoods"],
                    "num_tokens": p["num_tokens"],
                }
                f.write(json.dumps(line) + "\n")

    def score(self, path: Path) -> tuple[dict[str, float], dict]:
        from evaluation.metrics.choice import choice_accuracy

        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        result = choice_accuracy(
            [r["loglikelihoods"] for r in rows],
            [r["label"] for r in rows],
            [[len(c.encode("utf-8")) for c in r["choices"]] for r in rows],
        )
        n = result.pop("num_examples")
        return result, {"num_examples": n, "length_unit": "utf-8 bytes"}
