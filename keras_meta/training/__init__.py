"""Training infrastructure: run configs and presets, task families, the meta-training loops,
evaluation, `tf.distribute` strategies and accelerators.

* `config` / `presets`: `MAMLTrainConfig` and the papers' settings.
* `task_families`: the model, loss, episode streams and serving inputs of each task family.
* `loop`: `train(config, model_dir)`, MAML meta-training with checkpoints and resume.
* `learned_optimizer_config` / `learned_optimizer_loop`: the same for the learned optimizer.
* `evaluation`: per-task metrics with 95% confidence intervals.
* `concrete_step` / `episode_pool` / `time_breakdown`: how the loop calls its compiled step,
  the episodes it hands a single-iteration step, and where its time goes.
* `distribute`: strategies by name; the meta-batch split across replicas and workers.
* `cluster` / `watchdog`: a multi-worker run's roles from `TF_CONFIG`, the cluster start,
  and the timeouts that keep a lost worker from hanging the others.
* `accelerator`: which accelerator a session has (`detect_accelerator`), TPU connection.
"""

from keras_meta.training.accelerator import connect_tpu, detect_accelerator
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.distribute import make_strategy
from keras_meta.training.evaluation import TaskEvaluator, mean_confidence_interval
from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig
from keras_meta.training.learned_optimizer_loop import train_learned_optimizer
from keras_meta.training.loop import train
from keras_meta.training.presets import PRESETS, get_preset
from keras_meta.training.task_families import build_maml, build_model, build_task_family

__all__ = ["LearnedOptimizerTrainConfig", "MAMLTrainConfig", "PRESETS", "TaskEvaluator",
           "build_maml", "build_model", "build_task_family", "connect_tpu",
           "detect_accelerator", "get_preset", "make_strategy", "mean_confidence_interval",
           "train", "train_learned_optimizer"]
