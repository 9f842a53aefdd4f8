from tests.distributed import run_ranks


def _run(rank, world):
    import torch

    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from parallel.consistency import batch_tp_mismatches, tp_mismatches
    from tests.batches import make_batch
    from training.model import model_config_from_preset

    topo = init_distributed(ParallelConfig(tp=2))
    cfg = model_config_from_preset("debug")
    same = batch_tp_mismatches(make_batch(cfg, "mixed", seed=0), topo)
    batch = make_batch(cfg, "mixed", seed=0)
    if rank == 1:
        batch.tokens = batch.tokens.flip(1)  # same values, other order
        batch.images = batch.images + 1e-3
    differ = batch_tp_mismatches(batch, topo)
    shapes = tp_mismatches({"x": torch.zeros(2, 3) if rank == 0 else torch.zeros(3, 2)}, topo)
    destroy_distributed()
    return same, differ, shapes


def test_tp_batch_mismatch_is_detected():
    for same, differ, shapes in run_ranks(2, _run):
        assert same == []
        assert differ == ["images", "tokens"]
        assert shapes == ["x"]
