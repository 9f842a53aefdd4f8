"""ZeRO-3 with ranks seeing different modalities in the same step: no hang (every encoder runs on every
rank) and the same losses as ZeRO-2; generation works on the partitioned model (the tied output weight
is registered with ZeRO-3 as an external parameter of the output layer)."""

from __future__ import annotations

import torch

from tests.batches import make_batch
from tests.distributed import run_ranks


def _train(rank, world, stage):
    import deepspeed

    from parallel import ParallelConfig, TopologyMPU, destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset

    topo = init_distributed(ParallelConfig(tp=1))
    cfg = model_config_from_preset(
        "debug", **{"vision_encoder.num_layers": 2, "vision_encoder.trainable_layers": 1}
    )
    model = MetaLM(cfg, topo)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ds = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": stage},
    }
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=opt, config=ds, mpu=TopologyMPU(topo), dist_init_required=False
    )
    losses = []
    for step in range(3):
        kind = ("text", "image")[(step + rank) % 2]  # rank 0: text while rank 1: image-text, and swap
        loss = engine(make_batch(cfg, kind, seed=step))
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    # generation reads the tied embedding in the output layer: ZeRO-3 must gather it there too
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    captions = engine.module.generate(images, max_new_tokens=4, num_beams=2)
    destroy_distributed()
    return losses, captions


def test_zero3_mixed_modalities_match_zero2():
    z3 = run_ranks(2, _train, 3, timeout=180)
    z2 = run_ranks(2, _train, 2, timeout=180)
    assert z3 == z2  # same losses and same generated captions on every rank
    assert z3[0][0][0] != z3[0][0][-1]  # it trained
    assert len(z3[0][1]) == 2
