"""The inner loop: adapt parameters to a support set, as a pure function of tensors.

`adapt_params` never assigns a variable. Differentiating its result with an outer `tf.GradientTape`
gives the exact higher-order meta-gradient: the inner `tape.gradient` calls are recorded by the
outer tape, so the Hessian-vector terms of MAML appear automatically. With `first_order=True`
the inner gradients are treated as constants (`tf.stop_gradient`), which drops those terms.
"""

import tensorflow as tf

from keras_meta._checks import check_int, is_int
from keras_meta.core import batching, functional
from keras_meta.core.losses import per_task_loss, scalar_loss
from keras_meta.core.recompute import checkpointed
from keras_meta.core.step_context import inner_step
from keras_meta.core.update_rules import SGDRule


def _segment_length(recompute):
    if recompute is False or recompute is None:
        return 0
    if recompute is True:
        return 1
    if not is_int(recompute) or recompute < 1:
        raise ValueError(
            f"recompute must be a bool or a positive int (inner steps per segment); got "
            f"{recompute!r}.")
    return recompute


def _all_tensors(nest):
    leaves = tf.nest.flatten(nest)
    return bool(leaves) and all(tf.is_tensor(x) for x in leaves)


def _check_steps(inner_steps):
    check_int("inner_steps", inner_steps, minimum=0)


