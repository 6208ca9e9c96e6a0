"""Hand-designed update rules: the same trajectories as the Keras optimizers, as pure functions."""

import doctest
import inspect
import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_meta.core import update_rules
from keras_meta.core.update_rules import (HAND_DESIGNED_RULES, AdamRule, MomentumRule,
                                          RMSpropRule, SGDRule, hand_designed_rule)

STEPS = 5
# Learning rates and decays exact in float32: Keras keeps the learning rate in a float32
# variable and casts `momentum` and Adam's betas to float64 through float32, while the rules
# take Python floats exactly; with these values both compute the same float64 numbers.
LR = 0.125
EXACT_CASES = {
    "SGD": (lambda lr: SGDRule(lr), lambda: keras.optimizers.SGD(LR)),
    "Momentum": (lambda lr: MomentumRule(lr, momentum=0.875),
                 lambda: keras.optimizers.SGD(LR, momentum=0.875)),
    "NAG": (lambda lr: MomentumRule(lr, momentum=0.875, nesterov=True),
            lambda: keras.optimizers.SGD(LR, momentum=0.875, nesterov=True)),
    # rho and epsilon enter Keras' RMSprop as Python floats: its defaults are exact.
    "RMSprop": (lambda lr: RMSpropRule(lr), lambda: keras.optimizers.RMSprop(LR)),
    "Adam": (lambda lr: AdamRule(lr, beta_1=0.875, beta_2=1 - 2.0 ** -9),
             lambda: keras.optimizers.Adam(LR, beta_1=0.875, beta_2=1 - 2.0 ** -9)),
}

A = tf.constant([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], tf.float64)
B = tf.constant([1.0, -2.0, 0.5], tf.float64)
C = tf.constant([[0.5, 2.0], [1.5, 0.25]], tf.float64)
INITIAL = (np.array([0.3, -0.7, 1.1]), np.array([[1.0, -0.5], [0.25, 2.0]]))


def loss_fn(x, w):
    """A fixed quadratic in a vector and a matrix, coupled through `x[0] * sum(w)`."""
    return (0.5 * tf.tensordot(x, tf.linalg.matvec(A, x), 1) + tf.reduce_sum(B * x)
            + tf.reduce_sum(C * w ** 2) + x[0] * tf.reduce_sum(w))


def gradients(params):
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = loss_fn(*params)
    return tape.gradient(loss, params), loss


def rule_trajectory(rule, steps=STEPS):
    params = [tf.constant(p) for p in INITIAL]
    state = rule.init_state(params)
    trajectory = []
    for step in range(steps):
        grads, loss = gradients(params)
        params, state = rule.apply(grads, params, state, step=step, loss=loss)
        trajectory.append([p.numpy() for p in params])
    return trajectory


def keras_trajectory(optimizer, steps=STEPS):
    variables = [keras.Variable(p, dtype="float64") for p in INITIAL]
    trajectory = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = loss_fn(*[v.value for v in variables])
        grads = tape.gradient(loss, [v.value for v in variables])
        optimizer.apply(grads, variables)
        trajectory.append([v.numpy() for v in variables])
    return trajectory


def assert_trajectories_close(actual, expected, rtol):
    assert len(actual) == len(expected)
    for step, (got, want) in enumerate(zip(actual, expected)):
        for g, w in zip(got, want):
            assert g.dtype == np.float64
            np.testing.assert_allclose(g, w, rtol=rtol, atol=0, err_msg=f"step {step}")


@pytest.fixture(scope="module")
def keras_trajectories():
    return {name: keras_trajectory(make_optimizer())
            for name, (_, make_optimizer) in EXACT_CASES.items()}


@pytest.mark.parametrize("name", list(EXACT_CASES))
def test_matches_keras_optimizer(name, keras_trajectories):
    make_rule, _ = EXACT_CASES[name]
    trajectory = rule_trajectory(make_rule(LR))
    # The parameters move (the comparison is not between two frozen trajectories).
    assert not np.allclose(trajectory[-1][0], INITIAL[0])
    assert_trajectories_close(trajectory, keras_trajectories[name], rtol=1e-12)


