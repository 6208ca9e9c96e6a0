"""Task losses reduced the way meta-learning needs them: per task, unscaled by replicas.

A task's loss is the plain mean over its examples, whatever `tf.distribute` strategy is
running: Keras `Loss` objects divide their mean by the number of replicas (for a `fit` whose
replicas sum gradients), which would shrink every inner step. The replicas' share is applied
once, to the meta-loss (`replica_loss_weight`).
"""

import keras
import tensorflow as tf

_LOW_PRECISION = (tf.float16, tf.bfloat16)
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def scalar_loss(loss_fn, y_true, y_pred):
    """`loss_fn(y_true, y_pred)` reduced to a scalar mean (Keras loss objects or functions).

    Predictions in float16/bfloat16 (mixed precision) are cast to float32 first, so the loss
    and its reduction are computed in float32.

    Args:
        loss_fn: a Keras `Loss`, a loss name's function, or any `f(y_true, y_pred)`.
        y_true, y_pred: one task's targets and predictions.

    Returns:
        A scalar tensor.

    Example:

    >>> scalar_loss(keras.losses.MeanSquaredError(), tf.zeros([4, 1]), tf.ones([4, 1]))
    <tf.Tensor: shape=(), dtype=float32, numpy=1.0>
    """
    if y_pred.dtype in _LOW_PRECISION:
        y_pred = tf.cast(y_pred, tf.float32)
    if (isinstance(loss_fn, keras.losses.Loss) and loss_fn.reduction in _MEAN_REDUCTIONS
            and tf.distribute.get_strategy().num_replicas_in_sync > 1):
        return _unscaled_mean_loss(loss_fn, y_true, y_pred)
    value = loss_fn(y_true, y_pred)
    if value.shape.rank != 0:
        value = tf.reduce_mean(value)
    return value


def _unscaled_mean_loss(loss_fn, y_true, y_pred):
    # The same arithmetic as `Loss.__call__` (sum over elements / element count), without
    # the division by the number of replicas.
    y_true = tf.cast(y_true, loss_fn.dtype)
    y_pred = tf.cast(y_pred, loss_fn.dtype)
    values = loss_fn.call(y_true, y_pred)
    count = tf.cast(tf.reduce_prod(tf.shape(values)), values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(values), count)


def per_task_loss(loss_fn, y_true, y_pred):
    """The mean loss of each task, `[T]`, for batched `y_true` / `y_pred` with a task axis.

    Equals `scalar_loss(loss_fn, y_true[t], y_pred[t])` for every `t` (no sample weights).
    """
    # The unreduced `call`: a Keras `Loss` object's own mean would also divide by the number
    # of replicas under a tf.distribute strategy. Losses are computed in at least float32.
    fn = loss_fn.call if isinstance(loss_fn, keras.losses.Loss) else loss_fn
    if isinstance(loss_fn, keras.losses.Loss):
        y_pred = tf.cast(y_pred, loss_fn.dtype)
    elif y_pred.dtype in _LOW_PRECISION:
        y_pred = tf.cast(y_pred, tf.float32)
    values = fn(y_true, y_pred)
    if values.shape.rank is None or values.shape.rank < 1:
        raise ValueError(
            f"The loss must return per-example values to batch tasks; got shape "
            f"{values.shape}.")
    if values.shape.rank == 1:
        return values
    return tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))


def replica_loss_weight():
    """`1 / num_replicas_in_sync` in a replica context (1 outside any strategy).

    A replica's local mean meta-loss times this weight is its share of the global mean: the
    Keras TF optimizer all-reduces the replicas' gradients with SUM, so the shares add up to
    the single-device meta-gradient of the whole meta-batch.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    return 1.0 / replicas
