"""`ConcreteStep`: a step `tf.function` called through its concrete functions.

Calling a `tf.function` binds and canonicalizes its arguments and looks its trace up on every
call; for a nested `Episode` that costs about 0.3 ms on a 2-core CPU, a third of a compiled
sinusoid meta-iteration (benchmarks/meta_step.py). A training loop calls the same step with
the same input signature thousands of times, so it can look the concrete function up once
per signature and call it directly.

It then goes one step further: a concrete function's `__call__` binds its structured arguments
again (about 0.15 ms of a 1.2 ms XLA sinusoid call, measured in one process on a 2-core CPU),
while the flat tensors, in the order the trace takes them, are already at hand. So where the
arguments are plain tensors and the trace's inputs are exactly those tensors followed by its
captures, the call goes to the concrete function's flat call, which is where its `__call__`
ends (gradient tapes included). Anything else takes the ordinary call.

And where nothing can watch the call (eager, no gradient tape or forward accumulator on its
inputs, no cancellation scope), it executes the function as the one op that the flat call
ends in, without the flat call's Python layers around it (records for tapes that are not
there, graph-building checks, context managers): a median 0.90-0.91 of the flat call's time
for the XLA sinusoid step and 0.94 in graph mode, over 15 interleaved rounds on a 2-core CPU
(benchmarks/concrete_call.py). Errors are reported as the flat call reports them, with the
failing op's traceback. `direct=False` keeps the flat call.
"""

import itertools

import tensorflow as tf

try:  # TensorFlow's internals, as its own flat call uses them; without them, no direct call.
    from tensorflow.python.eager import cancellation, context, execute
    from tensorflow.python.eager.polymorphic_function.atomic_function import (
        InterpolateRuntimeError)
    from tensorflow.python.ops import gradients_util
except ImportError:  # pragma: no cover - another TensorFlow
    InterpolateRuntimeError = None


class ConcreteStep:
    """Calls `function` (a `tf.function` of tensors) via one concrete function per signature.

    The signature is the flattened inputs' shapes and dtypes: a call with new shapes traces
    (as the `tf.function` would) and is remembered. Only tensors may be passed (Python values
    would be baked into a trace and silently ignored afterwards), so anything else is refused.

    Args:
        function: a `tf.function` whose arguments are (nests of) tensors.
        direct: execute the function's op directly where nothing watches the call (see the
            module's docstring); False keeps TensorFlow's own flat call for every call.

    Example:

    >>> step = ConcreteStep(tf.function(lambda episodes: maml.meta_train_step(episodes)))
    >>> loss, _ = step(episodes)
    """

    def __init__(self, function, direct=True):
        if not hasattr(function, "get_concrete_function"):
            raise TypeError(f"ConcreteStep needs a tf.function; got {type(function).__name__}.")
        self.function = function
        self.direct = bool(direct)
        self._concrete = {}
        self._flat = {}  # signature -> whether its concrete function is called flat
        self._direct = {}  # signature -> (function, op name, outputs) to execute, or None

    def __call__(self, *args):
        leaves = tf.nest.flatten(args)
        key = _signature(leaves)
        concrete = self._concrete.get(key)
        if concrete is None:
            concrete = self._concrete[key] = self.function.get_concrete_function(*args)
            self._flat[key] = _takes_flat(concrete, leaves)
            self._direct[key] = (_direct_call(concrete) if self._flat[key] and self.direct
                                 else None)
        if self._flat[key]:
            captured = concrete.captured_inputs
            direct = self._direct[key]
            if direct is not None:
                inputs = leaves + captured
                if _unwatched(inputs):
                    return _execute(direct, inputs)
            return concrete._call_flat(leaves, captured)
        return concrete(*args)


def _signature(leaves):
    """The shapes and dtypes of `leaves`, which must be tensors: the key of their trace."""
    try:
        # Eager tensors' own accessors: 3.5 us for six leaves against 8.3 us for `x.shape`
        # and `x.dtype`, which build a TensorShape and look a DType up (2-core CPU).
        return tuple([(leaf._shape_tuple(), leaf._datatype_enum()) for leaf in leaves])
    except AttributeError:  # a variable, a symbolic tensor, or not a tensor at all
        pass
    for leaf in leaves:
        if not tf.is_tensor(leaf):
            raise TypeError(
                f"ConcreteStep passes only tensors; got a {type(leaf).__name__}. Close over "
                "Python values in the function instead.")
    return tuple((tuple(leaf.shape), leaf.dtype) for leaf in leaves)


def _takes_flat(concrete, leaves):
    """Whether `concrete`'s graph inputs are `leaves` (same count, order, dtypes and shapes)
    followed by its captures, so that it can be called on them flat."""
    if not hasattr(concrete, "_call_flat"):  # another TensorFlow's internals
        return False
    # Composite tensors (ragged, sparse) and variables enter a graph as other tensors.
    eager_tensor = type(tf.constant(0.0))
    if not all(type(leaf) is eager_tensor for leaf in leaves):
        return False
    inputs = concrete.inputs
    if len(inputs) != len(leaves) + len(concrete.captured_inputs):
        return False
    return all(graph_input.dtype == leaf.dtype and graph_input.shape == leaf.shape
               for graph_input, leaf in zip(inputs, leaves))


def _direct_call(concrete):
    """`(function, op name, number of outputs)` to execute `concrete` as one op, or None where
    its flat call does more than that for its outputs (resource outputs get handle data)."""
    if InterpolateRuntimeError is None:
        return None
    function = getattr(concrete, "_inference_function", None)
    function_type = getattr(function, "function_type", None)
    if function_type is None or not hasattr(function_type, "pack_output"):
        return None
    outputs = function_type.flat_outputs
    if any(getattr(output.dtype, "_handle_data", None) for output in outputs):
        return None
    return function, function.name.decode("utf-8"), len(outputs)


def _unwatched(inputs):
    """Whether a call on `inputs` is eager with nothing to record it: no tape or forward
    accumulator that could watch them, and no cancellation scope to honour."""
    return (context.executing_eagerly() and cancellation.context() is None
            and gradients_util.PossibleTapeGradientTypes(inputs)
            == gradients_util.POSSIBLE_GRADIENT_TYPES_NONE)


def _execute(direct, inputs):
    """What the flat call returns on `inputs`, from the function's one op."""
    function, name, num_outputs = direct
    ctx = context.context()
    attrs = tuple(itertools.chain(*ctx.function_call_options.as_attrs().items()))
    with InterpolateRuntimeError(function):
        outputs = execute.execute(name, num_outputs=num_outputs, inputs=inputs, attrs=attrs,
                                  ctx=ctx)
    return function.function_type.pack_output(outputs or None)
