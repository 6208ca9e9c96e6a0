"""Training-mode fused batch norm whose second derivative is a short closed form.

TensorFlow's fused batch norm (`FusedBatchNormV3`) has a fast forward and a fast first
derivative (`FusedBatchNormGradV3`), but the gradient TensorFlow registers for that derivative
rebuilds the whole backward pass from plain ops and differentiates it with a tape: some 40
passes over the activation tensor, each a separate op, plus the reductions that undo every
broadcast. Second-order MAML pays it on every support-set batch norm of every inner step; on
the Omniglot 20-way network (5 inner steps) element-wise ops were about a third of the step.

`fused_batch_norm` keeps both fused kernels and gives their derivative in closed form
(`closed_form_batch_norm.second_derivative`, derived there): about 20 passes. On the 20-way
support activations a second-order pass through the layer (forward, first and second
derivative) is 1.4x faster than with TensorFlow's form, and the 20-way meta-step 1.16x
(`benchmarks/batch_norm_second_order.py`). Tests: `tests/layers/test_fused_batch_norm.py`
against plain ops in float64 and against TensorFlow's registered form.
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
            # In the statistics' dtype (float32), as the kernels compute inside, also for
            # bfloat16/float16 activations (`second_derivative` takes `dy` and `a` in `x`'s
            # dtype); the outputs go back to the dtypes of `dy` and `x`.
            d_dy, d_x, d_scale = second_derivative(
                dy, tf.cast(x, scale.dtype), scale, a, b, c, epsilon)
            return tf.cast(d_dy, dy.dtype), tf.cast(d_x, x.dtype), d_scale

        return (dx, dscale, doffset), grad

    return backward(dy, x, scale)
