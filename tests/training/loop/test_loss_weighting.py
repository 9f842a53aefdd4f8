"""train.loss_weighting through the real DeepSpeed engine (ZeRO-1, DP=2, 2 accumulation steps, fp32).

Hand check: the engine's client optimizer is SGD with lr 1 and no clipping, so one optimizer step moves
each parameter by minus the step's gradient. `token` must equal the gradient of one big batch's mean loss
(all 4 micro-batches, different sizes and loss-token counts, concatenated); `micro_batch` must stay the
mean of the micro-batch means (what DeepSpeed did before the setting existed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.special_tokens import PAD_ID
from tests.batches import make_batch, numpy_dict
from tests.distributed import run_ranks
from tests.paths import DEBUG_CONFIG
from tests.training.shards import config_overrides
from training.data.batch import Batch

# (kind, rows) of the 4 micro-batches: DP rank r runs micro-batches 2r and 2r+1
MICRO = [("text", 1), ("mixed", 3), ("image", 2), ("text", 4)]
SEQ = 32


def micro_batches(model_cfg) -> list[Batch]:
    return [make_batch(model_cfg, kind, SEQ, seed=i, batch_size=n) for i, (kind, n) in enumerate(MICRO)]


def concat(batches: list[Batch]) -> Batch:
    """One big batch holding every row of `batches` (all of length SEQ): flat destinations shifted."""
    width = max(b.span_tokens.shape[1] for b in batches)
    spans, dests, image_dest, rows = [], [], [], 0
    for b in batches:
        pad = width - b.span_tokens.shape[1]
        spans.append(torch.nn.functional.pad(b.span_tokens, (0, pad), value=PAD_ID))
        d = torch.where(b.span_dest >= 0, b.span_dest + rows * SEQ, b.span_dest)
        dests.append(torch.nn.functional.pad(d, (0, pad), value=-1))
        image_dest.append(b.image_dest + rows * SEQ)
        rows += b.batch_size
    return Batch(
        tokens=torch.cat([b.tokens for b in batches]),
        targets=torch.cat([b.targets for b in batches]),
        loss_mask=torch.cat([b.loss_mask for b in batches]),
        span_tokens=torch.cat(spans),
        span_dest=torch.cat(dests),
        images=torch.cat([b.images for b in batches]),
        image_dest=torch.cat(image_dest),
    )


def _step(rank, world, data: Path, tmp: Path, mode: str) -> dict:
    import deepspeed
    import torch.distributed as dist

    from parallel.groups import init_distributed
    from parallel.mpu import TopologyMPU
    from training.config import load_config
    from training.engine import deepspeed_config
    from training.loss_weighting import LossWeighting
    from training.model.metalm import MetaLM

    extra = {
        "parallel.tp": 1,
        "train.precision": "fp32",
        "optim.grad_clip": 0,
        "train.micro_batch_size": 2,
        "train.global_batch_size": 8,  # 2 rows x 2 accumulation steps x DP 2 (the rows here differ)
        "train.loss_weighting": mode,
        "model.dropout": 0.0,
        "model.attention_dropout": 0.0,
    }
    cfg = load_config(DEBUG_CONFIG, config_overrides(data, tmp / "run", **extra))
    topo = init_distributed(cfg.parallel)
    grad_accum = cfg.grad_accum_steps(world)
    assert grad_accum == 2 and topo.dp_size == 2
    model = MetaLM(cfg.model, topo)
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=sgd,
        config=deepspeed_config(cfg, world),
        mpu=TopologyMPU(topo),
        dist_init_required=False,
    )
    ref = MetaLM(cfg.model, topo)
    ref.load_state_dict(engine.module.state_dict())  # the weights DeepSpeed broadcast from rank 0
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}

    def dp_sum(x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x, group=topo.dp_group)
        return x

    micro = micro_batches(cfg.model)
    weighting = LossWeighting(mode, grad_accum, topo.dp_size, dp_sum)
    batches = weighting.step_batches(iter(micro[2 * rank : 2 * rank + 2]))
    reported = torch.zeros(1, dtype=torch.float64)
    for _ in range(grad_accum):  # as Trainer.train_step: forward, weigh, backward, step
        batch = next(batches)
        loss = weighting.weigh(engine(batch), batch)
        reported += float(loss)
        engine.backward(loss)
        engine.step()
    reported = float(dp_sum(reported)[0]) / (grad_accum * topo.dp_size)
    moved = {n: before[n] - p.detach() for n, p in engine.module.named_parameters() if p.requires_grad}

    # references on the plain model: one big batch's mean, and the mean of the micro-batch means
    big = concat(micro)
    token_loss = ref(big)
    token_grad = torch.autograd.grad(token_loss, [p for p in ref.parameters() if p.requires_grad])
    means = [ref(b) for b in micro]
    micro_loss = torch.stack(means).mean()
    micro_grad = torch.autograd.grad(micro_loss, [p for p in ref.parameters() if p.requires_grad])
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    return {
        "moved": numpy_dict(moved),
        "token_grad": numpy_dict(dict(zip(names, token_grad))),
        "micro_grad": numpy_dict(dict(zip(names, micro_grad))),
        "reported": reported,
        "token_loss": float(token_loss),
        "micro_loss": float(micro_loss),
        "tokens": [int(b.loss_mask.sum()) for b in micro],
        "step_tokens": weighting.step_tokens,
    }


def _close(a: dict, b: dict) -> float:
    """Largest |a - b| over all parameters, relative to the largest |b|."""
    scale = max(float(abs(v).max()) for v in b.values())
    return max(float(abs(a[k] - b[k]).max()) for k in b) / scale


@pytest.mark.parametrize("mode", ["token", "micro_batch"])
def test_step_gradient_by_weighting(tiny_data, tmp_path, mode):
    out = run_ranks(2, _step, tiny_data, tmp_path / mode, mode)
    r = out[0]
    assert len(set(r["tokens"])) > 1, (
        "the micro-batches must differ in loss tokens for this check to mean anything"
    )
    # the two weightings give different gradients here, so matching one is not matching both
    assert _close(r["token_grad"], r["micro_grad"]) > 1e-2
    want, other = ("token_grad", "micro_grad") if mode == "token" else ("micro_grad", "token_grad")
    for o in out:  # ZeRO-1 all-gathers the update: both DP ranks hold the same weights
        assert _close(o["moved"], r[want]) < 1e-5, mode
        assert _close(o["moved"], r[other]) > 1e-2
    want_loss = r["token_loss"] if mode == "token" else r["micro_loss"]
    assert r["reported"] == pytest.approx(want_loss, rel=1e-5)
    if mode == "token":
        assert r["step_tokens"] == sum(
            r["tokens"]
        )  # T all-reduced over the DP ranks before the first backward


def test_loss_weighting_arithmetic_single_rank():
    from training.loss_weighting import LossWeighting

    class B:
        def __init__(self, n):
            self.loss_mask = torch.ones(n)

    w = LossWeighting("token", 3, 1, lambda x: x)
    seen = list(w.step_batches(iter([B(2), B(5), B(3), B(99)])))
    assert len(seen) == 3 and w.step_tokens == 10  # only this step's 3 micro-batches are drawn
    # a micro-batch's mean loss 2.0 over 5 tokens: its sum 10 / T 10 x grad_accum 3 x dp 1
    assert float(w.weigh(torch.tensor(2.0), seen[1])) == pytest.approx(3.0)
    same = LossWeighting("micro_batch", 3, 1, lambda x: x)
    it = iter([B(1)])
    assert same.step_batches(it) is it and float(same.weigh(torch.tensor(2.0), B(7))) == 2.0
    with pytest.raises(ValueError, match="loss_weighting"):
        LossWeighting("tokens", 1, 1, lambda x: x)
