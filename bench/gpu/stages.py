"""The stages of the GPU validation kit, one process each, started by `bench/gpu/kit.py`:

    python bench/gpu/stages.py UNIT --ctx WORK/ctx.json --result WORK/UNIT.json

UNIT: data | env | peak | train:selective | train:full | train:none | resume:first | resume:second | loader
(| prebuild, the background FusedAdam build). The stages live beside this file: gpukit_env.py (prebuild, env,
peak), gpukit_data.py (data, loader), gpukit_train.py (train, resume), gpukit_shared.py (modes, helpers).
A unit writes its figures to --result as it goes (a unit cut off by its time limit still reports what it
measured), and on an exception its error text and traceback. The context file holds the mode (gpu or cpu),
the work folder, the data paths and the results of the units before (peak FLOP/s for MFU, the training
samples/s for the loader, the first run's losses for the resume comparison).

Mode `gpu`: `metalm-1.3b` (configs/metalm-1.3b.yaml, model.vocab_size=64000 as the real model), TP=1, DP=1,
ZeRO-1, bf16, NCCL. Mode `cpu` (the dry run CI runs): `debug` (configs/debug.yaml), train.precision=auto,
gloo; same code path, tiny shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the gpukit_*.py modules beside this file (a script folder, not a package)
    sys.path.insert(0, str(HERE))

from gpukit_data import unit_data, unit_loader  # noqa: E402
from gpukit_env import unit_env, unit_peak, unit_prebuild  # noqa: E402
from gpukit_shared import Unit, first_line  # noqa: E402
from gpukit_train import unit_resume_first, unit_resume_second, unit_train  # noqa: E402

# ---- main -----------------------------------------------------------------------------------------

UNITS = {
    "data": unit_data,
    "env": unit_env,
    "peak": unit_peak,
    "train:selective": lambda ctx, res: unit_train(ctx, res, "selective"),
    "train:full": lambda ctx, res: unit_train(ctx, res, "full"),
    "train:none": lambda ctx, res: unit_train(ctx, res, "none"),
    "resume:first": unit_resume_first,
    "resume:second": unit_resume_second,
    "loader": unit_loader,
    "prebuild": unit_prebuild,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("unit", choices=list(UNITS))
    ap.add_argument("--ctx", required=True, help="context JSON written by kit.py")
    ap.add_argument("--result", required=True, help="where this unit writes its figures")
    args = ap.parse_args()
    ctx = json.loads(Path(args.ctx).read_text())
    res = Unit(Path(args.result), args.unit)
    if os.environ.get("KIT_TEST_HANG_UNIT") == args.unit:  # TEST HOOK: a stage that hangs after a figure
        res["figure_before_the_hang"] = 42
        time.sleep(3600)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("DeepSpeed", "deepspeed", "megatron", "streaming", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from common.process_setup import setup_process

    setup_process()
    t0 = time.perf_counter()
    code = 0
    try:
        if os.environ.get("KIT_TEST_FAIL_UNIT") == args.unit:  # TEST HOOK: a stage that fails
            raise RuntimeError(f"injected failure (KIT_TEST_FAIL_UNIT={args.unit})")
        UNITS[args.unit](ctx, res)
        res.data["status"] = "ok"
    except BaseException as e:  # noqa: BLE001 - recorded for the report, then the unit fails
        res.data["status"] = "failed"
        res.data["error"] = first_line(e)
        res.data["traceback"] = traceback.format_exc()[-4000:]
        traceback.print_exc()
        code = 1
    res.data["seconds_in_unit"] = round(time.perf_counter() - t0, 2)
    res.save()
    with contextlib.suppress(Exception):
        from parallel.groups import destroy_distributed

        destroy_distributed()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
