"""Sinusoid regression tasks (Finn et al. 2017, section 5.1) as a `tf.data` pipeline.

A task is y = A sin(x - phase) with A ~ U[0.1, 5.0], phase ~ U[0, pi], x ~ U[-5, 5]. Each
episode is a pure function of (seed, episode index), so a pipeline is reproducible,
independent of threading, and resumable by index.

Two streams map indices to episodes, and a run records which one it draws
(`MAMLTrainConfig.sinusoid_stream`):

* **Stream 2** (the default): episode `i` takes the uniform numbers at positions
  `i * P .. (i + 1) * P - 1` of one Philox stream keyed by the seed (`P`: the episode's
  2 + K + Q numbers, rounded up to whole Philox blocks). A meta-batch is a contiguous range of
  indices, so it is one random op. That is about 0.05 ms where stream 1's per-episode loop took
  0.7 ms, which cost the trainer a third of a compiled sinusoid step.
* **Stream 1** (runs started before stream 2 existed): episode `i` is
  `sample_sinusoid_task([seed, i])`, one small graph per episode. Kept so that runs started on
  it resume on the same tasks and its published figures can be reproduced.
"""

import dataclasses
import math

import tensorflow as tf

from keras_meta._checks import check_int
from keras_meta.data.episode import Episode
from keras_meta.data.episode_indices import ENDLESS, episode_indices, shard_meta_batch_size


@dataclasses.dataclass(frozen=True)
class SinusoidConfig:
    """The sinusoid task family.

    Args:
        amplitude_range: (low, high) of the uniform amplitude.
        phase_range: (low, high) of the uniform phase.
        x_range: (low, high) of the uniform inputs.
    """

    amplitude_range: tuple = (0.1, 5.0)
    phase_range: tuple = (0.0, math.pi)
    x_range: tuple = (-5.0, 5.0)

    def __post_init__(self):
        for name in ("amplitude_range", "phase_range", "x_range"):
            low, high = getattr(self, name)
            if not low < high:
                raise ValueError(f"SinusoidConfig.{name} must have low < high; got {(low, high)}.")


def sample_sinusoid_task(seed, num_shots, num_queries, config=SinusoidConfig(),
                         dtype=tf.float32):
    """One episode from a stateless `seed` (shape [2] int). Returns (Episode, amplitude, phase)."""
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    amp_phase = tf.random.stateless_uniform([2], seeds[0], dtype=dtype)
    amplitude = config.amplitude_range[0] + amp_phase[0] * (
        config.amplitude_range[1] - config.amplitude_range[0])
    phase = config.phase_range[0] + amp_phase[1] * (config.phase_range[1] - config.phase_range[0])
    low, high = config.x_range
    support_x = tf.random.stateless_uniform([num_shots, 1], seeds[1], low, high, dtype=dtype)
    query_x = tf.random.stateless_uniform([num_queries, 1], seeds[2], low, high, dtype=dtype)
    episode = Episode(
        support_x, amplitude * tf.sin(support_x - phase),
        query_x, amplitude * tf.sin(query_x - phase),
    )
    return episode, amplitude, phase


def sinusoid_episodes(num_shots=10, num_queries=None, meta_batch_size=None, seed=0,
                      num_episodes=None, start_index=0, config=SinusoidConfig(),
                      dtype=tf.float32, shard=None, stream=2):
    """A `tf.data.Dataset` of sinusoid `Episode`s.

    Args:
        num_shots: K, support points per task.
        num_queries: query points per task (defaults to `num_shots`, as in the paper).
        meta_batch_size: if given, episodes are batched (with `drop_remainder=True`).
        seed: integer seed; the same seed gives the same episodes.
        num_episodes: finite number of episodes, or `None` for an endless stream.
        start_index: index of the first episode; resuming at `step * meta_batch_size` continues
            a stream exactly where it stopped.
        config: a `SinusoidConfig`.
        shard: `(worker, num_workers)`: only that worker's share of every meta-batch
            (`meta_batch_size / num_workers` tasks; see `episode_indices`).
        stream: which mapping of indices to episodes (module docstring): 2, or 1 for runs
            started before stream 2 existed.

    Example:

    >>> ds = sinusoid_episodes(num_shots=10, meta_batch_size=25, seed=1)
    >>> next(iter(ds)).support_x.shape
    TensorShape([25, 10, 1])
    """
    num_queries = num_shots if num_queries is None else num_queries
    check_int("num_shots", num_shots)
    check_int("num_queries", num_queries)
    check_int("meta_batch_size", meta_batch_size, allow_none=True)
    check_int("start_index", start_index, minimum=0)
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}; got {stream!r}.")
    stop = start_index + num_episodes if num_episodes is not None else ENDLESS
    indices = episode_indices(start_index, stop, meta_batch_size=meta_batch_size, shard=shard)
    size = (shard_meta_batch_size(meta_batch_size, shard) if meta_batch_size is not None
            else _UNBATCHED_BLOCK)

    def sample(batch):
        if stream == 1:
            return _stream_1_episodes(batch, num_shots, num_queries, seed, config, dtype)
        return sinusoid_tasks(seed, batch, num_shots, num_queries, config, dtype)[0]

    # A meta-batch's indices first, then one sampling op over them: tf.data's per-element
    # overhead would otherwise dominate a sinusoid episode, and the pipeline, not the
    # compiled step, bound the trainer. Unbatched streams sample blocks and split them again.
    ds = indices.batch(size, drop_remainder=meta_batch_size is not None, name="meta_batch").map(
        sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True, name="sample_sinusoid")
    if meta_batch_size is None:
        ds = ds.unbatch()
    return ds.prefetch(tf.data.AUTOTUNE)


