"""Which episode indices a stream draws: all of them, or one worker's share of each meta-batch.

Every episode is a pure function of `(seed, index)`, so a stream is fully described by the
indices it draws. One process draws `start, start + 1, ...` and batches them by the
meta-batch size `B`. In multi-worker training, worker `i` of `n` draws only its share of
every meta-batch, the indices `t*B + i*B/n ... t*B + (i+1)*B/n - 1` of iteration `t`. The
workers' shares put back together in worker order are exactly the one-process meta-batch, so
distributed and single-process runs see the same tasks, and a resumed worker continues its
own share exactly, from the iteration alone.
"""

import tensorflow as tf

from keras_meta._checks import check_int

# The stop of an endless stream: far beyond any run, and told to tf.data as infinite (see
# `_endless`), as for any repeated dataset: `len()` refuses, and Keras' `fit` shows no
# epoch length, where it counted 2**62 episodes before.
ENDLESS = 2**62


def shard_meta_batch_size(meta_batch_size, shard):
    """The number of tasks of one shard of a meta-batch; raises `ValueError` unless it divides.

    Args:
        meta_batch_size: the global meta-batch size `B`.
        shard: `(index, count)`, or `None` for the whole meta-batch.
    """
    if shard is None:
        return meta_batch_size
    index, count = _check_shard(shard)
    if meta_batch_size % count:
        raise ValueError(
            f"The meta-batch of {meta_batch_size} tasks does not split evenly across {count} "
            f"workers: use a meta-batch size that is a multiple of {count}.")
    return meta_batch_size // count


def _check_shard(shard):
    if not isinstance(shard, (tuple, list)) or len(shard) != 2:
        raise ValueError(f"shard must be (index, count); got {shard!r}.")
    index, count = shard
    check_int("shard count", count, minimum=1)
    check_int("shard index", index, minimum=0)
    if index >= count:
        raise ValueError(f"shard index must be in [0, {count}); got {index}.")
    return int(index), int(count)


def episode_indices(start=0, stop=ENDLESS, *, meta_batch_size=None, shard=None):
    """A `tf.data.Dataset` of int64 episode indices.

    Args:
        start: the first episode index of the whole stream. With `shard`, a multiple of
            `meta_batch_size` (a worker resumes at an iteration boundary).
        stop: one past the last episode index of the whole stream.
        meta_batch_size: the global meta-batch size; needed with `shard`.
        shard: `(index, count)`: only worker `index` of `count`'s share of each meta-batch.

    Example:

    >>> [int(i) for i in episode_indices(8, 16, meta_batch_size=4, shard=(1, 2))]
    [10, 11, 14, 15]
    """
    check_int("start", start, minimum=0)
    if shard is None:
        return _endless(tf.data.Dataset.range(start, stop, name="episode_index"), stop)
    check_int("meta_batch_size", meta_batch_size)
    index, _ = _check_shard(shard)
    per_shard = shard_meta_batch_size(meta_batch_size, shard)
    if start % meta_batch_size:
        raise ValueError(f"A sharded stream starts at a meta-batch boundary: start must be a "
                         f"multiple of {meta_batch_size}; got {start}.")
    first = tf.constant(index * per_shard, tf.int64)

    def share(iteration):
        offset = iteration * meta_batch_size + first
        return tf.data.Dataset.range(offset, offset + per_shard)

    iterations = tf.data.Dataset.range(start // meta_batch_size, stop // meta_batch_size)
    return _endless(iterations.flat_map(share, name="episode_index"), stop)


def _endless(indices, stop):
    """`indices`, with an infinite cardinality where `stop` is `ENDLESS`.

    A range is cheaper per element than `Dataset.counter` (a scan), so the stream stays a
    range and only its cardinality is set.
    """
    if stop != ENDLESS:
        return indices
    return indices.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
