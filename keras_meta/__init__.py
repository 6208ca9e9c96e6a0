"""keras-meta: meta-learning for TensorFlow 2 / Keras 3.

Importing keras_meta selects the TensorFlow backend of Keras when none is chosen, and refuses
any other backend with a clear message.
"""

from keras_meta._backend import ensure_tensorflow_backend as _ensure_tensorflow_backend

_ensure_tensorflow_backend()

from keras_meta.data.episode import Episode  # noqa: E402
from keras_meta.functional import functional_call, get_params, get_state  # noqa: E402
from keras_meta.inner_loop import adapt  # noqa: E402
from keras_meta.learned_optimizer import LearnedOptimizer  # noqa: E402
from keras_meta.lstm_optimizer import LSTMOptimizer  # noqa: E402
from keras_meta.maml import MAML  # noqa: E402
from keras_meta.maml_loss import maml_loss  # noqa: E402
from keras_meta.meta_optimizer import (  # noqa: E402
    MetaOptimizerTrainer,
    optimizee_trajectory,
    unrolled_meta_loss,
)
from keras_meta.meta_optimizer_config import MetaOptimizerConfig  # noqa: E402
from keras_meta.update_rules import SGDRule  # noqa: E402
# Imported for their side effect too: registering MetaBatchNormalization lets a saved backbone
# deserialize after a plain `import keras_meta`.
from keras_meta import layers, models, tasks  # noqa: E402, F401

__version__ = "0.1.0"

__all__ = [
    "Episode",
    "LSTMOptimizer",
    "LearnedOptimizer",
    "MAML",
    "MetaOptimizerConfig",
    "MetaOptimizerTrainer",
    "SGDRule",
    "adapt",
    "functional_call",
    "get_params",
    "get_state",
    "maml_loss",
    "optimizee_trajectory",
    "unrolled_meta_loss",
]
