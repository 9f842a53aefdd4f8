"""SLURM node lists -> DeepSpeed hostfiles.

    expand_nodelist("node[01-04,07],gpu-a[1-2]")
      -> ["node01", "node02", "node03", "node04", "node07", "gpu-a1", "gpu-a2"]
    write_hostfile(path, hosts, slots=8)          # one "host slots=8" line per host

Standalone (e.g. inside an sbatch script):

    python -m cluster.hostfile --nodelist "$SLURM_JOB_NODELIST" --slots 8 --output hostfile
    python -m cluster.hostfile --expand "n[1-2]"   # one host per line, like `scontrol show hostnames`

The grammar is SLURM's hostlist syntax: comma-separated items at the top level; each item is
text with any number of bracket groups (`rack[1-2]-node[01-03]` is their cartesian product);
inside brackets, comma-separated numbers or `lo-hi` ranges; zero padding follows the width of
the number as written (`[08-11]` -> 08 09 10 11).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.exit_codes import OK, USER_ERROR

MAX_HOSTS = 1_000_000  # refuse absurd ranges (a typo like [1-10000000]) instead of allocating them

_HOSTFILE_LINE = re.compile(r"^(?P<host>[^\s#]+)(?:\s+slots\s*=\s*(?P<slots>\d+))?\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets; reject unbalanced brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise UserError(f"node list {text!r}: nested '[' at position {i}; use one level of brackets")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise UserError(f"node list {text!r}: ']' without '[' at position {i}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise UserError(f"node list {text!r}: '[' is never closed")
    items.append(text[start:])
    return items


def _expand_range_set(spec: str, whole: str) -> list[str]:
    """`01-04,07` -> ["01", "02", "03", "04", "07"] (zero padding kept)."""
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UserError(
                f"node list {whole!r}: bad range {part!r} inside brackets; expected numbers or lo-hi, e.g. [01-04,07]"
            )
        lo_s, hi_s = m.group(1), m.group(2)
        if hi_s is None:
            out.append(lo_s)
            continue
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise UserError(f"node list {whole!r}: range {part!r} goes backwards; write it as {hi_s}-{lo_s}")
        if hi - lo + 1 > MAX_HOSTS:
            raise UserError(f"node list {whole!r}: range {part!r} has more than {MAX_HOSTS} hosts")
        width = len(lo_s) if lo_s.startswith("0") else 0
        out.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return out


def _expand_item(item: str, whole: str) -> list[str]:
    pieces = re.split(r"(\[[^\]]*\])", item)
    choices: list[list[str]] = []
    for piece in pieces:
        if piece.startswith("[") and piece.endswith("]"):
            if piece == "[]":
                raise UserError(f"node list {whole!r}: empty brackets in {item!r}")
            choices.append(_expand_range_set(piece[1:-1], whole))
        elif piece:
            choices.append([piece])
    hosts = ["".join(combo) for combo in itertools.product(*choices)]
    if len(hosts) > MAX_HOSTS:
        raise UserError(f"node list {whole!r}: {item!r} expands to more than {MAX_HOSTS} hosts")
    return hosts


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list (`node[01-04,07],gpu-a[1-2]`) into host names, in order, without duplicates."""
    text = nodelist.strip()
    if not text:
        raise UserError("node list is empty; pass e.g. --nodelist 'node[01-04]' or run inside a SLURM job")
    if any(ch.isspace() for ch in text):
        raise UserError(f"node list {nodelist!r} contains whitespace; SLURM node lists are comma-separated")
    hosts: list[str] = []
    for item in _split_top_level(text):
        if not item:
            raise UserError(
                f"node list {nodelist!r} has an empty item (two commas in a row or a trailing comma)"
            )
        hosts.extend(_expand_item(item, nodelist))
    return list(dict.fromkeys(hosts))


@dataclass(frozen=True)
class HostSlots:
    host: str  # host name as ssh/pdsh/srun will reach it
    slots: int  # processes (usually GPUs) to start on that host


def format_hostfile(hosts: Iterable[str], slots: int) -> str:
    """DeepSpeed hostfile text: one `host slots=N` line per host."""
    if slots < 1:
        raise UserError(f"slots per host must be >= 1, got {slots}")
    lines = [f"{h} slots={slots}" for h in hosts]
    if not lines:
        raise UserError("no hosts to write into the hostfile")
    return "\n".join(lines) + "\n"


def write_hostfile(path: str | os.PathLike, hosts: Iterable[str], slots: int) -> Path:
    """Write a DeepSpeed hostfile (atomically) and return its path."""
    path = Path(path)
    text = format_hostfile(hosts, slots)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def read_hostfile(path: str | os.PathLike) -> list[HostSlots]:
    """Parse a DeepSpeed hostfile; every problem is reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"hostfile {str(path)!r} does not exist; write one with `python -m cluster.hostfile`")
    entries: list[HostSlots] = []
    problems: list[str] = []
    seen: set[str] = set()
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _HOSTFILE_LINE.match(line)
        if not m or m.group("slots") is None:
            problems.append(f"hostfile {path}:{n}: {raw.strip()!r} is not `HOST slots=N`")
            continue
        host, slots = m.group("host"), int(m.group("slots"))
        if slots < 1:
            problems.append(f"hostfile {path}:{n}: slots must be >= 1")
        if host in seen:
            problems.append(f"hostfile {path}:{n}: host {host!r} is listed twice")
        seen.add(host)
        entries.append(HostSlots(host, slots))
    if not entries and not problems:
        problems.append(f"hostfile {path} lists no hosts")
    if problems:
        raise UserError(problems)
    return entries


def _default_slots() -> int:
    """GPUs per node as SLURM reports them, else 1."""
    for var in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = os.environ.get(var, "")
        m = re.search(r"(\d+)$", value)  # SLURM_GPUS_PER_NODE may read "a100:4"
        if m:
            return int(m.group(1))
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.hostfile",
        description="Write a DeepSpeed hostfile from a SLURM node list (default: $SLURM_JOB_NODELIST).",
    )
    parser.add_argument(
        "--nodelist",
        default=os.environ.get("SLURM_JOB_NODELIST", ""),
        help="SLURM node list, e.g. 'node[01-04,07],gpu-a[1-2]' (default: $SLURM_JOB_NODELIST)",
    )
    parser.add_argument(
        "--slots", type=int, default=None, help="processes per host (default: $SLURM_GPUS_ON_NODE, else 1)"
    )
    parser.add_argument("--output", "-o", default="-", help="hostfile path, '-' for stdout (default)")
    parser.add_argument(
        "--expand", metavar="NODELIST", help="only print the expanded host names, one per line"
    )
    args = parser.parse_args(argv)
    try:
        if args.expand is not None:
            sys.stdout.write("\n".join(expand_nodelist(args.expand)) + "\n")
            return OK
        hosts = expand_nodelist(args.nodelist)
        slots = args.slots if args.slots is not None else _default_slots()
        if args.output == "-":
            sys.stdout.write(format_hostfile(hosts, slots))
        else:
            write_hostfile(args.output, hosts, slots)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    return OK


if __name__ == "__main__":
    sys.exit(main())
