"""Tasks layer: cold-start splits into per-user support/query tasks, packed for vectorised use."""

from metarec.tasks.splits import SCENARIOS, ColdStartSplit, SplitConfig, make_split
from metarec.tasks.taskset import TaskBatch, TaskSet

__all__ = ["SCENARIOS", "ColdStartSplit", "SplitConfig", "make_split", "TaskBatch", "TaskSet"]
