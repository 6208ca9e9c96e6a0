"""Sinusoid regression tasks (Finn et al. 2017, section 5.1) as a `tf.data` pipeline.

A task is y = A sin(x - phase) with A ~ U[0.1, 5.0], phase ~ U[0, pi], x ~ U[-5, 5]. Each
episode is drawn from stateless random ops keyed by (seed, episode index), so a pipeline is
reproducible, independent of threading, and resumable by index.
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
                      dtype=tf.float32, shard=None):
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
    stop = start_index + num_episodes if num_episodes is not None else ENDLESS
    indices = episode_indices(start_index, stop, meta_batch_size=meta_batch_size, shard=shard)

    def make(index):
        episode_seed = tf.stack([tf.cast(seed, tf.int64), index])
        return sample_sinusoid_task(episode_seed, num_shots, num_queries, config, dtype)[0]

    if meta_batch_size is None:
        ds = indices.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
                         name="sample_sinusoid")
        return ds.prefetch(tf.data.AUTOTUNE)
    # A meta-batch's indices first, then one in-graph loop over them: the same episodes as
    # mapping each index, at half the cost (tf.data's per-element overhead dominates a
    # sinusoid episode, and the pipeline, not the compiled step, bounded the trainer).
    signature = Episode(tf.TensorSpec([num_shots, 1], dtype), tf.TensorSpec([num_shots, 1], dtype),
                        tf.TensorSpec([num_queries, 1], dtype),
                        tf.TensorSpec([num_queries, 1], dtype))
    size = shard_meta_batch_size(meta_batch_size, shard)
    ds = indices.batch(size, drop_remainder=True, name="meta_batch").map(
        lambda batch: tf.map_fn(make, batch, fn_output_signature=signature,
                                parallel_iterations=size),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True, name="sample_sinusoid")
    return ds.prefetch(tf.data.AUTOTUNE)
