"""Meta-gradients of truncated unrolls, checked in float64 against finite differences."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lopt_helpers import (META_SEED as SEED, central_differences, meta_grad, meta_loss, pick,
                          quadratic_task)
from keras_meta.learned_optimizer import LSTMOptimizer
from keras_meta.learned_optimizer import unrolled_meta_loss


def _rule(preprocessing="log_sign"):
    # Large output weights so that the updates (and their second-order effects) matter.
    return LSTMOptimizer(hidden_size=4, num_layers=2, preprocessing=preprocessing,
                         output_scale=0.05, seed=11, dtype="float64",
                         output_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=5))








def _coordinates(rule, per_variable=4):
    rng = np.random.RandomState(0)
    picked = []
    for i, v in enumerate(rule.trainable_variables):
        size = int(np.prod(v.shape))
        for flat in rng.choice(size, size=min(per_variable, size), replace=False):
            picked.append((i, np.unravel_index(flat, v.shape)))
    return picked






@pytest.mark.parametrize("preprocessing", ["log_sign", "none"])
def test_exact_meta_gradient_matches_finite_differences(preprocessing):
    rule, task = _rule(preprocessing), quadratic_task()
    coordinates = _coordinates(rule)
    analytic = pick(meta_grad(rule, task, first_order=False), coordinates)
    numeric = central_differences(lambda: meta_loss(rule, task), rule, coordinates)
    assert np.max(np.abs(numeric)) > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7 * np.max(np.abs(numeric)))


def test_first_order_mode_holds_the_optimizee_gradients_constant():
    rule, task = _rule("none"), quadratic_task()
    coordinates = _coordinates(rule)
    first_order = pick(meta_grad(rule, task, first_order=True), coordinates)

    # The same unroll written with the gradients recorded at the current phi and fed back
    # as constants: its exact gradient is what the paper's approximation computes.
    params = task.init_params(SEED)
    state = rule.init_state(params)
    recorded = []
    for _ in range(3):
        with tf.GradientTape() as inner:
            inner.watch(params)
            loss = task.loss(params, SEED)
        recorded.append([tf.constant(g.numpy()) for g in inner.gradient(loss, params)])
        params, state = rule.apply(recorded[-1], params, state, step=0)

    def surrogate():
        params = task.init_params(SEED)
        state = rule.init_state(params)
        total = 0.0
        for grads in recorded:
            params, state = rule.apply(grads, params, state, step=0)
            total += task.loss(params, SEED)
        return total

    with tf.GradientTape() as tape:
        value = surrogate()
    np.testing.assert_allclose(float(value), float(meta_loss(rule, task)), rtol=1e-12)
    held_constant = pick(tape.gradient(value, rule.trainable_variables), coordinates)
    np.testing.assert_allclose(first_order, held_constant, rtol=1e-10, atol=1e-12)

    exact = central_differences(lambda: meta_loss(rule, task), rule, coordinates)
    relative = np.max(np.abs(first_order - exact)) / np.max(np.abs(exact))
    assert relative > 1e-3, "first-order mode should drop the second-derivative terms"


def _grad_of(fn, rule):
    with tf.GradientTape() as tape:
        value = fn()
    return value, [g.numpy() for g in tape.gradient(value, rule.trainable_variables)]


def test_truncation_cuts_the_gradient_but_carries_params_and_state():
    rule, task = _rule(), quadratic_task()
    params0 = task.init_params(SEED)
    state0 = rule.init_state(params0)
    w = [1.0, 1.0]

    _, _, params1, state1 = unrolled_meta_loss(rule, task, params0, state0, SEED, 0, w)
    frozen_params = [tf.constant(p.numpy()) for p in params1]
    frozen_state = tf.nest.map_structure(lambda t: tf.constant(t.numpy()), state1)

    # By construction: segment 2 started from constants.
    loss2, from_constants = _grad_of(
        lambda: unrolled_meta_loss(rule, task, frozen_params, frozen_state, SEED, 2, w)[0], rule)

    def both_segments_on_one_tape():
        _, _, p1, s1 = unrolled_meta_loss(rule, task, params0, state0, SEED, 0, w)
        return unrolled_meta_loss(rule, task, p1, s1, SEED, 2, w)[0]

    _, truncated = _grad_of(both_segments_on_one_tape, rule)
    for a, b in zip(truncated, from_constants):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)

    # The same objective (f(theta_3) + f(theta_4)) without truncation has other gradients.
    full_loss, full = _grad_of(
        lambda: unrolled_meta_loss(rule, task, params0, state0, SEED, 0, [0.0, 0.0, 1.0, 1.0])[0],
        rule)
    np.testing.assert_allclose(float(full_loss), float(loss2), rtol=1e-12)
    difference = max(np.max(np.abs(a - b)) for a, b in zip(full, truncated))
    assert difference > 1e-4 * max(np.max(np.abs(a)) for a in full)

    # The LSTM state is carried over: restarting segment 2 from a zero state changes it.
    assert max(float(tf.reduce_max(tf.abs(h))) for h, _ in state1) > 0.0
    restarted = unrolled_meta_loss(rule, task, frozen_params, rule.init_state(frozen_params),
                                   SEED, 2, w)[0]
    assert abs(float(restarted) - float(loss2)) > 1e-6 * abs(float(loss2))
