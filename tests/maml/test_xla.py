"""XLA (`jit_compile=True`) and the default TensorFlow runtime give the same meta-gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.backbones import conv4, mlp


def episode(kind, num_tasks=4, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "images":
        return km.Episode(
            tf.constant(rng.normal(size=(num_tasks, 3, 8, 8, 1)), tf.float32),
            tf.constant(np.tile(np.arange(3), (num_tasks, 1)), tf.int32),
            tf.constant(rng.normal(size=(num_tasks, 6, 8, 8, 1)), tf.float32),
            tf.constant(np.tile(np.repeat(np.arange(3), 2), (num_tasks, 1)), tf.int32))
    x = rng.uniform(-5, 5, size=(num_tasks, 10, 1)).astype("float32")
    y = np.sin(x + rng.uniform(0, 3, size=(num_tasks, 1, 1))).astype("float32")
    return km.Episode(tf.constant(x[:, :5]), tf.constant(y[:, :5]),
                      tf.constant(x[:, 5:]), tf.constant(y[:, 5:]))


def make(kind, task_batching, first_order):
    keras.utils.set_random_seed(0)
    if kind == "images":
        return km.MAML(conv4(3, (8, 8, 1), filters=4), inner_lr=0.4, inner_steps=2,
                       first_order=first_order, task_batching=task_batching,
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return km.MAML(mlp((16, 16)), inner_lr=0.05, inner_steps=2, first_order=first_order,
                   task_batching=task_batching, loss="mse")


# The per-task loop over conv4 is heavy (its XLA compile is most of this file's minutes); the
# loop runs here on the sinusoid MLP, conv4 batched.
@pytest.mark.parametrize("kind,task_batching", [
    ("images", "batched"), pytest.param("images", "loop", marks=pytest.mark.heavy),
    ("sinusoid", "batched"), ("sinusoid", "loop")])
@pytest.mark.parametrize("first_order", [False, True])
def test_xla_and_default_meta_gradients_agree(kind, task_batching, first_order):
    maml = make(kind, task_batching, first_order)
    data = episode(kind)
    loss_a, grads_a, _ = tf.function(maml.meta_gradients)(data)
    loss_b, grads_b, _ = tf.function(maml.meta_gradients, jit_compile=True)(data)
    np.testing.assert_allclose(loss_b.numpy(), loss_a.numpy(), rtol=1e-5)
    for a, b in zip(grads_a, grads_b):
        a, b = a.numpy(), b.numpy()
        assert np.linalg.norm(b - a) <= 1e-4 * np.linalg.norm(a) + 1e-7


def test_xla_train_steps_follow_the_default_runtime():
    maml_a, maml_b = make("sinusoid", "batched", False), make("sinusoid", "batched", False)
    for m in (maml_a, maml_b):
        m.compile(keras.optimizers.Adam(1e-2))
    stacked = km.Episode(*(tf.stack([x, x[::-1]]) for x in episode("sinusoid")))
    tf.function(maml_a.meta_train_steps)(stacked)
    tf.function(maml_b.meta_train_steps, jit_compile=True)(stacked)
    for a, b in zip(maml_a.trainable_variables, maml_b.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)
