"""Worker shards of an episode stream: put back together they are the one-process stream."""

import numpy as np
import pytest

from keras_meta.data import ClassImageSource, EpisodeConfig, EpisodeSampler
from keras_meta.data.episode_indices import episode_indices, shard_meta_batch_size
from keras_meta.data.sinusoid import sinusoid_episodes


def _ints(dataset):
    return [int(i) for i in dataset]


@pytest.mark.parametrize("meta_batch,workers,start_iteration",
                         [(4, 2, 0), (6, 3, 5), (8, 4, 2), (5, 1, 7), (12, 6, 0)])
def test_shards_in_worker_order_are_the_unsharded_stream(meta_batch, workers, start_iteration):
    start, iterations = start_iteration * meta_batch, 4
    whole = _ints(episode_indices(start, start + iterations * meta_batch))
    shards = [_ints(episode_indices(start, start + iterations * meta_batch,
                                    meta_batch_size=meta_batch, shard=(w, workers)))
              for w in range(workers)]
    per = meta_batch // workers
    rebuilt = [i for t in range(iterations) for s in shards for i in s[t * per:(t + 1) * per]]
    assert rebuilt == whole
    # Every worker draws distinct tasks.
    assert len(set().union(*map(set, shards))) == len(whole)


def test_a_resumed_worker_continues_its_own_stream():
    full = _ints(episode_indices(0, 40, meta_batch_size=4, shard=(1, 2)))
    resumed = _ints(episode_indices(12, 40, meta_batch_size=4, shard=(1, 2)))
    assert resumed == full[6:]


@pytest.mark.parametrize("kwargs,message", [
    (dict(meta_batch_size=5, shard=(0, 2)), "does not split evenly across 2 workers"),
    (dict(meta_batch_size=4, shard=(2, 2)), r"shard index must be in \[0, 2\)"),
    (dict(meta_batch_size=4, shard=(0, 0)), "shard count must be an int >= 1"),
    (dict(meta_batch_size=4, shard=0), r"shard must be \(index, count\)"),
])
def test_bad_shards_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        episode_indices(0, 8, **kwargs)


def test_a_sharded_stream_starts_at_a_meta_batch_boundary():
    with pytest.raises(ValueError, match="multiple of 4; got 6"):
        episode_indices(6, 40, meta_batch_size=4, shard=(0, 2))


def test_shard_meta_batch_size():
    assert shard_meta_batch_size(8, None) == 8
    assert shard_meta_batch_size(8, (3, 4)) == 2


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_sinusoid_shards_rebuild_the_meta_batch(seed):
    whole = next(iter(sinusoid_episodes(5, 5, 6, seed=seed, start_index=12)))
    parts = [next(iter(sinusoid_episodes(5, 5, 6, seed=seed, start_index=12, shard=(w, 3))))
             for w in range(3)]
    for field, value in zip(whole, zip(*parts)):
        np.testing.assert_array_equal(field.numpy(), np.concatenate([v.numpy() for v in value]))


def test_image_episode_shards_rebuild_the_meta_batch():
    images = np.random.default_rng(0).integers(0, 255, (12, 6, 4, 4, 1), dtype=np.uint8)
    sampler = EpisodeSampler(ClassImageSource(images),
                             EpisodeConfig(3, 1, 2, meta_batch_size=4))
    whole = next(iter(sampler.dataset(seed=5, start=8)))
    parts = [next(iter(sampler.dataset(seed=5, start=8, shard=(w, 2)))) for w in range(2)]
    assert parts[0].support_x.shape[0] == 2
    for field, value in zip(whole, zip(*parts)):
        np.testing.assert_array_equal(field.numpy(), np.concatenate([v.numpy() for v in value]))


def test_endless_streams_are_infinite_and_bounded_ones_count_their_episodes():
    infinite = -1  # tf.data.INFINITE_CARDINALITY
    assert int(episode_indices(3).cardinality()) == infinite
    assert int(episode_indices(8, meta_batch_size=4, shard=(1, 2)).cardinality()) == infinite
    assert _ints(episode_indices(3).take(3)) == [3, 4, 5]
    assert int(episode_indices(3, 10).cardinality()) == 7
    assert int(sinusoid_episodes(5, 5, 25, seed=0).cardinality()) == infinite
    assert int(sinusoid_episodes(5, 5, 25, seed=0, num_episodes=100).cardinality()) == 4
    images = np.zeros((12, 6, 4, 4, 1), np.uint8)
    sampler = EpisodeSampler(ClassImageSource(images), EpisodeConfig(3, 1, 2, meta_batch_size=4))
    assert int(sampler.dataset(seed=0).cardinality()) == infinite
    assert int(sampler.dataset(seed=0, shard=(1, 2)).cardinality()) == infinite
    with pytest.raises(TypeError, match="infinite"):
        len(sinusoid_episodes(5, 5, 25, seed=0))
