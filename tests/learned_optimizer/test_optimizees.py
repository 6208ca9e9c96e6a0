"""Optimizee families: the paper's test "shifts" (deeper/relu MLPs, a convnet) and RandomScaling.

Each family must be a pure function of its seed (same seed, same function), match the Keras
network it stands for, and keep the default MLP's functions bit-identical to what earlier runs
trained on.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_meta.learned_optimizer.optimizees import (OPTIMIZEE_NAMES, ConvDigitsOptimizee,
                                                     MLPDigitsOptimizee, QuadraticOptimizee,
                                                     RandomScaling, get_optimizee,
                                                     optimizee_name)

SEED = tf.constant([0, 3])
OTHER_SEED = tf.constant([1, 3])

# name -> (builder, expected init shapes); float64 so that the equalities below are tight.
FAMILIES = {
    "quadratic": (lambda: QuadraticOptimizee(dim=5, num_functions=3, dtype="float64"),
                  [(3, 5)]),
    "mlp": (lambda: MLPDigitsOptimizee(batch_size=32, dtype="float64"),
            [(64, 20), (20,), (20, 10), (10,)]),
    "mlp_deep_relu": (lambda: MLPDigitsOptimizee(hidden_units=(12, 7), activation="relu",
                                                 batch_size=32, dtype="float64"),
                      [(64, 12), (12,), (12, 7), (7,), (7, 10), (10,)]),
    "conv": (lambda: ConvDigitsOptimizee(filters=(4, 6), batch_size=32, dtype="float64"),
             [(3, 3, 1, 4), (4,), (3, 3, 4, 6), (6,), (24, 10), (10,)]),
}


def build(name, scaled):
    family = FAMILIES[name][0]()
    return RandomScaling(family, max_log_scale=0.7) if scaled else family


CASES = [(name, scaled) for scaled in (False, True) for name in FAMILIES]
IDS = [f"{'scaled-' if scaled else ''}{name}" for name, scaled in CASES]


def perturbed(params, seed=5):
    """Params off the initialisation (non-zero biases), so every term of the loss matters."""
    return [p + 0.1 * tf.random.stateless_normal(p.shape, [seed, i], dtype=p.dtype)
            for i, p in enumerate(params)]


def batch_indices(optimizee, seed, step):
    """The documented mini-batch scheme: indices drawn from fold_in(seed, step)."""
    batch_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64),
                                                          tf.constant(step, tf.int64))
    return tf.random.stateless_uniform([optimizee.batch_size], batch_seed, 0,
                                       optimizee.num_examples, dtype=tf.int64)


def keras_cross_entropy(model, weights, x, y):
    model.set_weights([np.asarray(w) for w in weights])
    logits = model(x)
    return float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))


@pytest.mark.parametrize("name, scaled", CASES, ids=IDS)
def test_shapes_and_determinism(name, scaled):
    optimizee = build(name, scaled)
    params = optimizee.init_params(SEED)
    assert [tuple(p.shape) for p in params] == FAMILIES[name][1]
    assert all(p.dtype == tf.float64 for p in params) and optimizee.dtype == tf.float64

    again = build(name, scaled)
    for a, b in zip(params, again.init_params(SEED)):
        np.testing.assert_array_equal(a, b)
    losses = optimizee.function_losses(params, SEED, 2)
    assert losses.shape == [optimizee.num_functions]
    np.testing.assert_array_equal(losses, again.function_losses(params, SEED, 2))
    np.testing.assert_array_equal(optimizee.eval_losses(params, SEED),
                                  again.eval_losses(params, SEED))
    assert float(optimizee.loss(params, SEED, 2)) == pytest.approx(float(tf.reduce_sum(losses)))

    other = optimizee.init_params(OTHER_SEED)
    assert not np.array_equal(params[0], other[0])
    assert not np.array_equal(losses, optimizee.function_losses(other, OTHER_SEED, 2))


@pytest.mark.parametrize("name, scaled", CASES, ids=IDS)
def test_config_round_trip_gives_identical_losses(name, scaled):
    optimizee = build(name, scaled)
    rebuilt = type(optimizee).from_config(optimizee.get_config())
    assert rebuilt.get_config() == optimizee.get_config()
    params = perturbed(optimizee.init_params(SEED))
    np.testing.assert_array_equal(optimizee.function_losses(params, SEED, 1),
                                  rebuilt.function_losses(params, SEED, 1))
    np.testing.assert_array_equal(optimizee.eval_losses(params, SEED),
                                  rebuilt.eval_losses(params, SEED))


def test_default_mlp_init_is_unchanged():
    """Golden: the formula of the one-layer sigmoid family before depth and activations."""
    seed = tf.constant([4, 2])
    params = MLPDigitsOptimizee().init_params(seed)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    expected = [tf.random.stateless_normal([64, 20], seeds[0]) / 8.0, tf.zeros([20]),
                tf.random.stateless_normal([20, 10], seeds[1]) / np.sqrt(20), tf.zeros([10])]
    assert len(params) == 4
    for p, e in zip(params, expected):
        assert p.dtype == tf.float32
        np.testing.assert_array_equal(p, e)
    # A one-element tuple is the same family, serialised as before (an int).
    single = MLPDigitsOptimizee(hidden_units=(20,))
    np.testing.assert_array_equal(single.init_params(seed)[0], params[0])
    assert single.get_config()["hidden_units"] == 20
    assert MLPDigitsOptimizee(hidden_units=(20, 20)).get_config()["hidden_units"] == [20, 20]


def test_relu_init_scale_and_activation_change_the_function():
    sigmoid = MLPDigitsOptimizee(dtype="float64")
    relu = MLPDigitsOptimizee(activation="relu", dtype="float64")
    s_params, r_params = sigmoid.init_params(SEED), relu.init_params(SEED)
    # Same draws; He scale on the kernel that feeds the relu, the paper's scale on the output.
    np.testing.assert_allclose(r_params[0], s_params[0] * np.sqrt(2.0), rtol=1e-12)
    np.testing.assert_array_equal(r_params[2], s_params[2])
    assert float(relu.loss(s_params, SEED, 0)) != pytest.approx(
        float(sigmoid.loss(s_params, SEED, 0)), rel=1e-3)


def test_two_layer_mlp_matches_keras():
    optimizee = MLPDigitsOptimizee(hidden_units=(12, 7), activation="relu", batch_size=32,
                                   dtype="float64")
    params = perturbed(optimizee.init_params(SEED))
    model = keras.Sequential([keras.Input((64,), dtype="float64"),
                              keras.layers.Dense(12, activation="relu", dtype="float64"),
                              keras.layers.Dense(7, activation="relu", dtype="float64"),
                              keras.layers.Dense(10, dtype="float64")])
    idx = batch_indices(optimizee, SEED, 3)
    expected = keras_cross_entropy(model, params, tf.gather(optimizee.x, idx),
                                   tf.gather(optimizee.y, idx))
    assert float(optimizee.loss(params, SEED, 3)) == pytest.approx(expected, abs=1e-6)
    assert float(optimizee.eval_losses(params, SEED)[0]) == pytest.approx(
        keras_cross_entropy(model, params, optimizee.x, optimizee.y), abs=1e-6)


def test_convnet_matches_keras():
    optimizee = ConvDigitsOptimizee(filters=(4, 6), batch_size=32, dtype="float64")
    params = perturbed(optimizee.init_params(SEED))
    model = keras.Sequential([
        keras.Input((8, 8, 1), dtype="float64"),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64"),
        keras.layers.MaxPooling2D(2, dtype="float64"),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", dtype="float64"),
        keras.layers.MaxPooling2D(2, dtype="float64"),
        keras.layers.Flatten(dtype="float64"),
        keras.layers.Dense(10, dtype="float64"),
    ])
    idx = batch_indices(optimizee, SEED, 1)
    expected = keras_cross_entropy(model, params, tf.gather(optimizee.x, idx),
                                   tf.gather(optimizee.y, idx))
    assert float(optimizee.loss(params, SEED, 1)) == pytest.approx(expected, abs=1e-6)
    assert float(optimizee.eval_losses(params, SEED)[0]) == pytest.approx(
        keras_cross_entropy(model, params, optimizee.x, optimizee.y), abs=1e-6)


def test_convnet_activations_and_he_init():
    relu = ConvDigitsOptimizee(filters=(4, 6), dtype="float64")
    tanh = ConvDigitsOptimizee(filters=(4, 6), activation="tanh", dtype="float64")
    r_params, t_params = relu.init_params(SEED), tanh.init_params(SEED)
    np.testing.assert_allclose(r_params[0], t_params[0] * np.sqrt(2.0), rtol=1e-12)
    np.testing.assert_array_equal(r_params[4], t_params[4])
    assert float(relu.loss(r_params, SEED, 0)) != pytest.approx(
        float(tanh.loss(r_params, SEED, 0)), rel=1e-3)


def test_convnet_has_a_finite_second_derivative_inside_tf_function():
    optimizee = ConvDigitsOptimizee(filters=(4, 6), batch_size=32, dtype="float64")
    params = perturbed(optimizee.init_params(SEED))
    direction = [tf.random.stateless_normal(p.shape, [9, i], dtype=p.dtype)
                 for i, p in enumerate(params)]

    def gradient(theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = optimizee.loss(theta, SEED, 0)
        return tape.gradient(loss, theta)

    @tf.function
    def hessian_vector_product(theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            g_dot_v = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(gradient(theta), direction)])
        return tape.gradient(g_dot_v, theta)

    hvp = hessian_vector_product(params)
    assert all(h is not None and np.all(np.isfinite(h)) for h in hvp)
    assert sum(float(tf.norm(h)) for h in hvp) > 0.0
    # relu and max-pool are piecewise linear: central differences of the gradient agree.
    eps = 1e-6
    plus = gradient([p + eps * v for p, v in zip(params, direction)])
    minus = gradient([p - eps * v for p, v in zip(params, direction)])
    for h, gp, gm in zip(hvp, plus, minus):
        np.testing.assert_allclose(h, (gp - gm) / (2 * eps), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_random_scaling_starts_where_the_base_starts(name):
    base = FAMILIES[name][0]()
    scaled = RandomScaling(base, max_log_scale=0.7)
    np.testing.assert_allclose(scaled.function_losses(scaled.init_params(SEED), SEED, 2),
                               base.function_losses(base.init_params(SEED), SEED, 2),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scaled.eval_losses(scaled.init_params(SEED), SEED),
                               base.eval_losses(base.init_params(SEED), SEED),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["quadratic", "mlp_deep_relu"])
def test_random_scaling_gradient_is_the_chain_rule(name):
    base = FAMILIES[name][0]()
    scaled = RandomScaling(base, max_log_scale=0.7)
    theta = perturbed(scaled.init_params(SEED))
    scales = scaled.scales(SEED)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        loss = scaled.loss(theta, SEED, 1)
    grads = tape.gradient(loss, theta)
    base_theta = [c * t for c, t in zip(scales, theta)]
    with tf.GradientTape() as tape:
        tape.watch(base_theta)
        base_loss = base.loss(base_theta, SEED, 1)
    base_grads = tape.gradient(base_loss, base_theta)
    assert float(loss) == pytest.approx(float(base_loss), rel=1e-12)
    for g, c, bg in zip(grads, scales, base_grads):
        np.testing.assert_allclose(g, c * bg, rtol=1e-10, atol=1e-14)


def test_random_scaling_scales_are_bounded_and_vary():
    scaled = RandomScaling(MLPDigitsOptimizee(dtype="float64"), max_log_scale=0.5)
    scales = scaled.scales(SEED)
    assert [tuple(c.shape) for c in scales] == [(64, 20), (20,), (20, 10), (10,)]
    for c in scales:
        assert np.all(c >= np.exp(-0.5)) and np.all(c <= np.exp(0.5))
        assert np.std(np.log(c)) > 0.1  # per coordinate, not one scale per tensor
    assert not np.allclose(scales[1][:10], scales[3])  # each parameter has its own stream
    others = scaled.scales(OTHER_SEED)
    assert all(not np.allclose(a, b) for a, b in zip(scales, others))
    # Keyed by the function's seed only: the params passed in just give shapes.
    np.testing.assert_array_equal(scaled.scales(SEED, scaled.init_params(SEED))[0], scales[0])
    # The base family's draws are untouched: theta_0 * c is the base theta_0.
    np.testing.assert_allclose(scaled.init_params(SEED)[0] * scales[0],
                               scaled.optimizee.init_params(SEED)[0], rtol=1e-14)
    assert scaled.num_functions == 1
    assert RandomScaling(QuadraticOptimizee(num_functions=4)).num_functions == 4


@pytest.mark.parametrize("build_bad, match", [
    (lambda: MLPDigitsOptimizee(activation="swish"),
     r"activation must be one of \('sigmoid', 'relu', 'tanh'\); got 'swish'"),
    (lambda: MLPDigitsOptimizee(hidden_units=(20, 0)), r"hidden_units .*; got \(20, 0\)"),
    (lambda: MLPDigitsOptimizee(hidden_units=()), r"hidden_units .*; got \(\)"),
    (lambda: MLPDigitsOptimizee(hidden_units=0), "hidden_units must be an int >= 1; got 0"),
    (lambda: MLPDigitsOptimizee(hidden_units=True), "hidden_units .*; got True"),
    (lambda: ConvDigitsOptimizee(filters=(8,)), r"filters .*two ints.*; got \(8,\)"),
    (lambda: ConvDigitsOptimizee(filters=(8, 2.5)), r"filters .*; got \(8, 2.5\)"),
    (lambda: ConvDigitsOptimizee(activation="swish"), "activation .*; got 'swish'"),
    (lambda: RandomScaling(QuadraticOptimizee(), max_log_scale=0), "max_log_scale .*; got 0"),
    (lambda: RandomScaling(QuadraticOptimizee(), max_log_scale=float("inf")), "got inf"),
])
def test_invalid_arguments_name_the_bad_value(build_bad, match):
    with pytest.raises(ValueError, match=match):
        build_bad()


def test_registry():
    assert OPTIMIZEE_NAMES[:3] == ("quadratic", "mlp_digits", "conv_digits")
    optimizee = get_optimizee("conv_digits", filters=(4, 6))
    assert isinstance(optimizee, ConvDigitsOptimizee) and optimizee.filters == (4, 6)
    assert optimizee_name(optimizee) == "conv_digits"
    assert optimizee_name(MLPDigitsOptimizee()) == "mlp_digits"
    with pytest.raises(ValueError, match="'resnet'.*'quadratic', 'mlp_digits', 'conv_digits'"):
        get_optimizee("resnet")
    with pytest.raises(ValueError, match="RandomScaling is not a registered optimizee family"):
        optimizee_name(RandomScaling(QuadraticOptimizee()))
    config = RandomScaling(optimizee, max_log_scale=0.3).get_config()
    assert config == {"optimizee": {"name": "conv_digits", "config": optimizee.get_config()},
                      "max_log_scale": 0.3}
    config["optimizee"]["name"] = "resnet"
    with pytest.raises(ValueError, match="'resnet'"):
        RandomScaling.from_config(config)
