"""MAML++'s annealed multi-step loss: golden weights, and the meta-loss they give."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_meta import MAML
from keras_meta.backbones import mlp
from keras_meta.data.sinusoid import sinusoid_episodes
from keras_meta.maml import MultiStepLossSchedule


def test_golden_weights_and_their_sum():
    schedule = MultiStepLossSchedule(num_steps=5, anneal_iterations=100)
    np.testing.assert_allclose(schedule(0), [0.2] * 5, rtol=1e-6)
    # Half way: each earlier weight 0.1, the last 0.2 + 4 * 0.1 = 0.6.
    np.testing.assert_allclose(schedule(50), [0.1, 0.1, 0.1, 0.1, 0.6], rtol=1e-6)
    # Near the end the earlier weights stop at 0.03 / 5 and the last takes the rest.
    np.testing.assert_allclose(schedule(99), [0.006] * 4 + [1 - 4 * 0.006], rtol=1e-5)
    np.testing.assert_array_equal(schedule(100), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(schedule(10 ** 6), [0, 0, 0, 0, 1])
    for t in range(0, 120, 7):
        assert abs(float(tf.reduce_sum(schedule(t))) - 1.0) < 1e-6


def test_schedule_config_round_trip_and_bad_values():
    schedule = MultiStepLossSchedule(3, 10, min_fraction=0.1)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert again.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="anneal_iterations must be an int >= 1; got 0"):
        MultiStepLossSchedule(3, 0)
    with pytest.raises(ValueError, match="The MultiStepLossSchedule has 3 steps; inner_steps is 2"):
        MAML(mlp(), inner_steps=2, multi_step_loss_weights=schedule, loss="mse")


def _maml(weights, seed=0):
    keras.utils.set_random_seed(seed)
    maml = MAML(mlp(), inner_lr=0.01, inner_steps=3, multi_step_loss_weights=weights,
                loss="mse", task_batching="loop")
    maml.compile(optimizer=keras.optimizers.Adam(1e-3))
    return maml


def test_meta_loss_follows_the_optimizer_iteration():
    episodes = next(iter(sinusoid_episodes(5, 5, meta_batch_size=2, seed=3)))
    scheduled = _maml(MultiStepLossSchedule(3, anneal_iterations=10))
    uniform = _maml([1 / 3] * 3)
    last_only = _maml([0.0, 0.0, 1.0])
    loss = lambda m: float(tf.reduce_mean(m.meta_batch_losses(episodes)[0]))
    np.testing.assert_allclose(loss(scheduled), loss(uniform), rtol=1e-6)
    scheduled.optimizer.iterations.assign(10)
    np.testing.assert_allclose(loss(scheduled), loss(last_only), rtol=1e-6)
    # And the same weights as a traced step sees them: one function, any iteration.
    step = tf.function(lambda e: tf.reduce_mean(scheduled.meta_batch_losses(e)[0]))
    scheduled.optimizer.iterations.assign(0)
    np.testing.assert_allclose(float(step(episodes)), loss(uniform), rtol=1e-6)
    scheduled.optimizer.iterations.assign(10)
    np.testing.assert_allclose(float(step(episodes)), loss(last_only), rtol=1e-6)


def test_maml_with_a_schedule_serializes():
    maml = _maml(MultiStepLossSchedule(3, anneal_iterations=10))
    again = MAML.from_config(maml.get_config())
    assert isinstance(again.multi_step_loss_weights, MultiStepLossSchedule)
    assert again.multi_step_loss_weights.get_config() == {"num_steps": 3,
                                                         "anneal_iterations": 10,
                                                         "min_fraction": 0.03}
