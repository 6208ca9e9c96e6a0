"""Meta-training: one traced graph per segment, convergence, and MAML with a learned rule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_meta.data.sinusoid import sinusoid_episodes
from keras_meta.learned_optimizer import LSTMOptimizer
from keras_meta.maml import MAML
from keras_meta.learned_optimizer import MetaOptimizerTrainer, optimizee_trajectory
from keras_meta.learned_optimizer import MetaOptimizerConfig
from keras_meta.learned_optimizer.optimizees import MLPDigitsOptimizee, QuadraticOptimizee, get_optimizee


def test_segment_function_is_traced_once_over_iterations():
    rule = LSTMOptimizer(hidden_size=4, num_layers=1, seed=0)
    trainer = MetaOptimizerTrainer(rule, QuadraticOptimizee(dim=3, num_functions=2),
                                   MetaOptimizerConfig(num_steps=6, unroll_length=2))
    before = [v.numpy().copy() for v in rule.trainable_variables]
    losses = trainer.train(3)
    assert trainer.tracing_count == 1
    assert int(trainer.iteration.numpy()) == 3 and len(losses) == 3
    assert all(np.isfinite(losses))
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, rule.trainable_variables))


def test_exact_meta_gradient_mode_trains_too():
    rule = LSTMOptimizer(hidden_size=4, num_layers=1, seed=0)
    trainer = MetaOptimizerTrainer(rule, MLPDigitsOptimizee(hidden_units=3, batch_size=8),
                                   MetaOptimizerConfig(num_steps=4, unroll_length=2,
                                                       first_order=False))
    assert all(np.isfinite(trainer.train(2)))
    assert trainer.tracing_count == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"unroll_length": 30}, r"unroll_length \(30\) must divide num_steps \(100\)"),
    ({"num_steps": 0}, "num_steps must be an int >= 1; got 0"),
    ({"loss_weights": (1.0, 2.0)}, r"needs num_steps \(100\) weights; got 2"),
    ({"meta_lr": -1.0}, "meta_lr must be > 0; got -1.0"),
])
def test_bad_meta_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetaOptimizerConfig(**kwargs)


def test_task_families_validate_and_share_seeds():
    with pytest.raises(ValueError, match=r"Unknown optimizee 'cifar'; expected one of"):
        get_optimizee("cifar")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'heldout'\)"):
        MLPDigitsOptimizee(split="test")
    task = QuadraticOptimizee(num_functions=3)
    with pytest.raises(ValueError, match="shape \\[2\\]; got dtype .* and shape \\(3,\\)"):
        task.init_params(tf.constant([1, 2, 3]))
    a = task.function_losses(task.init_params(tf.constant([0, 1])), tf.constant([0, 1]))
    b = task.function_losses(task.init_params(tf.constant([0, 1])), tf.constant([0, 1]))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    train, heldout = MLPDigitsOptimizee(split="train"), MLPDigitsOptimizee(split="heldout")
    assert train.num_examples + heldout.num_examples == 1797
    rows = {tuple(r) for r in train.x.numpy()}
    assert sum(tuple(r) in rows for r in heldout.x.numpy()) < 0.05 * heldout.num_examples


def test_trajectory_of_a_zero_rule_stays_put():
    rule = LSTMOptimizer(output_initializer="zeros")
    task = QuadraticOptimizee(num_functions=4)
    losses, final = tf.function(lambda s: optimizee_trajectory(rule, task, s, 5))(
        tf.constant([0, 9]))
    assert losses.shape == (6, 4)
    np.testing.assert_allclose(losses.numpy(), np.repeat(losses.numpy()[:1], 6, axis=0))
    np.testing.assert_allclose(final.numpy(), losses.numpy()[-1], rtol=1e-6)


def test_trajectory_of_the_digits_mlp_runs_in_a_graph():
    task = MLPDigitsOptimizee(hidden_units=5, batch_size=16, split="heldout")
    rule = LSTMOptimizer(hidden_size=4, num_layers=1, seed=0)
    run = tf.function(lambda s: optimizee_trajectory(rule, task, s, 3))
    losses, final = run(tf.constant([1, 2]))
    assert losses.shape == (4, 1) and final.shape == (1,)
    assert np.all(np.isfinite(losses.numpy()))
    other, _ = run(tf.constant([1, 3]))  # another function: other init and batches
    assert not np.allclose(losses.numpy(), other.numpy())
    assert run.experimental_get_tracing_count() == 1


@pytest.mark.slow
def test_meta_training_on_quadratics_lowers_the_meta_loss():
    rule = LSTMOptimizer(seed=0)
    trainer = MetaOptimizerTrainer(rule, QuadraticOptimizee(num_functions=8),
                                   MetaOptimizerConfig(meta_lr=3e-3, seed=1))
    losses = trainer.train(60)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)
    assert trainer.tracing_count == 1


@pytest.mark.slow
def test_maml_meta_trains_an_lstm_update_rule_on_sinusoids():
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((1,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(1)])
    rule = LSTMOptimizer(hidden_size=8, num_layers=1, seed=0,
                         output_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=1))
    maml = MAML(base, inner_steps=2, update_rule=rule, loss="mse")
    maml.compile(optimizer=keras.optimizers.Adam(1e-3))
    episodes = sinusoid_episodes(num_shots=5, meta_batch_size=2, seed=0)
    batch = next(iter(episodes))
    phi_ids = {id(v) for v in rule.trainable_variables}
    assert phi_ids <= {id(v) for v in maml.trainable_variables}
    with tf.GradientTape() as tape:
        losses, _ = maml.meta_batch_losses(batch)
        meta_loss = tf.reduce_mean(losses)
    grads = tape.gradient(meta_loss, rule.trainable_variables)
    assert all(g is not None for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0.0
    before = [v.numpy().copy() for v in rule.trainable_variables]
    history = maml.fit(episodes, steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, rule.trainable_variables))
