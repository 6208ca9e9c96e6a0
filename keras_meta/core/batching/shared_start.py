"""The first inner step of a task-batched meta-batch, where every task still has theta.

At step 0 the stacked parameters `[T, ...]` are theta broadcast over the tasks, so a dense
layer's or a convolution's forward pass needs no per-task weights: it is one ordinary matmul
or convolution over all `T * N` support examples, and so is the input gradient. Only the
kernel gradient is per task (each task's inner update needs its own). The batched forms
instead run `T` small matmuls or a grouped convolution, whose kernels are much slower than
the ordinary ones (`benchmarks/grouped_conv.py`); JAX's `vmap` gets the shared form for free,
because it sees that theta carries no task axis.

`shared_matmul` and `shared_conv2d` take the stacked kernels (the inner tape's sources) and
compute with `kernels[0]`. Their custom gradient gives each task's kernel gradient exactly,
and the input gradient from `kernels[0]`. Second order stays exact because the only thing
ever differentiated through the stacked kernels is theta, through the broadcast: its gradient
sums over the tasks, and the sum does not care which slot a term arrives in. The gradient
functions read `kernels` and `x` (the op's inputs, which the outer tape sees), never a value
computed inside the forward pass (which no tape sees), so the Hessian terms are all there.
Tested against the per-task loop in float64 (`tests/core/test_shared_start.py`) and by
finite differences (`tests/core/test_batching.py`, whose batched path starts with it).

The objective passes `SHARED_OPTION` in the kernel options of step 0 only, and only when the
stacked parameters are its own broadcast of theta. Convolutions compiled by XLA for a CPU keep
the patch form (`kernels.py` says why); dense layers are shared everywhere.
"""

import tensorflow as tf

from keras_meta.core.batching.batched_matmul import batched_matmul, xla_on_cpu

# The kernel option that says: every task's parameters in this call are the same tensor.
SHARED_OPTION = "shared_params"


def shared_matmul(x, kernels):
    """`x [T, M, i] @ kernels [T, i, o]` where every `kernels[t]` is equal: one matmul."""
    num_tasks, rows, depth = x.shape
    width = kernels.shape[-1]

    @tf.custom_gradient
    def matmul(x, kernels):
        y = tf.matmul(tf.reshape(x, [-1, depth]), kernels[0])

        def grad(dy):
            if width == 1:
                # An outer product. As a matmul, its derivative for the kernel (second order)
                # is a matrix-vector product that XLA's CPU backend computes element by
                # element inside a loop fusion: 41 of the 493 us of a sinusoid
                # meta-iteration (benchmarks/xla_thunks.py). A broadcast multiply's is one
                # reduction (0.94 of the step's time; graph mode unchanged).
                dx = tf.reshape(dy, [-1, 1]) * tf.reshape(kernels[0], [1, depth])
            elif xla_on_cpu():
                # Its derivative for the kernel contracts over all tasks' rows: the
                # materialized-transpose form (batched_matmul.py), as one batch of one.
                dx = batched_matmul(tf.reshape(dy, [1, -1, width]), kernels[:1],
                                    transpose_b=True)
            else:
                dx = tf.matmul(tf.reshape(dy, [-1, width]), kernels[0], transpose_b=True)
            # Each task's own kernel gradient: what its inner update needs.
            dk = batched_matmul(x, dy, transpose_a=True)
            return tf.reshape(dx, [num_tasks, rows, depth]), dk

        return tf.reshape(y, [num_tasks, rows, width]), grad

    return matmul(x, kernels)


def shared_conv2d(x, kernels, strides, padding, filter_gradient):
    """A convolution of `x [T, N, H, W, C]` with `kernels [T, kh, kw, C, O]`, all equal.

    Args:
        x: the tasks' images, task-major.
        kernels: the stacked kernels (theta broadcast over the tasks).
        strides, padding: as `tf.nn.conv2d` takes them (`padding` "SAME" or "VALID").
        filter_gradient: `filter_gradient(x, dy) -> [T, kh, kw, C, O]`, each task's kernel
            gradient from its images `x [T, N, H, W, C]` and output gradient
            `dy [T, N, oh, ow, O]`, in ops whose own gradients exist (second order).

    Returns:
        `[T, N, oh, ow, O]`.
    """
    num_tasks, n, h, w, c = x.shape

    @tf.custom_gradient
    def conv(x, kernels):
        y = tf.nn.conv2d(tf.reshape(x, [-1, h, w, c]), kernels[0], strides, padding)
        oh, ow, o = y.shape[1:]

        def grad(dy):
            dx = tf.nn.conv2d_transpose(tf.reshape(dy, [-1, oh, ow, o]), kernels[0],
                                        [num_tasks * n, h, w, c], strides, padding)
            return tf.reshape(dx, [num_tasks, n, h, w, c]), filter_gradient(x, dy)

        return tf.reshape(y, [num_tasks, n, oh, ow, o]), grad

    return conv(x, kernels)
