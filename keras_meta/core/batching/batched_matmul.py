"""The per-task matmuls of task-batched dense layers, in the form XLA's CPU backend runs fastest.

A dense layer's per-task kernel gradient `x^T dy` (`x [T, N, i]`, `dy [T, N, o]`) contracts
over the rows `N`, with the first operand transposed. XLA's CPU backend runs a batched dot as
one small product per task, and with a transposed first operand those products were the
slowest thunks of the compiled sinusoid step (51-53 us each against 16-24 us for the
forward-shaped ones; `benchmarks/xla_thunks.py`). On a transpose materialized first (a copy,
kept from being folded back into the dot by an optimization barrier) the same products take
less than half as long, and the step 0.83-0.87 of its time (`benchmarks/README.md`).

`batched_matmul` is `tf.matmul` for `[T, ., .]` operands whose gradient, at every order, is
`batched_matmul` again, so every contraction over the rows of every derivative takes that
form. Outside XLA on a CPU it is `tf.matmul` itself: the barrier exists only in XLA, and
TensorFlow's own kernels gain nothing from it.
"""

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util


def accelerator_present():
    """Whether this process sees a GPU or a TPU."""
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def xla_on_cpu():
    """Whether the op being built is compiled by XLA for a CPU (no GPU or TPU here)."""
    return (not accelerator_present()
            and control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()))


def _materialized_transpose(a):
    """`a [T, N, i]` as `[T, i, N]`, copied: XLA would otherwise fold it into the next dot.

    Only `batched_matmul`'s forward pass calls it, inside a custom gradient: no tape ever
    differentiates the barrier."""
    (t,) = xla.optimization_barrier(tf.transpose(a, [0, 2, 1]))
    return t


def batched_matmul(a, b, transpose_a=False, transpose_b=False):
    """`tf.matmul(a, b, transpose_a=, transpose_b=)` for rank-3 `a`, `b`; see the module doc.

    Args:
        a, b: `[T, ., .]` tensors of one floating dtype.
        transpose_a, transpose_b: as `tf.matmul`'s (not both).

    Returns:
        The `T` products, exactly as `tf.matmul` defines them; derivatives of every order.

    Example:

    >>> dk = batched_matmul(x, dy, transpose_a=True)  # each task's kernel gradient
    """
    if transpose_a and transpose_b:
        raise ValueError("batched_matmul takes transpose_a or transpose_b, not both.")
    if not xla_on_cpu():
        return tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    @tf.custom_gradient
    def matmul(a, b):
        if transpose_a:
            c = tf.matmul(_materialized_transpose(a), b)
        else:
            c = tf.matmul(a, b, transpose_b=transpose_b)

        def grad(dc):
            # The derivatives of a matmul are matmuls: each contraction over rows keeps the
            # materialized form when an outer tape differentiates these again.
            if transpose_a:  # c = a^T b
                return batched_matmul(b, dc, transpose_b=True), batched_matmul(a, dc)
            if transpose_b:  # c = a b^T
                return batched_matmul(dc, b), batched_matmul(dc, a, transpose_a=True)
            return (batched_matmul(dc, b, transpose_b=True),
                    batched_matmul(a, dc, transpose_a=True))

        return c, grad

    return matmul(a, b)
