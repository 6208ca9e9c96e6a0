"""`EpisodePool`: any iteration's meta-batch, exactly the stream's, whatever order it is
asked in."""

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.episode_pool import EpisodePool
from keras_meta.training.task_families import build_task_family


def _stream(task, iteration, batch):
    return next(iter(task.train_dataset(iteration * batch)))


@pytest.mark.parametrize("seed", [0, 5])
def test_the_pool_hands_out_the_streams_meta_batches_in_any_order(seed):
    config = MAMLTrainConfig(meta_batch_size=3, seed=seed)
    task = build_task_family(config)
    pool = EpisodePool(task.train_episodes_at, 3, iterations=4)
    # In order across a refill, a jump forward, a jump back (another step function ran, or
    # a resume), and one iteration twice.
    for iteration in [0, 1, 2, 3, 4, 5, 11, 2, 2, 3]:
        window, first, position = pool(iteration)
        assert first.dtype == position.dtype == tf.int64
        assert int(first) + int(position) == iteration and 0 <= int(position) < 4
        episodes = pool.meta_batch(window, position)
        for got, want in zip(episodes, _stream(task, iteration, 3)):
            assert got.shape == want.shape
            np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_the_pool_computes_a_window_per_fill_not_per_call():
    config = MAMLTrainConfig(meta_batch_size=2)
    task = build_task_family(config)
    pool = EpisodePool(task.train_episodes_at, 2, iterations=5)
    window = pool(0)[0]
    # Inside the window, the same window is handed out: nothing was recomputed.
    assert all(pool(i)[0].support_x is window.support_x for i in range(5))
    assert [int(pool(i)[2]) for i in range(5)] == [0, 1, 2, 3, 4]
    assert pool(5)[0].support_x is not window.support_x
    assert int(pool(5)[2]) == 0


@pytest.mark.parametrize("iteration", [-1, 1.0, True, "3"])
def test_the_pool_refuses_what_is_not_an_iteration(iteration):
    task = build_task_family(MAMLTrainConfig(meta_batch_size=2))
    with pytest.raises(ValueError, match="non-negative int"):
        EpisodePool(task.train_episodes_at, 2)(iteration)


@pytest.mark.parametrize("name,value", [("meta_batch_size", 0), ("iterations", 2.5)])
def test_the_pool_refuses_bad_sizes(name, value):
    task = build_task_family(MAMLTrainConfig(meta_batch_size=2))
    kwargs = {"meta_batch_size": 2, name: value}
    with pytest.raises(ValueError, match=name):
        EpisodePool(task.train_episodes_at, **kwargs)
