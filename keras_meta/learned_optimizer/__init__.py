"""Learned optimizers (Andrychowicz et al. 2016), in four separate pieces:

* what is learned: `LSTMOptimizer`, a coordinatewise LSTM update rule (a Keras layer, phi),
  or `MLPOptimizer`, a per-parameter MLP over momentum and second-moment accumulators; both
  save as `.keras` files (`save_rule`, `load_rule`);
* what it is applied to: optimizee families (`optimizees`), and any Keras model through
  `LearnedOptimizer`, a Keras optimizer;
* how the meta-gradient is computed: truncated backpropagation (`truncated_bptt`);
* who applies it: `MetaOptimizerTrainer`, configured by `MetaOptimizerConfig`.
"""

from keras_meta.learned_optimizer import optimizees
from keras_meta.learned_optimizer.learned_optimizer import LearnedOptimizer
from keras_meta.learned_optimizer.lstm_optimizer import LSTMOptimizer
from keras_meta.learned_optimizer.meta_optimizer_config import MetaOptimizerConfig
from keras_meta.learned_optimizer.meta_trainer import MetaOptimizerTrainer
from keras_meta.learned_optimizer.mlp_optimizer import MLPOptimizer
from keras_meta.learned_optimizer.rule_files import load_rule, read_rule_metadata, save_rule
from keras_meta.learned_optimizer.truncated_bptt import (optimizee_trajectory,
                                                         segment_meta_gradients,
                                                         unrolled_meta_loss)

__all__ = ["LSTMOptimizer", "LearnedOptimizer", "MLPOptimizer", "MetaOptimizerConfig",
           "MetaOptimizerTrainer", "load_rule", "optimizee_trajectory", "optimizees",
           "read_rule_metadata", "save_rule", "segment_meta_gradients", "unrolled_meta_loss"]
