"""Episodes whose classes all come from one group (Lake et al.'s within-alphabet tasks)."""

import numpy as np
import pytest

from keras_meta.data import EpisodeConfig, EpisodeSampler
from keras_meta.data.class_image_source import ClassImageSource
from keras_meta.data.omniglot import (alphabet_class_groups, omniglot_alphabets,
                                      omniglot_class_splits)


def _source(num_classes=12):
    # Each image's pixels hold its class id, so an episode names its classes.
    images = np.repeat(np.arange(num_classes, dtype=np.uint8)[:, None, None, None, None], 6,
                       axis=1)
    images = np.broadcast_to(images, (num_classes, 6, 4, 4, 1)).copy()
    return ClassImageSource(images)


def _classes_of(episode):
    return set(np.unique(np.asarray(episode.support_x)).astype(int).tolist())


def test_every_episode_takes_its_classes_from_one_group_over_many_seeds():
    source = _source()
    groups = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11], [1]]
    sampler = EpisodeSampler(source, EpisodeConfig(3, 1, 1, meta_batch_size=1,
                                                   num_episodes=60), class_groups=groups,
                             preprocessing=None)
    seen = set()
    for seed in range(4):
        for index in range(15):
            # The preprocessing scales pixels; recover the ids from the raw sample instead.
            sx, _, _, _ = sampler._sample(seed, index)
            classes = set(np.unique(sx.numpy()).astype(int).tolist())
            assert len(classes) == 3
            owner = [g for g in groups if classes <= set(g)]
            assert owner, classes
            seen.add(tuple(owner[0]))
    # Every group that can fill a 3-way episode is used; the one-class group never is.
    assert seen == {(0, 1, 2, 3), (4, 5, 6), (7, 8, 9, 10, 11)}


def test_without_groups_the_stream_is_unchanged():
    source = _source()
    config = EpisodeConfig(3, 1, 1, meta_batch_size=1)
    plain = EpisodeSampler(source, config)
    again = EpisodeSampler(source, config, class_groups=None)
    for index in range(10):
        a, b = plain._sample(0, index), again._sample(0, index)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_bad_groups_are_refused():
    source = _source()
    config = EpisodeConfig(5, 1, 1, meta_batch_size=1)
    with pytest.raises(ValueError, match=r"no class group has 5 classes for 5-way episodes "
                                         r"\(group sizes: \[2, 3\]\)"):
        EpisodeSampler(source, config, class_groups=[[0, 1], [2, 3, 4]])
    with pytest.raises(ValueError, match=r"class ids \[12\] outside \[0, 12\)"):
        EpisodeSampler(source, config, class_groups=[[0, 1, 2, 3, 12]])


@pytest.mark.slow
def test_omniglot_alphabets_group_lakes_evaluation_characters(omniglot_data_dir,
                                                              omniglot_source_dir):
    alphabet = omniglot_alphabets(omniglot_data_dir, omniglot_source_dir)
    assert alphabet.shape == (1623,) and len(np.unique(alphabet)) == 50
    test = omniglot_class_splits("background_evaluation")["test"]
    background = np.setdiff1d(np.arange(1623), test)
    # Lake et al.: 30 background alphabets and 20 evaluation alphabets, disjoint.
    assert len(np.unique(alphabet[test])) == 20
    assert len(np.unique(alphabet[background])) == 30
    assert not set(alphabet[test]) & set(alphabet[background])
    groups = alphabet_class_groups(test, alphabet, rotations=4)
    assert len(groups) == 20 and sum(len(g) for g in groups) == 659
    # Upright classes only: ids 4j of the rotated split.
    assert all((g % 4 == 0).all() for g in groups)
    assert min(len(g) for g in groups) >= 20  # every evaluation alphabet fills 20-way tasks
    # Cached: the second call reads the file.
    np.testing.assert_array_equal(omniglot_alphabets(omniglot_data_dir), alphabet)
