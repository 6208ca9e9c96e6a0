"""The task-batched kernel of `MetaBatchNormalization`, registered with the core's batching.

In a task-batched call each task normalizes with its own statistics. In the grouped layout
(`[N, H, W, T * C]`) every (task, channel) pair is its own channel, so the per-task moments are
ordinary per-channel moments; in the task-major layout they are taken over all axes but the
task and feature axes. Transductive, channels-last layers only: per-step layers update running
statistics task after task, which only the per-task loop reproduces.

The kernel option `fused_batch_norm` (`batched_functional_call(..., kernel_options=)`, set by
`MAML(fused_batch_norm=)` / `MetaObjective.fused_batch_norm`) chooses, in the grouped layout
with float32 statistics (float32 or bfloat16 activations), between TensorFlow's fused
batch norm (default, `fused_batch_norm.py`) and the plain ops (`closed_form_batch_norm.py`).
Both differentiate in closed form, to any order.
"""

import keras
import tensorflow as tf

from keras_meta.core.batching import register_batched_kernel
from keras_meta.core.batching.layouts import GROUPED, per_task
from keras_meta.layers.closed_form_batch_norm import closed_form_batch_norm
from keras_meta.layers.fused_batch_norm import fused_batch_norm
from keras_meta.layers.meta_batch_normalization import MetaBatchNormalization

# The kernel option that chooses the fused form, and its default when a call does not set it.
FUSED_OPTION = "fused_batch_norm"
FUSED_BATCH_NORM = True


def _batched_batch_norm(layer, params, x, layout, num_tasks, conv=None, options=None):
    fused = (options or {}).get(FUSED_OPTION)
    fused = FUSED_BATCH_NORM if fused is None else bool(fused)
    # Statistics in at least float32, as the layer itself does.
    compute = keras.backend.result_type(x.dtype, "float32")
    rank = x.shape.rank
    if layout == GROUPED:
        n, h, w, tc = x.shape
        channels = tc // num_tasks
        axes = [0, 1, 2]

        def vector(v):
            return tf.reshape(tf.cast(v, compute), [1, 1, 1, num_tasks, channels])
    else:
        if layer._axis != rank - 2:  # the layer's axis counts without the task axis
            raise ValueError(
                f"Task-batched batch norm supports channels-last features only; layer "
                f"{layer.name!r} normalizes axis {layer.axis}.")
        axes = list(range(1, rank - 1))

        def vector(v):
            return per_task(v, rank, compute)
    params = list(params)
    gamma = params.pop(0) if layer.scale else None
    beta = params.pop(0) if layer.center else None
    # (The fused kernel refuses an epsilon below 1.001e-5; such layers take the plain ops.)
    if (fused and layout == GROUPED and compute == tf.float32
            and layer.epsilon >= 1.001e-5):
        # In the grouped layout each (task, channel) pair is its own channel, so TensorFlow's
        # fused batch norm computes exactly the per-task statistics, in one pass forward and
        # one backward (3x faster than the plain ops on the query set). Its second
        # derivative is a closed form in plain ops (`fused_batch_norm`), so the meta-gradient
        # stays exact (tested against the plain-op form).
        scale = tf.ones([tc], compute) if gamma is None else tf.reshape(
            tf.cast(gamma, compute), [tc])
        offset = tf.zeros([tc], compute) if beta is None else tf.reshape(
            tf.cast(beta, compute), [tc])
        # mixed_bfloat16: the kernels take bfloat16 activations as they are and keep their
        # statistics in float32 inside (same values as casting), so the activations, the
        # largest tensors of the step, are not cast up and back down around them, forward and
        # backward: those casts were 14% of the Omniglot 5w1s step's op time. (float16 on CPU
        # runs TensorFlow's generic kernel, no faster than the casts; it keeps them.)
        if x.dtype != tf.bfloat16:
            x = tf.cast(x, compute)
        y = fused_batch_norm(x, scale, offset, layer.epsilon)
        return tf.cast(y, layer.compute_dtype), layout
    # Plain ops, with the derivatives in closed form (`closed_form_batch_norm`): the same
    # values as a tape through them, in half the passes at second order.
    x = tf.cast(x, compute)
    if layout == GROUPED:
        x = tf.reshape(x, [-1, h, w, num_tasks, channels])
    ones = tf.ones([num_tasks, channels if layout == GROUPED else x.shape[-1]], compute)
    scale = vector(ones if gamma is None else gamma)
    offset = vector(tf.zeros_like(ones) if beta is None else beta)
    y = closed_form_batch_norm(x, scale, offset, layer.epsilon, axes)
    if layout == GROUPED:
        y = tf.reshape(y, [-1, h, w, tc])
    return tf.cast(y, layer.compute_dtype), layout


def _problem(layer):
    name = f"{type(layer).__name__} {layer.name!r}"
    if layer.mode != "transductive":
        return (f"{name} has mode={layer.mode!r} (running statistics are updated task after "
                "task, which only the loop reproduces)")
    if layer._axis != len(layer._reduction_axes):
        return f"{name} normalizes axis {layer.axis}, not the last (channels-last) axis"
    return None


register_batched_kernel(MetaBatchNormalization, _batched_batch_norm, _problem)
