"""Gradient checkpointing for inner steps: trade compute for memory in the meta-gradient.

Backpropagating through `K` inner steps normally keeps every step's activations (and, for the
exact second-order gradient, the inner backward pass's intermediates too) until the outer
gradient is taken, so memory grows linearly with `K`. A checkpointed step keeps only its inputs
and outputs (the parameters); in the outer backward pass it runs again under a fresh tape and
its vector-Jacobian product is taken from the recomputation. Memory per step falls to the
size of the parameters, at the price of one more forward pass of each step. The gradient is
the same: the recomputation is the same function of the same inputs.
"""

import tensorflow as tf


def checkpointed(fn, inputs):
    """Calls `fn(inputs)` so that the outer backward pass recomputes it instead of storing it.

    Args:
        fn: a pure function of `inputs` (a nest of float tensors) returning a nest of float
            tensors. Variables it reads (e.g. a learned update rule's weights) receive their
            gradients too; tensors it closes over do not, so anything to differentiate must
            be in `inputs`.
        inputs: the nest of tensors passed to `fn`.

    Returns:
        `fn(inputs)`, whose gradient is computed by recomputation.

    Example:

    >>> x = tf.constant([1.0, 2.0])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = checkpointed(lambda v: tf.sin(v) * v, x)
    >>> tape.gradient(y, x)  # cos(x) x + sin(x), computed by running fn again
    """
    flat_inputs = tf.nest.flatten(inputs)
    structure = {}

    @tf.custom_gradient
    def run(*flat):
        outputs = fn(tf.nest.pack_sequence_as(inputs, list(flat)))
        structure["outputs"] = outputs
        flat_outputs = tf.nest.flatten(outputs)

        def grad(*upstream, variables=None):
            upstream = [tf.zeros_like(o) if u is None else u
                        for u, o in zip(upstream, flat_outputs)]
            # The control dependency makes the recomputation wait for the backward pass to
            # reach this step; without it Grappler would merge it with the forward ops as a
            # common subexpression, keeping the activations alive after all.
            with tf.control_dependencies(upstream):
                again = [tf.identity(x) for x in flat]
            variables = list(variables or [])
            with tf.GradientTape() as tape:
                tape.watch(again)
                recomputed = tf.nest.flatten(fn(tf.nest.pack_sequence_as(inputs, again)))
            grads = tape.gradient(recomputed, again + variables, output_gradients=upstream,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            if variables:
                return grads[:len(again)], grads[len(again):]
            return grads

        return flat_outputs, grad

    flat_outputs = run(*flat_inputs)
    return tf.nest.pack_sequence_as(structure["outputs"], list(flat_outputs))
