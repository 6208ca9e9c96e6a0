"""Learned optimizers (Andrychowicz et al. 2016), in four separate pieces:

* what is learned: `LSTMOptimizer`, a coordinatewise LSTM update rule (a Keras layer, phi);
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
from keras_meta.learned_optimizer.truncated_bptt import (optimizee_trajectory,
                                                         segment_meta_gradients,
                                                         unrolled_meta_loss)

__all__ = ["LSTMOptimizer", "LearnedOptimizer", "MetaOptimizerConfig", "MetaOptimizerTrainer",
           "optimizee_trajectory", "optimizees", "segment_meta_gradients", "unrolled_meta_loss"]
