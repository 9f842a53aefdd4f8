"""The DeepSpeed engine of a training job: its config (batch sizes, ZeRO, precision, clipping) and
`deepspeed.initialize` over the MetaLM of this rank's TP group, with our client optimizer and schedule.
At start one log line names the fused kernels in use and why others are not (`kernel_report`)."""

from __future__ import annotations

import importlib.util
import logging

import torch

from training.config import TrainingConfig
from training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def deepspeed_config(cfg: TrainingConfig, world_size: int) -> dict:
    """The DeepSpeed config for this job (batch sizes, ZeRO, precision, clipping)."""
    t = cfg.train
    ds = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps(world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero_config(t.zero_stage, t.zero),
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
    return ds


def zero_config(stage: int, z) -> dict:
    """DeepSpeed's `zero_optimization` section from `train.zero_stage` + `train.zero` (ZeroConfig)."""
    out = {
        "stage": stage,
        "overlap_comm": z.overlap_comm,
        "contiguous_gradients": z.contiguous_gradients,
        "reduce_bucket_size": z.reduce_bucket_size,
        "allgather_bucket_size": z.allgather_bucket_size,
        "reduce_scatter": z.reduce_scatter,
    }
    if stage == 3:
        out.update(
            {
                "stage3_prefetch_bucket_size": z.stage3_prefetch_bucket_size,
                "stage3_param_persistence_threshold": z.stage3_param_persistence_threshold,
                "stage3_max_live_parameters": z.stage3_max_live_parameters,
                "stage3_max_reuse_distance": z.stage3_max_reuse_distance,
                "stage3_gather_16bit_weights_on_model_save": False,
            }
        )
    return out


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
    log.info("kernels: %s", kernel_report(optimizer, _max_attention_dropout(cfg.model)))
    return engine, ds_config


def kernel_report(optimizer=None, attention_dropout: float = 0.0) -> str:
    """One line: which fused kernels this job uses and why the others are not (attention, norms, optimizer)."""
    parts = [f"attention (SDPA): {sdpa_kernels(attention_dropout)}"]
    if optimizer is not None:
        parts.append(f"optimizer: {getattr(optimizer, 'metalm_kernel', type(optimizer).__name__)}")
    parts.append(f"apex: {_apex_kernels()}")
    te = importlib.util.find_spec("transformer_engine") is not None
    parts.append(
        "Transformer Engine: installed but unused (MetaLM uses megatron-core's local layers)"
        if te
        else "Transformer Engine: absent (MetaLM uses megatron-core's local layers)"
    )
    return "; ".join(parts)


def _max_attention_dropout(model_cfg) -> float:
    """The largest attention dropout of any component (a component's null follows the model's)."""
    values = [model_cfg.attention_dropout]
    for name in ("decoder", "text_encoder", "vision_encoder", "connector"):
        values.append(getattr(getattr(model_cfg, name, None), "attention_dropout", None))
    return max(v for v in values if v is not None)


def sdpa_kernels(attention_dropout: float = 0.0) -> str:
    """The scaled-dot-product-attention backends PyTorch may pick here (torch 2.13 on CPU: the flash-CPU
    kernel takes causal and masked calls, but not attention dropout, which runs the math kernel)."""
    if not torch.cuda.is_available():
        if attention_dropout > 0:
            return (
                f"CPU: math kernel (attention dropout {attention_dropout} > 0; the flash-CPU kernel has none)"
            )
        return "CPU: flash-CPU kernel (causal and masked calls; math only with attention dropout)"
    b = torch.backends.cuda
    flags = {
        "flash": b.flash_sdp_enabled(),
        "mem-efficient": b.mem_efficient_sdp_enabled(),
        "cuDNN": b.cudnn_sdp_enabled(),
        "math": b.math_sdp_enabled(),
    }
    on = [k for k, v in flags.items() if v]
    off = [k for k, v in flags.items() if not v]
    notes = []
    major, minor = torch.cuda.get_device_capability()
    if flags["flash"] and major < 8:
        notes.append(f"flash needs sm80+, this GPU is sm{major}{minor}")
    notes.append("masked calls (encoder padding, packed rows) cannot use flash: mem-efficient")
    return (
        f"enabled {', '.join(on) or 'none'}"
        + (f", disabled {', '.join(off)}" if off else "")
        + f" ({'; '.join(notes)})"
    )


def _apex_kernels() -> str:
    if importlib.util.find_spec("apex") is None:
        return "not installed (FusedLayerNorm/FusedAdam: a build-from-source GPU extra; torch LayerNorm used)"
    try:
        from apex.normalization import FusedLayerNorm  # noqa: F401
        from apex.optimizers import FusedAdam  # noqa: F401
    except Exception as e:  # noqa: BLE001 - the PyPI `apex` is another package; a CPU build has no kernels
        return f"present, FusedLayerNorm/FusedAdam do not import ({type(e).__name__}); torch LayerNorm used"
    return "FusedLayerNorm / FusedAdam importable but unused (MetaLM builds torch LayerNorm; optimizer above)"
