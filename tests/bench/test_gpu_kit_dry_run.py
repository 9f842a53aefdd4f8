"""The one-shot GPU validation kit (bench/gpu/): its plan and arguments, a stage failure that does not stop
the run, and (slow) the whole CPU dry run: every stage, an MFU figure, an exact resume, a Markdown table."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.paths import REPO

RUN = REPO / "bench" / "gpu" / "run.sh"
STAGES = ["env", "peak", "data", "train", "resume", "loader"]


def run_kit(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), **env)
    return subprocess.run(
        ["bash", str(RUN), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def plan(*args: str) -> dict:
    r = run_kit("--list", *args, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def table_rows(md: str) -> list[list[str]]:
    """The cells of every table line (a backslash-escaped pipe inside a cell is not a border)."""
    return [
        [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        for line in md.splitlines()
        if line.startswith("|")
    ]


def test_stage_list_and_arguments():
    p = plan("--stages", "env,peak")
    # units in run order: env (which loads FusedAdam) after peak, while the GPU's JIT build runs beside
    assert p == {"mode": "gpu", "stages": ["env", "peak"], "units": ["peak", "env"], "budget_s": 450.0}
    # the stages that read shards bring the data stage in; order is the run order whatever was asked
    p = plan("--cpu", "--stages", "loader,train")
    assert p["mode"] == "cpu" and p["stages"] == ["data", "train", "loader"]
    # the default setup's figures first (a run cut short by its budget keeps them), the other modes last
    assert p["units"] == ["data", "train:selective", "loader", "train:full", "train:none"]
    p = plan("--cpu")
    assert p["stages"] == STAGES and "resume:first" in p["units"] and "resume:second" in p["units"]
    assert plan("--cpu", "--budget", "90")["budget_s"] == 90.0

    bad = run_kit("--list", "--stages", "env,warp", timeout=30)
    assert bad.returncode != 0 and "unknown stage(s) warp" in bad.stderr and "env, peak" in bad.stderr
    no_out = run_kit("--cpu", "--stages", "peak", timeout=30)
    assert no_out.returncode == 2 and "--out" in no_out.stderr


def test_a_failing_stage_is_recorded_and_the_next_one_runs(tmp_path):
    r = run_kit(
        "--cpu", "--stages", "env,peak", "--out", str(tmp_path), timeout=600, KIT_TEST_FAIL_UNIT="peak"
    )
    assert r.returncode == 1, r.stdout + r.stderr  # not every stage ok
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["kit"]["plan"] == ["env", "peak"] and res["kit"]["mode"] == "cpu"
    assert list(res["stages"]) == ["env", "peak"]  # documented order; peak ran first
    env, peak = res["stages"]["env"], res["stages"]["peak"]
    assert (
        peak["status"] == "failed"
        and "injected failure" in peak["error"]
        and "Traceback" in peak["traceback"]
    )
    assert env["status"] == "ok" and env["torch"] and env["sdpa"]["ok"]
    rows = table_rows((tmp_path / "results.md").read_text())
    assert rows[0] == ["stage", "measure", "value", "notes"] and set(rows[1]) == {"---"}
    assert ["peak", "FAILED"] == rows[2][:2] and "injected failure" in rows[2][2]
    assert any(r[0] == "env" and r[1] == "torch / CUDA / cuDNN / NCCL" for r in rows)
    assert (tmp_path / "run.log").is_file()


def test_a_hanging_stage_is_stopped_at_its_limit_and_keeps_its_figures(tmp_path):
    r = run_kit(
        "--cpu", "--stages", "peak", "--unit-limit", "5", "--out", str(tmp_path), KIT_TEST_HANG_UNIT="peak"
    )
    assert r.returncode == 1, r.stdout + r.stderr
    peak = json.loads((tmp_path / "results.json").read_text())["stages"]["peak"]
    assert peak["status"] == "timeout" and "time limit of 5 s" in peak["error"]
    assert peak["figure_before_the_hang"] == 42 and peak["seconds_total"] < 30
    rows = table_rows((tmp_path / "results.md").read_text())
    assert rows[2][:2] == ["peak", "TIMED OUT"]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~1.5 min on a quiet 2-core machine; several times that when the cores are shared
def test_cpu_dry_run_end_to_end(tmp_path):
    """`bash bench/gpu/run.sh --cpu`: debug preset, gloo, 2 timed steps per measurement (~1.5 min on 2 cores)."""
    out = tmp_path / "out"
    r = run_kit("--cpu", "--out", str(out), "--work", str(tmp_path / "work"), timeout=1500)
    res = json.loads((out / "results.json").read_text())
    status = {k: (v.get("status"), v.get("error")) for k, v in res["stages"].items()}
    assert status == {k: ("ok", None) for k in STAGES}, (status, r.stdout[-3000:])
    assert r.returncode == 0 and list(res["stages"]) == STAGES
    assert isinstance(res["mfu"], float) and 0 < res["mfu"] < 1

    train = res["stages"]["train"]
    for variant in ("selective", "full", "none"):
        runs = train[variant]["runs"]
        assert set(runs) == {"text", "image_text"}, variant
        assert all(x["losses_finite"] and x["tokens_per_s"] > 0 and x["mfu"] > 0 for x in runs.values())
        assert train[variant]["memory"]["formula_model_states_gib"] > 0
    # the same batches and init: the checkpointing mode does not change the maths
    assert train["full"]["runs"]["text"]["losses"] == train["none"]["runs"]["text"]["losses"]

    resume = res["stages"]["resume"]
    assert resume["passed"] and resume["bit_exact"]  # CPU: bit-exact
    assert [c["step"] for c in resume["second"]["compared"]] == [3, 4]

    loader = res["stages"]["loader"]
    assert set(loader["ratio_loader_over_consumed"]) == {"text", "image_text"}

    rows = table_rows((out / "results.md").read_text())
    assert rows[0] == ["stage", "measure", "value", "notes"] and set(rows[1]) == {"---"}
    assert all(len(r) == 4 for r in rows)
    stages_in_table = {r[0].split(" ")[0] for r in rows[2:]}
    assert stages_in_table == {"env", "peak", "data", "train", "resume", "loader"}
    assert any(r[0] == "resume" and r[2] == "PASSED, bit-exact" for r in rows)


def kit_modules():
    """bench/gpu/gpukit_shared.py and gpukit_train.py (bench/gpu is a script folder, not a package)."""
    import sys

    here = str(REPO / "bench" / "gpu")
    if here not in sys.path:
        sys.path.insert(0, here)
    import gpukit_shared
    import gpukit_train

    return gpukit_shared, gpukit_train


def test_gpu_mode_configs_pass_validation(tmp_path):
    """The GPU run's configs (metalm-1.3b, TP=1, bf16, each checkpointing mode; the reduced resume model) are
    accepted by the config validation here, so a GPU lease is not spent on a config error."""
    from tests.training.shards import write_pairs, write_text, write_tokenizer

    shared, train = kit_modules()
    gpu = shared.MODES["gpu"]
    paths = shared.data_paths({"work": str(tmp_path)})
    tok = write_tokenizer(paths["tokenizer"])
    write_pairs(paths["pairs"], tok, 4, image_size=gpu["image_size"])
    write_text(paths["text"], tok, 2, seq_len=gpu["text_seq_len"])
    ctx = {"mode": "gpu", "work": str(tmp_path), "steps": None, "results": {}}

    def problems(overrides: list[str]):
        from training.config import load_config

        cfg = load_config(REPO / gpu["config"], overrides)
        # the precision check asks this machine's device (a CPU may refuse bf16): not the GPU's answer
        return cfg, [p for p in cfg.problems(1) if not p.startswith("train.precision=")]

    streams = [(paths["pairs"], 0.5), (paths["text"], 0.5)]
    for variant in ("selective", "full", "none"):
        ov = shared.kit_overrides(ctx, tmp_path / "run", streams, gpu["micro"])
        cfg, probs = problems(ov + [f"model.activation_checkpointing={variant}"])
        assert probs == [], probs
        m, t = cfg.model, cfg.train
        assert (m.preset, m.vocab_size, m.decoder.num_layers, m.decoder.max_seq_len) == (
            "metalm-1.3b",
            64000,
            24,
            2048,
        )
        assert m.activation_checkpointing == variant and cfg.parallel.tp == 1
        assert (t.precision, t.zero_stage, t.micro_batch_size, cfg.grad_accum_steps(1)) == ("bf16", 1, 8, 1)
        assert not cfg.tracking.enabled and cfg.optim.fused == "auto"
    cfg, probs = problems(train.resume_overrides(ctx, tmp_path / "resume"))
    assert probs == [], probs
    assert cfg.model.decoder.num_layers == 2 and cfg.model.decoder.hidden_size == 2048
    assert (cfg.train.steps, cfg.checkpoint.interval_steps) == (train.RESUME_STEPS, train.RESUME_SAVE_AT)


def load_kit_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_kit_driver", REPO / "bench" / "gpu" / "kit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def gpu_shaped_results() -> dict:
    """Figures shaped as the stages write them on a GPU (made up: CI never has one) for the renderer."""
    kind = {
        "micro_batch": 8,
        "seq_len": 2048,
        "images_per_batch": 0,
        "timed_steps": 5,
        "step_time_s": 0.41,
        "tokens_per_s": 40000.0,
        "samples_per_s": 19.5,
        "model_tflops_per_s": 360.0,
        "losses": [11.1, 11.0],
        "losses_finite": True,
        "mfu": 0.45,
        "mfu_datasheet": 0.364,
        "peak_memory_gib": 61.2,
    }
    train = {
        "status": "ok",
        "precision": "bf16",
        "zero_stage": 1,
        "params": {"total": 2_015_000_000, "trainable": 1_380_000_000},
        "build_s": 31.0,
        "optimizer": "deepspeed.ops.adam.fused_adam.FusedAdam inside DeepSpeedZeroOptimizer",
        "batches": {"source": "the Trainer's own loader"},
        "runs": {
            "text": kind,
            "image_text": {**kind, "images_per_batch": 8},
            "image_text_large_batch": {"error": "OutOfMemoryError: CUDA out of memory"},
        },
        "memory": {
            "after_build_gib": 27.1,
            "peak_gib": 61.2,
            "peak_reserved_gib": 70.0,
            "formula_model_states_gib": 21.8,
            "formula_parts_gib": {},
            "peak_over_formula": 2.81,
            "after_build_over_formula": 1.24,
        },
        "kernels": {
            "ok": True,
            "value": {
                "families": {"attention": {"aten::_flash_attention_forward": 48}},
                "top": [{"name": "sm90_xmma_gemm_bf16", "share": 0.41}],
            },
        },
    }
    return {
        "env": {
            "status": "ok",
            "torch": "2.11.0+cu130",
            "torch_cuda": "13.0",
            "cudnn": 91300,
            "python": "3.12.3",
            "nccl": {"ok": True, "value": "2.27.7"},
            "gpu": {
                "name": "NVIDIA H200",
                "count": 1,
                "capability": "9.0",
                "multiprocessors": 132,
                "memory_gib": 139.8,
                "datasheet_bf16_tflops": 989.0,
            },
            "nvidia_smi": {"driver_version": "580.159.04"},
            "packages": {"deepspeed": "0.19.8"},
            "deepspeed": {"ok": True, "value": {"accelerator": "cuda"}},
            "sdp_enabled": {"flash": {"ok": True, "value": True}},
            "sdpa": {
                "ok": True,
                "value": {
                    "runs_under_backend": {
                        "flash": {"decoder_causal": "ok", "encoder_mask": "RuntimeError: No available kernel"}
                    },
                    "default_picks": {"decoder_causal": ["aten::_scaled_dot_product_flash_attention"]},
                },
            },
            "fused_adam": {"ok": True, "value": {"seconds": 48.2, "step_changed_weights": True}},
            "apex": {"apex": "ModuleNotFoundError: No module named 'apex'"},
        },
        "peak": {
            "status": "ok",
            "bf16_tflops": {"bf16 8192^3": 788.1},
            "fp32_tflops": {"fp32 8192^3 (no TF32)": 51.0},
            "peak_tflops": {"bf16": 788.1, "fp32": 51.0},
            "datasheet_bf16_tflops": 989.0,
            "device": "NVIDIA H200",
            "method": "torch.mm",
        },
        "train:selective": train,
        "resume:second": {
            "status": "ok",
            "passed": True,
            "bit_exact": False,
            "tolerance_rel": 1e-4,
            "compared": [],
            "max_abs_diff": 1e-6,
            "determinism": ["torch.use_deterministic_algorithms(True)"],
            "nondeterministic_ops_warned": ["index_add_cuda_"],
        },
        "loader": {
            "status": "ok",
            "loader": {
                "text": [{"workers": 4, "micro_batch": 8, "samples_per_s": 900.0, "first_batch_s": 1.2}]
            },
            "consumed": {"text": {"samples_per_s": 19.5, "source": "train stage"}},
            "ratio_loader_over_consumed": {"text": {"4 workers": 46.15}},
            "cpu_count": 16,
            "config_num_workers": 4,
        },
    }


def test_report_renders_gpu_shaped_results(tmp_path):
    """The driver's Markdown rows and summary for GPU figures (CI never produces them) render, and a result
    the renderer does not expect costs one row, never the run."""
    kit = load_kit_module()
    results = gpu_shaped_results()
    report = kit.Report(
        tmp_path,
        {
            "mode": "gpu",
            "started": "now",
            "host": "h",
            "git_commit": "c",
            "command": "x",
            "plan": list(results),
        },
    )
    for unit, r in results.items():
        kit.merge(report, unit, r)
        report.rows(kit.safe_rows(unit, r))
    report.rows(kit.safe_rows("train:full", {"status": "ok", "runs": {"text": {"unexpected": 1}}}))
    rows = table_rows((tmp_path / "results.md").read_text())
    assert all(len(r) == 4 for r in rows)
    text = "\n".join(" | ".join(r) for r in rows)
    assert "NVIDIA H200 x1, cc 9.0, 132 SMs" in text and "driver 580.159.04" in text
    assert "MFU 0.450 measured / 0.364 datasheet" in text and "2.015B params (1.380B trainable)" in text
    assert "image_text_large_batch | FAILED | OutOfMemoryError" in text
    assert "PASSED within rel 0.0001" in text and "index_add_cuda_" in text
    assert "table row not rendered" in text  # the unexpected result
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["mfu"] == 0.45 and data["mfu_datasheet"] == 0.364
    summary = "\n".join(kit.summary_lines(data))
    assert (
        "NVIDIA H200" in summary
        and "text MFU 0.450" in summary
        and "resume: PASSED within tolerance" in summary
    )
