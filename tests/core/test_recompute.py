"""Recomputed inner steps: the same meta-gradient, whatever holds the differentiable inputs."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.backbones import conv4, mlp
from keras_meta.core.recompute import checkpointed


def image_episode(num_tasks=2, seed=0):
    rng = np.random.default_rng(seed)
    return km.Episode(
        tf.constant(rng.normal(size=(num_tasks, 3, 8, 8, 1))),
        tf.constant(np.tile(np.arange(3), (num_tasks, 1)), tf.int32),
        tf.constant(rng.normal(size=(num_tasks, 6, 8, 8, 1))),
        tf.constant(np.tile(np.repeat(np.arange(3), 2), (num_tasks, 1)), tf.int32))


def sinusoid_episode(num_tasks=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 5, size=(num_tasks, 10, 1))
    y = np.sin(x + rng.uniform(0, 3, size=(num_tasks, 1, 1)))
    return km.Episode(tf.constant(x[:, :5]), tf.constant(y[:, :5]),
                      tf.constant(x[:, 5:]), tf.constant(y[:, 5:]))


def gradients(make, episode, recompute, function=True):
    keras.utils.set_random_seed(0)
    maml = make(recompute_inner_steps=recompute)
    assert maml.recompute_inner_steps == recompute
    # The recomputed side runs in a tf.function, as training runs it; the stored reference
    # needs no graph (tracing, not computing, is nearly all of a traced run's cost here).
    loss, grads, _ = (tf.function(maml.meta_gradients) if function else maml.meta_gradients)(
        episode)
    return loss.numpy(), [g.numpy() for g in grads]


@functools.lru_cache(maxsize=None)
def stored(name):
    """The meta-gradient without recomputation, shared by both segment lengths."""
    make, episode = CASES[name]
    return gradients(make, episode(), recompute=False, function=False)


CASES = {
    "conv4_batched_per_step_rates": (
        lambda **k: km.MAML(conv4(3, (8, 8, 1), filters=3, dtype="float64"), inner_lr=0.4,
                            inner_steps=3, learn_inner_lr="per_step", dtype="float64",
                            loss=keras.losses.SparseCategoricalCrossentropy(
                                from_logits=True, dtype="float64"), **k), image_episode),
    "conv4_loop_per_step_batch_norm": (
        lambda **k: km.MAML(conv4(3, (8, 8, 1), filters=3, batch_norm="per_step",
                                  num_inner_steps=3, dtype="float64"), inner_lr=0.4,
                            inner_steps=3, dtype="float64",
                            loss=keras.losses.SparseCategoricalCrossentropy(
                                from_logits=True, dtype="float64"), **k), image_episode),
    "mlp_lstm_rule": (
        lambda **k: km.MAML(mlp((8,), dtype="float64"), inner_steps=3, dtype="float64",
                            update_rule=km.LSTMOptimizer(hidden_size=4, dtype="float64"),
                            loss=keras.losses.MeanSquaredError(dtype="float64"), **k),
        sinusoid_episode),
    "mlp_batched_first_order": (
        lambda **k: km.MAML(mlp((8,), dtype="float64"), inner_lr=0.05, inner_steps=4,
                            first_order=True, learn_inner_lr="per_coordinate", dtype="float64",
                            loss=keras.losses.MeanSquaredError(dtype="float64"), **k),
        sinusoid_episode),
}


CASES["conv4_batched_segments_multi_step_loss"] = (
    lambda **k: km.MAML(conv4(3, (8, 8, 1), filters=3, dtype="float64"), inner_lr=0.4,
                        inner_steps=3, multi_step_loss_weights=[0.2, 0.3, 0.5], dtype="float64",
                        loss=keras.losses.SparseCategoricalCrossentropy(
                            from_logits=True, dtype="float64"), **k), image_episode)


# Segments of 2 steps (of 3) matter where the segments' boundaries do: the multi-step loss and
# the learned rule's state; elsewhere they are heavy (one segment per step runs in CI).
_HEAVY_SEGMENTS = {"conv4_batched_per_step_rates", "conv4_loop_per_step_batch_norm"}


@pytest.mark.parametrize("name,segment", [
    pytest.param(name, segment, marks=[pytest.mark.heavy] if (
        segment == 2 and name in _HEAVY_SEGMENTS) else [])
    for segment in (True, 2) for name in sorted(CASES)])
def test_recomputed_meta_gradient_is_the_stored_one(name, segment):
    make, episode = CASES[name]
    loss_a, grads_a = stored(name)
    loss_b, grads_b = gradients(make, episode(), recompute=segment)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-12)
    assert any(np.any(g != 0) for g in grads_a)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


def test_checkpointed_function_gradient_and_variables():
    x = tf.constant([0.5, 1.5], tf.float64)
    w = tf.Variable(2.0, dtype=tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = checkpointed(lambda v: {"out": tf.sin(v) * v * w}, x)["out"]
        total = tf.reduce_sum(y)
    np.testing.assert_allclose(tape.gradient(total, x).numpy(),
                               2.0 * (np.cos(x.numpy()) * x.numpy() + np.sin(x.numpy())))
    np.testing.assert_allclose(tape.gradient(total, w).numpy(),
                               np.sum(np.sin(x.numpy()) * x.numpy()))


def test_bad_recompute_settings_are_refused():
    with pytest.raises(ValueError, match="recompute_inner_steps must be a bool or a positive"):
        km.MAML(mlp(), loss="mse", recompute_inner_steps=0.5)
    with pytest.raises(ValueError, match="recompute must be a bool or a positive int"):
        km.adapt_params(mlp(), km.get_params(mlp()), tf.zeros([2, 1]), tf.zeros([2, 1]),
                 loss_fn="mse", inner_lr=0.1, recompute=-1)
