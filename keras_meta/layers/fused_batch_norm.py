"""Training-mode fused batch norm whose second derivative runs on the fused kernels too.

TensorFlow's fused batch norm (`FusedBatchNormV3`) has a fast forward and a fast first
derivative (`FusedBatchNormGradV3`), but the gradient TensorFlow registers for that derivative
rebuilds the whole backward pass from plain ops and differentiates it with a tape: some 40
passes over the activation tensor, each a separate op, plus the reductions that undo every
broadcast. Second-order MAML pays it on every support-set batch norm of every inner step; on
the Omniglot 20-way network (5 inner steps) element-wise ops were about a third of the step.

`fused_batch_norm` keeps both fused kernels and gives their derivative in closed form
(`closed_form_batch_norm.second_derivative`, derived there). For float32 activations that
closed form is evaluated on the fused kernels themselves (`_fused_second_derivative`):

* its `d/d dy` is the backward pass for the upstream gradient `a`, plus `b * xhat + c`: one
  `FusedBatchNormGradV3` call, which also gives the sums `sum(a)` and `sum(a * xhat)`, and
  one inference-mode `FusedBatchNormV3` (an affine map of `xhat` in a single pass);
* `sum(dy)` and `sum(dy * xhat)` are the first derivative's own outputs, and the batch's mean
  and variance the forward pass's;
* `d/d x` is one more affine map of `xhat` plus two scaled tensors.

That is 9 ops over activation-sized tensors where the plain-op form runs 22. The
kernels' outputs do not carry the statistics' dependence on `x` to a further derivative, so a
third derivative goes through the plain-op form instead (its custom gradient), which is
differentiable again. bfloat16 and float16 activations keep the plain-op form on float32
casts. Tests: `tests/layers/test_fused_batch_norm.py` against plain ops in float64 (second
and third order) and against TensorFlow's registered form; `benchmarks/batch_norm_second_order.py`
times the forms.
"""

import tensorflow as tf

from keras_meta.layers.closed_form_batch_norm import second_derivative


def fused_batch_norm(x, scale, offset, epsilon):
    """Batch norm with the batch's statistics, through TensorFlow's fused kernels.

    Args:
        x: `[N, H, W, C]` activations, channels last: float32, or bfloat16 or float16
            (mixed precision), which the kernels take as they are, with float32 statistics.
        scale, offset: `[C]` float32 `gamma` and `beta`.
        epsilon: added to the variance; the fused kernel needs at least 1.001e-5.

    Returns:
        `[N, H, W, C]`, normalized per channel over `N, H, W`, with exact first and second
        derivatives for `x`, `scale` and `offset`.

    Example:

    >>> x = tf.random.normal([8, 4, 4, 3])
    >>> y = fused_batch_norm(x, tf.ones([3]), tf.zeros([3]), 1e-3)
    """
    # TensorFlow's own messages for these name neither the layer nor the limit.
    if x.shape.rank != 4:
        raise ValueError(f"fused_batch_norm needs [N, H, W, C] activations; got shape {x.shape}.")
    if epsilon < 1.001e-5:
        raise ValueError(
            f"fused_batch_norm needs epsilon >= 1.001e-5 (TensorFlow's fused kernel); got "
            f"{epsilon!r}. Use closed_form_batch_norm for smaller values.")
    return _fused(x, scale, offset, epsilon, second_on_kernels=True)


def _fused(x, scale, offset, epsilon, second_on_kernels):
    """`fused_batch_norm` without its checks; `second_on_kernels=False` keeps the plain-op
    second derivative for float32 too (what `benchmarks/batch_norm_second_order.py` sets the
    kernels' form against)."""

    @tf.custom_gradient
    def normalize(x, scale, offset):
        empty = tf.constant([], scale.dtype)
        y, _, _, mean, variance, reserve = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=empty, variance=empty, epsilon=epsilon,
            is_training=True)

        def grad(dy):
            return _backward(dy, x, scale, (mean, variance, reserve), epsilon,
                             second_on_kernels)

        return y, grad

    return normalize(x, scale, offset)


