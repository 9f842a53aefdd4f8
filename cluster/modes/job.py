"""What every training mode takes (config, overrides, --dry-run, ...) and checks before it starts anything."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from common.errors import UserError

from ..commands import TrainingJob
from ..options import option


@dataclass
class JobArgs:
    """The training job and how to check it: the last arguments of local, deepspeed and slurm."""

    config: str = option(help="training config YAML, e.g. configs/debug.yaml", positional=True)
    overrides: list[str] = option(
        help="dotted overrides, e.g. train.steps=100 parallel.tp=2", default_factory=list, positional=True
    )
    dry_run: bool = option(False, "validate and print the commands/script; run nothing")
    skip_data_check: bool = option(
        False, "do not open the data/tokenizer folders while validating (they are not on this machine)"
    )
    module: str = option(
        "training", "Python module each rank runs with `--config FILE [overrides]` (default: %(default)s)"
    )

    @property
    def job(self) -> TrainingJob:
        return TrainingJob(self.config, self.overrides, module=self.module)

    def check_config(self, world_size: int):
        """Load + validate the training config for `world_size` ranks (same checks as `python -m training`);
        returns the resolved config."""
        try:
            from training.config import load_config
        except ImportError as e:  # pragma: no cover - only in a broken checkout
            raise UserError(f"cannot import the training package to validate {self.config}: {e}") from None
        cfg = load_config(self.config, self.overrides)
        cfg.validate(world_size, check_data=not self.skip_data_check)
        return cfg


def python() -> str:
    """The interpreter the ranks run: $METALM_PYTHON (set by launch.sh), else this one."""
    return os.environ.get("METALM_PYTHON") or sys.executable
