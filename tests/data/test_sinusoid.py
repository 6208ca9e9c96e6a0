"""The sinusoid streams: an episode is a pure function of (seed, index), however it is sampled."""

import numpy as np
import pytest

from keras_meta.data.sinusoid import (SinusoidConfig, sample_sinusoid_task, sinusoid_episodes,
                                      sinusoid_tasks)

import tensorflow as tf


def _direct(stream, seed, index, shots, queries):
    """Episode `index` of `stream`, sampled alone."""
    if stream == 1:
        return sample_sinusoid_task(tf.constant([seed, index], tf.int64), shots, queries)[0]
    episodes = sinusoid_tasks(seed, tf.constant([index], tf.int64), shots, queries)[0]
    return [x[0] for x in episodes]


@pytest.mark.parametrize("stream", [1, 2])
@pytest.mark.parametrize("seed,start,meta_batch", [(0, 0, 25), (3, 50, 4), (7, 10, 1)])
def test_meta_batches_hold_the_episodes_of_their_indices(stream, seed, start, meta_batch):
    batched = list(sinusoid_episodes(5, 7, meta_batch, seed=seed, start_index=start,
                                     num_episodes=2 * meta_batch, stream=stream))
    single = list(sinusoid_episodes(5, 7, seed=seed, start_index=start,
                                    num_episodes=2 * meta_batch, stream=stream))
    assert len(batched) == 2 and len(single) == 2 * meta_batch
    for b, episodes in enumerate(batched):
        for t in range(meta_batch):
            index = start + b * meta_batch + t
            direct = _direct(stream, seed, index, 5, 7)
            for x_batched, x_single, x_direct in zip(episodes, single[b * meta_batch + t],
                                                     direct):
                np.testing.assert_array_equal(x_batched[t].numpy(), x_single.numpy())
                np.testing.assert_array_equal(x_single.numpy(), np.asarray(x_direct))
    assert batched[0].support_x.shape == (meta_batch, 5, 1)
    assert batched[0].query_y.shape == (meta_batch, 7, 1)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("shots,queries", [(5, 7), (10, 10), (1, 1), (3, 100)])
def test_stream_2_episodes_do_not_depend_on_what_is_sampled_with_them(shots, queries, dtype):
    # One random op per range: any sub-range (any meta-batch size, any worker's share) must
    # give the same episodes, bit for bit, sin included.
    whole = sinusoid_tasks(3, tf.range(12, 49, dtype=tf.int64), shots, queries, dtype=dtype)[0]
    for first in range(12, 49, 5):
        for count in (1, 3):
            if first + count > 49:
                continue
            part = sinusoid_tasks(3, tf.range(first, first + count, dtype=tf.int64), shots,
                                  queries, dtype=dtype)[0]
            for x_whole, x_part in zip(whole, part):
                assert x_part.dtype == dtype
                np.testing.assert_array_equal(x_whole[first - 12:first - 12 + count].numpy(),
                                              x_part.numpy())


def test_stream_2_tasks_are_the_sinusoid_family():
    config = SinusoidConfig()
    episodes, amplitude, phase = sinusoid_tasks(0, tf.range(0, 4000, dtype=tf.int64), 10, 10)
    a, p, x, y = (amplitude.numpy(), phase.numpy(), episodes.support_x.numpy(),
                  episodes.support_y.numpy())
    np.testing.assert_allclose(y, a[:, None, None] * np.sin(x - p[:, None, None]), atol=1e-5)
    for values, (low, high) in ((a, config.amplitude_range), (p, config.phase_range),
                                (x, config.x_range)):
        assert low <= values.min() and values.max() <= high
        # Uniform: each quarter of the range holds about a quarter of the draws.
        counts = np.histogram(values, bins=4, range=(low, high))[0] / values.size
        np.testing.assert_allclose(counts, 0.25, atol=0.03)
    # Distinct seeds and indices give distinct tasks.
    other = sinusoid_tasks(1, tf.range(0, 4000, dtype=tf.int64), 10, 10)[1].numpy()
    assert len(np.unique(a)) == len(a) and not np.array_equal(a, other)


def test_stream_2_refuses_indices_that_are_not_a_range():
    with pytest.raises(tf.errors.InvalidArgumentError, match="contiguous"):
        sinusoid_tasks(0, tf.constant([4, 6], tf.int64), 5)


def test_the_streams_differ_and_an_unknown_stream_is_refused():
    one, two = (next(iter(sinusoid_episodes(5, meta_batch_size=2, stream=s))) for s in (1, 2))
    assert not np.array_equal(one.support_x.numpy(), two.support_x.numpy())
    with pytest.raises(ValueError, match=r"stream must be one of \(1, 2\); got 3"):
        sinusoid_episodes(5, stream=3)


def test_a_run_config_saved_before_stream_2_reads_as_stream_1():
    from keras_meta.training.config import MAMLTrainConfig

    saved = MAMLTrainConfig().to_dict()
    del saved["sinusoid_stream"]
    assert MAMLTrainConfig.from_dict(saved).sinusoid_stream == 1
    assert MAMLTrainConfig().sinusoid_stream == 2
    with pytest.raises(ValueError, match="sinusoid_stream"):
        MAMLTrainConfig(sinusoid_stream=0)


def test_resuming_a_stream_1_run_on_stream_2_is_refused_naming_the_field():
    from keras_meta.training import run_state
    from keras_meta.training.config import MAMLTrainConfig

    values = MAMLTrainConfig().to_dict()
    del values["sinusoid_stream"]
    saved = MAMLTrainConfig.from_dict(values)
    with pytest.raises(ValueError, match="sinusoid_stream"):
        run_state.resume_changes(saved, MAMLTrainConfig())
    assert run_state.resume_changes(saved, MAMLTrainConfig(sinusoid_stream=1)) == {}
