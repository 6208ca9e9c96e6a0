"""The sinusoid stream: a meta-batch is the episodes of its indices, however it is sampled."""

import numpy as np
import pytest

from keras_meta.data.sinusoid import sample_sinusoid_task, sinusoid_episodes

import tensorflow as tf


@pytest.mark.parametrize("seed,start,meta_batch", [(0, 0, 25), (3, 50, 4), (7, 10, 1)])
def test_meta_batches_hold_the_episodes_of_their_indices(seed, start, meta_batch):
    batched = list(sinusoid_episodes(5, 7, meta_batch, seed=seed, start_index=start,
                                     num_episodes=2 * meta_batch))
    single = list(sinusoid_episodes(5, 7, seed=seed, start_index=start,
                                    num_episodes=2 * meta_batch))
    assert len(batched) == 2
    for b, episodes in enumerate(batched):
        for t in range(meta_batch):
            index = start + b * meta_batch + t
            direct = sample_sinusoid_task(tf.constant([seed, index], tf.int64), 5, 7)[0]
            for x_batched, x_single, x_direct in zip(episodes, single[b * meta_batch + t],
                                                     direct):
                np.testing.assert_array_equal(x_batched[t].numpy(), x_single.numpy())
                np.testing.assert_array_equal(x_single.numpy(), x_direct.numpy())
    assert batched[0].support_x.shape == (meta_batch, 5, 1)
    assert batched[0].query_y.shape == (meta_batch, 7, 1)
