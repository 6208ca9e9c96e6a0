"""`maml_loss`: the post-adaptation query loss of one task, the smallest contract of MAML."""

import tensorflow as tf

from keras_meta.core import functional
from keras_meta.core.inner_loop import adapt_params
from keras_meta.core.losses import scalar_loss
from keras_meta.core.step_context import inner_step


def maml_loss(
    model,
    support_x,
    support_y,
    query_x,
    query_y,
    *,
    loss_fn,
    inner_lr,
    inner_steps,
    first_order=False,
    training=True,
):
    """The query loss of one task after adapting `model` on its support set.

    Call it under a `tf.GradientTape`: its gradient with respect to `model.trainable_variables`
    is the exact second-order MAML meta-gradient (Hessian terms included), or the first-order
    approximation when `first_order=True`. The model's variables are never assigned.

    Args:
        model: a built Keras model.
        support_x, support_y, query_x, query_y: one task.
        loss_fn: `loss_fn(y_true, y_pred)`, e.g. `keras.losses.MeanSquaredError()`.
        inner_lr: inner learning rate (scalar, per variable or per step; see `SGDRule`).
        inner_steps: number of inner SGD steps.
        first_order: treat inner gradients as constants.
        training: the model's `training` flag during adaptation and on the query set.

    Returns:
        A scalar tensor.

    Example:

    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> x = tf.ones([4, 1])
    >>> with tf.GradientTape() as tape:
    ...     loss = maml_loss(model, x, x, x, x, loss_fn=keras.losses.MeanSquaredError(),
    ...                      inner_lr=0.1, inner_steps=1)
    >>> grads = tape.gradient(loss, model.trainable_variables)
    """
    params = functional.get_params(model)
    adapted = adapt_params(
        model, params, support_x, support_y, loss_fn=loss_fn, inner_lr=inner_lr,
        inner_steps=inner_steps, first_order=first_order, training=training,
    )
    with inner_step(inner_steps, query=True):  # per-step layers: the slot after the last step
        pred = functional.functional_call(model, adapted, query_x, training=training)
    return scalar_loss(loss_fn, query_y, pred)
