"""The TFDS path on real builders with generated examples (`tfds.testing.mock_data`):
`cifar100` with the CIFAR-FS and FC100 splits, `caltech_birds2011` with CUB's, the cache,
and the errors for a dataset that does not fit the request."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_meta.data.data_error import DataError
from keras_meta.data.image_classes import image_classes, image_meta_splits


def _quiet(*args, **kwargs):
    pass


def generated(num_classes, per_class, sizes=((32, 32),), coarse=False, seed=0):
    """An `as_dataset_fn` for `mock_data`: `per_class` random images of every class (in
    shuffled order), of random sizes among `sizes`; with `coarse`, a `coarse_label` that is
    a function of the class (class // 5), as CIFAR-100's superclasses are."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    shapes = [sizes[i] for i in rng.integers(0, len(sizes), labels.size)]

    def examples():
        for label, (h, w) in zip(labels, shapes):
            ex = {"image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
                  "label": np.int64(label)}
            if coarse:
                ex["coarse_label"] = np.int64(label // 5)
            yield ex

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        signature = {"image": tf.TensorSpec([None, None, 3], tf.uint8),
                     "label": tf.TensorSpec([], tf.int64)}
        if coarse:
            signature["coarse_label"] = tf.TensorSpec([], tf.int64)
        return tf.data.Dataset.from_generator(examples, output_signature=signature)

    return as_dataset


def test_cifar_fs_and_fc100_splits_on_cifar100(tmp_path, capsys):
    with tfds.testing.mock_data(as_dataset_fn=generated(100, 4, coarse=True)):
        source = image_classes("tfds:cifar100", image_size=16, group_key="coarse_label",
                               cache_dir=tmp_path, download=True)
        assert "Caching tfds:cifar100" in capsys.readouterr().out
        assert source.num_classes == 100 and source.counts.tolist() == [4] * 100
        assert source.info["class_groups"] == [c // 5 for c in range(100)]
        fs = image_meta_splits(source, "cifar_fs", printer=_quiet)
        assert {k: v.num_classes for k, v in fs.items()} == {
            "train": 64, "validation": 16, "test": 20}
        fc = image_meta_splits(source, "fc100", printer=_quiet)
        assert {k: v.num_classes for k, v in fc.items()} == {
            "train": 60, "validation": 20, "test": 20}
        # FC100's test superclasses are 0, 7, 12 and 14: here, classes 5g..5g+4 of each.
        assert sorted(fc["test"].class_ids.tolist()) == sorted(
            5 * g + i for g in (0, 7, 12, 14) for i in range(5))
        # Read from the cache the second time.
        again = image_classes("tfds:cifar100", image_size=16, group_key="coarse_label",
                              cache_dir=tmp_path, download=True)
        assert "Caching" not in capsys.readouterr().out
        np.testing.assert_array_equal(again.images, source.images)


def test_cub_split_on_caltech_birds(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=generated(200, 3, sizes=((30, 44), (51, 23)))):
        source = image_classes("tfds:caltech_birds2011", image_size=12, cache_dir=tmp_path,
                               download=True, printer=_quiet)
        assert source.image_shape == (12, 12, 3)
        splits = image_meta_splits(source, "cub", printer=_quiet)
        assert {k: v.num_classes for k, v in splits.items()} == {
            "train": 100, "validation": 50, "test": 50}
        assert splits["validation"].class_ids.tolist() == list(range(1, 200, 4))


def test_a_split_whose_classes_the_data_lacks_is_refused_naming_them(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=generated(90, 2)):
        source = image_classes("tfds:cifar100", image_size=8, cache_dir=tmp_path,
                               download=True, printer=_quiet)
        with pytest.raises(DataError, match=r"classes of the split are not in the dataset: "
                                            r"\[.*'9[0-9] "):
            image_meta_splits(source, "cifar_fs", printer=_quiet)


def test_bad_tfds_requests_are_refused_before_any_decoding(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=generated(100, 2)):
        with pytest.raises(DataError, match="no feature 'picture'.*'image'"):
            image_classes("tfds:cifar100", image_size=8, image_key="picture",
                          cache_dir=tmp_path, download=True)
        with pytest.raises(DataError, match="'id' \\(label_key\\) must be a ClassLabel"):
            image_classes("tfds:cifar100", image_size=8, label_key="id", cache_dir=tmp_path,
                          download=True)
        with pytest.raises(DataError, match="Unknown split"):
            image_classes("tfds:cifar100", image_size=8, split="nope", cache_dir=tmp_path,
                          download=True)
    with pytest.raises(DataError, match="Unknown TFDS dataset 'not_a_dataset_xyz'"):
        image_classes("tfds:not_a_dataset_xyz", image_size=8, cache_dir=tmp_path)
    with pytest.raises(DataError, match="is not prepared under .*download=True"):
        image_classes("tfds:cifar100", image_size=8, cache_dir=tmp_path,
                      data_dir=tmp_path / "empty")
    with tfds.testing.mock_data(num_examples=200):  # random, inconsistent superclasses
        with pytest.raises(DataError, match="'coarse_label' is not a function of 'label'"):
            image_classes("tfds:cifar100", image_size=8, group_key="coarse_label",
                          cache_dir=tmp_path / "x", download=True, printer=_quiet)