STREAMS = (1, 2)
# How many episodes an unbatched stream samples per op (then hands out one by one).
_UNBATCHED_BLOCK = 64
_PHILOX = 1  # TensorFlow's RNG_ALG_PHILOX
_PHILOX_WORDS_PER_COUNTER = 4  # 32-bit outputs per Philox counter increment
_SIMD_FLOATS = 16  # the widest packet (AVX-512 float32)


def sinusoid_tasks(seed, indices, num_shots, num_queries=None, config=SinusoidConfig(),
                   dtype=tf.float32):
    """Stream 2's episodes at `indices` (a contiguous int64 range): `(Episode, amplitude, phase)`.

    Pure TF ops, one random op whatever the number of episodes: episode `i` is the uniform
    numbers `i * P .. (i + 1) * P - 1` of the Philox stream of `seed`, so any contiguous range
    of indices is one slice of that stream, equal to sampling the episodes one by one.

    Args:
        seed: the stream's integer seed.
        indices: a 1-D int64 tensor `first, first + 1, ...` (checked in the graph).
        num_shots, num_queries, config, dtype: as in `sinusoid_episodes`.

    Returns:
        The stacked `Episode` (`[n, K, 1]` support, `[n, Q, 1]` query), and the tasks'
        amplitudes and phases (`[n]` each).

    Example:

    >>> episodes, amplitude, phase = sinusoid_tasks(0, tf.range(50, 75, dtype=tf.int64), 10)
    >>> episodes.support_x.shape
    TensorShape([25, 10, 1])
    """
    num_queries = num_shots if num_queries is None else num_queries
    indices = tf.convert_to_tensor(indices, tf.int64)
    count = tf.size(indices, out_type=tf.int64)
    first = indices[0]
    contiguous = tf.debugging.assert_equal(
        indices, first + tf.range(count), message="sinusoid_tasks needs contiguous indices")
    # float64 numbers take two 32-bit Philox words each.
    words = 2 if tf.as_dtype(dtype) == tf.float64 else 1
    per_episode = -(-(2 + num_shots + num_queries) * words // _PHILOX_WORDS_PER_COUNTER)
    numbers_per_episode = per_episode * _PHILOX_WORDS_PER_COUNTER // words
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(
        seed=tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)]))
    with tf.control_dependencies([contiguous]):
        # The low 64 bits of Philox's counter: episode `first` starts `first * per_episode`
        # blocks into the stream (seeds' counters start near 0 there; 2**64 is far away).
        counter += tf.cast(tf.stack([first * per_episode, 0]), tf.uint64)
    u = tf.raw_ops.StatelessRandomUniformV2(
        shape=tf.stack([count * numbers_per_episode]), key=key, counter=counter, alg=_PHILOX,
        dtype=dtype)
    u = tf.reshape(u, [-1, numbers_per_episode])

    def scale(values, value_range):
        low, high = value_range
        return low + values * (high - low)

    amplitude = scale(u[:, 0], config.amplitude_range)
    phase = scale(u[:, 1], config.phase_range)
    x = scale(u[:, 2:2 + num_shots + num_queries], config.x_range)
    # sin over rows padded to whole SIMD packets: Eigen computes a tensor's ragged tail
    # another way than its full packets (1 ulp apart), so without the padding an episode's
    # y would depend on how many episodes were sampled with it.
    width = num_shots + num_queries
    padded = tf.pad(x - phase[:, tf.newaxis], [[0, 0], [0, -width % _SIMD_FLOATS]])
    y = amplitude[:, tf.newaxis] * tf.sin(padded)[:, :width]
    support_x, query_x = x[:, :num_shots, tf.newaxis], x[:, num_shots:, tf.newaxis]
    support_y, query_y = y[:, :num_shots, tf.newaxis], y[:, num_shots:, tf.newaxis]
    return Episode(support_x, support_y, query_x, query_y), amplitude, phase


def _stream_1_episodes(indices, num_shots, num_queries, seed, config, dtype):
    """Stream 1's episodes of a 1-D tensor of `indices`, stacked: one graph per episode."""
    def make(index):
        episode_seed = tf.stack([tf.cast(seed, tf.int64), index])
        return sample_sinusoid_task(episode_seed, num_shots, num_queries, config, dtype)[0]

    signature = Episode(tf.TensorSpec([num_shots, 1], dtype), tf.TensorSpec([num_shots, 1], dtype),
                        tf.TensorSpec([num_queries, 1], dtype),
                        tf.TensorSpec([num_queries, 1], dtype))
    return tf.map_fn(make, indices, fn_output_signature=signature,
                     parallel_iterations=indices.shape[0] or 10)
