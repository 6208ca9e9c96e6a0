"""keras-meta: meta-learning for TensorFlow 2 / Keras 3.

Importing keras_meta selects the TensorFlow backend of Keras when none is chosen, and refuses
any other backend with a clear message.

The subpackages, from the bottom up (a layer imports only layers below it; see the README's
"Architecture"):

    core          fast-weights calls, the pure inner loop, update rules, task batching
    data          Episode, episode samplers, image sources, sinusoid, Omniglot
    presets       the pretrained presets' files: find, read, verify (sha256)
    layers        batch norm with exact second derivatives
    backbones     conv4, mlp
    maml          MetaObjective, the MAML Keras model, maml_loss
    learned_optimizer   LSTMOptimizer, MLPOptimizer, LearnedOptimizer, rule files, truncated
                        BPTT, MetaOptimizerTrainer
    training      run configs and presets, task families, loops, evaluation, distribute
    export        SavedModels for TF Serving, the serving client
    cli           the command-line programs
"""

from keras_meta._backend import ensure_tensorflow_backend as _ensure_tensorflow_backend

_ensure_tensorflow_backend()

# Full module paths, never names from this file: nothing below imports `keras_meta` itself.
from keras_meta import backbones, core, data, layers, learned_optimizer, maml, presets  # noqa: E402
from keras_meta.core.functional import functional_call, get_params, get_state  # noqa: E402
from keras_meta.core.inner_loop import adapt_params  # noqa: E402
from keras_meta.core.update_rules import SGDRule  # noqa: E402
from keras_meta.data.episode import Episode  # noqa: E402
from keras_meta.learned_optimizer import (  # noqa: E402
    LearnedOptimizer,
    LSTMOptimizer,
    MetaOptimizerConfig,
    MetaOptimizerTrainer,
    MLPOptimizer,
    load_rule,
    optimizee_trajectory,
    save_rule,
    unrolled_meta_loss,
)
from keras_meta.maml import MAML, MetaObjective, maml_loss  # noqa: E402

# `keras_meta.models` was the backbones' first name; notebooks and saved code use it.
models = backbones

__version__ = "0.2.0"

__all__ = [
    "Episode",
    "LSTMOptimizer",
    "LearnedOptimizer",
    "MAML",
    "MLPOptimizer",
    "MetaObjective",
    "MetaOptimizerConfig",
    "MetaOptimizerTrainer",
    "SGDRule",
    "adapt_params",
    "backbones",
    "core",
    "data",
    "functional_call",
    "get_params",
    "get_state",
    "layers",
    "learned_optimizer",
    "load_rule",
    "maml",
    "maml_loss",
    "models",
    "optimizee_trajectory",
    "save_rule",
    "unrolled_meta_loss",
]
