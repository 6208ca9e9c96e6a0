"""MAML: the meta-objective as pure functions (`MetaObjective`), the `MAML` Keras model that
meta-trains with it, and `maml_loss`, the smallest contract of exact MAML."""

from keras_meta.maml.maml_loss import maml_loss
from keras_meta.maml.inner_rates import LR_MODES
from keras_meta.maml.maml_model import MAML, TASK_BATCHING_MODES
from keras_meta.maml.multi_step_loss import MultiStepLossSchedule
from keras_meta.maml.objective import MetaObjective

__all__ = ["LR_MODES", "MAML", "MetaObjective", "MultiStepLossSchedule", "TASK_BATCHING_MODES", "maml_loss"]
