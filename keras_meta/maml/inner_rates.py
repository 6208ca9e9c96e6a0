"""Learned inner learning rates: one per variable, per variable and step, or per coordinate.

MAML's inner rate can itself be meta-learned: one scalar per parameter tensor, one per tensor
and inner step (MAML++'s per-layer per-step rates, LSLR), or one per coordinate (Meta-SGD).
The rates are variables of the model that owns them; `read_inner_rates` turns them into the
tensors `SGDRule` takes, inside the outer tape, so that the meta-gradient reaches them.
"""

import keras
import tensorflow as tf

# How the inner learning rate is learned: fixed, one per variable, one per variable and
# step (MAML++), or one per coordinate (Meta-SGD).
LR_MODES = (None, "per_variable", "per_step", "per_coordinate")


def make_inner_rates(owner, variables, learn_inner_lr, initial, *, num_steps):
    """Creates the learned rates as weights of `owner` (a Keras layer or model).

    Args:
        owner: the layer whose `add_weight` creates them (they are saved and trained with it).
        variables: the base model's trainable variables the rates apply to.
        learn_inner_lr: one of `LR_MODES`; `None` creates nothing.
        initial: the initial value of every rate.
        num_steps: inner steps that need a rate (per-step mode): the trained inner steps.
            Adaptation with more steps reuses the last step's rates (`SGDRule`).

    Returns:
        `None`, a list with one weight per variable, or (per step) a list of such lists.

    Example:

    >>> rates = make_inner_rates(maml, base.trainable_variables, "per_step", 0.4, num_steps=5)
    """
    if learn_inner_lr not in LR_MODES:
        raise ValueError(f"learn_inner_lr must be one of {LR_MODES}; got {learn_inner_lr!r}.")
    if learn_inner_lr is None:
        return None

    def make(name, shape):
        return owner.add_weight(shape=shape, name=name, trainable=True,
                                initializer=keras.initializers.Constant(initial))

    if learn_inner_lr == "per_variable":
        return [make(f"inner_lr_{i}", ()) for i in range(len(variables))]
    if learn_inner_lr == "per_coordinate":
        return [make(f"inner_lr_{i}", tuple(v.shape)) for i, v in enumerate(variables)]
    return [[make(f"inner_lr_s{s}_{i}", ()) for i in range(len(variables))]
            for s in range(num_steps)]


def read_inner_rates(rates, *, learn_inner_lr, fixed):
    """The rates as tensors in `SGDRule`'s formats, or the `fixed` float when none are learned."""
    if rates is None:
        return fixed
    if learn_inner_lr == "per_step":
        return [[tf.identity(v.value) for v in step] for step in rates]
    return [tf.identity(v.value) for v in rates]