@pytest.mark.parametrize("name", list(EXACT_CASES))
def test_in_tf_function_with_tensor_step_and_learning_rate(name, keras_trajectories):
    make_rule, _ = EXACT_CASES[name]

    @tf.function
    def run(learning_rate):
        rule = make_rule(learning_rate)
        params = [tf.constant(p) for p in INITIAL]
        state = rule.init_state(params)
        visited = [tf.TensorArray(tf.float64, size=STEPS) for _ in params]
        for t in tf.range(STEPS):  # `t` is a scalar int32 tensor: a tf.while_loop.
            grads, loss = gradients(params)
            params, state = rule.apply(grads, params, state, step=t, loss=loss)
            visited = [ta.write(t, p) for ta, p in zip(visited, params)]
        return [ta.stack() for ta in visited]

    stacked = [s.numpy() for s in run(tf.constant(LR, tf.float64))]
    trajectory = [[s[step] for s in stacked] for step in range(STEPS)]
    assert_trajectories_close(trajectory, keras_trajectories[name], rtol=1e-12)
    # One traced graph serves a whole learning-rate grid, a float32 rate included.
    halved = [s.numpy() for s in run(tf.constant(LR / 2, tf.float64))]
    assert_trajectories_close([[s[-1] for s in halved]], [rule_trajectory(make_rule(LR / 2))[-1]],
                              rtol=1e-12)
    assert run.experimental_get_tracing_count() == 1
    # A float32 rate (cast to the parameters' float64; 0.125 is exact in both).
    single = [s.numpy() for s in run(tf.constant(LR, tf.float32))]
    assert_trajectories_close([[s[-1] for s in single]], [trajectory[-1]], rtol=1e-12)


@pytest.mark.parametrize("name,make_optimizer", [
    ("NAG", lambda: keras.optimizers.SGD(LR, momentum=0.9, nesterov=True)),
    ("Momentum", lambda: keras.optimizers.SGD(LR, momentum=0.9)),
    ("RMSprop", lambda: keras.optimizers.RMSprop(LR)),
    ("Adam", lambda: keras.optimizers.Adam(LR)),
])
def test_defaults_match_keras_defaults(name, make_optimizer):
    rule = hand_designed_rule(name, LR)
    # The same default hyperparameters as the Keras optimizer's constructor.
    keras_class = type(make_optimizer())
    keras_defaults = {key: param.default
                      for key, param in inspect.signature(keras_class.__init__).parameters.items()}
    for key, value in rule.get_config().items():
        if key not in ("learning_rate", "momentum", "nesterov"):
            assert value == keras_defaults[key], key
    # The displacements agree up to Keras' float32 rounding of momentum and Adam's betas:
    # 2.4e-8 relative in 0.9, and 1.3e-5 in Adam's `1 - beta_2 ** 1` (6e-6 in its root).
    tolerance = {"RMSprop": 1e-12, "Adam": 1e-4}.get(name, 1e-6)
    moved = [[[p - initial for p, initial in zip(params, INITIAL)] for params in trajectory]
             for trajectory in (rule_trajectory(rule), keras_trajectory(make_optimizer()))]
    assert_trajectories_close(*moved, rtol=tolerance)


@pytest.mark.parametrize("name", HAND_DESIGNED_RULES)
def test_zero_learning_rate_leaves_params_unchanged(name):
    for learning_rate in (0.0, tf.constant(0.0, tf.float64)):
        trajectory = rule_trajectory(hand_designed_rule(name, learning_rate), steps=3)
        for params in trajectory:
            for p, initial in zip(params, INITIAL):
                np.testing.assert_array_equal(p, initial)


