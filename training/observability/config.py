"""The `profile:` section of the training config: a torch.profiler trace of a few steps, CUDA memory snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProfileConfig:
    enabled: bool = False  # trace steps start_step..start_step+steps-1 -> RUN_DIR/profile/ + MLflow
    start_step: int = 5  # first traced optimizer step (leave the first steps out: allocation, warm-up)
    steps: int = 3  # traced steps (each is a ProfilerStep#N span in the trace)
    ranks: list[int] = field(default_factory=lambda: [0])  # global ranks that trace (and snapshot memory)
    record_shapes: bool = False  # record operator input shapes
    profile_memory: bool = False  # record tensor allocations and frees
    with_stack: bool = False  # record source stacks of operators (large traces)
    memory_snapshot: bool = False  # CUDA only: allocator history, snapshots at window end, SIGUSR2, OOM

    def problems(self) -> list[str]:
        out = []
        if self.start_step < 1:
            out.append(f"profile.start_step={self.start_step} must be >= 1 (the first optimizer step is 1)")
        if self.steps < 1:
            out.append(f"profile.steps={self.steps} must be >= 1")
        if any(r < 0 for r in self.ranks):
            out.append(f"profile.ranks={self.ranks}: global ranks are >= 0")
        return out
