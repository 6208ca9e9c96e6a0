"""The MAML meta-objective as pure functions of explicit parameters and episodes.

`MetaObjective` holds the settings of the inner loop (loss, rates or rule, steps, first or
second order, multi-step weights, task batching) and computes, for a meta-batch of episodes:

* `task_query_loss`: one task's post-adaptation query loss (the per-task loop);
* `meta_batch_losses`: every task's loss, by the loop or all tasks in one batched pass, in
  chunks of tasks if asked;
* `meta_gradients`: the mean of those losses and its exact gradient with respect to the
  parameters passed in.

It reads no variable except through the tensors it is given (and the weights of a learned
update rule, which are the rule's own), and assigns none. The `MAML` Keras model builds one
from its current settings inside its train step; who applies the meta-gradient is the model's
optimizer, or a `tf.distribute` step in `keras_meta.training`.
"""

import dataclasses
from typing import Any, Optional, Tuple

import keras
import tensorflow as tf

from keras_meta.core import batching, functional
from keras_meta.core.inner_loop import adapt_params
from keras_meta.core.losses import per_task_loss, scalar_loss
from keras_meta.core.step_context import inner_step
from keras_meta.data.episode import Episode, as_episode

# The objective has no data-dependent Python control flow (its loops run over Python ints and
# static shapes), so AutoGraph would convert nothing here; but converting it and everything it
# calls (backbones, inner rules, batch norm) on every trace was about half the cost of tracing
# a second-order step. Keras' own train steps are excluded from AutoGraph the same way. Code
# that did branch on a tensor here would fail at trace time, loudly, not change meaning.
_not_converted = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class MetaObjective:
    """The post-adaptation query loss of MAML, for explicit parameters.

    Args:
        model: the built base `keras.Model`, used only through fast-weights calls.
        loss_fn: the task loss `loss_fn(y_true, y_pred)`.
        inner_lr: SGD rates in `SGDRule`'s formats (scalar, per variable, per step), tensors
            when they are learned (so that the meta-gradient reaches them).
        update_rule: a rule object used instead of SGD (e.g. `LSTMOptimizer`), or `None`.
        inner_steps: inner steps of adaptation.
        first_order: hold the inner gradients constant (first-order MAML).
        multi_step_loss_weights: `None`, or one weight per inner step (MAML++'s multi-step
            loss: the weighted sum of the query losses after each step). Used only when their
            number equals `inner_steps`.
        task_batched: run all tasks of a meta-batch in one pass (`keras_meta.core.batching`).
        task_chunk_size: with `task_batched`, chunks of this many tasks (`None`: all).
        inner_loss_scale: `None` or a scalar multiplying the support loss (mixed float16).
        recompute: `False`, `True` or a segment length: recompute inner steps in the backward
            pass (`keras_meta.core.recompute`).
        fused_batch_norm: with `task_batched`, transductive `MetaBatchNormalization` layers
            in the grouped (tasks-in-channels) float32 layout use TensorFlow's fused batch
            norm with its closed-form second derivative (faster); `False`: plain ops. Both are
            exact to second order; they differ by float32 rounding. The per-task loop
            always uses plain ops.
        shared_first_step: with `task_batched`, the first inner step runs dense layers and
            convolutions as one ordinary op over all tasks (every task starts from theta;
            `keras_meta.core.batching.shared_start`); `False`: the per-task batched forms.
            Both are exact to second order.
        query_training: the `training` flag of the query pass. `True` in meta-training (per-step
            batch norm normalizes with the query batch and updates its running statistics, as
            MAML++); `False` at evaluation and inference, where per-step batch norm uses its
            running statistics, so each query's answer does not depend on the rest of the
            query set. Adaptation always runs in training mode (support-set statistics);
            transductive batch norm uses batch statistics whatever the flag.

    Example:

    >>> objective = MetaObjective(model, keras.losses.MeanSquaredError(), inner_lr=0.01)
    >>> params = keras_meta.core.get_params(model)
    >>> meta_loss, grads = objective.meta_gradients(params, episodes)
    """

    model: keras.Model
    loss_fn: Any
    inner_lr: Any = 0.01
    update_rule: Any = None
    inner_steps: int = 1
    first_order: bool = False
    multi_step_loss_weights: Optional[Tuple[float, ...]] = None
    task_batched: bool = False
    task_chunk_size: Optional[int] = None
    inner_loss_scale: Any = None
    recompute: Any = False
    fused_batch_norm: bool = True
    query_training: bool = True
    shared_first_step: bool = True

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @property
    def kernel_options(self):
        """The per-call options of the task-batched kernels (`batched_functional_call`)."""
        return {"fused_batch_norm": bool(self.fused_batch_norm)}

    @property
    def _step_weights(self):
        weights = self.multi_step_loss_weights
        if weights is None or self.inner_steps == 0 or len(weights) != self.inner_steps:
            return None
        return weights

    # -- one task at a time ---------------------------------------------------------------------

    @_not_converted
    def adapt(self, params, support_x, support_y, state=None):
        """`(adapted, trajectory or None, state)` for one task's support set."""
        need = self._step_weights is not None
        out = adapt_params(
            self.model, params, support_x, support_y, loss_fn=self.loss_fn,
            inner_lr=self.inner_lr, inner_steps=self.inner_steps, first_order=self.first_order,
            update_rule=self.update_rule, training=True, state=state, return_trajectory=need,
            return_state=True, loss_scale=self.inner_loss_scale, recompute=self.recompute)
        return out if need else (out[0], None, out[1])

    @_not_converted
    def query(self, params, query_x, steps_taken, state=None):
        """`(predictions, state)` of `params` on a query set after `steps_taken` steps."""
        # Per-step layers (MAML++ batch norm) use the slot after the last step taken: the
        # query slot once the trained steps are all taken.
        with inner_step(steps_taken, query=True):
            return functional.functional_call(self.model, params, query_x,
                                              training=self.query_training, state=state,
                                              return_state=True)

    @_not_converted
    def task_query_loss(self, params, episode, state=None):
        """Query loss of one (unbatched) task after adaptation.

        Returns `(loss, query_predictions, state)`; `state` is the model's non-trainable state
        after the task (running statistics), threaded from `state`.
        """
        adapted, trajectory, state = self.adapt(
            params, episode.support_x, episode.support_y, state)
        weights = self._step_weights
        if weights is None:
            pred, state = self.query(adapted, episode.query_x, self.inner_steps, state)
            return scalar_loss(self.loss_fn, episode.query_y, pred), pred, state
        total = 0.0
        for step, (w, step_params) in enumerate(zip(weights, trajectory), start=1):
            pred, state = self.query(step_params, episode.query_x, step, state)
            total += w * scalar_loss(self.loss_fn, episode.query_y, pred)
        return total, pred, state

    # -- a meta-batch -----------------------------------------------------------------------------

    @_not_converted
    def meta_batch_losses(self, params, episodes, *, return_state=False):
        """Per-task post-adaptation query losses `[meta_batch]` and query predictions.

        `episodes` is a batched `Episode` whose meta-batch size is static (batch the dataset
        with `drop_remainder=True`), so that the task loop unrolls in the graph. With
        `return_state`, also returns the non-trainable state after all tasks (running
        statistics updated task after task; `None` when task-batched, which has no state).
        """
        episodes = as_episode(episodes)
        meta_batch = episodes.support_x.shape[0]
        if meta_batch is None:
            raise ValueError(
                "MAML needs a static meta-batch size: batch the episode dataset with "
                "`drop_remainder=True` (got support_x with shape "
                f"{episodes.support_x.shape}).")
        if self.task_batched:
            chunk = self.task_chunk_size or meta_batch
            parts = [self._batched_losses(params, Episode(*(x[i:i + chunk] for x in episodes)))
                     for i in range(0, meta_batch, chunk)]
            out = tuple(tf.concat(p, axis=0) for p in zip(*parts)) if len(parts) > 1 else parts[0]
            return out + (None,) if return_state else out
        state = None
        losses, preds = [], []
        for t in range(meta_batch):
            loss, pred, state = self.task_query_loss(params, Episode(*(x[t] for x in episodes)), state)
            losses.append(loss)
            preds.append(pred)
        out = (tf.stack(losses), tf.stack(preds))
        return out + (state,) if return_state else out

    def _batched_losses(self, params, episodes):
        meta_batch = episodes.support_x.shape[0]
        # Every task starts from theta: the broadcast's gradient sums the tasks' contributions.
        stacked = [tf.broadcast_to(p, [meta_batch] + p.shape.as_list()) for p in params]
        weights = self._step_weights
        out = adapt_params(
            self.model, stacked, episodes.support_x, episodes.support_y, loss_fn=self.loss_fn,
            inner_lr=self.inner_lr, inner_steps=self.inner_steps, first_order=self.first_order,
            return_trajectory=weights is not None, task_batched=True,
            loss_scale=self.inner_loss_scale, recompute=self.recompute,
            kernel_options=self.kernel_options, shared_start=self.shared_first_step)
        if weights is None:
            pred = batching.batched_functional_call(self.model, out, episodes.query_x,
                                                    kernel_options=self.kernel_options)
            return per_task_loss(self.loss_fn, episodes.query_y, pred), pred
        total = 0.0
        for w, step_params in zip(weights, out[1]):
            pred = batching.batched_functional_call(self.model, step_params, episodes.query_x,
                                                    kernel_options=self.kernel_options)
            total += w * per_task_loss(self.loss_fn, episodes.query_y, pred)
        return total, pred

    @_not_converted
    def meta_loss(self, params, episodes):
        """The mean post-adaptation query loss of the meta-batch (float32 scalar)."""
        losses, _ = self.meta_batch_losses(params, episodes)
        return tf.reduce_mean(tf.cast(losses, tf.float32))

    @_not_converted
    def meta_gradients(self, params, episodes):
        """`(meta_loss, grads)`: the mean query loss and its gradient w.r.t. `params`.

        Exact to second order unless `first_order`; `params` are tensors (e.g.
        `keras_meta.core.get_params(model)`), watched here.
        """
        params = [tf.convert_to_tensor(p) for p in params]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            meta_loss = self.meta_loss(params, episodes)
        grads = tape.gradient(meta_loss, params,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return meta_loss, grads
