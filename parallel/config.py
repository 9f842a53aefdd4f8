"""Parallel layout settings: the one sub-config the process-group code reads."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class ParallelConfig:
    """How ranks are grouped. Data parallel size is derived: world_size // tp."""

    tp: int = 1  # tensor-parallel size (ranks that split each layer's heads / FFN / vocab)
    backend: str = "auto"  # torch.distributed backend: auto = nccl if CUDA is available else gloo
    timeout_minutes: float = 10  # process-group timeout for collectives (a hung rank fails after this)
    sequence_parallel: bool = False  # Megatron sequence parallelism at tp>1 (refused for now: see checks)
    seed: int = 1234  # base seed: default RNG = seed + 100 * dp_rank, TP tracker = seed + 2718 + tp_rank (parallel/seeding.py)

    def problems(self, world_size: int | None = None) -> list[str]:
        """Every problem with these settings (each with its fix); empty when valid."""
        out: list[str] = []
        if not isinstance(self.tp, int) or self.tp < 1:
            out.append(f"parallel.tp={self.tp!r} must be a positive integer (e.g. parallel.tp=1)")
        elif world_size is not None:
            if self.tp > world_size:
                out.append(
                    f"parallel.tp={self.tp} is larger than the world size {world_size}: "
                    f"launch at least {self.tp} processes or lower parallel.tp"
                )
            elif world_size % self.tp != 0:
                out.append(
                    f"world size {world_size} is not divisible by parallel.tp={self.tp}: "
                    f"use a process count that is a multiple of {self.tp}"
                )
        if self.backend not in BACKENDS:
            out.append(f"parallel.backend={self.backend!r} is unknown: use one of {', '.join(BACKENDS)}")
        if not self.timeout_minutes or self.timeout_minutes <= 0:
            out.append(f"parallel.timeout_minutes={self.timeout_minutes!r} must be > 0 (e.g. 10)")
        return out

    def resolved_backend(self) -> str:
        """The backend to use on this machine."""
        if self.backend != "auto":
            return self.backend
        import torch

        return "nccl" if torch.cuda.is_available() else "gloo"
