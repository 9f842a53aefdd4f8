"""The one seeding function: every random stream of a rank, from `parallel.seed` and its place.

    seed_rng_streams(seed, tp_rank, dp_rank)     # called once by `init_distributed`

| stream | seed | shared by | drawn by |
|---|---|---|---|
| default torch generator, Python `random`, NumPy | `seed + 100 * dp_rank` | the ranks of one TP group | hidden/embedding dropout (replicated activations), anything outside TP regions |
| Megatron tracker `model-parallel-rng` | `seed + 2718 + tp_rank` | ranks with the same TP rank (across DP) | dropout inside TP regions (attention probabilities of the local heads) |
| Megatron tracker `data-parallel-rng` | `seed + 100 * dp_rank` | the ranks of one TP group | Megatron code that forks it |

This is Megatron's tracker convention (model-parallel stream `seed + 2718 + tp_rank`), with the default
stream offset per DP rank (`+ 100 * dp_rank`, as Megatron offsets per pipeline stage) so DP replicas
draw different dropout masks for their different samples. Weight init does not use these streams:
`model.init_seed` makes the initial weights identical for every TP/DP layout. Data order and span
sampling use `data.shuffle_seed` (streaming's own deterministic shuffle), also independent of these.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from parallel import cpu_compat

MODEL_PARALLEL_OFFSET = 2718
DP_STRIDE = 100


def default_seed(seed: int, dp_rank: int) -> int:
    return seed + DP_STRIDE * dp_rank


def tensor_parallel_seed(seed: int, tp_rank: int) -> int:
    return seed + MODEL_PARALLEL_OFFSET + tp_rank


def seed_rng_streams(seed: int, tp_rank: int, dp_rank: int) -> None:
    """Seed every stream of this rank (table above), on GPU through Megatron's own CUDA seeding."""
    from megatron.core.tensor_parallel import random as mrandom

    base = default_seed(seed, dp_rank)
    random.seed(base)
    np.random.seed(base % 2**32)
    torch.manual_seed(base)
    if cpu_compat.has_gpu():
        # Megatron: model-parallel stream = seed + 2718 + tp_rank, as below; then our DP offset for the
        # default CUDA generator (Megatron seeds it with the plain seed)
        mrandom.model_parallel_cuda_manual_seed(
            seed, tp_rank=tp_rank, ep_rank=0, etp_rank=0, force_reset_rng=True
        )
        torch.cuda.manual_seed(base)
        return
    cpu_compat.install_cpu_rng_tracker()
    tracker = mrandom.get_cuda_rng_tracker()
    tracker.reset()
    tracker.add(cpu_compat.DATA_PARALLEL_RNG, base)
    tracker.add(cpu_compat.MODEL_PARALLEL_RNG, tensor_parallel_seed(seed, tp_rank))
    tracker.add(cpu_compat.EXPERT_PARALLEL_RNG, seed + 1024 + tp_rank)
