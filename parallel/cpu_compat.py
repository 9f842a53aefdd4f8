"""Every CPU path for the parts of megatron-core / DeepSpeed that assume a GPU (one place, on purpose).

Applied by `apply_cpu_compat()` (called from `parallel.init_distributed`) only when no GPU is present:

- Megatron's RNG tracker (`get_cuda_rng_tracker()`) runs on the CPU generator, so `tracker.fork()`
  gives each TP rank its own dropout stream exactly as on GPU, and Megatron's activation
  checkpoint (`tensor_parallel.checkpoint`) saves and replays the CPU RNG + tracker states.
- the RNG tracker seeded on the CPU generator (`parallel.seeding.seed_rng_streams` calls it).
- Megatron's global memory buffer allocates on the CPU instead of `torch.cuda.current_device()`.
- DeepSpeed's shared-memory comm op is not JIT-built (~37 s on every fresh machine; gloo needs none).
- `allow_fp16_on_cpu()` (tests only, opt-in): lets DeepSpeed accept fp16 on a CPU without native fp16.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import torch

log = logging.getLogger(__name__)

_APPLIED = False

MODEL_PARALLEL_RNG = "model-parallel-rng"
DATA_PARALLEL_RNG = "data-parallel-rng"
EXPERT_PARALLEL_RNG = "expert-parallel-rng"


def has_gpu() -> bool:
    return torch.cuda.is_available()


def _cpu_get_rng_state(device=None, clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device=None, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _make_cpu_tracker_class():
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    class CpuRNGStatesTracker(CudaRNGStatesTracker):
        """Megatron's RNG states tracker, with named states of the CPU generator."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise RuntimeError(f"RNG seed {seed} already exists")
            if name in self.states_:
                raise RuntimeError(f"RNG state {name} already exists")
            self.seeds_.add(seed)
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name=MODEL_PARALLEL_RNG):
            if name not in self.states_:
                raise RuntimeError(f"RNG state {name} is not added")
            orig = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig = self.states_[orig_name]
                torch.set_rng_state(orig)
                self._current_state_name = orig_name

    return CpuRNGStatesTracker


def install_cpu_rng_tracker() -> None:
    """Make Megatron's RNG tracker and checkpoint RNG save/restore use the CPU generator."""
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = _cpu_get_rng_state
    mrandom._set_cuda_rng_state = _cpu_set_rng_state
    if not isinstance(mrandom._CUDA_RNG_STATE_TRACKER, _tracker_class()):
        mrandom._CUDA_RNG_STATE_TRACKER = _tracker_class()()
        mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


_TRACKER_CLS = None


def _tracker_class():
    global _TRACKER_CLS
    if _TRACKER_CLS is None:
        _TRACKER_CLS = _make_cpu_tracker_class()
    return _TRACKER_CLS


def install_cpu_global_memory_buffer() -> None:
    """Megatron's global memory buffer (sequence-parallel gathers) on the CPU."""
    from megatron.core import parallel_state
    from megatron.core.utils import GlobalMemoryBuffer

    class CpuGlobalMemoryBuffer(GlobalMemoryBuffer):
        def get_tensor(self, tensor_shape, dtype, name, mem_alloc_context=None):
            import math

            n = math.prod(tensor_shape)
            buf = self.buffer.get((name, dtype))
            if buf is None or buf.numel() < n:
                self.buffer[(name, dtype)] = buf = torch.empty(n, dtype=dtype, requires_grad=False)
            return buf[0:n].view(*tensor_shape)

    parallel_state._GLOBAL_MEMORY_BUFFER = CpuGlobalMemoryBuffer()


def skip_deepspeed_shm_build() -> None:
    """Skip DeepSpeed's shared-memory comm op JIT build (~37 s per fresh machine; unused with gloo)."""
    import deepspeed.comm.torch  # noqa: F401 - make sure the module is loaded before patching it

    mod = sys.modules["deepspeed.comm.torch"]
    mod.build_shm_op = lambda: None


def allow_fp16_on_cpu() -> None:
    """Let DeepSpeed run fp16 (+ loss scaling) on a CPU without native fp16 (for tests of that path)."""
    if has_gpu():
        return
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    CPU_Accelerator.is_fp16_supported = lambda self: True  # supported_dtypes() follows this


def apply_cpu_compat() -> bool:
    """Apply every CPU path when no GPU is present (idempotent). Returns True when applied."""
    global _APPLIED
    if has_gpu():
        return False
    if not _APPLIED:
        install_cpu_rng_tracker()
        try:
            skip_deepspeed_shm_build()
        except ImportError:  # deepspeed not installed: nothing to skip
            pass
        _APPLIED = True
        log.debug("CPU compatibility paths applied (RNG tracker, memory buffer, DeepSpeed shm op)")
    return True
