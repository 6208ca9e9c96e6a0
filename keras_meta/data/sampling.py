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


def episode_seed(seed, index):
    """The stateless seed ([2] int64) of episode `index` of the stream `seed`."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])


def _stream_seed(seed, stream):
    return tf.random.experimental.stateless_fold_in(seed, stream)


def class_seed(seed, index, class_id):
    """The stateless seed of one class within one episode: a function of all three only."""
    ep = _stream_seed(episode_seed(seed, index), _IMAGE_STREAM)
    return tf.random.experimental.stateless_fold_in(ep, tf.cast(class_id, tf.int64))


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


def choose_images(seed, count, num_images, max_count):
    """`num_images` distinct indices in `[0, count)`, uniformly, in random order (int32).

    Args:
        seed: stateless seed, shape [2].
        count: images the class has (scalar tensor, <= `max_count`).
        num_images: how many to choose (Python int, <= `count`).
        max_count: static padded length of a class's image axis.
    """
    scores = tf.random.stateless_uniform([max_count], seed)
    # Padding slots score -1 so that they are never among the top `num_images`.
    scores = tf.where(tf.range(max_count) < tf.cast(count, tf.int32), scores, -1.0)
    return tf.math.top_k(scores, k=num_images, sorted=True).indices


def random_labels(seed, num_ways):
    """A random permutation of `0..num_ways-1` (int32): the label of each chosen class."""
    return tf.argsort(tf.random.stateless_uniform([num_ways], seed), stable=True)


def rotate_quarter_turns(images, k):
    """Rotates `[n, h, w, c]` square images by `k` (scalar tensor) quarter turns."""
    return tf.image.rot90(images, k)


def sample_episode(images, counts, seed, index, num_ways, num_shots, num_queries, rotations=1):
    """One uint8 episode gathered from `images` for episode `index` of stream `seed`.

    Class id `c` of the split means base class `c // rotations` turned by `c % rotations`
    quarter turns, so rotated classes cost no memory.

    Args:
        images: `[num_base_classes, max_count, h, w, c]` uint8 tensor.
        counts: `[num_base_classes]` int32 tensor, valid images per base class.
        seed: int (or scalar tensor), the stream.
        index: scalar int64 tensor, the episode index.
        num_ways, num_shots, num_queries: N, K and Q (Python ints).
        rotations: 1 (none) or 4 (each quarter turn is a class).

    Returns:
        `(support_x, support_y, query_x, query_y)`: uint8 `[N*K, h, w, c]`, int32 `[N*K]`,
        uint8 `[N*Q, h, w, c]`, int32 `[N*Q]`. Support and query are class-major.
    """
    ep = episode_seed(seed, index)
    num_classes = tf.shape(images)[0] * rotations
    classes = choose_classes(_stream_seed(ep, _CLASS_STREAM), num_classes, num_ways)
    labels = random_labels(_stream_seed(ep, _LABEL_STREAM), num_ways)
    max_count = images.shape[1] if images.shape[1] is not None else tf.shape(images)[1]
    per_class = num_shots + num_queries
    support, query = [], []
    # num_ways is static and small, so one unrolled branch per class keeps per-class seeds
    # without a graph loop.
    for i in range(num_ways):
        base = classes[i] // rotations
        picks = choose_images(class_seed(seed, index, classes[i]), counts[base], per_class,
                              max_count)
        chosen = tf.gather(images[base], picks)
        if rotations > 1:
            chosen = rotate_quarter_turns(chosen, classes[i] % rotations)
        support.append(chosen[:num_shots])
        query.append(chosen[num_shots:])
    support_y = tf.repeat(labels, num_shots)
    query_y = tf.repeat(labels, num_queries)
    return tf.concat(support, 0), support_y, tf.concat(query, 0), query_y
