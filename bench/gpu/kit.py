"""The GPU validation kit's driver: runs the stages, each in its own process with its own time limit, and
writes DIR/results.json and DIR/results.md after every stage (a run cut off midway still reports).

    python bench/gpu/kit.py --out DIR [--cpu] [--stages env,peak,train,resume,loader] [--budget S]
    python bench/gpu/kit.py --list --stages train          # the plan, nothing run

Normally started by `bash bench/gpu/run.sh`, which first installs the carried wheels on a GPU machine.
Standard library only: a broken torch/DeepSpeed install is reported by the stages, not by the driver.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES_PY = Path(__file__).resolve().parent / "stages.py"
KIT_VERSION = 1

STAGES = ["env", "peak", "data", "train", "resume", "loader"]
NEEDS_DATA = {"train", "resume", "loader"}
TRAIN_VARIANTS = ["selective", "full", "none"]
# Run order of the units: the default setup, the resume check and the loader before the two other
# checkpointing modes, so that a run cut short by its budget still has the figures that matter most. On a
# GPU, DeepSpeed's FusedAdam JIT build (nvcc, ~1 min) runs in the background from the start (`prebuild`),
# overlapping the peak and data stages; env, which loads FusedAdam, comes after them.
UNIT_ORDER = [
    "peak",
    "data",
    "env",
    "train:selective",
    "resume:first",
    "resume:second",
    "loader",
    "train:full",
    "train:none",
]
# seconds per unit: (gpu, cpu). The GPU figures fit the 8-minute plan (README); the CPU ones are generous
# because the dry run shares 2 cores with whatever else runs (it takes ~1.5 min on a quiet machine).
LIMITS = {
    "data": (150, 240),
    "env": (300, 240),  # GPU: includes DeepSpeed's FusedAdam JIT build (nvcc), ~1 min on a fresh machine
    "peak": (90, 180),
    "train": (200, 300),
    "resume": (200, 300),
    "loader": (120, 240),
}
MIN_START_S = 15  # a unit is not started with less time left than this


def units_of(stage: str) -> list[str]:
    return [u for u in UNIT_ORDER if u.split(":")[0] == stage]


def plan(stages_arg: str | None) -> list[str]:
    """The stages to run, in run order; `data` joins when a stage needs the synthetic shards."""
    wanted = STAGES if not stages_arg else [s.strip() for s in stages_arg.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise SystemExit(f"kit: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    chosen = set(wanted)
    if chosen & NEEDS_DATA:
        chosen.add("data")
    return [s for s in STAGES if s in chosen]


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


# ---- the report -----------------------------------------------------------------------------------


def count(n) -> str:
    n = n or 0
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


class Report:
    """results.json (rewritten atomically after every unit) and results.md (rows appended as they come)."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.json_path, self.md_path = out / "results.json", out / "results.md"
        self.data = {"kit": meta, "stages": {}, "mfu": None, "mfu_datasheet": None, "summary": {}}
        mode = (
            "GPU run"
            if meta["mode"] == "gpu"
            else "CPU dry run (`--cpu`: debug preset, gloo; GPU-only probes n/a)"
        )
        lines = [
            "# MetaLM GPU validation kit: results",
            "",
            f"- {mode}; started {meta['started']}; host `{meta['host']}`; commit `{meta['git_commit']}`",
            f"- command: `{meta['command']}`; stages: {', '.join(meta['plan'])}",
            "- MFU = model FLOPs (training/flops.py: 6 x params x tokens + attention, recompute not counted) "
            "per second / peak; `measured` = this run's matmul peak, `datasheet` = vendor dense bf16",
            "",
            "| stage | measure | value | notes |",
            "|---|---|---|---|",
        ]
        self.md_path.write_text("\n".join(lines) + "\n")
        self.save()

    def save(self) -> None:
        tmp = self.json_path.with_name(".results.json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.json_path)

    def rows(self, rows: list[tuple]) -> None:
        with self.md_path.open("a") as f:
            for r in rows:
                f.write("| " + " | ".join(cell(x) for x in r) + " |\n")
            f.flush()

    def note(self, text: str) -> None:
        with self.md_path.open("a") as f:
            f.write(text + "\n")


def unit_rows(unit: str, r: dict) -> list[tuple]:
    """Markdown rows of one unit's result (the table the run writes as it goes)."""
    status = r.get("status")
    if status != "ok":
        label = {"timeout": "TIMED OUT", "skipped": "SKIPPED"}.get(status, "FAILED")
        return [(unit, label, r.get("error", ""), f"after {fmt(r.get('seconds_total'), 0)} s; see run.log")]
    s = r.get("seconds_total")
    if unit == "data":
        return [
            (
                "data",
                "synthetic shards (python -m data_prep synth/tokenizer/pairs/text)",
                f"{r['pairs_samples']} image-text @ {r['image_size']} px, {r['text_samples']} text x {r['text_seq_len']} tokens",
                f"vocab {r['vocab_size']}; {r['seconds']}",
            )
        ]
    if unit == "env":
        rows = []
        g = r.get("gpu")
        if g:
            smi = r.get("nvidia_smi") or {}
            rows.append(
                (
                    "env",
                    "GPU",
                    f"{g['name']} x{g['count']}, cc {g['capability']}, {g['multiprocessors']} SMs, {g['memory_gib']} GiB",
                    f"driver {smi.get('driver_version', '?')}; datasheet bf16 {fmt(g['datasheet_bf16_tflops'], 0)} TFLOP/s",
                )
            )
        else:
            rows.append(
                ("env", "device", f"CPU only: {r.get('cpu')} ({r.get('cpu_count')} cores)", "no CUDA")
            )
        nccl = (r.get("nccl") or {}).get("value", "-")
        rows.append(
            (
                "env",
                "torch / CUDA / cuDNN / NCCL",
                f"{r['torch']} / {r.get('torch_cuda')} / {r.get('cudnn')} / {nccl}",
                f"Python {r['python']}",
            )
        )
        pk = r.get("packages") or {}
        rows.append(
            (
                "env",
                "stack",
                f"deepspeed {pk.get('deepspeed')}, megatron-core {pk.get('megatron-core')}, "
                f"mosaicml-streaming {pk.get('mosaicml-streaming')}",
                f"accelerator {((r.get('deepspeed') or {}).get('value') or {}).get('accelerator', (r.get('deepspeed') or {}).get('error'))}; "
                f"numpy {pk.get('numpy')}, transformers {pk.get('transformers')}",
            )
        )
        flags = {k: v.get("value") for k, v in (r.get("sdp_enabled") or {}).items()}
        rows.append(("env", "SDPA backends enabled", ", ".join(f"{k} {v}" for k, v in flags.items()), ""))
        sd = (r.get("sdpa") or {}).get("value") or {}
        for backend, cases in (sd.get("runs_under_backend") or {}).items():
            ok = [c for c, v in cases.items() if v == "ok"]
            bad = {c: v for c, v in cases.items() if v != "ok"}
            if len(set(bad.values())) == 1 and len(bad) > 1:
                why = f"{', '.join(bad)}: {next(iter(bad.values()))[:100]}"
            else:
                why = "; ".join(f"{c}: {v[:80]}" for c, v in bad.items())
            rows.append(
                (
                    "env",
                    f"SDPA probe: {backend}",
                    f"runs {len(ok)}/{len(cases)} cases" + (f" ({', '.join(ok)})" if ok and bad else ""),
                    why,
                )
            )
        picks = sd.get("default_picks") or {}
        if picks:
            rows.append(
                (
                    "env",
                    "SDPA default pick per case",
                    "; ".join(f"{c}: {', '.join(v) or '?'}" for c, v in picks.items()),
                    "aten ops seen by the profiler",
                )
            )
        fa = r.get("fused_adam") or {}
        na = str(fa.get("error", "")).startswith("not applicable")
        rows.append(
            (
                "env",
                "DeepSpeed FusedAdam",
                "loads" if fa.get("ok") else ("n/a" if na else "NOT AVAILABLE"),
                f"{fa.get('value')}" if fa.get("ok") else fa.get("error", ""),
            )
        )
        apex = r.get("apex") or {}
        rows.append(
            (
                "env",
                "apex fused LayerNorm / Adam",
                ", ".join(f"{k}: {'yes' if v == 'importable' else 'no'}" for k, v in apex.items()),
                r.get("model_layer_norm", ""),
            )
        )
        return rows
    if unit == "peak":
        rows = []
        for key in ("bf16_tflops", "fp32_tflops", "model_gemms_tflops"):
            for label, v in (r.get(key) or {}).items():
                rows.append(("peak", f"matmul {label}", f"{fmt(v, 3 if v < 10 else 1)} TFLOP/s", ""))
        rows.append(
            (
                "peak",
                "peak used for MFU",
                ", ".join(f"{k} {fmt(v, 3)} TFLOP/s" for k, v in (r.get("peak_tflops") or {}).items()),
                f"{r.get('device')}; datasheet bf16 {fmt(r.get('datasheet_bf16_tflops'), 0)}; {r.get('method')}",
            )
        )
        return rows
    if unit.startswith("train:"):
        v = unit.split(":")[1]
        mem = r.get("memory") or {}
        rows = []
        for kind, x in (r.get("runs") or {}).items():
            if "error" in x:
                rows.append((f"train ({v})", kind, "FAILED", x["error"]))
                continue
            rows.append(
                (
                    f"train ({v})",
                    f"{kind}: {x['micro_batch']} x {x['seq_len']} tokens"
                    + (f", {x['images_per_batch']} images" if x["images_per_batch"] else ""),
                    f"MFU {fmt(x['mfu'], 3)} measured / {fmt(x['mfu_datasheet'], 3)} datasheet; "
                    f"{x['tokens_per_s']:,.0f} tokens/s, {x['samples_per_s']:,.2f} samples/s",
                    f"{x['step_time_s']:.3f} s/step (median of {x['timed_steps']}), "
                    f"{x['model_tflops_per_s']:.3g} model TFLOP/s, peak mem {fmt(x.get('peak_memory_gib'))} GiB, "
                    f"losses {x['losses']}",
                )
            )
        if "peak_gib" in mem:
            memory = (
                f"peak {mem['peak_gib']} GiB allocated ({mem.get('peak_reserved_gib')} reserved); after the engine "
                f"build {mem.get('after_build_gib')} GiB (model states)"
            )
        else:
            memory = f"process peak RSS {mem.get('process_peak_rss_gib')} GiB (CPU: includes libraries)"
        rows.append(
            (
                f"train ({v})",
                "memory vs rank_memory() formula",
                memory,
                f"formula model states {mem.get('formula_model_states_gib')} GiB {mem.get('formula_parts_gib')}; "
                f"peak/formula {fmt(mem.get('peak_over_formula'))}, after build/formula "
                f"{fmt(mem.get('after_build_over_formula'))}",
            )
        )
        kern = (r.get("kernels") or {}).get("value") or {}
        fam = kern.get("families") or {}
        rows.append(
            (
                f"train ({v})",
                "setup",
                f"{r.get('precision')}, ZeRO-{r.get('zero_stage')}, {count(r.get('params', {}).get('total'))} params "
                f"({count(r.get('params', {}).get('trainable'))} trainable); engine build {r.get('build_s')} s",
                f"optimizer {r.get('optimizer')}; batches: {(r.get('batches') or {}).get('source', '')}",
            )
        )
        if fam:
            rows.append(
                (
                    f"train ({v})",
                    "kernels in one profiled step",
                    "; ".join(f"{k}: {', '.join(list(x)[:4]) or '-'}" for k, x in fam.items()),
                    "top: "
                    + ", ".join(
                        f"{t['name'][:50]} {t['share']:.0%}" if t["share"] else t["name"][:50]
                        for t in kern.get("top", [])[:5]
                    ),
                )
            )
        return rows
    if unit == "resume:first":
        return [
            (
                "resume",
                f"straight run, {len(r.get('losses', []))} steps, checkpoint at step 2",
                f"losses {[round(v, 5) for _, v in r.get('losses', [])]}",
                f"{r.get('precision')}, {r.get('optimizer')}; checkpoint {r.get('checkpoint_bytes', 0) / 2**30:.2f} GiB; "
                f"{fmt(s, 0)} s",
            )
        ]
    if unit == "resume:second":
        det = r.get("determinism") or []
        return [
            (
                "resume",
                "resumed from step 2 in a new process: same losses",
                ("PASSED, bit-exact" if r.get("bit_exact") else f"PASSED within rel {r.get('tolerance_rel')}")
                if r.get("passed")
                else "FAILED",
                f"{r.get('compared')}; max |diff| {r.get('max_abs_diff')}; "
                + (
                    f"{'; '.join(det)}; ops without a deterministic kernel: {r.get('nondeterministic_ops_warned') or 'none'}"
                    if det
                    else "CPU"
                ),
            )
        ]
    if unit == "loader":
        rows = []
        for kind, runs in (r.get("loader") or {}).items():
            need = (r.get("consumed") or {}).get(kind) or {}
            for x in runs:
                ratio = ((r.get("ratio_loader_over_consumed") or {}).get(kind) or {}).get(
                    f"{x['workers']} workers"
                )
                rows.append(
                    (
                        "loader",
                        f"{kind}: {x['workers']} worker(s), micro {x['micro_batch']}",
                        f"{x['samples_per_s']:,.1f} samples/s vs {fmt(need.get('samples_per_s'))} consumed -> ratio {fmt(ratio)}",
                        f"{need.get('source', 'no training figure')}; first batch {x['first_batch_s']} s; "
                        f"{r.get('cpu_count')} CPU cores, config num_workers {r.get('config_num_workers')}",
                    )
                )
        return rows
    return [(unit, "done", "", "")]


def safe_rows(unit: str, r: dict) -> list[tuple]:
    """The rows of a unit; a figure the renderer did not expect costs a row, never the run."""
    try:
        return unit_rows(unit, r)
    except Exception as e:  # noqa: BLE001 - the figures are in results.json either way
        return [
            (
                unit,
                r.get("status", "?"),
                f"(table row not rendered: {type(e).__name__}: {e})",
                "see results.json",
            )
        ]


def merge(report: Report, unit: str, r: dict) -> None:
    stage, _, part = unit.partition(":")
    stages = report.data["stages"]
    if part:
        entry = stages.setdefault(stage, {"status": "running"})
        entry[part] = r
        parts = units_of(stage)
        done = [entry.get(p.split(":")[1], {}).get("status") for p in parts]
        if all(x == "ok" for x in done):
            entry["status"] = "ok"
        elif any(x in ("failed", "timeout") for x in done):
            entry["status"] = "failed"
        elif "skipped" in done:
            entry["status"] = "incomplete"
        if stage == "resume" and part == "second":
            entry["passed"] = bool(r.get("passed"))
            entry["bit_exact"] = r.get("bit_exact")
    else:
        stages[stage] = r
    # results.json lists the stages in their documented order, whatever order they ran in
    report.data["stages"] = {k: stages[k] for k in STAGES if k in stages}
    headline(report)
    report.save()


def headline(report: Report) -> None:
    """Top-level figures: MFU of the default setup (selective checkpointing, text batches of 2048 tokens)."""
    sel = ((report.data["stages"].get("train") or {}).get("selective") or {}).get("runs") or {}
    text = sel.get("text") or {}
    report.data["mfu"] = text.get("mfu")
    report.data["mfu_datasheet"] = text.get("mfu_datasheet")
    summary = {}
    for v in TRAIN_VARIANTS:
        runs = ((report.data["stages"].get("train") or {}).get(v) or {}).get("runs") or {}
        for kind, x in runs.items():
            if "mfu" in x:
                summary[f"{v}/{kind}"] = {
                    "mfu": x["mfu"],
                    "mfu_datasheet": x["mfu_datasheet"],
                    "tokens_per_s": x["tokens_per_s"],
                    "samples_per_s": x["samples_per_s"],
                    "peak_memory_gib": x.get("peak_memory_gib"),
                }
    report.data["summary"] = summary


def summary_lines(data: dict) -> list[str]:
    """A few lines with the figures that matter, printed after the table."""
    st = data["stages"]
    out = ["== GPU kit summary =="]
    for name, r in st.items():
        status = r.get("status")
        if name == "env" and status == "ok":
            g = r.get("gpu") or {}
            fa = r.get("fused_adam") or {}
            out.append(
                f"env: {g.get('name', 'CPU')}, torch {r.get('torch')}, "
                f"FusedAdam {'loads' if fa.get('ok') else 'no'}"
            )
        elif name == "peak" and status == "ok":
            p = r.get("peak_tflops") or {}
            out.append(
                f"peak: {', '.join(f'{k} {fmt(v, 3)}' for k, v in p.items())} TFLOP/s measured "
                f"(datasheet bf16 {fmt(r.get('datasheet_bf16_tflops'), 0)})"
            )
        elif name == "train":
            for v in TRAIN_VARIANTS:
                x = r.get(v)
                if not x:
                    continue
                if x.get("status") != "ok":
                    out.append(f"train {v}: {x.get('status')}: {x.get('error', '')}"[:300])
                    continue
                parts = [
                    f"{kind} MFU {fmt(k.get('mfu'), 3)} ({fmt(k.get('mfu_datasheet'), 3)} datasheet), "
                    f"{k.get('tokens_per_s', 0):,.0f} tok/s, {fmt(k.get('peak_memory_gib'))} GiB"
                    if "error" not in k
                    else f"{kind} FAILED {k['error'][:80]}"
                    for kind, k in (x.get("runs") or {}).items()
                ]
                out.append(f"train {v}: " + "; ".join(parts))
        elif name == "resume":
            second = r.get("second") or {}
            verdict = (
                ("PASSED bit-exact" if second.get("bit_exact") else "PASSED within tolerance")
                if r.get("passed")
                else f"{r.get('status')}: {second.get('error') or (r.get('first') or {}).get('error', '')}"
            )
            out.append(f"resume: {verdict}"[:300])
        elif name == "loader" and status == "ok":
            ratios = r.get("ratio_loader_over_consumed") or {}
            out.append(f"loader/consumed: {ratios}")
        elif status != "ok":
            out.append(f"{name}: {status}: {r.get('error', '')}"[:300])
    out.append(f"mfu {fmt(data.get('mfu'), 3)} (selective, text; measured peak)")
    return out


# ---- running a unit -------------------------------------------------------------------------------


def run_unit(unit: str, args, work: Path, report: Report, log, deadline: float) -> dict:
    stage = unit.split(":")[0]
    limit = LIMITS[stage][0 if args.mode == "gpu" else 1]
    if args.unit_limit:
        limit = min(limit, args.unit_limit)
    left = deadline - time.monotonic()
    if left < MIN_START_S:
        return {"unit": unit, "status": "skipped", "error": f"out of the time budget ({args.budget:.0f} s)"}
    limit = min(limit, left)
    ctx = {
        "mode": args.mode,
        "work": str(work),
        "steps": args.steps,
        "results": report.data["stages"],
    }
    ctx_path = work / "ctx.json"
    ctx_path.write_text(json.dumps(ctx, default=str))
    result = work / f"result-{unit.replace(':', '-')}.json"
    result.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.mode == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if stage == "resume":
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS determinism (read at CUDA init)
    header = f"\n===== {unit} ({now_utc()}, limit {limit:.0f} s) =====\n"
    log.write(header)
    log.flush()
    print(header.strip(), flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(STAGES_PY), unit, "--ctx", str(ctx_path), "--result", str(result)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its DataLoader workers and compilers go with it on a timeout
    )
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    try:  # whatever the stage left behind (loader workers of a crashed stage, a compiler) goes too
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    seconds = round(time.monotonic() - t0, 1)
    try:
        r = json.loads(result.read_text())
    except (OSError, ValueError):
        r = {"unit": unit}
    r["seconds_total"] = seconds
    if timed_out and r.get("status") != "ok":
        r["status"] = "timeout"
        r["error"] = f"stopped after its time limit of {limit:.0f} s" + (
            f" (last figures kept; it was at: {r.get('error')})" if r.get("error") else ""
        )
    elif r.get("status") in (None, "running"):
        r["status"] = "failed"
        r["error"] = f"the stage process exited {proc.returncode} without a result: {tail(log.name)}"
    return r


def start_prebuild(args, work: Path) -> subprocess.Popen:
    """The background FusedAdam JIT build (see UNIT_ORDER); its output goes to WORK/prebuild.log."""
    ctx_path = work / "ctx-prebuild.json"
    ctx_path.write_text(json.dumps({"mode": args.mode, "work": str(work), "steps": None, "results": {}}))
    with (work / "prebuild.log").open("w") as f:
        return subprocess.Popen(
            [
                sys.executable,
                str(STAGES_PY),
                "prebuild",
                "--ctx",
                str(ctx_path),
                "--result",
                str(work / "result-prebuild.json"),
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def tail(path: str, n: int = 3) -> str:
    try:
        lines = [x for x in Path(path).read_text(errors="replace").splitlines() if x.strip()]
        return " / ".join(lines[-n:])[-600:]
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="folder for results.json, results.md and run.log")
    ap.add_argument(
        "--cpu", action="store_true", help="the CPU dry run: debug preset, gloo, 2-3 steps per stage"
    )
    ap.add_argument(
        "--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)} (default: all)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="timed training steps per measurement (gpu 5, cpu 2)"
    )
    ap.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole run (gpu 450, cpu 1200)"
    )
    ap.add_argument(
        "--work", default=None, help="scratch folder for shards and checkpoints (default: a temp dir)"
    )
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    ap.add_argument("--unit-limit", type=float, default=None, help="cap every stage process at S seconds")
    ap.add_argument("--list", action="store_true", help="print the plan (stages and units) as JSON and exit")
    args = ap.parse_args(argv)
    args.mode = "cpu" if args.cpu else "gpu"
    stages = plan(args.stages)
    units = [u for u in UNIT_ORDER if u.split(":")[0] in stages]
    if args.budget is None:
        args.budget = 450.0 if args.mode == "gpu" else 1200.0
    if args.list:
        print(json.dumps({"mode": args.mode, "stages": stages, "units": units, "budget_s": args.budget}))
        return 0
    if not args.out:
        ap.error("--out DIR is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="metalm-gpu-kit-"))
    work.mkdir(parents=True, exist_ok=True)
    meta = {
        "version": KIT_VERSION,
        "mode": args.mode,
        "started": now_utc(),
        "host": platform.node(),
        "git_commit": git_commit(),
        "command": " ".join(["bench/gpu/run.sh"] + (argv if argv is not None else sys.argv[1:])),
        "plan": stages,
        "units": units,
        "budget_s": args.budget,
        "work": str(work),
    }
    # JIT-built ops (DeepSpeed's FusedAdam) go to the scratch folder: a build this kit stops at a time limit
    # cannot leave a stale lock in ~/.cache/torch_extensions for later jobs, and the build time is a fresh one
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(work / "torch_extensions"))
    meta["torch_extensions_dir"] = os.environ["TORCH_EXTENSIONS_DIR"]
    report = Report(out, meta)
    deadline = time.monotonic() + args.budget
    t_start = time.monotonic()
    prebuild = (
        start_prebuild(args, work)
        if args.mode == "gpu" and {"env", "train", "resume"} & set(stages)
        else None
    )
    with (out / "run.log").open("a") as log:
        for unit in units:
            r = run_unit(unit, args, work, report, log, deadline)
            merge(report, unit, r)
            report.rows(safe_rows(unit, r))
            print(f"{unit}: {r.get('status')} in {r.get('seconds_total', 0):.0f} s", flush=True)
        if prebuild is not None:
            stop_group(prebuild)  # normally long finished: env waited for it
            text = (work / "prebuild.log").read_text(errors="replace")[-4000:]
            log.write(f"\n===== prebuild (background FusedAdam JIT build) =====\n{text}\n")
    report.data["kit"]["seconds"] = round(time.monotonic() - t_start, 1)
    report.data["kit"]["finished"] = now_utc()
    report.save()
    failed = [s for s, r in report.data["stages"].items() if r.get("status") != "ok"]
    report.note(
        f"\nFinished {report.data['kit']['finished']} in {report.data['kit']['seconds']:.0f} s; "
        f"MFU (selective, text) {fmt(report.data['mfu'], 3)} of the measured peak, "
        f"{fmt(report.data['mfu_datasheet'], 3)} of the datasheet; "
        + (f"stages not ok: {', '.join(failed)}" if failed else "every stage ok")
        + "."
    )
    if not args.keep_work and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print((out / "results.md").read_text(), flush=True)
    try:
        print("\n".join(summary_lines(report.data)), flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"(summary not rendered: {e})", flush=True)  # last: what a clipped console tail keeps
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
