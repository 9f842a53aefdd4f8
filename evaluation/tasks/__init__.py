"""The task kinds of the harness, one file each: caption, vqa, multiple_choice, perplexity.

`make_task(task_config, harness_config)` builds one; `evaluation/tasks/base.py` says how a task is
loaded (inputs checked before any model is built), run (split over data-parallel ranks) and scored.
"""

from __future__ import annotations

from evaluation.harness_config import HarnessConfig, TaskConfig
from evaluation.tasks.base import Task
from evaluation.tasks.caption import CaptionTask
from evaluation.tasks.multiple_choice import MultipleChoiceTask
from evaluation.tasks.perplexity import PerplexityTask
from evaluation.tasks.vqa import VqaTask

TASK_CLASSES: dict[str, type[Task]] = {
    "caption": CaptionTask,
    "vqa": VqaTask,
    "multiple_choice": MultipleChoiceTask,
    "perplexity": PerplexityTask,
}


def make_task(cfg: TaskConfig, harness: HarnessConfig) -> Task:
    return TASK_CLASSES[cfg.kind](cfg, harness)


__all__ = ["TASK_CLASSES", "Task", "make_task"]
