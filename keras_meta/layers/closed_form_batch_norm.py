"""Batch norm's first and second derivatives in closed form, for any reduction axes.

Second-order MAML differentiates batch norm's backward pass on every support set of every
inner step. A tape through the plain ops of that backward pass (or TensorFlow's registered
derivative of its fused kernel, which is such a tape) costs some 40 passes over the
activations, each a separate op, plus the reductions that undo every broadcast. The closed
forms here cost about 20.

Per normalized group (a channel, or a task's channel), with `M` elements, `u = x - mean(x)`,
`s = 1 / sqrt(mean(u^2) + epsilon)`, `xhat = u * s`, the backward pass of
`y = gamma * xhat + beta` for an output gradient `dy` is

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
differentiate `s` and the two `xhat` sums through `u`, whose adjoint centres.) Both are plain
ops that read only `x`, `gamma` and `dy`, never a statistic saved by an earlier pass, so they
are differentiable again (third order and up).

`closed_form_batch_norm` is batch norm in plain ops with these derivatives; the fused kernels'
wrapper (`fused_batch_norm.py`) uses `second_derivative` for theirs. Tests:
`tests/layers/test_closed_form_batch_norm.py`, against plain ops and finite differences in
float64.
"""

import tensorflow as tf


def _centred_and_inverse_std(x, axes, epsilon):
    # Centred once: the sums against `u` do not cancel as sums against `x` would.
    u = x - tf.reduce_mean(x, axes, keepdims=True)
    return u, tf.math.rsqrt(tf.reduce_mean(tf.square(u), axes, keepdims=True) + epsilon)


def _count(x, axes):
    return tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)


def closed_form_batch_norm(x, scale, offset, epsilon, axes):
    """Batch norm with the batch's statistics over `axes`, and closed-form derivatives.

    Args:
        x: activations of any float dtype and rank.
        scale, offset: `gamma` and `beta`, shaped to broadcast against `x` with a 1 on every
            axis in `axes` (e.g. `[T, 1, 1, 1, C]` for per-task statistics of
            `[T, N, H, W, C]` over `axes=[1, 2, 3]`).
        epsilon: added to the variance.
        axes: the axes the statistics reduce over (a list of ints).

    Returns:
        `scale * (x - mean) / sqrt(variance + epsilon) + offset`, the same values as plain
        ops give, whose first and second derivatives are the closed forms above.

    Example:

    >>> x = tf.random.normal([4, 5, 8, 8, 3])
    >>> y = closed_form_batch_norm(x, tf.ones([4, 1, 1, 1, 3]), tf.zeros([4, 1, 1, 1, 3]),
    ...                            1e-3, [1, 2, 3])
    """
    axes = list(axes)
    rank = x.shape.rank
    for name, value in (("scale", scale), ("offset", offset)):
        shape = value.shape
        # Gradients come back in the statistics' keepdims shape, so a parameter of another
        # shape would break far from here; say so now.
        if shape.rank != rank or any(shape[axis] != 1 for axis in axes):
            raise ValueError(
                f"closed_form_batch_norm needs {name} of x's rank ({rank}) with 1 on the "
                f"reduced axes {axes} (x has shape {x.shape}); got shape {shape}.")

    @tf.custom_gradient
    def normalize(x, scale, offset):
        u, s = _centred_and_inverse_std(x, axes, epsilon)

        def grad(dy):
            return _backward(dy, x, scale, epsilon, axes)

        return (scale * s) * u + offset, grad

    return normalize(x, scale, offset)


def _backward(dy, x, scale, epsilon, axes):
    """`(dx, dscale, doffset)` in closed form, with the closed-form derivative."""

    @tf.custom_gradient
    def backward(dy, x, scale):
        count = _count(x, axes)
        u, s = _centred_and_inverse_std(x, axes, epsilon)
        d_offset = tf.reduce_sum(dy, axes, keepdims=True)
        sum_dy_u = tf.reduce_sum(dy * u, axes, keepdims=True)
        gamma_s = scale * s
        d_x = (gamma_s * dy - (gamma_s * s * s * sum_dy_u / count) * u
               - gamma_s * d_offset / count)

        def grad(a, b, c):
            return second_derivative(dy, x, scale, a, b, c, epsilon, axes)

        return (d_x, s * sum_dy_u, d_offset), grad

    return backward(dy, x, scale)


def second_derivative(dy, x, scale, a, b, c, epsilon, axes=(0, 1, 2)):
    """The gradients for `(dy, x, scale)` of `<a, dx> + <b, dscale> + <c, doffset>`.

    `(dx, dscale, doffset)` is the batch-norm backward pass of `dy` at `x` and `scale`, with
    statistics over `axes`; the module docstring derives the formulas. `scale`, `b` and `c`
    have `scale`'s shape: `[C]` for channels-last statistics over all other axes (the
    default), or `x`'s rank with 1 on `axes`. A missing upstream gradient counts as zero.
    """
    axes = list(axes)
    dtype = x.dtype
    a = tf.zeros_like(x) if a is None else tf.cast(a, dtype)
    b = tf.zeros_like(scale) if b is None else b
    c = tf.zeros_like(scale) if c is None else c
    dy = tf.cast(dy, dtype)
    keep = scale.shape.rank == x.shape.rank

    def total(v):
        return tf.reduce_sum(v, axes, keepdims=keep)

    count = _count(x, axes)
    u, s = _centred_and_inverse_std(x, axes, epsilon)
    if not keep:
        s = tf.reshape(s, tf.shape(scale))
    mean_a = total(a) / count
    mean_dy = total(dy) / count
    sum_a_xhat = s * total(a * u)
    sum_dy_xhat = s * total(dy * u)
    centred_a_dy = total(a * dy) - count * mean_a * mean_dy
    gamma_s = scale * s
    d_scale = s * (centred_a_dy - sum_a_xhat * sum_dy_xhat / count)
    # Each output as per-group coefficients times the full-size tensors (`u` stands in for
    # `xhat = u * s`), so every large tensor is read once per term.
    d_dy = (gamma_s * a + (s * (b - gamma_s * sum_a_xhat / count)) * u
            + (c - gamma_s * mean_a))
    g = gamma_s * s / count
    k1 = g * (3 * sum_a_xhat * sum_dy_xhat / count - centred_a_dy) - b * s * sum_dy_xhat / count
    k2 = -g * sum_dy_xhat
    k3 = b * s - g * sum_a_xhat
    d_x = (k1 * s) * u + k2 * a + k3 * dy - (k2 * mean_a + k3 * mean_dy)
    return d_dy, d_x, d_scale
