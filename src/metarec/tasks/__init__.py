"""Tasks layer: cold-start splits into per-user support/query tasks, packed for vectorised use."""

from metarec.tasks.config import SCENARIOS, SplitConfig
from metarec.tasks.history import HISTORY_AS_PRIOR, HISTORY_MAX_NEW_SUPPORT, add_user_history
from metarec.tasks.negatives import sample_negatives, with_negatives
from metarec.tasks.protocols import make_split
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskBatch, TaskSet

__all__ = ["SCENARIOS", "ColdStartSplit", "SplitConfig", "make_split", "TaskBatch", "TaskSet",
           "HISTORY_AS_PRIOR", "HISTORY_MAX_NEW_SUPPORT", "add_user_history",
           "sample_negatives", "with_negatives"]
