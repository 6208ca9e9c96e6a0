"""In-graph checks of serving requests: a bad request fails with a message, never a wrong answer.

Every check is a `tf.debugging.Assert`, so it runs inside the SavedModel (TF Serving reports it
as an `InvalidArgumentError` whose text names the input, what was expected and what was
received). Each check depends on the previous ones, so a request of the wrong rank reports the
rank rather than an incidental shape error further on. The checks run outside any XLA cluster:
XLA drops `Assert` ops.

The signatures declare static shapes (`[None, H, W, C]`), which a Python caller of the loaded
function cannot violate, but TF Serving feeds a request's tensors into the graph without
comparing them with the signature's shapes (tensorflow/serving#1436). The checks therefore read
each input's shape at run time through `runtime_shape`, which neither Python nor Grappler can
fold into a constant from the declared shape.
"""

import tensorflow as tf

_SUMMARIZE = 32


class Chain:
    """Asserts that run in order; `guard(x)` returns `x` once all of them have passed.

    Example:

    >>> chain = Chain()
    >>> shape = runtime_shape(x)
    >>> chain.check(lambda: tf.size(shape) == 4, "x: expected rank 4; received", tf.size(shape))
    >>> x = chain.guard(x)
    """

    def __init__(self):
        self._last = []

    def check(self, condition_fn, *data):
        """`data` items may be callables: built after the earlier checks, like the condition."""
        with tf.control_dependencies(self._last):
            condition = condition_fn()
            data = [d() if callable(d) else d for d in data]
            op = tf.debugging.Assert(condition, data, summarize=_SUMMARIZE)
        self._last = [op]

    def guard(self, x):
        with tf.control_dependencies(self._last):
            return tf.identity(x)


def runtime_shape(x):
    """The shape `x` has when the graph runs, as an int32 vector of statically unknown length.

    `tf.rank(x)` is a Python constant once the signature declares a rank (a rank check built
    on it passes whatever rank TF Serving feeds), and Grappler's shape inference knows the
    declared dimensions of `tf.shape(x)`, which lets it fold comparisons on them. The round
    trip through a serialized tensor hides the declared shape from both (a few bytes per
    request).

    Example:

    >>> shape = runtime_shape(images)      # inside a signature taking [None, 12, 12, 3]
    >>> rank = tf.size(shape)              # 4 only if the request really has rank 4
    """
    return tf.io.parse_tensor(tf.io.serialize_tensor(tf.shape(x)), tf.int32)


def padded(shape, length):
    """`shape` cut or zero-padded to `length`: comparable whatever rank arrives.

    Control dependencies order the asserts, but Grappler may still evaluate a later condition
    first; conditions that are valid for any rank keep the first failure readable.
    """
    return tf.concat([tf.reshape(shape, [-1]), tf.zeros([length], tf.int32)], 0)[:length]


def _shape_text(shape):
    return "[" + ", ".join("n" if d is None else str(d) for d in shape) + "]"


def validate_batch(chain, x, name, example_shape, dtype_name, min_size=1):
    """Checks `x` is `[n, *example_shape]` with `n >= min_size`; returns it with a static shape."""
    expected = (None,) + tuple(example_shape)
    rank = len(expected)
    shape = runtime_shape(x)
    chain.check(lambda: tf.equal(tf.size(shape), rank),
                f"{name}: expected a {dtype_name} tensor of rank {rank}, shape "
                f"{_shape_text(expected)}; received rank", tf.size(shape), "with shape", shape)
    chain.check(lambda: tf.logical_and(
                    tf.equal(tf.size(shape), rank),
                    tf.reduce_all(tf.equal(padded(shape, rank)[1:],
                                           tf.constant(example_shape, tf.int32)))),
                f"{name}: expected shape {_shape_text(expected)}; received shape", shape)
    chain.check(lambda: padded(shape, 1)[0] >= min_size,
                f"{name}: expected at least {min_size} example(s); received shape", shape)
    # A reshape, not tf.ensure_shape: Grappler trusts EnsureShape when it folds shapes, which
    # could turn the checks above into constants; the reshape runs only after they passed.
    return tf.reshape(chain.guard(x), (-1,) + tuple(example_shape))


def validate_float_range(chain, images, name):
    """Float images must be scaled to [0, 1] (a 0..255 float image is a common client mistake)."""
    chain.check(
        lambda: tf.logical_and(tf.reduce_all(images >= 0.0), tf.reduce_all(images <= 1.0)),
        f"{name}: float32 images must lie in [0, 1] (uint8 pixels divided by 255); received "
        "min and max", tf.reduce_min(images), tf.reduce_max(images))


def validate_labels(chain, labels, num_support, num_ways, num_shots=None, name="support_labels"):
    """Class indices `[num_support]` in `0..num_ways-1`, every class present (`num_shots` each)."""
    shape = runtime_shape(labels)
    chain.check(lambda: tf.equal(tf.size(shape), 1),
                f"{name}: expected a rank-1 int32 tensor of class indices; received rank",
                tf.size(shape), "with shape", shape)
    chain.check(lambda: tf.logical_and(tf.equal(tf.size(shape), 1),
                                       tf.equal(padded(shape, 1)[0], num_support)),
                f"{name}: expected one label per support image, shape",
                tf.reshape(num_support, [1]), "; received shape", shape)
    chain.check(
        lambda: tf.reduce_all(tf.logical_and(labels >= 0, labels < num_ways)),
        f"{name}: expected class indices in 0..{num_ways - 1} ({num_ways}-way model); received",
        labels)
    # Clipped so that the counts stay defined even if Grappler runs them before the range check.
    counts = lambda: tf.math.bincount(  # noqa: E731
        tf.clip_by_value(tf.reshape(labels, [-1]), 0, num_ways), minlength=num_ways + 1,
        maxlength=num_ways + 1)[:num_ways]
    chain.check(lambda: tf.reduce_all(counts() > 0),
                f"{name}: the support set must contain every class 0..{num_ways - 1} at least "
                "once; examples per class received", counts)
    if num_shots is not None:
        chain.check(lambda: tf.reduce_all(tf.equal(counts(), num_shots)),
                    f"{name}: this model was exported for {num_shots} shot(s) per class; "
                    "examples per class received", counts)
    return tf.reshape(chain.guard(labels), [-1])


def validate_same_length(chain, a, b, name_a, name_b):
    shape_a, shape_b = runtime_shape(a), runtime_shape(b)
    chain.check(lambda: tf.equal(padded(shape_a, 1)[0], padded(shape_b, 1)[0]),
                f"{name_b}: expected as many rows as {name_a}", shape_a,
                "; received shape", shape_b)
