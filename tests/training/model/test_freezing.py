"""Freezing (encoders' trainable_layers, model.freeze), dropout off inside frozen layers, per-component
dropout and learning-rate multipliers, through the real DeepSpeed engine (ZeRO-1, 2 DP ranks, CPU)."""

from __future__ import annotations

import pytest
import torch

from parallel.groups import Topology
from tests.batches import make_batch
from tests.distributed import run_ranks
from training.config import load_config
from training.model import MetaLM, model_config_from_preset
from training.model.spec import component_specs
from training.optim import build_optimizer, build_scheduler, lr_factor

FROZEN_PARTS = {  # the debug model with 2-layer encoders, each training its last layer
    "model.preset": "debug",
    "model.vocab_size": 512,
    "model.text_encoder.num_layers": 2,
    "model.text_encoder.trainable_layers": 1,
    "model.vision_encoder.num_layers": 2,
    "model.vision_encoder.trainable_layers": 1,
    "model.freeze.allow_random": True,  # test weights: nothing to dock
}


def overrides(**more) -> list[str]:
    spans = {"data.span_min_len": 4, "data.span_max_len": 16}  # within the debug encoder's 64 tokens
    return [f"{k}={v}" for k, v in {**FROZEN_PARTS, **spans, **more}.items()]


def _frozen(name: str) -> bool:
    return (
        name.startswith(("text_encoder.", "vision_encoder."))
        and ".layers.1." not in name
        and "final_ln" not in name
    ) or name.startswith(("text_connector.", "image_connector."))


def _train(rank, world, precision):
    from parallel import destroy_distributed, init_distributed
    from training.engine import build_engine

    cfg = load_config(
        None,
        overrides(
            **{
                "model.dropout": 0.1,
                "model.freeze.connectors": True,
                "optim.lr": 1e-3,
                "optim.warmup_steps": 4,
                "optim.lr_multipliers.text_encoder": 0.5,
                "optim.lr_multipliers.vision_encoder": 0.25,
                "train.steps": 10,
                "train.zero_stage": 1,
                "train.precision": precision,
                "train.micro_batch_size": 2,
                "train.global_batch_size": 4,
                "data.tokenizer": "/nonexistent",
            }
        ),
    )
    cfg.validate(world, check_data=False)
    topo = init_distributed(cfg.parallel)
    engine, _ = build_engine(cfg, topo)
    model = engine.module
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # the model parameters the optimizer updates: the ZeRO optimizer's bit16_groups, or bf16_groups where
    # DeepSpeed picks its BF16_Optimizer (bf16 + ZeRO-1 with fp32 gradient accumulation)
    groups = getattr(engine.optimizer, "bit16_groups", None) or engine.optimizer.bf16_groups
    in_optimizer = {id(p) for group in groups for p in group}
    for step in range(3):
        loss = engine(make_batch(cfg.model, "mixed", seed=10 * step + rank))
        engine.backward(loss)
        engine.step()
    out = {
        "frozen_flags": {n: not p.requires_grad for n, p in model.named_parameters()},
        "in_optimizer": {n: id(p) in in_optimizer for n, p in model.named_parameters()},
        "unchanged": {n: torch.equal(p.detach(), before[n]) for n, p in model.named_parameters()},
        "lrs": sorted((g["lr_multiplier"], g["lr"]) for g in engine.optimizer.param_groups),
        "steps": engine.global_steps,
    }
    destroy_distributed()
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_frozen_parameters_stay_bit_identical_and_out_of_the_optimizer_zero1(precision):
    r0, r1 = run_ranks(2, _train, precision)
    assert r0["steps"] == 3
    for r in (r0, r1):
        for name, frozen in r["frozen_flags"].items():
            assert frozen == _frozen(name), name
            assert r["in_optimizer"][name] == (not frozen), name
            if frozen:
                assert r["unchanged"][name], f"frozen {name} changed"
        assert not r["unchanged"]["text_encoder.stack.layers.1.attn.qkv.weight"]  # the last layer trains
        assert not r["unchanged"]["vision_encoder.stack.layers.1.mlp.fc1.weight"]
        assert not r["unchanged"]["decoder.layers.0.mlp.fc1.weight"]
        # per-component lrs follow the schedule: lr x multiplier x lr_factor(3 steps done)
        f = lr_factor(3, 4, 10, "linear", 0.0)
        want = sorted((m, 1e-3 * m * f) for m in (1.0, 1.0, 0.5, 0.5, 0.25, 0.25))
        assert [m for m, _ in r["lrs"]] == [m for m, _ in want]
        for (_, got), (_, lr) in zip(r["lrs"], want):
            assert got == pytest.approx(lr, rel=1e-9)


