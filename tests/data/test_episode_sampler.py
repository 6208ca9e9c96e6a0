import numpy as np
import tensorflow as tf

from keras_meta.data.class_image_source import ClassImageSource
from keras_meta.data.episode import Episode
from keras_meta.data.episode_sampler import EpisodeConfig, EpisodeSampler
from keras_meta.data.meta_splits import MetaSplits

NUM_CLASSES, PER_CLASS, SIZE = 40, 12, 8


def tagged_images(num_classes=NUM_CLASSES, per_class=PER_CLASS, size=SIZE):
    """Images whose pixels say which class and image they are, plus random texture."""
    rng = np.random.default_rng(0)
    images = rng.integers(100, 256, size=(num_classes, per_class, size, size, 1), dtype=np.uint8)
    images[:, :, 0, 0, 0] = np.arange(num_classes)[:, None]
    images[:, :, 0, 1, 0] = np.arange(per_class)[None, :]
    return images


def as_uint8(x):
    return np.round(np.asarray(x) * 255).astype(np.int64)


def first_batch(sampler, seed):
    return next(iter(sampler.dataset(seed=seed)))


def check_episode(episode, config, allowed_classes):
    n, k, q = config.num_ways, config.num_shots, config.num_queries
    support, query = as_uint8(episode.support_x), as_uint8(episode.query_x)
    sy, qy = np.asarray(episode.support_y), np.asarray(episode.query_y)
    assert support.shape == (n * k, SIZE, SIZE, 1) and query.shape == (n * q, SIZE, SIZE, 1)
    assert np.array_equal(np.bincount(sy, minlength=n), np.full(n, k))
    assert np.array_equal(np.bincount(qy, minlength=n), np.full(n, q))
    classes = []
    for label in range(n):
        s, qq = support[sy == label], query[qy == label]
        cls = np.unique(np.concatenate([s[:, 0, 0, 0], qq[:, 0, 0, 0]]))
        assert len(cls) == 1, f"label {label} mixes classes {cls}"
        classes.append(int(cls[0]))
        picked = np.concatenate([s[:, 0, 1, 0], qq[:, 0, 1, 0]])
        assert len(np.unique(picked)) == k + q, "support and query share an image"
    assert len(set(classes)) == n, "a class appears under two labels"
    assert set(classes) <= set(allowed_classes)
    return classes


def test_episode_properties_over_many_seeds():
    source = ClassImageSource(tagged_images())
    splits = MetaSplits({"train": source.select(range(0, 25)),
                         "test": source.select(range(25, 40))})
    config = EpisodeConfig(num_ways=5, num_shots=2, num_queries=3, meta_batch_size=4)
    samplers = {name: EpisodeSampler(split, config) for name, split in splits.items()}
    seen = {name: set() for name in splits}
    # The pipeline maps exactly this function over indices (checked against the dataset in
    # the next tests); calling it eagerly covers 50 seeds without building 100 pipelines.
    for seed in range(50):
        for name, sampler in samplers.items():
            for index in (0, 1 + seed):
                episode = sampler.episode(seed, index)
                seen[name].update(check_episode(episode, config, splits[name].class_ids))
    assert seen["train"] == set(range(25)) and seen["test"] == set(range(25, 40))
    batch = first_batch(samplers["train"], seed=0)
    assert batch.support_x.dtype == tf.float32 and batch.support_y.dtype == tf.int32
    assert batch.support_x.shape == (4, 10, SIZE, SIZE, 1) and batch.query_y.shape == (4, 15)
    for i in range(4):
        check_episode(Episode(*(t[i] for t in batch)), config, range(25))


