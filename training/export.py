"""Export a checkpoint to one consolidated safetensors file (+ config + tokenizer), and load it back at any layout.

    python -m training.export --checkpoint RUN_DIR/checkpoints/step_00001200 --output export/metalm.safetensors

writes `export/metalm.safetensors` (every parameter as its full tensor: TP shards concatenated by
`training.model.tp_shards`, vocab padding removed, so the file depends on neither TP nor DP),
`export/config.yaml` (the run's resolved config) and `export/tokenizer/` (copied when the
tokenizer folder named by the config exists). The checkpoint is verified against its manifest
first. TP shards are gathered by forking one gloo process per TP rank on the CPU (no GPU needed).

ZeRO-1/2 checkpoints export the module weights (the training precision: fp32 runs give fp32);
ZeRO-3 checkpoints (TP=1) export DeepSpeed's consolidated fp32 master weights.

A run starts from an exported file at any TP/DP with `checkpoint.load_weights_from=FILE`
(`training.checkpoint.exported_weights.load_exported_weights`, called on the model before `deepspeed.initialize`); the optimizer
state starts fresh in that case (documented in the README). To keep the optimizer state across a
DP change, resume the checkpoint itself: CheckpointManager converts it to a DeepSpeed universal
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

from common import exit_codes
from common.errors import UserError
from training.run_dir import RunDir

logger = logging.getLogger(__name__)


def checkpoint_config_path(ckpt_dir: Path) -> Path:
    """The resolved config saved with a checkpoint (falls back to the run folder's)."""
    run = RunDir(ckpt_dir.parent.parent)  # RUN_DIR/checkpoints/step_*
    for p in (ckpt_dir / run.config_yaml.name, run.config_yaml):
        if p.is_file():
            return p
    raise UserError(
        f"{ckpt_dir}: no config.yaml in the checkpoint or its run folder; the model cannot be rebuilt"
    )


def _is_zero3(ckpt_dir: Path) -> bool:
    return any(ckpt_dir.glob("zero_pp_rank_*_mp_rank_*_model_states.pt"))


def _rank_main(rank: int, tp: int, port: int, ckpt_dir: str, cfg_path: str, output: str, q) -> None:
    import torch

    torch.set_num_threads(1)
    from parallel.local_ranks import local_rank_env

    os.environ.update(local_rank_env(rank, tp, port))
    try:
        from parallel.config import ParallelConfig
        from parallel.groups import destroy_distributed, init_distributed
        from training.config import load_config
        from training.model.metalm import MetaLM
        from training.model.tp_shards import gather_full_state_dict

        cfg = load_config(cfg_path)
        topo = init_distributed(ParallelConfig(tp=tp, backend="gloo", seed=cfg.parallel.seed))
        try:
            # every weight comes from the checkpoint: no docked pretrained files are read
            model = MetaLM(cfg.model.without_weight_files(), topo).to("cpu")
            d = Path(ckpt_dir)
            if _is_zero3(d):
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                sd = get_fp32_state_dict_from_zero_checkpoint(str(d.parent), tag=d.name)
            else:
                sd = torch.load(
                    d / f"mp_rank_{topo.tp_rank:02d}_model_states.pt", map_location="cpu", weights_only=False
                )["module"]
            sd = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in sd.items()}
            model.load_state_dict(sd, strict=True)
            full = gather_full_state_dict(model, topo)
            info = None
            if rank == 0:
                from safetensors.torch import save_file

                state = json.loads((d / "trainer_state.json").read_text())
                out = Path(output)
                tmp = out.with_name(f".{out.name}.tmp")
                meta = {
                    "format": "metalm-full",
                    "source": str(d.resolve()),
                    "step": str(state.get("step")),
                    "vocab_size": str(cfg.model.vocab_size),
                    "saved_tp": str(tp),
                    "dtype": str(next(iter(full.values())).dtype),
                    "tokenizer_sha256": str(state.get("tokenizer_sha256") or ""),
                    "mlflow_run_id": str(state.get("mlflow_run_id") or ""),
                }
                save_file({k: v.contiguous() for k, v in full.items()}, str(tmp), metadata=meta)
                os.replace(tmp, out)
                info = {
                    "tensors": len(full),
                    "parameters": sum(v.numel() for v in full.values()),
                    "step": state.get("step"),
                }
            q.put((rank, True, info))
        finally:
            destroy_distributed()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        import traceback

        q.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def export_checkpoint(ckpt_dir: str | Path, output: str | Path, verify_hashes: bool = True) -> dict:
    """Verify `ckpt_dir`, gather it into `output` (.safetensors), write config.yaml + tokenizer/ beside it."""
    from training.checkpoint import manifest
    from training.config import load_config

    ckpt_dir, output = Path(ckpt_dir), Path(output)
    if output.suffix != ".safetensors":
        raise UserError(f"--output {output}: the file name must end in .safetensors")
    mf, problems = manifest.read_manifest(ckpt_dir)
    if mf is not None:
        problems = manifest.verify_files(ckpt_dir, mf, verify_hashes)
    if problems:
        raise UserError(
            [f"--checkpoint {ckpt_dir} cannot be exported (pick another step_* folder):"] + problems
        )
    cfg_path = checkpoint_config_path(ckpt_dir)
    state = json.loads((ckpt_dir / "trainer_state.json").read_text())
    tp = int(state.get("parallel", {}).get("tp", 1))
    output.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    info = _run_tp_ranks(tp, ckpt_dir, cfg_path, output)
    shutil.copyfile(cfg_path, output.parent / "config.yaml")
    tok = Path(load_config(cfg_path).data.tokenizer)
    if tok.is_dir():
        shutil.copytree(tok, output.parent / "tokenizer", dirs_exist_ok=True)
    else:
        logger.warning("tokenizer folder %s (data.tokenizer in %s) not found: not copied", tok, cfg_path)
    info["seconds"] = time.monotonic() - t0
    logger.info(
        "exported %s (step %s, %d tensors, %.1fM parameters) to %s in %.1fs",
        ckpt_dir.name,
        info["step"],
        info["tensors"],
        info["parameters"] / 1e6,
        output,
        info["seconds"],
    )
    return info


