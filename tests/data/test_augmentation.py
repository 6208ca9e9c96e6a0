"""`CropFlip`: each output is a window of the zero-padded image, maybe mirrored; seeded by
the episode, so augmented streams are as reproducible as plain ones."""

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.data import ClassImageSource, EpisodeConfig, EpisodeSampler
from keras_meta.data.augmentation import CropFlip, augmentation


def _images(n=12, h=9, w=7, seed=0):
    return np.random.default_rng(seed).integers(1, 255, (n, h, w, 3)).astype(np.uint8)


def _windows(image, padding):
    """Every crop of the zero-padded image, and its mirror."""
    h, w = image.shape[:2]
    padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)])
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            yield dy, dx, False, crop
            yield dy, dx, True, crop[:, ::-1]


def test_every_output_is_a_padded_window_or_its_mirror_and_all_occur():
    images = _images(n=200)
    out = CropFlip(padding=2)(images, tf.constant([3, 4], tf.int64)).numpy()
    seen = set()
    for image, result in zip(images, out):
        matches = [(dy, dx, flip) for dy, dx, flip, crop in _windows(image, 2)
                   if np.array_equal(crop, result)]
        assert matches, "an output that is no window of its padded image"
        seen.add(matches[0])
    assert len(seen) > 25 and {m[2] for m in seen} == {False, True}


def test_flip_only_and_identity():
    images = _images()
    flipped = CropFlip(padding=0)(images, tf.constant([0, 0], tf.int64)).numpy()
    for image, result in zip(images, flipped):
        assert np.array_equal(result, image) or np.array_equal(result, image[:, ::-1])
    same = CropFlip(padding=0, flip=False)(images, tf.constant([0, 0], tf.int64)).numpy()
    np.testing.assert_array_equal(same, images)


def test_seeded_and_configured_as_the_papers():
    images = _images()
    a = CropFlip(4)(images, tf.constant([1, 2], tf.int64)).numpy()
    b = CropFlip(4)(images, tf.constant([1, 2], tf.int64)).numpy()
    c = CropFlip(4)(images, tf.constant([1, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert CropFlip.for_image_size(84).padding == 8 and CropFlip.for_image_size(32).padding == 4
    assert CropFlip.for_image_size(28).padding == 3
    assert augmentation("none", 84) is None and augmentation("crop_flip", 84) == CropFlip(8)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        augmentation("mixup", 84)
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        CropFlip(-1)


def test_augmented_episodes_keep_their_images_labels_and_reproducibility():
    source = ClassImageSource(np.random.default_rng(1).integers(
        0, 255, (6, 5, 12, 12, 3)).astype(np.uint8))
    config = EpisodeConfig(num_ways=3, num_shots=1, num_queries=2, meta_batch_size=2)
    plain = next(iter(EpisodeSampler(source, config).dataset(seed=5)))
    sampler = EpisodeSampler(source, config, augmentation=CropFlip(2))
    one = next(iter(sampler.dataset(seed=5)))
    two = next(iter(sampler.dataset(seed=5)))
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    np.testing.assert_array_equal(one.support_y.numpy(), plain.support_y.numpy())
    np.testing.assert_array_equal(one.query_y.numpy(), plain.query_y.numpy())
    assert not np.array_equal(one.support_x.numpy(), plain.support_x.numpy())
    # Each augmented image is a window of the plain episode's same image.
    for aug, ref in zip(one.query_x.numpy().reshape(-1, 12, 12, 3),
                        plain.query_x.numpy().reshape(-1, 12, 12, 3)):
        ref_u8 = np.round(ref * 255).astype(np.uint8)
        aug_u8 = np.round(aug * 255).astype(np.uint8)
        assert any(np.array_equal(crop, aug_u8) for *_, crop in _windows(ref_u8, 2))
