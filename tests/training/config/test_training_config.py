"""Config: shipped files parse + validate, precedence, unknown keys, all problems at once, data checks."""

from __future__ import annotations

import json
import re
import shutil
from unittest.mock import patch

import pytest
import yaml

from common.errors import UserError
from tests.paths import CONFIGS
from tests.training.shards import config_overrides
from training.config import load_config
from training.config import loader as config_io
from training.optim import lr_factor
from training.precision import Capabilities, precision_problems

# every training config, found; configs/eval/ holds EVAL.yaml files, validated by the eval loader (below)
_ALL = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))
SHIPPED = [n for n in _ALL if not n.startswith("eval/")]
EVAL_SHIPPED = [n for n in _ALL if n.startswith("eval/")]
WORLD_SIZE = re.compile(r"^#\s*world_size:\s*(\d+)\s*$", re.M)  # a config's header may name its world size


def test_every_config_is_discovered():
    assert {"debug.yaml", "small.yaml", "metalm-1.3b.yaml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_parses_and_validates(name):
    text = (CONFIGS / name).read_text()
    cfg = load_config(CONFIGS / name)
    m = WORLD_SIZE.search(text)
    world = int(m.group(1)) if m else cfg.parallel.tp
    cfg.validate(world, check_data=False)  # data lives elsewhere; data checks are tested below
    assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * cfg.dp_size(world)) == 0
    again = load_config(None, [])  # defaults alone also build
    assert again.model.preset == "debug"


@pytest.mark.parametrize("name", EVAL_SHIPPED)
def test_shipped_eval_config_parses_with_the_eval_loader(name):
    from evaluation.harness_config import load_eval_config

    assert load_eval_config(CONFIGS / name).tasks


def test_metalm_1_3b_config_follows_the_paper():
    cfg = load_config(CONFIGS / "metalm-1.3b.yaml")
    assert cfg.train.precision == "bf16" and cfg.train.zero_stage == 1 and 8 % cfg.parallel.tp == 0
    assert (cfg.optim.lr, cfg.optim.beta2, cfg.optim.weight_decay, cfg.optim.decay) == (
        1e-4,
        0.98,
        0.01,
        "linear",
    )
    assert cfg.model.decoder.num_layers == 24 and cfg.model.decoder.hidden_size == 2048


def test_precedence_cli_over_file_over_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "train": {"steps": 7, "micro_batch_size": 2, "global_batch_size": 4},
                "data": {"train": [{"path": "a", "proportion": 0.5}, {"path": "b", "proportion": 0.5}]},
            }
        )
    )
    cfg = load_config(
        f,
        [
            "train.steps=9",
            "data.train.1.proportion=0.25",
            "model.decoder.num_layers=3",
            "model.max_seq_len=96",
        ],
    )
    assert cfg.train.steps == 9  # CLI beats file
    assert cfg.train.micro_batch_size == 2  # file beats default
    assert cfg.train.log_interval == 10  # default
    assert [s.proportion for s in cfg.data.train] == [0.5, 0.25] and cfg.data.train[1].path == "b"
    assert cfg.model.decoder.num_layers == 3 and cfg.model.max_seq_len == 96  # alias of decoder.max_seq_len


def test_unknown_keys_and_bad_values_reported_together(tmp_path):
    with pytest.raises(UserError) as e:
        load_config(
            None, ["train.stpes=3", "optimm.lr=1", "model.decoder.num_layer=2", "train.zero_stage=abc"]
        )
    msg = str(e.value)
    assert "4 problem(s)" in msg
    assert "'train.stpes'" in msg and "did you mean 'steps'" in msg
    assert "'optimm'" in msg and "did you mean 'optim'" in msg
    assert "'model.decoder.num_layer'" in msg and "num_layers" in msg
    assert "train.zero_stage" in msg and "'abc'" in msg


