"""The fused batch norm's closed-form second derivative (keras_meta/layers/fused_batch_norm.py).

The closed form is checked in float64, where TensorFlow's fused kernel does not run, against
a tape through plain-op batch norm and against finite differences; the fused function itself
(float32) against float64 within float32's noise floor and against TensorFlow's registered
second derivative.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_meta.layers.fused_batch_norm import fused_batch_norm, second_derivative  # noqa: E402

EPSILON = 1e-3
SHAPE = (3, 4, 5, 6)  # [N, H, W, C]


def _plain_batch_norm(x, scale, offset, epsilon=EPSILON):
    centred = x - tf.reduce_mean(x, [0, 1, 2])
    inv = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), [0, 1, 2]) + epsilon)
    return centred * inv * scale + offset


def _plain_backward(dy, x, scale):
    """`(dx, dscale, doffset)` of plain-op batch norm, by a tape: the reference first derivative."""
    offset = tf.zeros_like(scale)
    with tf.GradientTape() as tape:
        tape.watch([x, scale, offset])
        y = _plain_batch_norm(x, scale, offset)
    return tape.gradient(y, [x, scale, offset], output_gradients=dy)


def _inputs(seed, dtype=tf.float64, shape=SHAPE):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    # A mean well away from zero and a spread per channel, as conv outputs have.
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, channels) + rng.normal(size=channels) * 4
    values = dict(
        x=x, dy=rng.normal(size=shape), scale=rng.normal(size=channels) + 1.0,
        a=rng.normal(size=shape), b=rng.normal(size=channels), c=rng.normal(size=channels))
    return {k: tf.constant(v, dtype) for k, v in values.items()}


def _projected(v, dy, x, scale):
    """`<a, dx> + <b, dscale> + <c, doffset>`: what the closed form differentiates."""
    dx, dscale, doffset = _plain_backward(dy, x, scale)
    return (tf.reduce_sum(v["a"] * dx) + tf.reduce_sum(v["b"] * dscale)
            + tf.reduce_sum(v["c"] * doffset))


def _closed_form(v):
    return second_derivative(v["dy"], v["x"], v["scale"], v["a"], v["b"], v["c"], EPSILON)


@pytest.mark.parametrize("seed", range(5))
def test_closed_form_equals_a_tape_through_plain_ops_in_float64(seed):
    v = _inputs(seed)
    with tf.GradientTape() as tape:
        tape.watch([v["dy"], v["x"], v["scale"]])
        projected = _projected(v, v["dy"], v["x"], v["scale"])
    expected = tape.gradient(projected, [v["dy"], v["x"], v["scale"]])
    for name, got, want in zip(("dy", "x", "scale"), _closed_form(v), expected):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-9 * float(
            tf.reduce_max(tf.abs(want))), err_msg=name)


def test_closed_form_equals_finite_differences_in_float64():
    v = _inputs(11)
    rng = np.random.default_rng(12)
    grads = _closed_form(v)
    names = ("dy", "x", "scale")
    for _ in range(3):
        direction = {n: tf.constant(rng.normal(size=v[n].shape), tf.float64) for n in names}
        analytic = sum(float(tf.reduce_sum(g * direction[n])) for g, n in zip(grads, names))
        h = 1e-5

        def at(sign, h=h, direction=direction):
            moved = {n: v[n] + sign * h * direction[n] for n in names}
            return float(_projected(v, moved["dy"], moved["x"], moved["scale"]))

        numeric = (at(1) - at(-1)) / (2 * h)
        assert abs(analytic - numeric) <= 1e-7 * max(1.0, abs(numeric)), (analytic, numeric)


def test_closed_form_is_differentiable_again_in_float64():
    # Third order: the closed form is plain ops that read x, scale and dy (never a statistic
    # saved by the forward pass), so a tape through it gives the plain ops' third derivative.
    v = _inputs(3)
    weights = _inputs(4)
    names = ("dy", "x", "scale")

    def reduced(grads):
        return sum(tf.reduce_sum(g * weights[n]) for g, n in zip(grads, names))

    with tf.GradientTape() as tape:
        tape.watch([v[n] for n in names])
        got_value = reduced(_closed_form(v))
    got = tape.gradient(got_value, [v[n] for n in names])
    with tf.GradientTape() as outer:
        outer.watch([v[n] for n in names])
        with tf.GradientTape() as inner:
            inner.watch([v[n] for n in names])
            projected = _projected(v, v["dy"], v["x"], v["scale"])
        want_value = reduced(inner.gradient(projected, [v[n] for n in names]))
    want = outer.gradient(want_value, [v[n] for n in names])
    for name, g, w in zip(names, got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-8,
                                   atol=1e-8 * float(tf.reduce_max(tf.abs(w))), err_msg=name)


def test_missing_upstream_gradients_count_as_zero():
    v = _inputs(5)
    zeros = dict(v, b=tf.zeros_like(v["b"]), c=tf.zeros_like(v["c"]))
    got = second_derivative(v["dy"], v["x"], v["scale"], v["a"], None, None, EPSILON)
    for g, w in zip(got, _closed_form(zeros)):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12)
    got = second_derivative(v["dy"], v["x"], v["scale"], None, v["b"], v["c"], EPSILON)
    for g, w in zip(got, _closed_form(dict(v, a=tf.zeros_like(v["a"])))):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12)


def _second_order(norm, v):
    """Gradient for (x, scale, offset, r) of a function of batch norm's first derivative."""
    x, scale, r = v["x"], v["scale"], v["dy"]
    offset = v["c"]
    with tf.GradientTape() as outer:
        outer.watch([x, scale, offset, r])
        with tf.GradientTape() as inner:
            inner.watch([x, scale, offset])
            # A non-linear loss, so that the output gradient depends on x (as in MAML).
            loss = tf.reduce_sum(tf.sin(norm(x, scale, offset, EPSILON)) * r)
        dx, dscale, doffset = inner.gradient(loss, [x, scale, offset])
        value = (tf.reduce_sum(dx * v["a"]) + tf.reduce_sum(dscale * v["b"])
                 + tf.reduce_sum(doffset * v["c"]))
    return [g.numpy().astype(np.float64) for g in outer.gradient(
        value, [x, scale, offset, r], unconnected_gradients=tf.UnconnectedGradients.ZERO)]


