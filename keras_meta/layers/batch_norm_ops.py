"""The arithmetic every batch-norm layer and kernel here shares, written once.

`moments` is the one place batch statistics are computed (the layer, its task-batched kernel
and the export's frozen statistics all call it), with plain ops so that second derivatives are
exact.
"""

import keras

# "transductive": batch statistics always (the MAML paper); "per_step": MAML++ per-step slots
# with running statistics; "none": no batch norm in the backbone.
BATCH_NORM_MODES = ("transductive", "per_step", "none")


def check_batch_norm_mode(batch_norm, num_inner_steps):
    """`num_inner_steps` as a backbone's batch-norm layers need it: required by "per_step",
    None for the other modes (which accept any value, so that callers can pass one setting for
    every mode). Raises `ValueError` for an unknown mode."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}; got {batch_norm!r}.")
    if batch_norm != "per_step":
        return None
    if num_inner_steps is None:
        raise ValueError("batch_norm='per_step' needs num_inner_steps.")
    return num_inner_steps


def moments(x, axes):
    """Mean and (biased) variance built only from differentiable ops.

    `tf.nn.moments` (behind `keras.ops.moments`) centres with `stop_gradient(mean)`. The first
    derivative is unaffected because the deviations sum to zero, but the dependence of the
    variance on the mean vanishes from the Hessian, so MAML's meta-gradient through it is wrong.
    The deviations are returned so that the normalization can reuse them instead of subtracting
    the mean from the (large) activation tensor a second time.
    """
    mean = keras.ops.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    variance = keras.ops.mean(keras.ops.square(centred), axis=axes, keepdims=True)
    return mean, variance, centred


def broadcast_to_axis(vector, axis, rank, dtype):
    """Casts a per-feature `vector` and shapes it to broadcast along `axis` of a rank-`rank` input.

    Channels-last inputs broadcast the vector as is; other axes need singleton dimensions.
    """
    vector = keras.ops.cast(vector, dtype)
    if axis == rank - 1:
        return vector
    shape = [1] * rank
    shape[axis] = -1
    return keras.ops.reshape(vector, shape)