def test_same_seed_same_episodes_other_seed_other_episodes():
    config = EpisodeConfig(num_ways=5, num_shots=1, num_queries=2, meta_batch_size=8)
    sampler = EpisodeSampler(ClassImageSource(tagged_images()), config)
    a, b, c = (first_batch(sampler, s) for s in (7, 7, 8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.support_x, c.support_x)
    other = EpisodeSampler(ClassImageSource(tagged_images()), config)
    np.testing.assert_array_equal(first_batch(other, 7).query_x, a.query_x)


def test_episode_depends_on_index_only_not_batching_or_parallelism():
    source = ClassImageSource(tagged_images())
    big = EpisodeSampler(source, EpisodeConfig(5, 1, 2, meta_batch_size=6)).dataset(seed=3)
    small = EpisodeSampler(source, EpisodeConfig(5, 1, 2, meta_batch_size=2))
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    serial = small.dataset(seed=3).with_options(options)
    from_big = np.concatenate([e.query_x for e in big.take(2)])
    from_small = np.concatenate([e.query_x for e in serial.take(6)])
    np.testing.assert_array_equal(from_big, from_small)
    # Graph rewrites may turn x / 255 into x * (1 / 255): compare the stored uint8 values.
    np.testing.assert_array_equal(as_uint8(small.episode(3, 4).query_x), as_uint8(from_big[4]))
    resumed = small.dataset(seed=3, start=4)
    np.testing.assert_array_equal(next(iter(resumed)).query_x, from_big[4:6])


def test_classes_and_images_are_roughly_uniform():
    source = ClassImageSource(tagged_images(num_classes=10, per_class=6))
    config = EpisodeConfig(num_ways=2, num_shots=1, num_queries=1, meta_batch_size=100)
    batch = first_batch(EpisodeSampler(source, config), seed=11)
    x = as_uint8(batch.support_x)
    classes = np.bincount(x[..., 0, 0, 0].ravel(), minlength=10)
    images = np.bincount(x[..., 0, 1, 0].ravel(), minlength=6)
    # 200 draws over 10 classes (mean 20) and 6 images (mean 33); bounds are > 4 sigma wide.
    assert classes.min() >= 4 and classes.max() <= 40, classes
    assert images.min() >= 10 and images.max() <= 60, images
    labels = np.asarray(batch.support_y)[:, 0]
    assert 25 <= labels.sum() <= 75, "label order is not random per episode"


def test_padded_classes_only_yield_real_images():
    images = tagged_images(num_classes=6, per_class=10)
    counts = np.array([3, 10, 4, 10, 3, 5])
    source = ClassImageSource(images, counts=counts)
    config = EpisodeConfig(num_ways=6, num_shots=1, num_queries=2, meta_batch_size=16)
    batch = first_batch(EpisodeSampler(source, config), seed=0)
    x = np.concatenate([as_uint8(batch.support_x), as_uint8(batch.query_x)], axis=1)
    cls, img = x[..., 0, 0, 0].ravel(), x[..., 0, 1, 0].ravel()
    assert np.all(img < counts[cls])
    assert np.unique(cls * 10 + img).size == counts.sum(), "not every real image was drawn"


def test_rotation_classes_are_real_rotations_precomputed_or_not():
    images = tagged_images(num_classes=3, per_class=4)
    source = ClassImageSource(images).with_rotations()
    assert source.num_classes == 12
    config = EpisodeConfig(num_ways=12, num_shots=2, num_queries=2, meta_batch_size=2)
    batch = first_batch(EpisodeSampler(source, config), seed=5)
    in_graph = first_batch(EpisodeSampler(source, config, precompute_rotations=False), seed=5)
    for a, b in zip(batch, in_graph):
        np.testing.assert_array_equal(a, b)
    found = set()
    for b in range(2):
        x = np.concatenate([as_uint8(batch.support_x[b]), as_uint8(batch.query_x[b])])
        y = np.concatenate([batch.support_y[b], batch.query_y[b]])
        for label in range(12):
            turns = set()
            for image in x[y == label]:
                matches = [(c, m, k) for c in range(3) for m in range(4) for k in range(4)
                           if np.array_equal(np.rot90(images[c, m], k), image)]
                assert len(matches) == 1, "an episode image is no rotation of a source image"
                turns.add(matches[0][::2])
            assert len(turns) == 1, f"label {label} mixes classes or turns: {turns}"
            found |= turns
    assert found == {(c, k) for c in range(3) for k in range(4)}


def test_fixed_number_of_episodes_then_end():
    config = EpisodeConfig(5, 1, 1, meta_batch_size=25, num_episodes=600)
    sampler = EpisodeSampler(ClassImageSource(tagged_images()), config)
    ds = sampler.dataset(seed=0)
    assert ds.element_spec == sampler.element_spec, "the meta-batch dimension must be static"
    assert config.num_meta_batches == 24
    assert ds.cardinality().numpy() == 24
    assert ds.element_spec.support_x.shape == (25, 5, SIZE, SIZE, 1)
    assert sum(1 for _ in ds) == 24


def test_iterator_checkpoint_resumes(tmp_path):
    sampler = EpisodeSampler(ClassImageSource(tagged_images()), EpisodeConfig(3, 1, 1, 2))
    iterator = iter(sampler.dataset(seed=9))
    for _ in range(3):
        next(iterator)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    path = checkpoint.write(str(tmp_path / "ckpt"))
    expected = [next(iterator).support_x.numpy() for _ in range(2)]
    restored_iterator = iter(sampler.dataset(seed=9))
    tf.train.Checkpoint(iterator=restored_iterator).read(path).assert_consumed()
    for want in expected:
        np.testing.assert_array_equal(next(restored_iterator).support_x, want)


def test_preprocessing_is_applied_in_graph():
    from keras_meta.data.image_preprocessing import ImagePreprocessing

    images = np.zeros([5, 3, SIZE, SIZE, 1], np.uint8)
    source = ClassImageSource(images, preprocessing=ImagePreprocessing((SIZE, SIZE), 1, True))
    batch = first_batch(EpisodeSampler(source, EpisodeConfig(2, 1, 1, 2)), seed=0)
    np.testing.assert_array_equal(batch.support_x, np.ones_like(batch.support_x))


def test_config_round_trip():
    config = EpisodeConfig(20, 1, 5, meta_batch_size=16, num_episodes=32)
    assert EpisodeConfig.from_config(config.get_config()) == config
