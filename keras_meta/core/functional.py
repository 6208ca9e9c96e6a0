"""Fast-weights calls: run a Keras model with parameter tensors instead of its variables.

Everything in the inner loop is a pure function of tensors. `functional_call` is the one place
where a Keras model meets explicit parameters; it never assigns a variable, so adaptation can be
differentiated (to any order) and run for many tasks without touching the model.
"""

import keras
import tensorflow as tf


def _ensure_built(model):
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built; call it once on an input (or give it an "
            "`keras.Input`) before using it for meta-learning."
        )


def get_params(model):
    """The model's trainable variables read as tensors (differentiable w.r.t. the variables)."""
    _ensure_built(model)
    return [tf.identity(v.value) for v in model.trainable_variables]


def get_state(model):
    """The model's non-trainable variables (batch-norm statistics, seeds) read as tensors."""
    return [tf.identity(v.value) for v in model.non_trainable_variables]


def functional_call(model, params, x, *, training=False, state=None, return_state=False):
    """Calls `model` on `x` with `params` in place of its trainable variables.

    Works for Sequential, functional and subclassed Keras models (anything with
    `stateless_call`). The model's variables are neither read for the trainable part nor
    written.

    Args:
        model: a built `keras.Model` (or layer).
        params: list of tensors, one per `model.trainable_variables`, same shapes and order.
        x: the model input.
        training: passed to the model (batch norm, dropout).
        state: list of tensors for `model.non_trainable_variables`; defaults to their values.
        return_state: also return the updated non-trainable state (e.g. moving statistics).

    Returns:
        The outputs, or `(outputs, new_state)` when `return_state` is true.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> params = [p * 0.0 for p in get_params(model)]
    >>> functional_call(model, params, tf.ones([4, 3])).shape
    TensorShape([4, 2])
    """
    _ensure_built(model)
    variables = model.trainable_variables
    params = list(params)
    if len(params) != len(variables):
        raise ValueError(
            f"functional_call got {len(params)} parameter tensors for model {model.name!r}, "
            f"which has {len(variables)} trainable variables."
        )
    for i, (p, v) in enumerate(zip(params, variables)):
        if p.shape.rank is not None and not p.shape.is_compatible_with(v.shape):
            raise ValueError(
                f"Parameter {i} ({v.path}) has shape {p.shape}; the model expects {tuple(v.shape)}."
            )
    if state is None:
        state = [v.value for v in model.non_trainable_variables]
    outputs, new_state = model.stateless_call(params, list(state), x, training=training)
    return (outputs, new_state) if return_state else outputs


def assign_params(model, params, state=None):
    """Writes `params` (and optionally `state`) into the model's variables (outside the inner loop)."""
    for v, p in zip(model.trainable_variables, params):
        v.assign(p)
    if state is not None:
        for v, s in zip(model.non_trainable_variables, state):
            v.assign(s)
