"""One task per train mode (simclr/tasks/<train_mode>.py, see base.py for the
seams), the generic step (trainer.py), evaluation (evaluator.py), the loop's
actions (actions.py) and a whole run (runner.py)."""

from simclr.tasks.distill import DistillTask
from simclr.tasks.finetune import FinetuneTask
from simclr.tasks.linear_eval import LinearEvalTask
from simclr.tasks.pretrain import PretrainTask

# --train_mode -> its task.
TASKS = {task.name: task for task in (PretrainTask, FinetuneTask,
                                      LinearEvalTask, DistillTask)}
