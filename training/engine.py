"""The DeepSpeed engine of a training job: its config (batch sizes, ZeRO, precision, clipping) and
`deepspeed.initialize` over the MetaLM of this rank's TP group, with our client optimizer and schedule."""

from __future__ import annotations

import torch

from training.config import TrainingConfig
from training.optim import build_optimizer, build_scheduler

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def deepspeed_config(cfg: TrainingConfig, world_size: int) -> dict:
    """The DeepSpeed config for this job (batch sizes, ZeRO, precision, clipping)."""
    t = cfg.train
    ds = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps(world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "zero_allow_untested_optimizer": True,  # our client optimizer is torch AdamW / FusedAdam
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {
            "enabled": t.precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": t.fp16_initial_scale_power,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "steps_per_print": 1 << 30,  # we report progress ourselves
        "wall_clock_breakdown": False,
    }
    if t.zero_stage == 3:
        ds["zero_optimization"].update({"stage3_gather_16bit_weights_on_model_save": False})
    return ds


def build_engine(cfg: TrainingConfig, topology):
    """MetaLM (TP group from the topology; exported weights loaded when asked) -> AdamW + schedule ->
    `deepspeed.initialize`. Returns (engine, ds_config)."""
    import deepspeed

    from parallel.mpu import TopologyMPU
    from training.checkpoint.exported_weights import load_exported_weights
    from training.model.metalm import MetaLM

    if cfg.checkpoint.load_weights_from:  # a trained model, any TP/DP; before DeepSpeed copies the weights
        # every weight comes from it: the docked encoders' pretrained files are not read again
        model = MetaLM(cfg.model.without_weight_files(), topology)
        load_exported_weights(model, cfg.checkpoint.load_weights_from, topology)
    else:
        model = MetaLM(cfg.model, topology)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    ds_config = deepspeed_config(cfg, topology.world_size)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        mpu=TopologyMPU(topology),
        dist_init_required=False,  # init_distributed made the groups; DeepSpeed reads no RANK/WORLD_SIZE
    )
    return engine, ds_config