def test_validation_collects_every_problem():
    cfg = load_config(
        None,
        [
            "parallel.tp=2",
            "train.zero_stage=3",
            "train.precision=fp16",
            "train.global_batch_size=10",
            "train.micro_batch_size=4",
            "data.train=[{path: a, proportion: 0.7}, {path: b, proportion: 0.7}]",
            "model.decoder.num_heads=3",
        ],
    )
    no_fp16 = Capabilities("cpu", bf16=True, fp16=False, name="AVX2-only test CPU")  # injected: any machine
    with patch("training.config.checks.precision_problems", lambda p: precision_problems(p, no_fp16)):
        with pytest.raises(UserError) as e:
            cfg.validate(world_size=4, check_data=False)
    msg = str(e.value)
    assert "not divisible by micro_batch_size x DP = 4 x 2" in msg
    assert "zero_stage=3 with parallel.tp=2" in msg
    assert "train.precision=fp16" in msg and "precision=auto" in msg  # refused fp16: says how to proceed
    assert "proportions sum to 1.4" in msg
    assert "num_heads=3" in msg


def test_print_config_round_trips(tmp_path, capsys):
    from training.__main__ import main

    assert main(["--config", str(CONFIGS / "debug.yaml"), "train.steps=5", "--print-config"]) == 0
    out = capsys.readouterr().out
    (tmp_path / "resolved.yaml").write_text(out)
    a = load_config(CONFIGS / "debug.yaml", ["train.steps=5"])
    b = load_config(tmp_path / "resolved.yaml")
    assert b.train.steps == 5 and a.hash() == b.hash()
    assert config_io.flatten(a.to_dict())["model.decoder.hidden_size"] == 64


def test_bad_config_exits_2_before_any_process_group(tmp_path, capsys):
    from training.__main__ import main

    assert main(["--config", str(CONFIGS / "debug.yaml"), "train.global_batch_size=33"]) == 2
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_data_checks(tiny_data, tmp_path):
    ov = config_overrides(tiny_data, tmp_path / "run")
    cfg = load_config(CONFIGS / "debug.yaml", ov)
    assert (
        cfg.model.vocab_size
        == json.loads((tiny_data / "tokenizer" / "tokenizer.json").read_text())["vocab_size"]
    )
    cfg.validate(2)  # the fixture data fits

    # shards built with another tokenizer, missing shards, small vocab, image size mismatch
    other = tmp_path / "other"
    shutil.copytree(tiny_data / "pairs-val", other)
    stats = json.loads((other / "stats.json").read_text())
    stats["tokenizer"]["sha256"] = "0" * 64
    (other / "stats.json").write_text(json.dumps(stats))
    bad = load_config(
        CONFIGS / "debug.yaml",
        ov
        + [
            f"data.val.0.path={other}",
            "data.train.1.path=/nonexistent/x",
            "model.vocab_size=20",
            "model.image_size=64",
            "model.patch_size=8",
        ],
    )
    with pytest.raises(UserError) as e:
        bad.validate(2)
    msg = str(e.value)
    assert "another tokenizer" in msg and str(other) in msg
    assert "/nonexistent/x" in msg and "data_prep" in msg
    assert "model.vocab_size=20 is smaller than the tokenizer" in msg
    assert "images of 32 px, the model uses 64" in msg and "--image-size 64" in msg


def test_lr_schedule():
    f = [lr_factor(s, 10, 110, "linear", 0.1) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1 + 0.9 / 100) and all(a >= b for a, b in zip(f[10:], f[11:]))
    c = [lr_factor(s, 0, 100, "cosine", 0.0) for s in range(101)]
    assert c[0] == 1.0 and c[50] == pytest.approx(0.5) and c[100] == pytest.approx(0.0)


def test_zero0_without_fp16_and_tp_over_world_are_reported_once():
    cfg = load_config(None, ["parallel.tp=4", "train.zero_stage=0", "train.precision=fp32"])
    with pytest.raises(UserError) as e:
        cfg.validate(world_size=2, check_data=False)
    msg = str(e.value)
    assert "train.zero_stage=0 with precision=fp32" in msg and "use train.zero_stage=1" in msg
    assert msg.count("larger than the world size") == 1
