"""Stateless seeds that name optimizee functions."""

import tensorflow as tf


def as_seed(seed):
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64) or seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(
            f"An optimizee seed must be an int32/int64 tensor of shape [2]; got dtype {seed.dtype} "
            f"and shape {seed.shape}."
        )
    return tf.cast(seed, tf.int64)
