"""Activation layouts inside a task-batched call, and the conversions between them.

`TASK_MAJOR` is `[T, N, ...features]`: one slice per task, what dense layers and the outputs
use. `GROUPED` is `[N, H, W, T * C]`: the tasks folded into the channels, what a grouped
convolution needs (task `t` owns channels `t * C ... t * C + C - 1`).
"""

import tensorflow as tf

TASK_MAJOR = "task_major"
GROUPED = "grouped"


def to_task_major(x, layout, num_tasks):
    if layout == TASK_MAJOR:
        return x
    n, h, w, tc = x.shape
    x = tf.reshape(x, [-1, h, w, num_tasks, tc // num_tasks])
    return tf.transpose(x, [3, 0, 1, 2, 4])


def to_grouped(x, layout, num_tasks):
    if layout == GROUPED:
        return x
    if x.shape.rank != 5:
        raise ValueError(
            f"A task-batched convolution needs images [tasks, batch, height, width, channels]; "
            f"got shape {x.shape}.")
    _, _, h, w, c = x.shape
    x = tf.transpose(x, [1, 2, 3, 0, 4])
    return tf.reshape(x, [-1, h, w, num_tasks * c])


def per_task(value, rank, dtype):
    """A per-task vector `[T, F]` shaped to broadcast over `[T, N, ..., F]` of `rank`."""
    value = tf.cast(value, dtype)
    return tf.reshape(value, [value.shape[0]] + [1] * (rank - 2) + [value.shape[-1]])