def test_state_is_tuple_of_lists_shaped_like_params():
    params = [tf.zeros([3], tf.float64), tf.zeros([2, 2], tf.float64)]
    for rule, size in ((MomentumRule(0.1), 1), (RMSpropRule(0.1), 1), (AdamRule(0.1), 2)):
        state = rule.init_state(params)
        _, new_state = rule.apply([tf.ones_like(p) for p in params], params, state, step=0)
        for s in (state, new_state):
            assert isinstance(s, tuple) and len(s) == size
            for slots in s:
                assert isinstance(slots, list)
                assert [x.shape for x in slots] == [p.shape for p in params]
                assert all(x.dtype == tf.float64 for x in slots)


@pytest.mark.parametrize("make,value,message", [
    (lambda: AdamRule(0.1, beta_1=1.0), "1.0", "beta_1 must be a float in [0.0, 1.0)"),
    (lambda: AdamRule(0.1, beta_2=-0.5), "-0.5", "beta_2 must be a float in [0.0, 1.0)"),
    (lambda: AdamRule(0.1, epsilon=0), "0", "epsilon must be a float in (0.0, 1.0]"),
    (lambda: MomentumRule(0.1, momentum=-0.1), "-0.1", "momentum must be a float in [0.0, 1.0]"),
    (lambda: MomentumRule(0.1, nesterov="yes"), "'yes'", "nesterov must be a bool"),
    (lambda: RMSpropRule(0.1, rho=1.5), "1.5", "rho must be a float in [0.0, 1.0)"),
    (lambda: RMSpropRule(0.1, epsilon=0), "0", "epsilon must be a float in (0.0, 1.0]"),
    (lambda: RMSpropRule(0.1, rho=float("nan")), "nan", "rho must be a float in [0.0, 1.0)"),
    (lambda: AdamRule(-0.1), "-0.1", "learning_rate must be a finite float >= 0"),
    (lambda: RMSpropRule(True), "True", "learning_rate must be a finite float >= 0"),
])
def test_invalid_hyperparameters_raise(make, value, message):
    with pytest.raises(ValueError, match=re.escape(message) + ".*got " + re.escape(value)):
        make()


def test_tensor_learning_rate_is_not_checked():
    for rule_class in (MomentumRule, RMSpropRule, AdamRule):
        rule = rule_class(tf.constant(-1.0))
        assert isinstance(rule.learning_rate, tf.Tensor)


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match="Adamax") as error:
        hand_designed_rule("Adamax", 0.1)
    for name in HAND_DESIGNED_RULES:
        assert repr(name) in str(error.value)


def test_hand_designed_rule_names():
    assert HAND_DESIGNED_RULES == ("SGD", "NAG", "Momentum", "RMSprop", "Adam")
    assert isinstance(hand_designed_rule("SGD", 0.1), SGDRule)
    nag, heavy_ball = hand_designed_rule("NAG", 0.1), hand_designed_rule("Momentum", 0.1)
    assert (nag.momentum, nag.nesterov) == (0.9, True)
    assert (heavy_ball.momentum, heavy_ball.nesterov) == (0.9, False)
    assert isinstance(hand_designed_rule("rmsprop", 0.1), RMSpropRule)
    assert isinstance(hand_designed_rule("Adam", 0.1), AdamRule)


@pytest.mark.parametrize("rule", [
    MomentumRule(0.25, momentum=0.5, nesterov=True), MomentumRule(1),
    RMSpropRule(0.01, rho=0.95, epsilon=1e-6), AdamRule(0.001, beta_1=0.5, beta_2=0.99,
                                                        epsilon=1e-8),
    AdamRule(tf.constant(0.5)),
], ids=lambda rule: type(rule).__name__)
def test_config_round_trip(rule):
    config = rule.get_config()
    assert all(isinstance(v, (float, bool)) for v in config.values())
    assert json.loads(json.dumps(config)) == config
    restored = type(rule).from_config(config)
    assert type(restored) is type(rule) and restored.get_config() == config
    assert list(config) == list(inspect.signature(type(rule)).parameters)


def test_docstring_examples():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [test for obj in (MomentumRule, RMSpropRule, AdamRule, hand_designed_rule)
             for test in finder.find(obj, globs={"tf": tf, **vars(update_rules)})]
    assert sum(len(test.examples) for test in tests) >= 10
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
