"""`MLPOptimizer`: the accumulators, the normalized features, its meta-gradient and its uses."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lopt_helpers import central_differences, meta_grad, meta_loss, pick, quadratic_task
from keras_meta.core import functional
from keras_meta.core.inner_loop import adapt_params
from keras_meta.learned_optimizer import (MetaOptimizerConfig, MetaOptimizerTrainer,
                                          MLPOptimizer)
from keras_meta.learned_optimizer.optimizees import QuadraticOptimizee
from keras_meta.maml import MAML

DECAYS = np.array([0.5, 0.9, 0.99, 0.999])
SHAPES = [(3, 4), (4,), (2, 1, 5), ()]


def _params(dtype="float64"):
    rng = np.random.RandomState(0)
    return [tf.constant(rng.randn(*s), dtype=dtype) for s in SHAPES]


def _grads(seed=1, scale=1.0, dtype="float64"):
    """Gradients of magnitude 1..10 (times `scale`), random signs."""
    rng = np.random.RandomState(seed)
    return [tf.constant(np.sign(rng.randn(*s)) * 10 ** rng.uniform(0, 1, size=s) * scale,
                        dtype=dtype) for s in SHAPES]


def _flat(tensors):
    return np.concatenate([np.asarray(t).ravel() for t in tensors])


# -- numpy reference ----------------------------------------------------------------------------

def _np_accumulate(g, m, v):
    m = DECAYS * m + (1.0 - DECAYS) * g[:, None]
    v = 0.999 * v + 0.001 * g ** 2
    return m, v


def _np_features(p, g, m, v, eps=1e-12, param_feature=False):
    inv = 1.0 / np.sqrt(v + eps)
    columns = [g[:, None], m, (g * inv)[:, None], m * inv[:, None]]
    if param_feature:
        columns.append(p[:, None])
    x = np.concatenate(columns, axis=1)
    return x / np.sqrt(np.mean(x ** 2, axis=0, keepdims=True) + 1e-5)


# -- the update rule ----------------------------------------------------------------------------

def test_zero_head_gives_exactly_zero_updates_while_the_state_moves():
    rule = MLPOptimizer(output_initializer="zeros", direct_initializer="zeros", seed=0)
    params = _params("float32")
    state = rule.init_state(params)
    for step in range(3):
        deltas, new_state = rule.updates(_grads(step, dtype="float32"), params, state, step=step)
        for d in deltas:
            np.testing.assert_array_equal(d.numpy(), np.zeros(d.shape, "float32"))
        new_params, _ = rule.apply(_grads(step, dtype="float32"), params, state, step=step)
        for p, q in zip(params, new_params):
            np.testing.assert_array_equal(p.numpy(), q.numpy())
        for (m0, v0), (m1, v1) in zip(state, new_state):
            assert not np.array_equal(m0.numpy(), m1.numpy())
            assert not np.array_equal(v0.numpy(), v1.numpy())
        state = new_state
    assert float(tf.reduce_min(state[0][1])) > 0.0


def test_adam_like_default_matches_numpy_golden_values_for_two_steps():
    step_scale = 0.03
    rule = MLPOptimizer(output_initializer="zeros", step_scale=step_scale, dtype="float64",
                        seed=0)
    assert rule.adam_feature_index == 7  # m_0.9 / sqrt(v)
    np.testing.assert_array_equal(rule.direct_kernel.numpy(),
                                  np.eye(10)[7] * -1.0)
    rng = np.random.RandomState(3)
    p = tf.constant(rng.randn(3, 5))
    state = rule.init_state([p])
    m, v = np.zeros([15, 4]), np.zeros([15])
    scale = math.exp(float(rule.log_step_scale.numpy()))
    assert scale == pytest.approx(step_scale, rel=1e-7)
    for step in range(2):
        g = rng.randn(3, 5) * 10 ** rng.uniform(-1, 1, size=(3, 5))
        (delta,), state = rule.updates([tf.constant(g)], [p], state, step=step)
        m, v = _np_accumulate(g.ravel(), m, v)
        f7 = (m[:, 1] / np.sqrt(v + 1e-12))
        f7 = f7 / np.sqrt(np.mean(f7 ** 2) + 1e-5)
        expected = scale * -1.0 * f7
        assert delta.dtype == tf.float64 and delta.shape == (3, 5)
        np.testing.assert_allclose(delta.numpy().ravel(), expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(state[0][0].numpy(), m, rtol=1e-13)
        np.testing.assert_allclose(state[0][1].numpy(), v, rtol=1e-13)
        p = p + delta


def test_float64_rule_starts_at_exactly_log_step_scale():
    rule = MLPOptimizer(step_scale=0.03, dtype="float64")
    assert float(rule.log_step_scale.numpy()) == math.log(0.03)


@pytest.mark.parametrize("param_feature", [False, True])
def test_feature_matrix_matches_numpy(param_feature):
    rule = MLPOptimizer(param_feature=param_feature, dtype="float64", seed=0)
    assert rule.num_features == 10 + int(param_feature)
    rng = np.random.RandomState(4)
    p = rng.randn(12)
    m, v = np.zeros([12, 4]), np.zeros([12])
    state = rule.zero_state(12)
    for step in range(3):
        g = rng.randn(12) * 10 ** rng.uniform(-2, 1, size=12)
        g[0] = 0.0 if step == 0 else g[0]  # a zero gradient: the eps keeps it finite
        state = rule.accumulate(tf.constant(g), state)
        m, v = _np_accumulate(g, m, v)
        x = rule.features(tf.constant(p), tf.constant(g), state).numpy()
        expected = _np_features(p, g, m, v, param_feature=param_feature)
        assert x.shape == (12, rule.num_features)
        np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-12)


def _run(rule, grads_fn, steps=3):
    params = _params()
    state = rule.init_state(params)
    for step in range(steps):
        deltas, state = rule.updates(grads_fn(step), params, state, step=step)
        params = [p + d for p, d in zip(params, deltas)]
    return deltas


def test_updates_are_invariant_to_the_scale_of_the_gradients():
    # The Adam-like default (zeros output head): gradients of order 1..10 and 1e3 times that.
    rule = MLPOptimizer(output_initializer="zeros", dtype="float64", seed=0)
    a = _run(rule, lambda k: _grads(k))
    b = _run(rule, lambda k: _grads(k, scale=1e3))
    np.testing.assert_allclose(_flat(b), _flat(a), rtol=1e-5)
    # A random MLP head too, once every feature is far above the 1e-5 floor of the
    # per-tensor normalization (below it a feature is shrunk on purpose, not rescaled).
    rule = MLPOptimizer(dtype="float64", seed=0,
                        output_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=2))
    a = _run(rule, lambda k: _grads(k, scale=1e4))
    b = _run(rule, lambda k: _grads(k, scale=1e7))
    assert np.max(np.abs(_flat(a))) > 0.0
    np.testing.assert_allclose(_flat(b), _flat(a), rtol=1e-5)


def test_each_tensor_is_normalized_separately():
    rule = MLPOptimizer(dtype="float64", seed=0,
                        output_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=2))

    def scaled_first(k):
        grads = _grads(k)
        return [grads[0] * 1e-3] + grads[1:]

    a = _run(rule, lambda k: _grads(k))
    b = _run(rule, scaled_first)
    for i in range(1, len(SHAPES)):
        np.testing.assert_array_equal(a[i].numpy(), b[i].numpy())
    assert not np.allclose(a[0].numpy(), b[0].numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shapes_dtypes_and_state_layout(dtype):
    rule = MLPOptimizer(dtype=dtype, seed=0)
    params = _params(dtype)
    state = rule.init_state(params)
    assert isinstance(state, tuple) and len(state) == len(params)
    for (m, v), p in zip(state, params):
        n = int(np.prod(p.shape))
        assert m.shape == (n, 4) and v.shape == (n,)
        assert m.dtype == dtype and v.dtype == dtype
    new_params, new_state = rule.apply(_grads(dtype=dtype), params, state, step=0)
    assert [q.shape for q in new_params] == [p.shape for p in params]
    assert all(q.dtype == dtype for q in new_params)
    assert [(m.shape, v.shape) for m, v in new_state] == [(m.shape, v.shape) for m, v in state]
    assert all(float(tf.reduce_max(tf.abs(q - p))) > 0 for p, q in zip(params, new_params))
    assert all(w.dtype == dtype for w in rule.weights)


def test_bad_apply_inputs_are_named():
    rule = MLPOptimizer(seed=0)
    params = _params("float32")
    state = rule.init_state(params)
    with pytest.raises(ValueError, match="got 3 gradients for 4 parameters"):
        rule.apply(_grads(dtype="float32")[:3], params, state, step=0)
    with pytest.raises(ValueError, match=r"one \(m, v\) pair per parameter \(4\)"):
        rule.apply(_grads(dtype="float32"), params, state[:2], step=0)
    with pytest.raises(ValueError, match="empty list of parameters"):
        rule.init_state([])


# -- the exact meta-gradient (mirrors test_meta_gradients.py) -------------------------------------



def _fd_rule():
    return MLPOptimizer(hidden_sizes=(4,), step_scale=0.05, seed=11, dtype="float64",
                        output_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=5))








def _coordinates(rule, per_variable=3):
    rng = np.random.RandomState(0)
    picked = []
    for i, v in enumerate(rule.trainable_variables):
        size = int(np.prod(v.shape))
        flats = list(rng.choice(size, size=min(per_variable, size), replace=False))
        if v.name == "direct_kernel" and 7 not in flats:
            flats.append(7)  # the Adam-like feature's own weight
        for flat in flats:
            picked.append((i, np.unravel_index(flat, v.shape)))
    return picked






def test_exact_meta_gradient_matches_finite_differences_and_first_order_differs():
    rule, task = _fd_rule(), quadratic_task()
    names = [v.name for v in rule.trainable_variables]
    assert "log_step_scale" in names and "direct_kernel" in names
    coordinates = _coordinates(rule)
    assert {names[i] for i, _ in coordinates} == set(names)
    exact = meta_grad(rule, task, first_order=False)
    assert all(g is not None for g in exact)
    analytic = pick(exact, coordinates)
    numeric = central_differences(lambda: meta_loss(rule, task), rule, coordinates)
    assert np.max(np.abs(numeric)) > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5,
                               atol=1e-7 * np.max(np.abs(numeric)))

    first_order = pick(meta_grad(rule, task, first_order=True), coordinates)
    relative = np.max(np.abs(first_order - numeric)) / np.max(np.abs(numeric))
    assert relative > 1e-3, "first-order mode should drop the second-derivative terms"


# -- in the inner loop --------------------------------------------------------------------------

def _tiny_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])


def _support():
    rng = np.random.RandomState(0)
    x = rng.randn(16, 3).astype("float32")
    return x, (x @ np.array([[1.0], [-1.0], [2.0]], "float32") + 0.5).astype("float32")


def test_adapt_params_with_the_mlp_rule_lowers_the_support_loss():
    model = _tiny_model()
    x, y = _support()
    mse = keras.losses.MeanSquaredError()
    params = functional.get_params(model)

    def support_loss(p):
        return float(mse(y, functional.functional_call(model, p, x)))

    rule = MLPOptimizer(step_scale=0.05, seed=0)
    adapted, trajectory = adapt_params(model, params, x, y, loss_fn=mse, inner_steps=5,
                                       update_rule=rule, return_trajectory=True)
    losses = [support_loss(params)] + [support_loss(p) for p in trajectory]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    # Nothing was assigned: the model keeps its weights.
    for v, p in zip(model.trainable_variables, params):
        np.testing.assert_array_equal(v.numpy(), p.numpy())


def test_maml_accepts_the_mlp_rule_and_adapts():
    base = _tiny_model()
    x, y = _support()
    rule = MLPOptimizer(hidden_sizes=(8,), step_scale=0.05, seed=0)
    maml = MAML(base, inner_steps=2, update_rule=rule, loss="mse")
    maml.compile(optimizer=keras.optimizers.Adam(1e-3))
    phi_ids = {id(v) for v in rule.trainable_variables}
    assert phi_ids <= {id(v) for v in maml.trainable_variables}
    adapted = maml.adapt(x, y)
    assert isinstance(adapted, keras.Model)
    before = float(keras.losses.MeanSquaredError()(y, base(x)))
    after = float(keras.losses.MeanSquaredError()(y, adapted(x)))
    assert after < before, (before, after)


# -- configuration ------------------------------------------------------------------------------

def test_config_round_trip_gives_the_same_rule():
    rule = MLPOptimizer(hidden_sizes=(6, 3), momentum_decays=(0.5, 0.9, 0.99),
                        second_moment_decay=0.99, step_scale=0.02, magnitude_scale=0.2,
                        epsilon=1e-10, param_feature=True, direct_initializer="zeros",
                        output_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=2),
                        seed=4)
    clone = MLPOptimizer.from_config(rule.get_config())
    assert clone.get_config() == rule.get_config()
    generic = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(rule))
    assert isinstance(generic, MLPOptimizer)
    for other in (clone, generic):
        assert [w.shape for w in other.weights] == [w.shape for w in rule.weights]
        assert [w.name for w in other.weights] == [w.name for w in rule.weights]
        other.set_weights(rule.get_weights())
    params = _params("float32")
    outputs = []
    for r in (rule, clone, generic):
        state = r.init_state(params)
        p = params
        for step in range(2):
            p, state = r.apply(_grads(step, dtype="float32"), p, state, step=step)
        outputs.append(_flat(p))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden_sizes": (0,)}, r"hidden_sizes entry must be an int >= 1; got 0"),
    ({"momentum_decays": (0.9,)}, r"at least two decays; got \(0\.9,\)"),
    ({"momentum_decays": (0.5, 1.0)}, r"momentum_decays must lie in \[0, 1\); got 1\.0"),
    ({"step_scale": 0}, r"step_scale must be a finite number > 0; got 0"),
    ({"direct_initializer": "sgd"},
     r"direct_initializer must be one of \('adam', 'zeros'\); got 'sgd'"),
])
def test_bad_constructor_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPOptimizer(**kwargs)


# -- meta-training ------------------------------------------------------------------------------

def test_meta_training_lowers_the_meta_loss_and_traces_once():
    rule = MLPOptimizer(seed=0, step_scale=0.03)
    trainer = MetaOptimizerTrainer(rule, QuadraticOptimizee(num_functions=4),
                                   MetaOptimizerConfig(num_steps=20, unroll_length=10,
                                                       meta_lr=3e-3))
    before = [v.numpy().copy() for v in rule.trainable_variables]
    losses = trainer.train(30)
    assert len(losses) == 30 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, (first, last)  # about 36 -> 10 for seeds 0, 1, 2
    assert trainer.tracing_count == 1
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, rule.trainable_variables))


def test_horizon_curriculum_schedule_and_single_trace():
    config = MetaOptimizerConfig(num_steps=20, unroll_length=5, curriculum_iterations=8)
    assert config.num_unrolls == 4
    # num_segments(i) = min(4, 1 + (i * 4) // 8)
    assert [config.num_segments(i) for i in range(11)] == [1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 4]
    assert MetaOptimizerConfig(num_steps=20, unroll_length=5).num_segments(0) == 4

    rule = MLPOptimizer(hidden_sizes=(8,), seed=0, step_scale=0.03)
    trainer = MetaOptimizerTrainer(rule, QuadraticOptimizee(dim=3, num_functions=2),
                                   MetaOptimizerConfig(num_steps=20, unroll_length=5,
                                                       curriculum_iterations=8, meta_lr=1e-3))
    losses = trainer.train(4)
    assert all(np.isfinite(losses))
    assert trainer.tracing_count == 1
    assert int(trainer.iteration.numpy()) == 4


def test_steps_anneal_when_the_gradient_is_noise_around_a_minimum():
    # Gradients that flip sign every step (noise around a minimum): the momenta average out
    # while v keeps their size, so m_0.9 / sqrt(v) falls and the step falls with it, as
    # Adam's does. Per-tensor feature normalization alone would keep every step full size.
    rule = MLPOptimizer(output_initializer="zeros", step_scale=0.1, dtype="float64", seed=0)
    rng = np.random.RandomState(0)
    p = tf.constant(rng.randn(40))
    magnitude = np.abs(rng.randn(40)) + 0.5
    state = rule.init_state([p])
    m, v = np.zeros([40, 4]), np.zeros([40])
    sizes = []
    for step in range(300):
        g = magnitude * (-1.0) ** step
        (delta,), state = rule.updates([tf.constant(g)], [p], state, step=step)
        m, v = _np_accumulate(g, m, v)
        ratio = m[:, 1] / np.sqrt(v + 1e-12)
        expected_factor = min(1.0, float(np.sqrt(np.mean(ratio ** 2) + 1e-12)))
        np.testing.assert_allclose(float(rule.annealing(state[0])), expected_factor, rtol=1e-12)
        sizes.append(float(np.sqrt(np.mean(delta.numpy() ** 2))))
    # Full-size steps while m / sqrt(v) is large early on, then far smaller ones.
    assert sizes[0] == pytest.approx(0.1, rel=1e-6)
    assert sizes[-1] < 0.15 * sizes[0]  # m_0.9 / sqrt(v) is about 0.1 by then
    # A consistent gradient keeps the factor at 1: the rule still makes full steps.
    steady = rule.init_state([p])
    for step in range(300):
        _, steady = rule.updates([tf.constant(magnitude)], [p], steady, step=step)
    assert float(rule.annealing(steady[0])) == 1.0
