"""`tf.data` streams of N-way K-shot episodes drawn from a `ClassImageSource`."""

import tensorflow as tf

from keras_meta.data import sampling
from keras_meta.data.episode import Episode
from keras_meta.data.episode_config import EpisodeConfig
from keras_meta.data.episode_indices import ENDLESS, episode_indices, shard_meta_batch_size

__all__ = ["EpisodeConfig", "EpisodeSampler"]

# Beyond sampling's own streams (0..3), so augmenting never changes which images are drawn.
_AUGMENT_STREAM = 7


class EpisodeSampler:
    """Meta-batches of classification `Episode`s from one meta-split.

    The pipeline is ``range -> map(sample) -> batch(drop_remainder) -> map(preprocess) ->
    prefetch``: episode `i` is a stateless function of `(seed, i)`, gathered in-graph from the
    source's uint8 tensor, and only the meta-batch is converted to float. It is deterministic
    for any parallelism, and its iterator can be saved and restored with `tf.train.Checkpoint`.

    Args:
        source: the `ClassImageSource` of one meta-split.
        config: an `EpisodeConfig`.
        preprocessing: override of `source.preprocessing` (uint8 -> float32 model inputs).
        precompute_rotations: for a source with rotation classes, keep all four turns of
            every image in memory (4x the uint8 bytes; sampling is then a plain gather, about
            3x faster) instead of turning the chosen images in-graph per episode. Both give
            the same episodes.
        class_groups: `None`, or groups of the source's class ids (a list of int arrays,
            e.g. the characters of each Omniglot alphabet): every episode then takes all its
            classes from one group, chosen uniformly among the groups with at least
            `num_ways` classes (smaller ones are left out; none left is an error).
        augmentation: None, or a callable `(uint8 images [n, h, w, c], seed [2]) -> images`
            (e.g. `CropFlip`) applied to every support and query image of an episode, seeded
            by the episode, so augmented streams stay pure functions of `(seed, index)`.

    Example:

    >>> source = ClassImageSource(np.zeros([10, 20, 28, 28, 1], np.uint8))
    >>> sampler = EpisodeSampler(source, EpisodeConfig(5, 1, 15, meta_batch_size=4))
    >>> next(iter(sampler.dataset(seed=0))).support_x.shape
    TensorShape([4, 5, 28, 28, 1])
    """

    def __init__(self, source, config, preprocessing=None, precompute_rotations=True,
                 class_groups=None, augmentation=None):
        if not isinstance(config, EpisodeConfig):
            raise TypeError(f"config must be an EpisodeConfig; got {type(config).__name__}.")
        if config.num_ways > source.num_classes:
            raise ValueError(f"{source.name}: {config.num_ways}-way episodes need at least "
                             f"{config.num_ways} classes; the split has {source.num_classes}.")
        if config.examples_per_class > source.min_count:
            raise ValueError(
                f"{source.name}: {config.num_shots} shots + {config.num_queries} queries = "
                f"{config.examples_per_class} distinct images per class are needed, but some "
                f"class has only {source.min_count}.")
        self.source = source
        self.config = config
        self.augmentation = augmentation
        self._class_groups = None
        if class_groups is not None:
            self._class_groups = _group_tensors(class_groups, source, config.num_ways)
        self.preprocessing = preprocessing or source.preprocessing
        counts = tf.constant(source.counts, tf.int32)
        self._rotations = source.rotations
        if source.is_memory_mapped:
            # Larger than memory: each episode reads its few images from the mapped file.
            images = _MappedImages(source)
        else:
            # One tensor per sampler: every dataset built from it shares this memory.
            images = tf.constant(source.base_images())
        if source.rotations > 1 and precompute_rotations and not source.is_memory_mapped:
            images, counts = _all_turns(images, counts)
            self._rotations = 1
        self._images, self._counts = images, counts
        # Traced once, so inspecting many episodes does not pay eager per-op dispatch.
        self._episode_fn = tf.function(self._preprocessed_episode, input_signature=[
            tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)])

    @property
    def element_spec(self):
        c = self.config
        h, w = self.preprocessing.image_size
        x = (h, w, self.preprocessing.channels)
        return Episode(
            tf.TensorSpec([c.meta_batch_size, c.num_ways * c.num_shots, *x], tf.float32),
            tf.TensorSpec([c.meta_batch_size, c.num_ways * c.num_shots], tf.int32),
            tf.TensorSpec([c.meta_batch_size, c.num_ways * c.num_queries, *x], tf.float32),
            tf.TensorSpec([c.meta_batch_size, c.num_ways * c.num_queries], tf.int32),
        )

    def episode(self, seed, index):
        """Episode `index` of stream `seed`, unbatched and preprocessed (for inspection)."""
        return self._episode_fn(tf.constant(seed, tf.int64), tf.constant(index, tf.int64))

    def _preprocessed_episode(self, seed, index):
        sx, sy, qx, qy = self._sample(seed, index)
        return Episode(self.preprocessing(sx), sy, self.preprocessing(qx), qy)

    def _sample(self, seed, index):
        c = self.config
        sx, sy, qx, qy = sampling.sample_episode(
            self._images, self._counts, seed, index, c.num_ways, c.num_shots, c.num_queries,
            self._rotations, class_groups=self._class_groups)
        if self.augmentation is not None:
            key = tf.random.experimental.stateless_fold_in(sampling.episode_seed(seed, index),
                                                           _AUGMENT_STREAM)
            both = self.augmentation(tf.concat([sx, qx], 0), key)
            sx, qx = both[:sx.shape[0]], both[sx.shape[0]:]
        return sx, sy, qx, qy

    def dataset(self, seed=0, start=0, shard=None):
        """The stream of meta-batches for `seed`.

        Args:
            seed: int; equal seeds give equal streams.
            start: index of the first episode (resume without a checkpoint: skipping
                `n` meta-batches is `start=n * meta_batch_size`).
            shard: `(worker, num_workers)`: only that worker's share of every meta-batch, a
                meta-batch of `meta_batch_size / num_workers` tasks (see `episode_indices`).

        Returns:
            A `tf.data.Dataset` of `Episode`s with a static meta-batch dimension:
            `support_x` float32 `[B, N*K, h, w, c]`, `support_y` int32 `[B, N*K]`,
            `query_x` `[B, N*Q, h, w, c]`, `query_y` `[B, N*Q]`.
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int; got {type(seed).__name__}.")
        c = self.config
        stop = ENDLESS if c.num_episodes is None else c.num_episodes
        if not 0 <= start <= stop:
            raise ValueError(f"start must be in [0, {stop}]; got {start}.")

        def sample(index):
            return self._sample(seed, index)

        def preprocess(sx, sy, qx, qy):
            return Episode(self.preprocessing(sx), sy, self.preprocessing(qx), qy)

        ds = episode_indices(start, stop, meta_batch_size=c.meta_batch_size, shard=shard)
        ds = ds.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
                    name="sample_episode")
        ds = ds.batch(shard_meta_batch_size(c.meta_batch_size, shard), drop_remainder=True,
                      name="meta_batch")
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
                    name="preprocess")
        return ds.prefetch(tf.data.AUTOTUNE, name="prefetch")


class _MappedImages:
    """A memory-mapped `ClassImageSource` seen by `sampling.sample_episode`: a static shape,
    and a gather that reads only the chosen images from disk."""

    def __init__(self, source):
        import numpy as np

        self._array = source.images
        self._rows = (np.arange(source.num_base_classes) if source.rows is None
                      else np.asarray(source.rows))
        self.shape = tf.TensorShape([source.num_base_classes, *source.images.shape[1:]])

    def _read(self, rows, picks):
        return self._array[self._rows[rows][:, None], picks]

    def gather(self, rows, picks):
        """uint8 `[n, m, h, w, c]`: image `picks[i, j]` of the class at row `rows[i, j]`."""
        out = tf.numpy_function(lambda r, p: self._read(r[:, 0], p), [rows, picks], tf.uint8,
                                stateful=False, name="read_mapped_images")
        return tf.ensure_shape(out, [rows.shape[0], picks.shape[1], *self.shape[2:]])


def _all_turns(images, counts):
    """Base class b turned k times becomes class 4b + k, the id `sample_episode` would use."""
    n, m, h, w, c = images.shape
    flat = tf.reshape(images, [n * m, h, w, c])
    turns = tf.stack([tf.reshape(tf.image.rot90(flat, k), [n, m, h, w, c]) for k in range(4)],
                     axis=1)
    return tf.reshape(turns, [n * 4, m, h, w, c]), tf.repeat(counts, 4)


def _group_tensors(class_groups, source, num_ways):
    """`(groups [G, M] int32, sizes [G] int32)` of the groups that can fill an episode."""
    import numpy as np

    kept = []
    for group in class_groups:
        ids = np.asarray(group, np.int64).ravel()
        bad = ids[(ids < 0) | (ids >= source.num_classes)]
        if bad.size:
            raise ValueError(f"{source.name}: class_groups holds class ids {bad[:10].tolist()} "
                             f"outside [0, {source.num_classes}).")
        if len(np.unique(ids)) != ids.size:
            raise ValueError(f"{source.name}: a class group repeats a class id.")
        if ids.size >= num_ways:
            kept.append(ids)
    if not kept:
        sizes = sorted(len(np.ravel(g)) for g in class_groups)
        raise ValueError(f"{source.name}: no class group has {num_ways} classes for "
                         f"{num_ways}-way episodes (group sizes: {sizes}).")
    width = max(ids.size for ids in kept)
    groups = np.zeros([len(kept), width], np.int32)
    for row, ids in enumerate(kept):
        groups[row, :ids.size] = ids
    return tf.constant(groups), tf.constant([ids.size for ids in kept], tf.int32)
