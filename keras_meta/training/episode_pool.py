"""`EpisodePool`: the meta-batches of the coming meta-iterations, computed many at a time.

The trainer's single-iteration XLA call takes its episodes as arguments, as the benchmark's
bare step does. Computing them beside the step inside the call would put the sampling under
XLA, whose random numbers differ from TensorFlow's kernels for the same Philox key and
counter (the run would no longer see the tf.data stream's tasks); computing them in a graph
function around the XLA step makes two levels of call, about a fifth of a sinusoid step on
a 2-core CPU (benchmarks/trainer_loop.py). So one graph call of TensorFlow's kernels computes
the next `iterations` meta-batches together, and each step call is handed its own. For 64
sinusoid meta-batches of 25 a fill takes about 2.5 ms on a 2-core CPU (0.7 ms of sampling,
the rest handing out 320 tensors), some 5% of each iteration's time in the trainer.
"""

import tensorflow as tf


class EpisodePool:
    """Hands out the meta-batch of any meta-iteration, computing `iterations` at a time.

    The pool covers a window of consecutive iterations. Asking for one inside it returns its
    meta-batch; asking for any other (the first call, the window's end, a jump after another
    step function ran or a resume) computes the window that starts there. Episodes are a
    pure function of their index, so the window's meta-batches are exactly the stream's.

    Args:
        episodes_at: `(first_index, count)` -> episodes `first_index .. first_index + count
            - 1` stacked, in TF ops (`TaskFamilySpec.train_episodes_at`).
        meta_batch_size: episodes per meta-iteration.
        iterations: meta-iterations computed per fill.

    Example:

    >>> pool = EpisodePool(task.train_episodes_at, meta_batch_size=25)
    >>> episodes, iteration = pool(0)  # iteration 0's meta-batch, and 0 as an int64 tensor
    >>> episodes.support_x.shape
    TensorShape([25, 10, 1])
    """

    def __init__(self, episodes_at, meta_batch_size, iterations=64):
        for name, value in (("meta_batch_size", meta_batch_size), ("iterations", iterations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EpisodePool's {name} must be a positive int; got {value!r}.")
        self.episodes_at = episodes_at
        self.meta_batch_size = meta_batch_size
        self.iterations = iterations
        self._fill = tf.function(self._compute)
        self._first = None
        self._entries = ()

    def _compute(self, first):
        batch, count = self.meta_batch_size, self.iterations
        stacked = self.episodes_at(first * batch, count * batch)
        # One output tensor per iteration and field: handing one out is then a list lookup,
        # with no op run per call.
        per_iteration = tf.nest.map_structure(
            lambda x: tf.unstack(tf.reshape(x, [count, batch] + x.shape.as_list()[1:])), stacked)
        return per_iteration, tf.unstack(first + tf.range(count, dtype=tf.int64))

    def __call__(self, iteration):
        """`(episodes, iteration)`: the meta-batch of `iteration` (a Python int), and the
        iteration as an int64 scalar tensor, so that the step can set its counter from it."""
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"EpisodePool needs an iteration as a non-negative int; got "
                             f"{iteration!r}.")
        offset = -1 if self._first is None else iteration - self._first
        if not 0 <= offset < self.iterations:
            fields, indices = self._fill(tf.constant(iteration, tf.int64))
            self._entries = [(type(fields)(*(field[i] for field in fields)), indices[i])
                             for i in range(self.iterations)]
            self._first, offset = iteration, 0
        return self._entries[offset]
