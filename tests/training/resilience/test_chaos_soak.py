"""The chaos soak (bench/chaos_soak.py): its comparison and report logic on made-up histories (fast), and a
short real soak (slow): 2-rank debug MetaLM jobs hit by one fault of each restart kind plus NaN steps,
restarted after each, whose loss history must equal an uninterrupted run's bit for bit."""

from __future__ import annotations

import importlib.util
import random
import re
import struct
import subprocess
import sys

import pytest

from tests.paths import REPO

_spec = importlib.util.spec_from_file_location("chaos_soak", REPO / "bench" / "chaos_soak.py")
soak = importlib.util.module_from_spec(_spec)
sys.modules["chaos_soak"] = soak  # dataclasses look their module up
_spec.loader.exec_module(soak)

NAN = float("nan")
REPORT = re.compile(
    r"^chaos soak: faults=(\d+) \(kill=(\d+) usr1=(\d+) crash=(\d+) enospc=(\d+) stall=(\d+) nan=(\d+)\) "
    r"restarts=(\d+) steps=(\d+) redone=(\d+) lost_s=(-?\d+\.\d) checks=(OK|FAILED) history=(EQUAL|DIFFERS)$"
)


def _next_double(x: float) -> float:
    """x with its last mantissa bit flipped: the smallest possible change."""
    return struct.unpack("<d", struct.pack("<q", struct.unpack("<q", struct.pack("<d", x))[0] ^ 1))[0]


BASE = {1: [6.5], 2: [6.25], 3: [NAN], 4: [5.875], 5: [5.5]}


def test_equal_histories_pass_with_redone_steps_and_nan_steps():
    chaos = {1: [6.5], 2: [6.25, 6.25], 3: [NAN, NAN], 4: [5.875], 5: [5.5, 5.5, 5.5]}
    assert soak.compare_histories(BASE, chaos, [1, 2, 3, 4, 5]) is None


def test_one_bit_of_difference_is_reported_at_the_first_differing_step():
    chaos = {1: [6.5], 2: [6.25], 3: [NAN], 4: [_next_double(5.875)], 5: [5.0]}
    diff = soak.compare_histories(BASE, chaos, [1, 2, 3, 4, 5])
    assert diff is not None and "first differing step 4" in diff, diff


@pytest.mark.parametrize(
    "chaos, expect",
    [
        ({**BASE, 3: [5.0]}, "first differing step 3"),  # a NaN step that was not skipped
        ({**BASE, 2: [6.0, 6.25]}, "first differing step 2: run 1 of 2"),  # a redo that does not repeat
        ({k: v for k, v in BASE.items() if k != 5}, "step 5: missing"),
        ({**BASE, 6: [5.0]}, "step 6 was logged but the run has no such step"),
    ],
)
def test_each_kind_of_difference_fails(chaos, expect):
    diff = soak.compare_histories(BASE, chaos, [1, 2, 3, 4, 5])
    assert diff is not None and expect in diff, diff


def test_a_baseline_with_a_step_twice_is_not_a_valid_reference():
    diff = soak.compare_histories({**BASE, 1: [6.5, 6.5]}, BASE, [1, 2, 3, 4, 5])
    assert diff is not None and "the baseline logged 2 values" in diff


def test_report_line_format_and_verdict():
    counts = {"kill": 2, "usr1": 2, "crash": 0, "enospc": 1, "stall": 1, "nan": 1}
    line = soak.report_line(counts, 7, 60, 9, 41.23, True, True)
    assert line == (
        "chaos soak: faults=7 (kill=2 usr1=2 crash=0 enospc=1 stall=1 nan=1) restarts=7 steps=60 redone=9 "
        "lost_s=41.2 checks=OK history=EQUAL"
    )
    assert REPORT.match(line)
    bad = soak.report_line(counts, 7, 60, 9, 41.23, False, False)
    assert bad.endswith("checks=FAILED history=DIFFERS") and REPORT.match(bad)


def test_deck_deals_every_kind_once_per_round_and_takes_back_a_missed_one():
    deck = soak.Deck(list(soak.RESTART_KINDS), random.Random(3))
    dealt = []
    for _ in range(2 * len(soak.RESTART_KINDS)):
        kind = deck.next_kinds()[0]
        deck.take(kind)
        dealt.append(kind)
    n = len(soak.RESTART_KINDS)
    assert sorted(dealt[:n]) == sorted(dealt[n:]) == sorted(soak.RESTART_KINDS)
    first = deck.next_kinds()[0]
    deck.take(first)
    deck.put_back(first)
    assert deck.next_kinds()[0] == first


def test_faults_land_where_their_hooks_can_fire():
    rng = random.Random(0)
    for resumed in range(0, 64):
        for kind in soak.RESTART_KINDS:
            f = soak.draw_fault(kind, rng, resumed, 64, 4)
            if f is None:
                assert resumed >= 61 or (kind == "stall" and resumed > 62), (kind, resumed)
                continue
            if kind in ("crash", "enospc"):
                assert f.step % 4 == 0 and resumed < f.step <= min(64, resumed + 8)
            elif (
                kind == "stall"
            ):  # never the first step of a launch (the watchdog's first-step limit is 600 s)
                assert resumed + 2 <= f.step <= 64 and f.env() == {
                    "METALM_TEST_STALL_STEP": f"{f.step}:{f.rank}"
                }
            else:
                assert f.step is None or resumed < f.step <= 62
    nan = soak.draw_nan_steps(random.Random(1), 64, 3)
    assert len(nan) == 3 and all(b - a > 1 for a, b in zip(nan, nan[1:])) and nan[0] >= 2


def test_unknown_fault_kind_is_refused():
    with pytest.raises(SystemExit):
        soak.parse_args(["--kinds", "kill,meteor"])


@pytest.mark.slow
def test_short_soak_with_every_fault_kind_ends_equal_to_the_uninterrupted_run(tiny_data, tmp_path):
    """One fault of each restart kind (kill, usr1, crash, enospc, stall) + 2 NaN steps, seed 7: exit 0."""
    cmd = [sys.executable, "bench/chaos_soak.py", "--seed", "7", "--seconds", "60"]
    cmd += [
        "--min-faults",
        "5",
        "--max-faults",
        "5",
        "--data",
        str(tiny_data),
        "--work",
        str(tmp_path / "soak"),
    ]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=500)
    out = r.stdout.strip()
    last = out.splitlines()[-1] if out else ""
    m = REPORT.match(last)
    assert r.returncode == 0 and m, out[-4000:] + r.stderr[-3000:]
    faults, kill, usr1, crash, enospc, stall, nan, restarts, steps = map(int, m.groups()[:9])
    assert (kill, usr1, crash, enospc, stall, nan) == (1, 1, 1, 1, 1, 2), last
    assert faults == 7 and restarts == 5 and steps == 64, last
    assert m.group(12) == "OK" and m.group(13) == "EQUAL"