def adapt_params(
    model,
    params,
    support_x,
    support_y,
    *,
    loss_fn,
    inner_lr=None,
    inner_steps=1,
    first_order=False,
    update_rule=None,
    training=True,
    state=None,
    return_trajectory=False,
    return_state=False,
    task_batched=False,
    loss_scale=None,
    recompute=False,
    kernel_options=None,
    shared_start=False,
):
    """Adapts `params` to one support set with `inner_steps` steps of an update rule.

    Args:
        model: a built Keras model, used only through `functional_call`.
        params: list of tensors, one per trainable variable of `model` (e.g. `get_params`).
        support_x, support_y: the support set of one task.
        loss_fn: `loss_fn(y_true, y_pred)`, reduced to its mean.
        inner_lr: learning rate for the default SGD rule: a scalar, one per variable, or one
            list per step (see `SGDRule`). Ignored when `update_rule` is given.
        inner_steps: number of inner steps (a Python int >= 0; 0 returns `params`).
        first_order: hold the inner gradients constant (first-order MAML).
        update_rule: an object with `init_state(params)` and
            `apply(grads, params, state, step=, loss=)`, e.g. a trained `LSTMOptimizer`.
        training: the `training` flag of the model calls (batch-norm statistics, dropout).
        state: non-trainable model state for the calls (defaults to the model's own). It is
            threaded through the steps, so layers with running statistics (per-step batch norm)
            see each step's update.
        return_trajectory: also return the list of parameters after each step.
        return_state: also return the non-trainable state after the last step.
        task_batched: adapt `T` tasks at once: `params` carry a leading task axis `[T, ...]`,
            `support_x` / `support_y` are `[T, N, ...]`, and the model runs through
            `batching.batched_functional_call`. The step minimises the sum of the tasks'
            mean losses, whose gradient with respect to the stacked parameters is each task's
            own gradient. The model must have no non-trainable state.
        loss_scale: `None`, or a scalar multiplying the support loss before differentiation
            (mixed float16: keeps small gradients from underflowing in float16). The gradients
            are cast to the parameters' dtype and divided by it, so the update uses the unscaled gradient;
            with 1 the result equals the unscaled one exactly.
        recompute: `False`, `True`, or a segment length `k`: checkpoint the inner loop in
            segments of `k` steps (`True`: 1) with `keras_meta.core.recompute.checkpointed`. The
            outer backward pass recomputes each segment instead of keeping its activations,
            so memory holds one set of parameters per segment plus one segment's activations.
            The gradient is unchanged; each step runs once more. With `return_trajectory`,
            every step's parameters are kept (as the trajectory needs them).
        kernel_options: with `task_batched`, per-call options for the batched kernels,
            passed to `batching.batched_functional_call` (e.g. `{"fused_batch_norm":
            False}`); ignored by the per-task path.
        shared_start: with `task_batched`, promise that every task's `params` are the same
            tensor (theta broadcast over the tasks, as MAML starts): the first step then
            runs dense layers and convolutions as one ordinary op over all tasks
            (`batching.shared_start`). Exact; a wrong promise gives wrong gradients.

    Returns:
        The adapted parameters; with `return_trajectory`, `(adapted, trajectory)` where
        `trajectory[i]` holds the parameters after step `i + 1`; with `return_state`, the
        state is appended to the returned tuple.
    """
    _check_steps(inner_steps)
    if update_rule is None:
        if inner_lr is None:
            raise ValueError("adapt needs `inner_lr` (or an `update_rule`).")
        update_rule = SGDRule(inner_lr)
    params = list(params)
    if task_batched and (state or functional.get_state(model)):
        raise ValueError("task_batched adaptation needs a model without non-trainable state.")
    rule_state = update_rule.init_state(params)
    segment = _segment_length(recompute)
    if recompute and state is None and not task_batched:
        state = functional.get_state(model)
    shared_options = dict(kernel_options or {}, **{batching.SHARED_OPTION: True})

    def one_step(step, params, rule_state, state, rule):
        with tf.GradientTape(watch_accessed_variables=False) as tape, inner_step(step):
            tape.watch(params)
            if task_batched:
                options = shared_options if shared_start and step == 0 else kernel_options
                pred = batching.batched_functional_call(model, params, support_x,
                                                        kernel_options=options)
                loss = tf.reduce_sum(per_task_loss(loss_fn, support_y, pred))
            else:
                pred, state = functional.functional_call(
                    model, params, support_x, training=training, state=state, return_state=True)
                loss = scalar_loss(loss_fn, support_y, pred)
            scaled = loss if loss_scale is None else loss * tf.cast(loss_scale, loss.dtype)
        grads = tape.gradient(scaled, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if loss_scale is not None:
            # Unscale in the parameters' dtype (float32 under mixed precision), never in the
            # float16 compute dtype, where the unscaled gradient could underflow again.
            grads = [tf.cast(g, p.dtype) / tf.cast(loss_scale, p.dtype)
                     for g, p in zip(grads, params)]
        if first_order:
            grads = [tf.stop_gradient(g) for g in grads]
            loss = tf.stop_gradient(loss)
        params, rule_state = rule.apply(grads, params, rule_state, step=step, loss=loss)
        return list(params), rule_state, state

    trajectory = []
    if not recompute:
        for step in range(inner_steps):
            params, rule_state, state = one_step(step, params, rule_state, state, update_rule)
            trajectory.append(list(params))
    else:
        # SGD's rates may be tensors to differentiate (learned rates): they go in as inputs.
        # Any other rule's weights are variables, which `checkpointed` differentiates.
        # Python-float rates stay closed over (SGDRule casts them exactly).
        rates = update_rule.learning_rate if isinstance(update_rule, SGDRule) else None
        rates = rates if _all_tensors(rates) else None
        for first in range(0, inner_steps, segment):
            steps = range(first, min(first + segment, inner_steps))

            def stored_segment(inputs, steps=steps):
                p, r, s, lr = inputs
                rule = update_rule if rates is None else SGDRule(lr)
                visited = []
                for step in steps:
                    p, r, s = one_step(step, p, r, s, rule)
                    visited.append(list(p))
                # Only the segment's end is stored, unless the caller wants every step.
                return (visited if return_trajectory else visited[-1:]), r, s

            visited, rule_state, state = checkpointed(
                stored_segment, (params, rule_state, state if state is not None else [],
                                 rates if rates is not None else []))
            params = list(visited[-1])
            trajectory.extend(list(v) for v in visited)
    out = (params,) + ((trajectory,) if return_trajectory else ()) + (
        (state,) if return_state else ())
    return out if len(out) > 1 else params
