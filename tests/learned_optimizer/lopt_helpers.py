"""Small builders shared by the learned-optimizer tests."""

import keras
import numpy as np
import tensorflow as tf

from keras_meta.learned_optimizer import LSTMOptimizer, unrolled_meta_loss
from keras_meta.learned_optimizer.optimizees import QuadraticOptimizee

META_SEED = tf.constant([3, 7])


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


# -- meta-gradients against finite differences (float64), for any learned rule -------------------

def quadratic_task():
    return QuadraticOptimizee(dim=3, num_functions=2, dtype="float64")


def meta_loss(rule, task, steps=3, first_order=False):
    """The meta-loss of one untruncated `steps`-step unroll from the task's theta_0."""
    params = task.init_params(META_SEED)
    return unrolled_meta_loss(rule, task, params, rule.init_state(params), META_SEED, 0,
                              [1.0] * steps, first_order=first_order)[0]


def meta_grad(rule, task, first_order):
    with tf.GradientTape() as tape:
        loss = meta_loss(rule, task, first_order=first_order)
    return tape.gradient(loss, rule.trainable_variables)


def central_differences(loss_fn, rule, coordinates, eps=1e-6):
    """d loss_fn / d phi at `coordinates` ((variable index, index) pairs), by central differences."""
    values = []
    for i, index in coordinates:
        v = rule.trainable_variables[i]
        original = np.array(v.numpy())  # an ndarray also for a scalar variable
        shifted = []
        for sign in (1.0, -1.0):
            w = original.copy()
            w[index] += sign * eps
            v.assign(w)
            shifted.append(float(loss_fn()))
        v.assign(original)
        values.append((shifted[0] - shifted[1]) / (2 * eps))
    return np.array(values)


def pick(grads, coordinates):
    return np.array([grads[i].numpy()[index] for i, index in coordinates])
