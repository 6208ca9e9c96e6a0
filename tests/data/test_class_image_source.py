import numpy as np
import pytest

from keras_meta.data.class_image_source import ClassImageSource
from keras_meta.data.episode_sampler import EpisodeConfig, EpisodeSampler
from keras_meta.data.meta_splits import MetaSplits


def test_from_labelled_images_groups_pads_and_resizes():
    rng = np.random.default_rng(0)
    labels = np.array([7, 3, 7, 7, 3, 9])
    images = rng.random((6, 16, 16)).astype(np.float32)
    source = ClassImageSource.from_labelled_images(images, labels, image_size=(8, 8))
    assert source.images.dtype == np.uint8 and source.images.shape == (3, 3, 8, 8, 1)
    np.testing.assert_array_equal(source.class_ids, [3, 7, 9])
    np.testing.assert_array_equal(source.counts, [2, 3, 1])
    # Area resize of 2x2 blocks is their mean; stored rounded to uint8.
    want = images[1].reshape(8, 2, 8, 2).mean(axis=(1, 3)) * 255
    np.testing.assert_allclose(source.images[0, 0, :, :, 0], want, atol=0.51)
    assert not source.images[2, 1:].any(), "padding must be zeros"


def test_select_and_rotations():
    source = ClassImageSource(np.zeros([6, 2, 4, 4, 1], np.uint8), class_ids=[10, 11, 12, 13,
                                                                                14, 15])
    split = source.select([13, 10]).with_rotations()
    np.testing.assert_array_equal(split.class_ids, [13, 10])
    assert split.num_classes == 8 and split.num_base_classes == 2
    with pytest.raises(ValueError, match=r"unknown class ids \[99\].*10\.\.15"):
        source.select([10, 99])


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    source = ClassImageSource(rng.integers(0, 256, (3, 4, 5, 5, 1), dtype=np.uint8),
                              counts=[4, 2, 3], class_ids=[5, 6, 8])
    source.save(tmp_path / "s.npz")
    loaded = ClassImageSource.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded.images, source.images)
    np.testing.assert_array_equal(loaded.counts, source.counts)
    np.testing.assert_array_equal(loaded.class_ids, source.class_ids)


@pytest.mark.parametrize("shape", [(4, 8, 8, 1), (2, 3, 4, 8, 8, 1)])
def test_wrong_rank_is_refused(shape):
    with pytest.raises(ValueError, match=r"\[num_classes, images_per_class, height, width, "
                                         r"channels\]; got shape"):
        ClassImageSource(np.zeros(shape, np.uint8))


def test_wrong_rank_of_labelled_images_is_refused():
    with pytest.raises(ValueError, match=r"got shape \(4, 8\)"):
        ClassImageSource.from_labelled_images(np.zeros([4, 8], np.uint8), np.arange(4))


def test_other_bad_sources_are_refused():
    with pytest.raises(ValueError, match="must be uint8.*got float32"):
        ClassImageSource(np.zeros([2, 2, 4, 4, 1], np.float32))
    with pytest.raises(ValueError, match="rotations need square images; got 4x6"):
        ClassImageSource(np.zeros([2, 2, 4, 6, 1], np.uint8), rotations=4)
    with pytest.raises(ValueError, match="rotations must be 1 or 4; got 2"):
        ClassImageSource(np.zeros([2, 2, 4, 4, 1], np.uint8), rotations=2)
    with pytest.raises(ValueError, match="1 or 3 channels; got 2"):
        ClassImageSource(np.zeros([2, 2, 4, 4, 2], np.uint8))


@pytest.mark.parametrize("field", ["num_ways", "num_shots", "num_queries", "meta_batch_size"])
@pytest.mark.parametrize("value", [0, -1, 2.0])
def test_non_positive_config_is_refused(field, value):
    with pytest.raises(ValueError, match=f"EpisodeConfig.{field} must be an int >= 1; "
                                         f"got {value!r}"):
        EpisodeConfig(**{field: value})


def test_dropped_episodes_are_refused():
    with pytest.raises(ValueError, match="num_episodes=600 is not a multiple of "
                                         "meta_batch_size=32: 24 episodes"):
        EpisodeConfig(meta_batch_size=32, num_episodes=600)


def test_more_ways_than_classes_is_refused():
    source = ClassImageSource(np.zeros([3, 5, 4, 4, 1], np.uint8), name="tiny")
    with pytest.raises(ValueError, match="tiny: 5-way episodes need at least 5 classes; the "
                                         "split has 3"):
        EpisodeSampler(source, EpisodeConfig(5, 1, 1))
    EpisodeSampler(source.with_rotations(), EpisodeConfig(5, 1, 1))


def test_more_shots_and_queries_than_images_is_refused():
    source = ClassImageSource(np.zeros([6, 5, 4, 4, 1], np.uint8), counts=[5, 5, 3, 5, 5, 5])
    with pytest.raises(ValueError, match=r"2 shots \+ 2 queries = 4 distinct images per class "
                                         r"are needed, but some class has only 3"):
        EpisodeSampler(source, EpisodeConfig(5, 2, 2))


def test_unknown_split_name_and_overlapping_splits():
    source = ClassImageSource(np.zeros([4, 2, 4, 4, 1], np.uint8))
    splits = MetaSplits({"train": source.select([0, 1]), "test": source.select([2, 3])})
    with pytest.raises(KeyError, match=r"Unknown split 'valid'; expected one of "
                                       r"\['train', 'test'\]"):
        splits["valid"]
    with pytest.raises(ValueError, match="share class id 1"):
        MetaSplits({"train": source.select([0, 1]), "test": source.select([1, 2])})


def test_unknown_tfds_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset_xyz'"):
        ClassImageSource.from_tfds("no_such_dataset_xyz", data_dir=tmp_path)


def test_unprepared_tfds_dataset_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared under"):
        ClassImageSource.from_tfds("omniglot", data_dir=tmp_path)
