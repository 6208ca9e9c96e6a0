"""`EpisodePool`: the meta-batches of the coming meta-iterations, computed many at a time.

The trainer's single-iteration call takes its episodes as arguments, as the benchmark's
bare step does. Computing them beside the step inside the call would put the sampling under
XLA, whose random numbers differ from TensorFlow's kernels for the same Philox key and
counter (the run would no longer see the tf.data stream's tasks); computing them in a graph
function around the XLA step makes two levels of call, about a fifth of a sinusoid step on
a 2-core CPU (benchmarks/trainer_loop.py). So one graph call of TensorFlow's kernels computes
the next `iterations` meta-batches together, and each step call gets the whole window and its
position in it, and takes its own meta-batch out inside its compiled graph (`meta_batch`).
Handing out one tensor per iteration and field instead made each fill 2.3-2.5 ms, some 5% of
every iteration. A fill has a fixed cost of about 0.8 ms on that CPU: sinusoid meta-batches
of 25 cost 52, 14, 9 and 6 us per iteration in windows of 16, 64, 256 and 1,024 iterations,
so the window is 256 (2.3 ms, about a megabyte).
"""

import tensorflow as tf


class EpisodePool:
    """Hands out the window holding any meta-iteration's meta-batch, `iterations` at a time.

    The pool covers a window of consecutive iterations. Asking for one inside it returns the
    window and the iteration's position; asking for any other (the first call, the window's
    end, a jump after another step function ran or a resume) computes the window that starts
    there. Episodes are a pure function of their index, so the window's meta-batches are
    exactly the stream's.

    Args:
        episodes_at: `(first_index, count)` -> episodes `first_index .. first_index + count
            - 1` stacked, in TF ops (`TaskFamilySpec.train_episodes_at`).
        meta_batch_size: episodes per meta-iteration.
        iterations: meta-iterations computed per fill.

    Example:

    >>> pool = EpisodePool(task.train_episodes_at, meta_batch_size=25)
    >>> window, first, position = pool(70)  # first 70, position 0: a new window
    >>> episodes = pool.meta_batch(window, position)  # iteration 70's, in TF ops
    >>> episodes.support_x.shape
    TensorShape([25, 10, 1])
    """

    def __init__(self, episodes_at, meta_batch_size, iterations=256):
        for name, value in (("meta_batch_size", meta_batch_size), ("iterations", iterations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EpisodePool's {name} must be a positive int; got {value!r}.")
        self.episodes_at = episodes_at
        self.meta_batch_size = meta_batch_size
        self.iterations = iterations
        self._fill = tf.function(
            lambda first: episodes_at(first * meta_batch_size, iterations * meta_batch_size))
        # Made once: a call passes existing tensors and creates none.
        self._positions = [tf.constant(i, tf.int64) for i in range(iterations)]
        self._first = None  # the window's first iteration: a Python int, and as a tensor
        self._first_tensor = None
        self._window = None

    def __call__(self, iteration):
        """`(window, first, position)` for `iteration` (a Python int): the stacked episodes
        of the window holding it, the window's first iteration and the iteration's position
        in it (int64 scalar tensors; the iteration is `first + position`)."""
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"EpisodePool needs an iteration as a non-negative int; got "
                             f"{iteration!r}.")
        offset = -1 if self._first is None else iteration - self._first
        if not 0 <= offset < self.iterations:
            self._first, self._first_tensor = iteration, tf.constant(iteration, tf.int64)
            self._window = self._fill(self._first_tensor)
            offset = 0
        return self._window, self._first_tensor, self._positions[offset]

    def meta_batch(self, window, position):
        """The meta-batch at `position` of `window`, in TF ops (inside the step's graph)."""
        batch = self.meta_batch_size
        index = tf.cast(position, tf.int64) * batch + tf.range(batch, dtype=tf.int64)
        return tf.nest.map_structure(lambda x: tf.gather(x, index), window)
