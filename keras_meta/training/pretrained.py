"""Pretrained presets as runs: their model, their run config, and their test.

`keras_meta.presets` finds and verifies a preset's files and `MAML.from_preset` rebuilds its
model; this module adds what needs the training package: the preset's `MAMLTrainConfig`
(how images are preprocessed, which inner steps it is tested with) and its test on held-out
tasks, run the same way as a trainer's final test.
"""

from keras_meta.maml import MAML
from keras_meta.presets import Preset
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.evaluation import TaskEvaluator, summarize
from keras_meta.training.task_families import build_task_family


def load_pretrained(preset):
    """`(maml, config, info)`: the preset's `MAML`, its run's `MAMLTrainConfig` and its
    verified `Preset` record."""
    info = Preset.load(preset)
    return MAML.from_preset(info.directory), MAMLTrainConfig.from_dict(info.train_config), info


def test_tasks_metrics(maml, config, num_tasks=None, **data):
    """`(summary, per_task)` of `maml` on the first `num_tasks` test tasks of `config`'s
    task family (default: `config.num_eval_tasks`), after each of `config.eval_inner_steps`.

    Args:
        data: where the data is on this machine (`omniglot_source_dir=`, `data_dir=`).
    """
    config = config.replace(num_eval_tasks=num_tasks or config.num_eval_tasks, **data)
    task = build_task_family(config)
    evaluator = TaskEvaluator(maml, classification=task.classification)
    per_task = evaluator.per_task_metrics(task.test_dataset(), config.num_eval_tasks,
                                          list(config.eval_inner_steps))
    return summarize(per_task), per_task


# Not a pytest test, whatever its name says.
test_tasks_metrics.__test__ = False
