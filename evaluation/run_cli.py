"""`python -m evaluation run`: the benchmarks of an EVAL.yaml on one model -> results JSON + MLflow.

    python -m evaluation run --config configs/eval/shapes.yaml --model runs/demo/checkpoints
    torchrun --nproc-per-node 4 -m evaluation run --config configs/eval/coco-vqa.yaml \\
        --model export/metalm.safetensors --tp 2 --output results.json tasks.coco_caption.limit=500
    python -m evaluation run --config configs/eval/shapes.yaml --model init --train-config runs/demo/config.yaml

--model: an exported .safetensors, a checkpoint folder (`RUN_DIR/checkpoints[/step_N]`), or `init` (also
`none`): the untrained model of `--train-config` (its initialization, with any docked encoder weights
and `checkpoint.load_weights_from`, exactly as training starts; the baseline before training).

Order: the EVAL config, then every task's inputs and prompt lengths are checked (one UserError listing
all problems, naming file and example id) BEFORE the model is built; then the model is built in this
process group's layout (one process, or torchrun: TP = --tp, default all processes; the other factor is
data parallel: examples split over DP ranks, gathered to rank 0); rank 0 writes the results JSON (default
RUN_DIR/eval/<checkpoint>.json for a checkpoint, <export dir>/eval/<export stem>.json, RUN_DIR/eval/init.json)
with the predictions beside it, and logs `eval/<task>/<metric>` to MLflow: into the training run when
--mlflow-run-id is given or the checkpoint/export records one (at its step; the URI from the run's
config unless the EVAL config's tracking.uri says otherwise), else into a new run.
Prints the results JSON on stdout (rank 0).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

log = logging.getLogger(__name__)

INIT_NAMES = ("init", "none")


@dataclass
class Source:
    """The model to evaluate: where it comes from, its training config and tokenizer (no weights yet)."""

    path: Path | None  # None: `--model init`
    train_cfg: object  # training.config.TrainingConfig
    tokenizer: object
    step: int
    run_id: str | None  # the training run's MLflow id, when the source records it
    label: str  # for messages, MLflow tags and the run name

    @property
    def is_init(self) -> bool:
        return self.path is None


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="EVAL.yaml: the tasks (see configs/eval/)")
    p.add_argument(
        "--model",
        required=True,
        help="exported .safetensors, checkpoint folder (RUN_DIR/checkpoints or .../step_N), or `init`",
    )
    p.add_argument("--train-config", help="with --model init: the training config of the untrained model")
    p.add_argument(
        "--train-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --model init: an override of the training config (repeatable)",
    )
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's; see `generate --help`)")
    p.add_argument("--tp", type=int, help="tensor-parallel size (default: all processes in one TP group)")
    p.add_argument("--output", help="results JSON (default: under the run's or export's eval/ folder)")
    p.add_argument("--mlflow-run-id", help="log into this MLflow run (default: the one the model records)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="parameter dtype (auto: bf16 on GPU, fp32 on CPU)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="EVAL config overrides, e.g. tasks.0.limit=8"
    )


def resolve_source(args) -> Source:
    """The model source and its config and tokenizer, checked (no weights read)."""
    from evaluation import model_io
    from training.checkpoint.exported_weights import describe_source
    from training.config import load_config
    from training.config.tokenizer import run_tokenizer

    if args.model.lower() in INIT_NAMES:
        if not args.train_config:
            raise UserError(
                f"--model {args.model} evaluates an untrained model: give its --train-config FILE"
            )
        cfg = load_config(args.train_config, args.train_override)
        tok = run_tokenizer(args.tokenizer or cfg.data.tokenizer)
        if tok.vocab_size > cfg.model.vocab_size:
            raise UserError(
                f"tokenizer has {tok.vocab_size} pieces, more than model.vocab_size={cfg.model.vocab_size}"
            )
        return Source(None, cfg, tok, 0, None, "init")
    if args.train_config or args.train_override:
        raise UserError(
            "--train-config / --train-override go with --model init; a trained model has its own config"
        )
    src = model_io.resolve_source(args.model)
    info = describe_source(src)
    cfg = model_io.source_config(src)
    tok = model_io.source_tokenizer(src, args.tokenizer, cfg)
    step = int(info.get("step") or 0)
    return Source(src, cfg, tok, step, info.get("mlflow_run_id"), str(src))


def default_output(source: Source) -> Path:
    if source.is_init:
        return source.train_cfg.run_dir.eval_dir / "init.json"
    p = source.path
    if p.is_dir():  # RUN_DIR/checkpoints/step_N
        return p.parent.parent / "eval" / f"{p.name}.json"
    return p.parent / "eval" / f"{p.stem}.json"


def run(args) -> dict | None:
    """The `run` command: the results (global rank 0) or None (other ranks)."""
    from common.process_setup import setup_process
    from evaluation.harness import prepare_tasks
    from evaluation.harness_config import load_eval_config

    setup_process()
    cfg = load_eval_config(args.config, args.overrides)  # the EVAL config first: a typo fails in a second
    if args.tp is not None and args.tp < 1:
        raise UserError(f"--tp must be >= 1, got {args.tp}")
    source = resolve_source(args)
    tasks = prepare_tasks(cfg, source.tokenizer, source.train_cfg)  # every input, before any model
    output = Path(args.output) if args.output else default_output(source)
    # libraries print notices on stdout (DeepSpeed's accelerator line): keep stdout for the result JSON
    with contextlib.redirect_stdout(sys.stderr):
        return _run_model(args, cfg, source, tasks, output)


def build_model(source: Source, tp: int | None, dtype, tokenizer: str | None = None):
    """The model in this process's TP layout: the source's weights, or the run's initialization."""
    import torch

    from evaluation.model_io import current_topology, load_model

    if not source.is_init:
        model, _, _ = load_model(source.path, tp, tokenizer=tokenizer, dtype=dtype)
        return model
    from training.checkpoint.exported_weights import load_exported_weights
    from training.model import MetaLM

    cfg = source.train_cfg
    topo = current_topology(tp)
    if dtype is None:
        dtype = torch.bfloat16 if topo.device.type == "cuda" else torch.float32
    model = MetaLM(cfg.model, topo, params_dtype=dtype)  # as training.engine.build_engine starts a run
    if cfg.checkpoint.load_weights_from:
        load_exported_weights(model, cfg.checkpoint.load_weights_from, topo)
    model.eval()
    return model


