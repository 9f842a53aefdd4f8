"""Caption generation: memorize one image->caption, then greedy / beam decoding with and without KV cache."""

from __future__ import annotations

import torch

from tests.batches import image_row
from tests.distributed import run_ranks
from training.data.batch import Batch

CAPTION = [17, 42, 99, 7, 300, 12]


def _train_one_pair(model, cfg, image: torch.Tensor, steps: int) -> float:
    k, t = cfg.image_slots, 32
    ids, tg, mask, dest = image_row(CAPTION, k, 0, t)
    batch = Batch(
        tokens=torch.tensor([ids]),
        targets=torch.tensor([tg]),
        loss_mask=torch.tensor([mask]),
        span_tokens=torch.zeros(0, 2, dtype=torch.long),
        span_dest=torch.zeros(0, 1, dtype=torch.long),
        images=image[None],
        image_dest=torch.tensor([dest]),
    )
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(batch)
        loss.backward()
        opt.step()
    return loss.item()


def _run(rank, world, tp):
    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset

    topo = init_distributed(ParallelConfig(tp=tp))
    cfg = model_config_from_preset("debug")
    model = MetaLM(cfg, topo)
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    other = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = _train_one_pair(model, cfg, image, steps=40)
    images = torch.cat([image[None], other])
    out = {"loss": loss, "training_after": model.training}
    out["greedy_cache"] = model.generate(images, max_new_tokens=10, use_cache=True)
    out["greedy_nocache"] = model.generate(images, max_new_tokens=10, use_cache=False)
    out["beam_cache"] = model.generate(images, max_new_tokens=10, use_cache=True, num_beams=3)
    out["beam_nocache"] = model.generate(images, max_new_tokens=10, use_cache=False, num_beams=3)
    out["prompted"] = model.generate(image, prompt_ids=CAPTION[:2], max_new_tokens=10)  # one [3, H, W] image
    out["training_after"] = model.training
    destroy_distributed()
    return out


def test_generation_cache_and_tp():
    r1 = run_ranks(1, _run, 1)[0]
    assert r1["loss"] < 0.05, "the debug model did not memorize one caption in 40 steps"
    assert r1["greedy_cache"][0] == CAPTION
    assert r1["greedy_cache"] == r1["greedy_nocache"]
    assert r1["beam_cache"] == r1["beam_nocache"]
    assert r1["beam_cache"][0] == CAPTION
    assert r1["prompted"] == [CAPTION[2:]]
    assert r1["training_after"] is True  # generate() restores the training mode
    r2 = run_ranks(2, _run, 2)
    assert r2[0]["greedy_cache"] == r2[1]["greedy_cache"] == r2[0]["greedy_nocache"]
    assert r2[0]["greedy_cache"][0] == CAPTION
    assert r2[0]["beam_cache"] == r2[1]["beam_cache"] == r2[0]["beam_nocache"]
