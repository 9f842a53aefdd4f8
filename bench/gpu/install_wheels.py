"""Install the carried wheels (bench/gpu/wheels/requirements.txt) into a separate folder, offline.

    python3 bench/gpu/install_wheels.py --wheels bench/gpu/wheels --target /tmp/site [--python python3]

`pip install --no-index --no-deps --find-links WHEELS --target SITE` of the pins that this Python lacks:
deepspeed, megatron-core and mosaicml-streaming always (when not at the pinned version), a dependency only
when it is missing or older than the pin (a newer one already on the machine is kept, so nothing the
machine's torch relies on is shadowed by an older copy). Standard library only; never touches torch.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
import time
from pathlib import Path

MAIN = {"deepspeed", "megatron-core", "mosaicml-streaming"}
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*)$")


def version_key(v: str) -> tuple:
    parts = []
    for p in re.split(r"[.+-]", v):
        parts.append((0, int(p)) if p.isdigit() else (1, p))
    return tuple(parts)


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--python", default=sys.executable, help="the interpreter to install for (its pip)")
    args = ap.parse_args()
    wheels = Path(args.wheels)
    pins = [x.strip() for x in (wheels / "requirements.txt").read_text().splitlines() if x.strip()]
    todo = []
    print(f"install_wheels: {len(pins)} carried packages, for {args.python}")
    for pin in pins:
        name, _, want = pin.partition("==")
        if NEVER.match(name):
            print(f"  {name}: refused (the machine's own torch/CUDA stack is never replaced)")
            continue
        have = installed(name)
        if have == want:
            why, take = "already installed", False
        elif name in MAIN:
            why, take = f"installing (machine has {have or 'none'})", True
        elif have is None:
            why, take = "missing: installing", True
        elif version_key(have) < version_key(want):
            why, take = f"machine has older {have}: installing", True
        else:
            why, take = f"machine has {have} (>= pin): kept", False
        print(f"  {name}=={want}: {why}")
        if take:
            todo.append(pin)
    if not todo:
        return 0
    cmd = [args.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--disable-pip-version-check", "--find-links", str(wheels), "--target"]
    cmd += [args.target, *todo]
    t0 = time.perf_counter()
    code = subprocess.run(cmd).returncode
    print(f"install_wheels: pip exited {code} in {time.perf_counter() - t0:.1f} s -> {args.target}")
    return code


if __name__ == "__main__":
    sys.exit(main())