def _tensorflow_fused(x, scale, offset, epsilon):
    return tf.compat.v1.nn.fused_batch_norm(x, scale, offset, epsilon=epsilon,
                                            is_training=True)[0]


def _errors(grads, reference):
    return np.array([np.linalg.norm(g - r) / np.linalg.norm(r) for g, r in zip(grads, reference)])


@pytest.mark.parametrize("seed", range(3))
def test_fused_second_order_is_float32_rounding_from_float64(seed):
    shape = (8, 6, 6, 16)
    exact = _second_order(_plain_batch_norm_with_epsilon, _inputs(seed, tf.float64, shape))
    v32 = _inputs(seed, tf.float32, shape)
    plain = _errors(_second_order(_plain_batch_norm_with_epsilon, v32), exact)
    ours = _errors(_second_order(fused_batch_norm, v32), exact)
    registered = _errors(_second_order(_tensorflow_fused, v32), exact)
    # The float32 noise floor: how far exact plain ops land from float64 in float32.
    floor = max(plain.max(), registered.max())
    assert 1e-9 < floor < 1e-4, (plain, registered)
    assert ours.max() <= 5 * floor, (ours, plain, registered)
    # The tolerance can fail: the first-order part alone (the second derivative dropped, as a
    # `stop_gradient` on the backward pass would) lands far outside it.
    first_only = _second_order(_first_order_only, v32)
    assert _errors(first_only, exact).max() > 1000 * floor


def _plain_batch_norm_with_epsilon(x, scale, offset, epsilon):
    return _plain_batch_norm(x, scale, offset, epsilon)


def _first_order_only(x, scale, offset, epsilon):
    @tf.custom_gradient
    def normalize(x, scale, offset):
        y = _tensorflow_fused(x, scale, offset, epsilon)

        def grad(dy):
            dx, dscale, doffset = _plain_backward(dy, x, scale)
            return (tf.stop_gradient(dx), tf.stop_gradient(dscale), tf.stop_gradient(doffset))

        return y, grad

    return normalize(x, scale, offset)


def test_fused_batch_norm_runs_tensorflows_fused_kernels_forward_and_backward():
    v = _inputs(0, tf.float32)

    @tf.function
    def second(x, scale, offset, r):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(tf.sin(fused_batch_norm(x, scale, offset, EPSILON)) * r)
            value = tf.reduce_sum(tf.square(inner.gradient(loss, x)))
        return outer.gradient(value, x)

    graph = second.get_concrete_function(v["x"], v["scale"], v["c"], v["dy"]).graph
    types = {op.type for op in graph.get_operations()}
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= types, types