def test_param_groups_and_schedule_scale_per_component():
    cfg = load_config(
        None,
        overrides(
            **{
                "optim.lr": 2e-4,
                "optim.warmup_steps": 2,
                "optim.lr_multipliers.decoder": 1.0,
                "optim.lr_multipliers.text_encoder": 0.1,
                "optim.lr_multipliers.connectors": 3.0,
            }
        ),
    )
    model = MetaLM(cfg.model, Topology.single_process())
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, total_steps=10)
    groups = opt.param_groups
    # multiplier 1.0 first (the logged lr is the schedule's), decay before no-decay, frozen ones nowhere
    assert [(g["lr_multiplier"], g["weight_decay"] > 0) for g in groups] == [
        (1.0, True),
        (1.0, False),
        (3.0, True),
        (3.0, False),
        (0.1, True),
        (0.1, False),
    ]
    ids = {id(p) for g in groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert {names[i] for i in ids} == {n for n, p in model.named_parameters() if p.requires_grad}
    text = {names[id(p)].split(".")[0] for g in groups if g["lr_multiplier"] == 0.1 for p in g["params"]}
    assert text == {"text_encoder"}
    for step in range(4):
        f = lr_factor(step, 2, 10, "linear", 0.0)
        assert [g["lr"] for g in groups] == pytest.approx([2e-4 * g["lr_multiplier"] * f for g in groups])
        opt.step()
        sched.step()


def test_frozen_random_is_a_config_error_unless_opted_out_or_loaded():
    cfg = load_config(None, overrides(**{"model.freeze.allow_random": False}))
    text = "\n".join(cfg.problems(1, check_data=False))
    assert "model.text_encoder.trainable_layers=1 freezes the text_encoder" in text
    assert "model.text_encoder.weights_path=DIR" in text
    assert "model.vision_encoder.trainable_layers=1 freezes the vision_encoder" in text
    assert "model.vision_encoder.weights_path=DIR" in text and "model.freeze.allow_random=true" in text
    dec = load_config(None, overrides(**{"model.freeze.allow_random": False, "model.freeze.decoder": True}))
    text = "\n".join(dec.problems(1, check_data=False))
    assert "model.freeze.decoder=true freezes the decoder" in text and "checkpoint.load_weights_from=" in text
    exported = load_config(
        None,
        overrides(
            **{"model.freeze.allow_random": False, "checkpoint.load_weights_from": "stage1.safetensors"}
        ),
    )
    assert not any("freezes" in p for p in exported.problems(1, check_data=False))
    assert load_config(None, overrides()).problems(1, check_data=False) == []  # opted out
    bad = load_config(None, overrides(**{"optim.lr_multipliers.vision_encoder": 0}))
    assert any("optim.lr_multipliers.vision_encoder=0.0 must be > 0" in p for p in bad.problems(1, False))


def _forward_twice(rank, world):
    from parallel import ParallelConfig, destroy_distributed, init_distributed

    topo = init_distributed(ParallelConfig(tp=1))
    out = {}
    for freeze_decoder in (False, True):
        cfg = model_config_from_preset(
            "debug",
            dropout=0.3,
            attention_dropout=0.3,
            **{
                k.removeprefix("model."): v
                for k, v in FROZEN_PARTS.items()
                if k not in ("model.preset", "model.vocab_size")
            },
            **{"freeze.decoder": freeze_decoder},
        )
        model = MetaLM(cfg, topo).eval().train()  # train() after eval(): frozen parts stay in eval mode
        seen: dict[str, list[torch.Tensor]] = {}
        watch = {
            "text0": model.text_encoder.stack.layers[0],
            "text1": model.text_encoder.stack.layers[1],
            "vit0": model.vision_encoder.stack.layers[0],
            "vit1": model.vision_encoder.stack.layers[1],
            "dec1": model.decoder.layers[1],
        }
        for key, mod in watch.items():
            mod.register_forward_hook(
                lambda m, i, o, key=key, seen=seen: seen.setdefault(key, []).append(o.detach())
            )
        batch = make_batch(cfg, "mixed" if not freeze_decoder else "plain", seed=1)
        for _ in range(2):
            model(batch)
        out[freeze_decoder] = {
            "same": {k: torch.equal(v[0], v[1]) for k, v in seen.items()},
            "training": {k: m.training for k, m in watch.items()},
            "embed_dropout": (
                model.text_encoder.embed_dropout.training,
                model.vision_encoder.embed_dropout.training,
            ),
        }
    destroy_distributed()
    return out


def test_dropout_is_off_inside_frozen_layers():
    [out] = run_ranks(1, _forward_twice)
    enc = out[False]
    assert enc["training"] == {"text0": False, "text1": True, "vit0": False, "vit1": True, "dec1": True}
    assert enc["embed_dropout"] == (False, False)  # frozen embedding stages: no embedding dropout either
    # a frozen layer computes the same thing twice in train mode (its inputs are frozen too); trainable ones
    # draw new dropout masks
    assert enc["same"]["text0"] and enc["same"]["vit0"]
    assert not enc["same"]["text1"] and not enc["same"]["vit1"] and not enc["same"]["dec1"]
    dec = out[True]  # the whole decoder frozen (plain text rows: the decoder sees only its own embeddings)
    assert dec["training"]["dec1"] is False and dec["same"]["dec1"]


def test_component_dropouts_feed_the_layer_specs():
    cfg = model_config_from_preset(
        "debug",
        dropout=0.1,
        attention_dropout=0.1,
        **{"decoder.dropout": 0.0, "decoder.attention_dropout": 0.0, "connector.dropout": 0.2},
    )
    specs = component_specs(cfg, Topology.single_process("meta"))
    assert (specs["decoder"].hidden_dropout, specs["decoder"].attention_dropout) == (0.0, 0.0)
    assert (specs["text_encoder"].hidden_dropout, specs["vision_encoder"].attention_dropout) == (0.1, 0.1)
    assert (specs["connectors"].hidden_dropout, specs["connectors"].attention_dropout) == (0.2, 0.1)
    with torch.device("meta"):
        model = MetaLM(cfg, Topology.single_process("meta"))
    assert model.embed_dropout == 0.0 and model.decoder.layers[0].dropout == 0.0
    assert model.text_encoder.embed_dropout.p == 0.1
    bad = model_config_from_preset("debug")
    bad.text_encoder.dropout = 1.5
    assert any("model.text_encoder.dropout=1.5 must be in [0, 1)" in p for p in bad.problems(1))
