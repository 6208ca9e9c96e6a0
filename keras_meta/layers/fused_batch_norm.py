"""Training-mode fused batch norm whose second derivative is one short closed form.

TensorFlow's fused batch norm (`FusedBatchNormV3`) has a fast forward and a fast first
derivative (`FusedBatchNormGradV3`), but the gradient TensorFlow registers for that derivative
rebuilds the whole backward pass from plain ops and differentiates it with a tape: some 40
passes over the activation tensor, each a separate op, plus the reductions that undo every
broadcast. Second-order MAML pays it on every support-set batch norm of every inner step; on
the Omniglot 20-way network (5 inner steps) element-wise ops were about a third of the step.

`fused_batch_norm` keeps both fused kernels and gives their derivative in closed form instead.
Per channel, with `M` elements, `u = x - mean(x)`, `s = 1 / sqrt(mean(u^2) + epsilon)`,
`xhat = u * s`, the first derivative of `y = gamma * xhat + beta` for an output gradient `dy` is

    dx = gamma * s * (dy - mean(dy) - xhat * mean(dy * xhat)),
    dgamma = sum(dy * xhat),   dbeta = sum(dy).

Its derivative, for upstream gradients `(a, b, c)` of `(dx, dgamma, dbeta)`, with
`Sa = sum(a * xhat)`, `Sd = sum(dy * xhat)` and `A = sum(a * dy) - M * mean(a) * mean(dy)`:

    d/d dy    = gamma * s * (a - mean(a) - xhat * Sa / M) + b * xhat + c
    d/d gamma = s * (A - Sa * Sd / M)
    d/d x     = k1 * xhat + k2 * (a - mean(a)) + k3 * (dy - mean(dy)), where
        k1 = gamma * s^2 * (3 * Sa * Sd / M - A) / M - b * s * Sd / M
        k2 = -gamma * s^2 * Sd / M
        k3 = -gamma * s^2 * Sa / M + b * s

(`dx` is linear in `dy` through a symmetric projection, which gives the first line; the others
differentiate `s` and the two `xhat` sums through `u`, whose adjoint centres.) That is about 20
passes. On the 20-way support activations a second-order pass through the layer (forward, first
and second derivative) is 1.4x faster than with TensorFlow's form, and the 20-way meta-step
1.16x (`benchmarks/batch_norm_second_order.py`). It is made of plain ops and reads only `x`, `gamma` and `dy`,
never a statistic saved by the forward pass, so it is differentiable again (third order and
up). Tests: `tests/layers/test_fused_batch_norm.py` against plain ops in float64 and against
TensorFlow's registered form.
"""

import tensorflow as tf

_AXES = (0, 1, 2)


def fused_batch_norm(x, scale, offset, epsilon):
    """Batch norm with the batch's statistics, through TensorFlow's fused kernels.

    Args:
        x: `[N, H, W, C]` float32 (or float16/bfloat16) activations, channels last.
        scale, offset: `[C]` float32 `gamma` and `beta`.
        epsilon: added to the variance; the fused kernel needs at least 1.001e-5.

    Returns:
        `[N, H, W, C]`, normalized per channel over `N, H, W`, with exact first and second
        derivatives for `x`, `scale` and `offset`.

    Example:

    >>> x = tf.random.normal([8, 4, 4, 3])
    >>> y = fused_batch_norm(x, tf.ones([3]), tf.zeros([3]), 1e-3)
    """

    @tf.custom_gradient
    def normalize(x, scale, offset):
        empty = tf.constant([], scale.dtype)
        y, _, _, mean, variance, reserve = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=empty, variance=empty, epsilon=epsilon,
            is_training=True)

        def grad(dy):
            return _backward(dy, x, scale, (mean, variance, reserve), epsilon)

        return y, grad

    return normalize(x, scale, offset)


def _backward(dy, x, scale, saved, epsilon):
    """`(dx, dscale, doffset)` from the fused kernel, with the closed-form derivative."""

    @tf.custom_gradient
    def backward(dy, x, scale):
        # The saved statistics only speed up the kernel; the derivative below recomputes
        # what it needs from `x`, so that no tape misses a dependence on it.
        dx, dscale, doffset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dy, x=x, scale=scale, reserve_space_1=saved[0],
            reserve_space_2=saved[1], reserve_space_3=saved[2], epsilon=epsilon,
            is_training=True)

        def grad(a, b, c):
            return second_derivative(dy, x, scale, a, b, c, epsilon)

        return (dx, dscale, doffset), grad

    return backward(dy, x, scale)


def second_derivative(dy, x, scale, a, b, c, epsilon):
    """The gradients for `(dy, x, scale)` of `<a, dx> + <b, dscale> + <c, doffset>`.

    `(dx, dscale, doffset)` is the batch-norm backward pass of `dy` at `x` and `scale`; the
    module docstring derives the formulas. Statistics are in `x`'s dtype (float32 or wider).
    """
    dtype = x.dtype
    a = tf.zeros_like(x) if a is None else tf.cast(a, dtype)
    b = tf.zeros_like(scale) if b is None else b
    c = tf.zeros_like(scale) if c is None else c
    dy = tf.cast(dy, dtype)
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), dtype)
    # Centred once: the sums below against `u` do not cancel as sums against `x` would.
    u = x - tf.reduce_mean(x, _AXES)
    s = tf.math.rsqrt(tf.reduce_mean(tf.square(u), _AXES) + epsilon)
    mean_a = tf.reduce_mean(a, _AXES)
    mean_dy = tf.reduce_mean(dy, _AXES)
    sum_a_xhat = s * tf.reduce_sum(a * u, _AXES)
    sum_dy_xhat = s * tf.reduce_sum(dy * u, _AXES)
    centred_a_dy = tf.reduce_sum(a * dy, _AXES) - count * mean_a * mean_dy
    gamma_s = scale * s
    d_scale = s * (centred_a_dy - sum_a_xhat * sum_dy_xhat / count)
    # Each output as per-channel coefficients times the full-size tensors (`u` stands in for
    # `xhat = u * s`), so every large tensor is read once per term.
    d_dy = (gamma_s * a + (s * (b - gamma_s * sum_a_xhat / count)) * u
            + (c - gamma_s * mean_a))
    g = gamma_s * s / count
    k1 = g * (3 * sum_a_xhat * sum_dy_xhat / count - centred_a_dy) - b * s * sum_dy_xhat / count
    k2 = -g * sum_dy_xhat
    k3 = b * s - g * sum_a_xhat
    d_x = (k1 * s) * u + k2 * a + k3 * dy - (k2 * mean_a + k3 * mean_dy)
    return d_dy, d_x, d_scale
