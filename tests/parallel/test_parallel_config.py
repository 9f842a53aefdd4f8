from parallel.config import ParallelConfig


def test_problems():
    assert ParallelConfig().problems(1) == []
    assert ParallelConfig(tp=2).problems(4) == []
    text = "\n".join(ParallelConfig(tp=4, backend="mpi", timeout_minutes=0).problems(2))
    assert "parallel.tp=4 is larger than the world size 2" in text
    assert "parallel.backend='mpi' is unknown" in text
    assert "timeout_minutes" in text
    assert "not divisible by parallel.tp=2" in ParallelConfig(tp=2).problems(3)[0]
    assert ParallelConfig(tp=0).problems(None)
    assert ParallelConfig(backend="auto").resolved_backend() == "gloo"  # no GPU here
