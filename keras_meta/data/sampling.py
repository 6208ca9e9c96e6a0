"""Pure in-graph sampling of N-way K-shot episodes from a class-indexed image tensor.

Every random choice is a stateless op keyed by (seed, episode index) and, for the images of a
class, by (seed, episode index, class id). An episode is therefore a pure function of its
index: the same whatever the number of parallel calls or workers, the meta-batch size, or the
point at which a pipeline is resumed.

These functions build graph ops on tensors; `EpisodeSampler` wires them into `tf.data`.
"""

import tensorflow as tf

# Distinct tags keep the per-episode random streams independent of each other.
_CLASS_STREAM = 0
_LABEL_STREAM = 1
_IMAGE_STREAM = 2
_GROUP_STREAM = 3


def episode_seed(seed, index):
    """The stateless seed ([2] int64) of episode `index` of the stream `seed`."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])


def _stream_seed(seed, stream):
    return tf.random.experimental.stateless_fold_in(seed, stream)


def class_seeds(seed, index, class_ids):
    """Stateless seeds `[n, 2]` int64, one per class id of episode `index` of stream `seed`.

    Each is a function of (seed, episode index, class id) alone: a class draws the same
    images whatever its position in the episode.
    """
    ep = _stream_seed(episode_seed(seed, index), _IMAGE_STREAM)
    # A single hash of the episode seed, paired with the class id, is a Philox key per class
    # (what `stateless_fold_in` builds), at one op per episode instead of one per class.
    key = tf.random.stateless_uniform([], ep, minval=None, maxval=None, dtype=tf.int64)
    class_ids = tf.cast(class_ids, tf.int64)
    return tf.stack([tf.fill(tf.shape(class_ids), key), class_ids], axis=-1)


def choose_classes(seed, num_classes, num_ways):
    """`num_ways` distinct class ids in `[0, num_classes)`, uniformly, in random order (int32).

    Args:
        seed: stateless seed, shape [2].
        num_classes: classes to choose from (int or scalar tensor).
        num_ways: how many to choose (Python int).
    """
    scores = tf.random.stateless_uniform(tf.reshape(num_classes, [1]), seed)
    # top_k of i.i.d. uniforms is a uniform random ordered subset, in O(C log N).
    return tf.math.top_k(scores, k=num_ways, sorted=True).indices


def choose_images(seeds, counts, num_images, max_count):
    """For each class, `num_images` distinct indices in `[0, count)`, uniformly (int32).

    Args:
        seeds: `[n, 2]` stateless seeds, one per class (`n` static).
        counts: `[n]` images each class has (each <= `max_count`, >= `num_images`).
        num_images: how many to choose per class (Python int).
        max_count: static padded length of a class's image axis.

    Returns:
        `[n, num_images]` int32, in random order.
    """
    scores = tf.stack([tf.random.stateless_uniform([max_count], seeds[i])
                       for i in range(seeds.shape[0])])
    # Padding slots score -1 so that they are never among the top `num_images`.
    valid = tf.range(max_count)[None, :] < tf.cast(counts, tf.int32)[:, None]
    return tf.math.top_k(tf.where(valid, scores, -1.0), k=num_images, sorted=True).indices


def random_labels(seed, num_ways):
    """A random permutation of `0..num_ways-1` (int32): the label of each chosen class."""
    return tf.argsort(tf.random.stateless_uniform([num_ways], seed), stable=True)


def _turn_maps(size):
    """`[4, size*size]` pixel sources of 0..3 quarter turns (as `tf.image.rot90`)."""
    grid = tf.reshape(tf.range(size * size), [1, size, size, 1])
    return tf.stack([tf.reshape(tf.image.rot90(grid, k), [-1]) for k in range(4)])


def rotate_per_class(images, turns):
    """Turns the square images `[n, m, h, w, c]` of class `i` by `turns[i]` quarter turns."""
    n, m, h, w, c = images.shape
    if h != w:
        raise ValueError(f"Quarter turns need square images; got {h}x{w}.")
    # A rotation is a fixed permutation of pixels: one gather for every class, no branches.
    maps = tf.gather(_turn_maps(h), tf.cast(turns, tf.int32))
    pixels = tf.reshape(images, [n, m, h * w, c])
    return tf.reshape(tf.gather(pixels, maps, axis=2, batch_dims=1), [n, m, h, w, c])


def choose_grouped_classes(seed, groups, group_sizes, num_ways):
    """`num_ways` distinct class ids, all from one group: a group uniformly, then classes in
    it uniformly (Lake et al.'s within-alphabet tasks).

    Args:
        seed: stateless seed, shape [2].
        groups: `[G, M]` int32 class ids, each row a group padded past its size.
        group_sizes: `[G]` int32 sizes, each >= `num_ways`.
        num_ways: how many to choose (Python int).
    """
    g = tf.random.stateless_uniform([], _stream_seed(seed, _GROUP_STREAM), minval=0,
                                    maxval=tf.shape(groups)[0], dtype=tf.int32)
    picks = choose_classes(seed, group_sizes[g], num_ways)
    return tf.gather(groups[g], picks)


def sample_episode(images, counts, seed, index, num_ways, num_shots, num_queries, rotations=1,
                   class_groups=None):
    """One uint8 episode gathered from `images` for episode `index` of stream `seed`.

    Class id `c` of the split means base class `c // rotations` turned by `c % rotations`
    quarter turns, so rotated classes cost no memory.

    Args:
        images: `[num_base_classes, max_count, h, w, c]` uint8 tensor, static image shape;
            or an object with a static `.shape` and `.gather(rows, picks)` returning the
            uint8 images `[n, m, h, w, c]` (a memory-mapped cache read per episode).
        counts: `[num_base_classes]` int32 tensor, valid images per base class.
        seed: int (or scalar tensor), the stream.
        index: scalar int64 tensor, the episode index.
        num_ways, num_shots, num_queries: N, K and Q (Python ints).
        rotations: 1 (none) or 4 (each quarter turn is a class).
        class_groups: `None` (classes from the whole split), or `(groups, sizes)` for
            `choose_grouped_classes`: every episode's classes come from one group.

    Returns:
        `(support_x, support_y, query_x, query_y)`: uint8 `[N*K, h, w, c]`, int32 `[N*K]`,
        uint8 `[N*Q, h, w, c]`, int32 `[N*Q]`. Support and query are class-major.
    """
    image_shape = images.shape[2:]
    if not image_shape.is_fully_defined():
        raise ValueError(f"images need a static [height, width, channels]; got {images.shape}.")
    ep = episode_seed(seed, index)
    num_base = images.shape[0] if images.shape[0] is not None else tf.shape(images)[0]
    num_classes = num_base * rotations
    if class_groups is None:
        classes = choose_classes(_stream_seed(ep, _CLASS_STREAM), num_classes, num_ways)
    else:
        classes = choose_grouped_classes(_stream_seed(ep, _CLASS_STREAM), *class_groups,
                                         num_ways)
    labels = random_labels(_stream_seed(ep, _LABEL_STREAM), num_ways)
    max_count = images.shape[1] if images.shape[1] is not None else tf.shape(images)[1]
    per_class = num_shots + num_queries
    bases = classes // rotations
    picks = choose_images(class_seeds(seed, index, classes), tf.gather(counts, bases),
                          per_class, max_count)
    rows = tf.broadcast_to(bases[:, None], [num_ways, per_class])
    if hasattr(images, "gather"):
        chosen = images.gather(rows, picks)
    else:
        chosen = tf.gather_nd(images, tf.stack([rows, picks], axis=-1))
    if rotations > 1:
        chosen = rotate_per_class(chosen, classes % rotations)
    support = tf.reshape(chosen[:, :num_shots], [num_ways * num_shots, *image_shape])
    query = tf.reshape(chosen[:, num_shots:], [num_ways * num_queries, *image_shape])
    return support, tf.repeat(labels, num_shots), query, tf.repeat(labels, num_queries)
