import os
import time

import pytest

from data_prep.workers import WorkerDied, ordered_map


def _square_slowly_first(x):
    if x == 0:
        time.sleep(0.3)  # the first result is the slowest: order must still hold
    return x * x


def _die_on_three(x):
    if x == 3:
        os._exit(1)
    return x


def test_results_come_back_in_input_order():
    assert list(ordered_map(_square_slowly_first, range(20), workers=2, window_per_worker=2)) == [
        x * x for x in range(20)
    ]
    assert list(ordered_map(_square_slowly_first, range(5), workers=1)) == [0, 1, 4, 9, 16]


def test_a_dead_worker_is_reported_not_waited_for():
    t0 = time.time()
    with pytest.raises(WorkerDied, match="--workers 1"):
        list(ordered_map(_die_on_three, range(10), workers=2))
    assert time.time() - t0 < 30