def _backward(dy, x, scale, saved, epsilon, second_on_kernels):
    """`(dx, dscale, doffset)` from the fused kernel, with the closed-form derivative."""

    @tf.custom_gradient
    def backward(dy, x, scale):
        # The saved statistics only speed up the kernels, here and in the second derivative,
        # which hands any further derivative to the plain-op form: that recomputes them
        # from `x`, so that no tape misses a dependence on it.
        dx, dscale, doffset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dy, x=x, scale=scale, reserve_space_1=saved[0],
            reserve_space_2=saved[1], reserve_space_3=saved[2], epsilon=epsilon,
            is_training=True)

        def grad(a, b, c):
            if second_on_kernels and x.dtype == scale.dtype:
                return _fused_second_derivative(dy, x, scale, a, b, c, epsilon, saved,
                                                sum_dy_xhat=dscale, sum_dy=doffset)
            # Mixed precision: in the statistics' dtype (float32), as the kernels compute
            # inside (`second_derivative` takes `dy` and `a` in `x`'s dtype); the outputs go
            # back to the dtypes of `dy` and `x`.
            d_dy, d_x, d_scale = second_derivative(
                dy, tf.cast(x, scale.dtype), scale, a, b, c, epsilon)
            return tf.cast(d_dy, dy.dtype), tf.cast(d_x, x.dtype), d_scale

        return (dx, dscale, doffset), grad

    return backward(dy, x, scale)


def _fused_second_derivative(dy, x, scale, a, b, c, epsilon, saved, sum_dy_xhat, sum_dy):
    """`second_derivative(dy, x, scale, a, b, c, epsilon)` on the fused kernels (float32).

    `saved` is the forward pass's `(mean, variance, reserve)`; `sum_dy_xhat` and `sum_dy` are
    the first derivative's `dscale` and `doffset`. The names follow `closed_form_batch_norm`'s
    docstring, where `xhat` stands for `(x - mean) * s`.
    """
    a = tf.zeros_like(dy) if a is None else a
    b = tf.zeros_like(scale) if b is None else b
    c = tf.zeros_like(scale) if c is None else c
    mean, variance, reserve = saved

    @tf.custom_gradient
    def second(dy, x, scale, a, b, c):
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], scale.dtype)
        s = tf.math.rsqrt(variance + epsilon)
        # The backward pass for `a`: gamma * s * (a - mean(a) - xhat * sum(a * xhat) / M).
        dx_a, sum_a_xhat, sum_a, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=a, x=x, scale=scale, reserve_space_1=mean, reserve_space_2=variance,
            reserve_space_3=reserve, epsilon=epsilon, is_training=True)

        def affine(weight, bias):
            # weight * xhat + bias in one pass: the kernel's inference mode, with the batch's
            # own (biased) statistics.
            return tf.raw_ops.FusedBatchNormV3(
                x=x, scale=weight, offset=bias, mean=mean, variance=variance, epsilon=epsilon,
                is_training=False)[0]

        mean_a, mean_dy = sum_a / count, sum_dy / count
        centred_a_dy = tf.reduce_sum(a * dy, [0, 1, 2]) - count * mean_a * mean_dy
        d_scale = s * (centred_a_dy - sum_a_xhat * sum_dy_xhat / count)
        d_dy = dx_a + affine(b, c)
        g = scale * s * s / count
        k1 = (g * (3 * sum_a_xhat * sum_dy_xhat / count - centred_a_dy)
              - b * s * sum_dy_xhat / count)
        k2 = -g * sum_dy_xhat
        k3 = b * s - g * sum_a_xhat
        d_x = tf.add_n([affine(k1, -(k2 * mean_a + k3 * mean_dy)), k2 * a, k3 * dy])

        def third(*upstream):
            # The kernels above take the statistics as inputs, so a tape through them would
            # miss their dependence on `x`: differentiate the plain-op form, which reads
            # only `dy`, `x`, `scale`, `a`, `b` and `c`.
            inputs = [dy, x, scale, a, b, c]
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                plain = second_derivative(dy, x, scale, a, b, c, epsilon)
            # A tape takes no None among its output gradients; a missing one means zero.
            upstream = [tf.zeros_like(p) if u is None else u for u, p in zip(upstream, plain)]
            return tape.gradient(plain, inputs, output_gradients=upstream,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return (d_dy, d_x, d_scale), third

    return second(dy, x, scale, a, b, c)
