"""Batch norm's closed-form derivatives (keras_meta/layers/closed_form_batch_norm.py).

In float64, against a tape through plain-op batch norm and against finite differences, for
channels-last statistics (`[C]` parameters, what the fused kernels use) and per-task
statistics of a task-major tensor (what the task-batched kernel's plain path uses).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from bn_helpers import batch_norm_inputs, plain_backward, plain_batch_norm  # noqa: E402

from keras_meta.layers.closed_form_batch_norm import (  # noqa: E402
    closed_form_batch_norm, second_derivative)

EPSILON = 1e-3
SHAPE = (3, 4, 5, 6)  # [N, H, W, C]


def _plain_batch_norm(x, scale, offset, epsilon=EPSILON):
    return plain_batch_norm(x, scale, offset, epsilon)


def _plain_backward(dy, x, scale):
    return plain_backward(dy, x, scale, EPSILON)


def _inputs(seed, dtype=tf.float64, shape=SHAPE):
    return batch_norm_inputs(seed, dtype, shape)


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




# -- closed_form_batch_norm: per-task statistics of [T, N, H, W, C], as the batched kernel --

TASK_SHAPE = (3, 4, 5, 5, 2)  # [T, N, H, W, C]
TASK_AXES = [1, 2, 3]


def _taped_batch_norm(x, scale, offset, epsilon, axes):
    centred = x - tf.reduce_mean(x, axes, keepdims=True)
    inv = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axes, keepdims=True) + epsilon)
    return centred * inv * scale + offset


def _task_inputs(seed, dtype=tf.float64):
    rng = np.random.default_rng(seed)
    vector = (TASK_SHAPE[0], 1, 1, 1, TASK_SHAPE[-1])
    values = dict(
        x=rng.normal(size=TASK_SHAPE) * 2 + rng.normal(size=vector) * 3,
        scale=rng.normal(size=vector) + 1.0, offset=rng.normal(size=vector),
        r=rng.normal(size=TASK_SHAPE), a=rng.normal(size=TASK_SHAPE),
        b=rng.normal(size=vector), c=rng.normal(size=vector))
    return {k: tf.constant(v, dtype) for k, v in values.items()}


def _derivatives(norm, v, order):
    """First derivatives (and, for order 2, second) of a MAML-like use of batch norm."""
    names = ("x", "scale", "offset")
    inputs = [v[n] for n in names]
    with tf.GradientTape() as outer:
        outer.watch(inputs + [v["r"]])
        with tf.GradientTape() as inner:
            inner.watch(inputs)
            # Non-linear, so that the output gradient depends on x (as in MAML).
            loss = tf.reduce_sum(tf.sin(norm(*inputs, EPSILON, TASK_AXES)) * v["r"])
        first = inner.gradient(loss, inputs)
        value = sum(tf.reduce_sum(g * v[k]) for g, k in zip(first, ("a", "b", "c")))
    if order == 1:
        return first
    return outer.gradient(value, inputs + [v["r"]])


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_per_task_statistics_equal_a_tape_through_plain_ops_in_float64(seed, order):
    v = _task_inputs(seed)
    got = _derivatives(closed_form_batch_norm, v, order)
    want = _derivatives(_taped_batch_norm, v, order)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-9,
                                   atol=1e-9 * float(tf.reduce_max(tf.abs(w))))


def test_per_task_forward_values_are_plain_batch_norm():
    v = _task_inputs(9)
    got = closed_form_batch_norm(v["x"], v["scale"], v["offset"], EPSILON, TASK_AXES)
    want = _taped_batch_norm(v["x"], v["scale"], v["offset"], EPSILON, TASK_AXES)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)


def test_per_task_second_derivative_equals_finite_differences_in_float64():
    v = _task_inputs(21)
    grads = _derivatives(closed_form_batch_norm, v, 2)
    rng = np.random.default_rng(22)
    names = ("x", "scale", "offset", "r")

    def value_at(point):
        return float(sum(tf.reduce_sum(g * point[k]) for g, k in zip(
            _derivatives(_taped_batch_norm, point, 1), ("a", "b", "c"))))

    for _ in range(2):
        direction = {n: tf.constant(rng.normal(size=v[n].shape), tf.float64) for n in names}
        analytic = sum(float(tf.reduce_sum(g * direction[n])) for g, n in zip(grads, names))
        h = 1e-5
        plus = dict(v, **{n: v[n] + h * direction[n] for n in names})
        minus = dict(v, **{n: v[n] - h * direction[n] for n in names})
        numeric = (value_at(plus) - value_at(minus)) / (2 * h)
        assert abs(analytic - numeric) <= 1e-7 * max(1.0, abs(numeric)), (analytic, numeric)


def test_per_task_third_derivative_equals_a_tape_through_plain_ops():
    v = _task_inputs(5)
    names = ("x", "scale", "offset", "r")

    def third(norm):
        with tf.GradientTape() as tape:
            tape.watch([v[n] for n in names])
            second = _derivatives(norm, v, 2)
            value = tf.reduce_sum(second[0] * v["a"]) + tf.reduce_sum(second[1] * v["b"])
        return tape.gradient(value, [v[n] for n in names])

    for g, w in zip(third(closed_form_batch_norm), third(_taped_batch_norm)):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-8,
                                   atol=1e-8 * float(tf.reduce_max(tf.abs(w))))


def test_parameters_of_another_shape_are_refused_with_the_shapes_named():
    v = _task_inputs(0)
    with pytest.raises(ValueError, match=r"scale of x's rank \(5\).*got shape \(2,\)"):
        closed_form_batch_norm(v["x"], tf.ones([2], tf.float64), v["offset"], EPSILON, TASK_AXES)
    with pytest.raises(ValueError, match=r"offset .*1 on the reduced axes \[1, 2, 3\]"):
        closed_form_batch_norm(v["x"], v["scale"], tf.zeros([3, 4, 1, 1, 2], tf.float64),
                               EPSILON, TASK_AXES)