def _run_tp_ranks(tp: int, ckpt_dir: Path, cfg_path: Path, output: Path) -> dict:
    """Fork one CPU/gloo process per TP rank of the checkpoint; rank 0 writes the file."""
    import queue

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    from parallel.local_ranks import free_port

    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, tp, port, str(ckpt_dir), str(cfg_path), str(output), q))
        for r in range(tp)
    ]
    for p in procs:
        p.start()
    results, errors = {}, []
    try:
        while len(results) < tp and not errors:
            try:
                rank, ok, value = q.get(timeout=1.0)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    errors.append("an export process died (out of memory?)")
                continue
            if ok:
                results[rank] = value
            else:
                errors.append(f"rank {rank}: {value}")
    finally:
        for p in procs:
            p.join(timeout=10 if not errors else 1)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("export failed:\n" + "\n".join(errors))
    return results[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint", required=True, help="a checkpoint folder, e.g. RUN_DIR/checkpoints/step_00001200"
    )
    p.add_argument(
        "--output", required=True, help="output .safetensors file; config.yaml and tokenizer/ go beside it"
    )
    p.add_argument("--no-verify-hashes", action="store_true", help="check file sizes only (faster)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        info = export_checkpoint(args.checkpoint, args.output, verify_hashes=not args.no_verify_hashes)
    except UserError as e:
        logger.error("%s", e)
        return exit_codes.USER_ERROR
    print(json.dumps({"output": args.output, **info}))
    return exit_codes.OK


if __name__ == "__main__":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the gather runs on CPU/gloo
    from common.process_setup import setup_process

    setup_process()
    sys.exit(main())
