"""The fused batch norm (keras_meta/layers/fused_batch_norm.py): TensorFlow's fused kernels with
the closed-form second derivative, in float32 (the kernels take no float64) against float64 plain
ops within float32's noise floor and against TensorFlow's registered derivative; bfloat16
activations against float32 within bfloat16's rounding.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from bn_helpers import batch_norm_inputs, plain_backward, plain_batch_norm  # noqa: E402

from keras_meta.layers.fused_batch_norm import fused_batch_norm  # noqa: E402

EPSILON = 1e-3


def _plain_batch_norm(x, scale, offset, epsilon):
    return plain_batch_norm(x, scale, offset, epsilon)


def _plain_backward(dy, x, scale):
    return plain_backward(dy, x, scale, EPSILON)


def _inputs(seed, dtype, shape):
    return batch_norm_inputs(seed, dtype, shape)


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
    exact = _second_order(_plain_batch_norm, _inputs(seed, tf.float64, shape))
    v32 = _inputs(seed, tf.float32, shape)
    plain = _errors(_second_order(_plain_batch_norm, v32), exact)
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
    v = _inputs(0, tf.float32, (3, 4, 5, 6))

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
    ops = [op for op in graph.get_operations()]
    types = {op.type for op in ops}
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= types, types
    # The second derivative runs on the kernels too: the backward pass again for its
    # upstream gradient (besides the inner tape's and the outer tape's through the forward
    # pass), and the affine maps of xhat in inference mode; the plain-op form (which takes
    # the mean and variance again with `Mean` ops) is not in the float32 graph.
    assert sum(op.type == "FusedBatchNormGradV3" for op in ops) == 3
    modes = sorted(op.get_attr("is_training") for op in ops if op.type == "FusedBatchNormV3")
    assert modes == [False, False, True], modes
    assert "Mean" not in types, types


def _third_order(norm, v, through="x"):
    """Gradient for (x, scale) of a function of `_second_order`'s gradient for `through`."""
    x, scale, offset, r = v["x"], v["scale"], v["c"], v["dy"]
    with tf.GradientTape() as third:
        third.watch([x, scale])
        with tf.GradientTape() as outer:
            outer.watch([x, scale])
            with tf.GradientTape() as inner:
                inner.watch([x, scale, offset])
                loss = tf.reduce_sum(tf.sin(norm(x, scale, offset, EPSILON)) * r)
            dx, dscale, doffset = inner.gradient(loss, [x, scale, offset])
            value = (tf.reduce_sum(tf.sin(dx) * v["a"]) + tf.reduce_sum(dscale * v["b"])
                     + tf.reduce_sum(doffset * v["c"]))
        if through == "x":
            top = tf.reduce_sum(tf.tanh(outer.gradient(value, x)) * r)
        else:
            top = tf.reduce_sum(tf.tanh(outer.gradient(value, scale)))
    return [g.numpy().astype(np.float64) for g in third.gradient(top, [x, scale])]


@pytest.mark.parametrize("seed,through", [(0, "x"), (1, "x"), (0, "scale")])
def test_fused_third_order_is_float32_rounding_from_float64(seed, through):
    # The float32 second derivative takes the batch's statistics as inputs to the kernels;
    # the third goes through the plain-op form, whose dependence on x is complete. A tape
    # through the kernels instead would drop d(mean)/dx and d(variance)/dx here.
    shape = (6, 5, 5, 8)
    # Through scale's gradient alone, some of the second derivative's outputs get no
    # gradient of their own at third order. Without the plain-op form all three cases land
    # at 4e-2 to 7e-2 relative.
    exact = _third_order(_plain_batch_norm, _inputs(seed, tf.float64, shape), through)
    v32 = _inputs(seed, tf.float32, shape)
    floor = _errors(_third_order(_plain_batch_norm, v32, through), exact).max()
    assert 1e-9 < floor < 1e-3, floor
    ours = _errors(_third_order(fused_batch_norm, v32, through), exact)
    assert ours.max() <= 5 * floor, (ours, floor)


def test_inputs_the_fused_kernel_cannot_take_are_refused_with_what_was_received():
    x = tf.zeros([2, 3, 3, 4])
    with pytest.raises(ValueError, match=r"epsilon >= 1.001e-5.*got 1e-06"):
        fused_batch_norm(x, tf.ones([4]), tf.zeros([4]), 1e-6)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\].*got shape \(2, 3, 4\)"):
        fused_batch_norm(tf.zeros([2, 3, 4]), tf.ones([4]), tf.zeros([4]), EPSILON)


def _second_order_mixed(norm, v, dtype):
    """`_second_order` with the activations (and their gradients) in `dtype`."""
    low = {k: tf.cast(v[k], dtype) for k in ("x", "dy", "a")}
    x, scale, offset, r = low["x"], v["scale"], v["c"], low["dy"]
    with tf.GradientTape() as outer:
        outer.watch([x, scale, offset, r])
        with tf.GradientTape() as inner:
            inner.watch([x, scale, offset])
            y = norm(x, scale, offset, EPSILON)
            loss = tf.reduce_sum(tf.cast(tf.sin(y) * r, tf.float32))
        dx, dscale, doffset = inner.gradient(loss, [x, scale, offset])
        value = (tf.reduce_sum(tf.cast(dx * low["a"], tf.float32))
                 + tf.reduce_sum(dscale * v["b"]) + tf.reduce_sum(doffset * v["c"]))
    grads = outer.gradient(value, [x, scale, offset, r],
                           unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return y, [g.numpy().astype(np.float64) for g in grads]


def test_bfloat16_activations_go_to_the_kernels_as_they_are_with_float32_statistics():
    # mixed_bfloat16: the batched kernel hands bfloat16 activations to the fused kernels
    # without casting them. Against the same values in float32, every derivative to second
    # order is the float32 one rounded to bfloat16 (8 bits: relative 2^-8 per element).
    v = _inputs(0, tf.float32, (8, 6, 6, 16))
    v = {**v, **{k: tf.cast(tf.cast(v[k], tf.bfloat16), tf.float32) for k in ("x", "dy", "a")}}
    y16, low = _second_order_mixed(fused_batch_norm, v, tf.bfloat16)
    y32, wide = _second_order_mixed(fused_batch_norm, v, tf.float32)
    assert y16.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y16, tf.float32).numpy(), y32.numpy(), rtol=1e-2,
                               atol=2e-2)
    errors = _errors(low, wide)
    assert errors.max() < 1e-2, errors  # measured 2e-3 to 4.4e-3
    # The tolerance can fail: without the second derivative (first-order part only) the
    # gradients land far outside it.
    _, first_only = _second_order_mixed(_first_order_only, v, tf.float32)
    assert _errors(first_only, wide).max() > 0.3  # measured 0.62 to 1
    # The kernels ran on bfloat16 (no cast of the activations to float32 around them).

    @tf.function
    def forward(x):
        return fused_batch_norm(x, v["scale"], v["c"], EPSILON)

    graph = forward.get_concrete_function(tf.cast(v["x"], tf.bfloat16)).graph
    kernels = [op for op in graph.get_operations() if op.type == "FusedBatchNormV3"]
    assert [op.get_attr("T") for op in kernels] == [tf.bfloat16]
    assert [op.get_attr("U") for op in kernels] == [tf.float32]
    assert "Cast" not in {op.type for op in graph.get_operations()}
