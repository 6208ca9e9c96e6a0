"""Small builders shared by the learned-optimizer tests."""

import keras
import numpy as np

from keras_meta.learned_optimizer import LSTMOptimizer


def descent_rule(step_size=0.01):
    """A hand-set one-unit LSTMOptimizer whose update is about -step_size * sign(grad).

    Saturated gates (input and output open, forget closed) make h = tanh(tanh(10 g)), and the
    head maps h to -h: a deterministic descent rule without any meta-training.
    """
    rule = LSTMOptimizer(hidden_size=1, num_layers=1, preprocessing="none",
                         output_scale=step_size)
    rule.set_weights([
        np.array([[0.0, 0.0, 10.0, 0.0]], "float32"),   # kernel: only the candidate sees g
        np.zeros([1, 4], "float32"),                    # recurrent kernel
        np.array([10.0, -10.0, 0.0, 10.0], "float32"),  # bias: i open, f closed, o open
        np.array([[-1.0]], "float32"),
        np.zeros([1], "float32"),
    ])
    return rule


def small_regression_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(1)])


def regression_data(n=64, seed=0):
    x = np.random.RandomState(seed).randn(n, 4).astype("float32")
    return x, (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], "float32")).astype("float32")
