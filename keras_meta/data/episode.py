"""The `Episode`: one few-shot task, a support set to adapt on and a query set to score."""

import collections

import tensorflow as tf


class Episode(collections.namedtuple("Episode", ["support_x", "support_y", "query_x", "query_y"])):
    """One task: `support_*` is what the learner adapts on, `query_*` what it is judged on.

    Tensors carry a leading task axis when episodes are batched into a meta-batch
    (`support_x: [meta_batch, num_support, ...]`). For classification the labels are
    `0..num_ways-1`, relabelled per episode.

    Args:
        support_x: support inputs, `[num_support, ...]`.
        support_y: support targets, `[num_support]` (class ids) or `[num_support, d]`.
        query_x: query inputs, `[num_query, ...]`.
        query_y: query targets.

    Example:

    >>> ep = Episode(tf.zeros([5, 1]), tf.zeros([5, 1]), tf.zeros([10, 1]), tf.zeros([10, 1]))
    >>> ep.num_support, ep.num_query
    (5, 10)
    """

    __slots__ = ()

    @property
    def num_support(self):
        return _dim(self.support_x, 0)

    @property
    def num_query(self):
        return _dim(self.query_x, 0)

    @property
    def num_ways(self):
        """Number of distinct classes in the support set (classification episodes)."""
        return tf.size(tf.unique(tf.reshape(self.support_y, [-1]))[0])

    def map(self, fn):
        """Applies `fn` to each of the four tensors."""
        return Episode(*(fn(t) for t in self))


def _dim(t, axis):
    d = t.shape[axis] if t.shape.rank is not None else None
    return d if d is not None else tf.shape(t)[axis]


def as_episode(data):
    """Accepts an `Episode`, a 4-tuple or a dict with the four keys; returns an `Episode`."""
    if isinstance(data, Episode):
        return data
    if isinstance(data, dict):
        missing = [k for k in Episode._fields if k not in data]
        if missing:
            raise ValueError(
                f"An episode dict needs the keys {Episode._fields}; got {sorted(data)}, "
                f"missing {missing}."
            )
        return Episode(*(data[k] for k in Episode._fields))
    if isinstance(data, (tuple, list)) and len(data) == 4:
        return Episode(*data)
    raise TypeError(
        "Expected an Episode (support_x, support_y, query_x, query_y), a 4-tuple or a dict; "
        f"got {type(data).__name__}"
        + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        + "."
    )