def _run_model(args, cfg, source: Source, tasks, output: Path) -> dict | None:
    import time

    from evaluation.generate_cli import _dtype
    from evaluation.harness import run_tasks, write_json
    from parallel import destroy_distributed

    t0 = time.monotonic()
    model = build_model(source, args.tp, _dtype(args.dtype), args.tokenizer)
    topo = model.topology
    try:
        info = {"model": source.label, "step": source.step, "eval_config": str(args.config)}
        results = run_tasks(tasks, model, source.tokenizer, source.train_cfg, topo, output, info)
        if results is None:
            return None
        results["wall_seconds"] = round(time.monotonic() - t0, 3)  # model building included
        run_id = args.mlflow_run_id or source.run_id
        results["mlflow_run_id"] = None if args.no_mlflow else _log(cfg, source, results, output, run_id)
        write_json(output, results)  # again, with the two figures above
        log.info("results: %s", output)
        return results
    finally:
        destroy_distributed()


def _log(cfg, source: Source, results: dict, output: Path, run_id: str | None) -> str | None:
    from evaluation.mlflow_log import log_results
    from training.config import TrackingConfig
    from training.config import loader as config_io

    tcfg = source.train_cfg
    t = cfg.tracking
    tracking = TrackingConfig(
        enabled=t.enabled,
        uri=t.uri or tcfg.tracking_uri(),
        experiment=t.experiment or tcfg.tracking.experiment,
        run_name=t.run_name or f"eval-{Path(source.label).name}",
    )
    params = {f"eval.{k}": v for k, v in config_io.flatten(cfg.to_dict()).items()}
    params.update({"eval.model": source.label, "eval.step": source.step})
    tags = {
        "eval.model": source.label,
        "eval.step": str(source.step),
        "eval.parent_run_id": source.run_id or "",
    }
    return log_results(
        results,
        output,
        tracking=tracking,
        uri=tracking.uri,
        run_id=run_id,
        step=source.step,
        params=params,
        tags=tags,
        artifact_root=tcfg.run_dir.mlartifacts,
    )
