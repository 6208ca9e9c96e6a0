"""How the meta-gradient of a learned optimizer is computed: truncated backpropagation.

The meta-loss of one function is L(phi) = sum_{t=1..T} w_t f(theta_t), where theta_t comes from
running the update rule for t steps. The T steps are cut into segments of `unroll_length`
steps, and the gradient never flows across a segment boundary (theta and the rule's state are
carried over as constants).

`unrolled_meta_loss` is one segment's meta-loss, a pure function (no variable is assigned);
`segment_meta_gradients` is its gradient with respect to the rule's weights phi; and
`optimizee_trajectory` runs a rule without a meta-gradient (evaluation). Who applies the
meta-gradient is `MetaOptimizerTrainer` (`meta_trainer.py`).
"""

import tensorflow as tf


def unrolled_meta_loss(rule, optimizee, params, state, seed, start_step, weights, *,
                       first_order=True):
    """Runs one truncated segment of `len(weights)` optimizee steps.

    Args:
        rule: an update rule (`LSTMOptimizer`, or any object with `apply`).
        optimizee: an optimizee family (see `keras_meta.learned_optimizer.optimizees`).
        params, state: theta and the rule's state at the start of the segment. Both enter as
            constants: no gradient flows back into an earlier segment.
        seed: the function's seed ([2] int tensor).
        start_step: index of the first step of the segment (selects the mini-batches).
        weights: w_t of the segment's steps, a Python sequence or a 1-D tensor of static length.
        first_order: hold the optimizee gradients constant, as in the paper (the default);
            `False` keeps them differentiable (the exact meta-gradient).

    Returns:
        `(meta_loss, losses, params, state)`: the weighted sum of f(theta_t) over the segment,
        the unweighted losses [K], and theta and the state after the segment.
    """
    weights = tf.convert_to_tensor(weights)
    length = weights.shape[0]
    if length is None or length < 1:
        raise ValueError(f"weights must have a static length >= 1; got shape {weights.shape}.")
    params = [tf.stop_gradient(p) for p in params]
    state = tf.nest.map_structure(tf.stop_gradient, state)
    start_step = tf.cast(start_step, tf.int64)
    losses = []
    for k in range(length):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            loss = optimizee.loss(params, seed, start_step + k)
        grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if k > 0:
            # f(theta_k), k >= 1, is already computed here for the k-th gradient.
            losses.append(loss)
        rule_loss = loss
        if first_order:
            grads = [tf.stop_gradient(g) for g in grads]
            rule_loss = tf.stop_gradient(loss)
        params, state = rule.apply(grads, params, state, step=k, loss=rule_loss)
        params = list(params)
    losses.append(optimizee.loss(params, seed, start_step + length))
    losses = tf.stack(losses)
    meta_loss = tf.reduce_sum(tf.cast(weights, losses.dtype) * losses)
    return meta_loss, losses, params, state


def segment_meta_gradients(rule, optimizee, params, state, seed, start_step, weights, *,
                           first_order=True):
    """One segment's meta-loss and its gradient with respect to the rule's weights phi.

    Returns `(meta_loss, losses, grads, params, state)`: as `unrolled_meta_loss`, with `grads`
    aligned with `rule.trainable_variables`. Nothing is applied.
    """
    variables = rule.trainable_variables
    with tf.GradientTape() as tape:
        meta_loss, losses, params, state = unrolled_meta_loss(
            rule, optimizee, params, state, seed, start_step, weights, first_order=first_order)
    grads = tape.gradient(meta_loss, variables)
    return meta_loss, losses, grads, params, state


def optimizee_trajectory(rule, optimizee, seed, num_steps, params=None):
    """Runs `rule` on the functions named by `seed` for `num_steps` steps (no meta-gradient).

    Returns `(losses, eval_losses)`: the per-function mini-batch losses [num_steps + 1,
    num_functions] at theta_0..theta_T, and `optimizee.eval_losses` at theta_T. Wrap it in a
    `tf.function` for speed; the step loop is a `tf.while_loop` there.
    """
    params = list(optimizee.init_params(seed)) if params is None else list(params)
    state = rule.init_state(params)
    losses = tf.TensorArray(params[0].dtype, size=num_steps + 1)
    for t in tf.range(num_steps):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            per_function = optimizee.function_losses(params, seed, t)
            loss = tf.reduce_sum(per_function)
        grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        losses = losses.write(t, per_function)
        params, state = rule.apply(grads, params, state, step=t, loss=loss)
        params = list(params)
    losses = losses.write(num_steps, optimizee.function_losses(params, seed, num_steps))
    return losses.stack(), optimizee.eval_losses(params, seed)
