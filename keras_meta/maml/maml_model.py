"""`MAML`: a Keras model that meta-learns the initialisation of a base model.

The model is the Keras face of MAML: construction and validation, the learned inner rates
(variables), `compile`/`fit`/`evaluate`, adaptation for users, and serialization. What it
optimizes, the post-adaptation query loss, is `MetaObjective` (`objective.py`), built afresh
in each step from the current settings and rates.
"""

import keras
import tensorflow as tf

from keras_meta._checks import check_int, check_one_of, is_int
from keras_meta.core import batching, functional
from keras_meta.core.losses import replica_loss_weight
from keras_meta.data.episode import Episode, as_episode
from keras_meta.maml.inner_rates import LR_MODES, make_inner_rates, read_inner_rates
from keras_meta.maml.multi_step_loss import MultiStepLossSchedule
from keras_meta.maml.objective import MetaObjective, _not_converted
from keras_meta.presets import Preset, PresetError

# How a meta-batch's tasks run: batched when the model allows it, always batched, or a loop.
TASK_BATCHING_MODES = ("auto", "batched", "loop")


@keras.saving.register_keras_serializable(package="keras_meta")
class MAML(keras.Model):
    """Model-Agnostic Meta-Learning (Finn et al. 2017) around any Keras model.

    `fit()` on a dataset of meta-batches of `Episode`s meta-trains the base model's
    initialisation with the exact second-order meta-gradient (nested `tf.GradientTape`s, no
    variable assignment in the inner loop). `evaluate()` reports the post-adaptation query loss
    and the compiled metrics.

    Args:
        model: the base `keras.Model`, built (give it a `keras.Input`).
        inner_lr: inner SGD learning rate (initial value when it is learned).
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps in `evaluate`, `adapt` and `adapt_and_predict`
            (defaults to `inner_steps`). It may exceed `inner_steps`: per-step settings
            (rates, batch-norm slots) then reuse the last trained step's for the extra steps.
            `evaluate` and `adapt_and_predict` predict the queries in inference mode
            (`training=False`; per-step batch norm: running statistics).
        first_order: first-order MAML (inner gradients held constant). Off by default.
        learn_inner_lr: `None` (fixed), `"per_variable"` (one learned rate per variable),
            `"per_step"` (one per variable and step, as MAML++), or `"per_coordinate"`
            (Meta-SGD: a rate tensor of each variable's shape). Per-step rates exist for the
            `inner_steps` trained steps only (so `inner_steps` must be >= 1); adapting with
            more steps (`eval_inner_steps`, `steps=`) reuses the last trained step's rates for
            every step past it, as MAML++ does. Per-step batch norm in the base model follows
            the same rule (`MetaBatchNormalization`): build it with `num_steps=inner_steps`.
        multi_step_loss_weights: `None` to use only the final query loss, one weight per
            inner step (the meta-loss is the weighted sum of the query losses after each
            step, MAML++'s multi-step loss), or a `MultiStepLossSchedule`: weights that
            follow the outer optimizer's iteration count (MAML++'s annealing).
        update_rule: optional learned inner update rule (e.g. `LSTMOptimizer`) used instead of
            SGD; its weights are meta-trained with the initialisation.
        loss: the task loss (also accepted by `compile(loss=...)`).
        task_batching: how a meta-batch's tasks run. `"batched"`: all tasks in one pass of the
            network (`keras_meta.task_batching`; stacked per-task parameters, grouped
            convolutions), much faster; `"loop"`: one fast-weights call per task, unrolled in
            the graph, for any model; `"auto"` (default): the fastest way this machine
            runs it, measured (`autotune`: the loop, the batched pass, chunks of it, fused
            or plain batch norm; `fit` measures on its first meta-batch, cached per machine)
            among those the model's layers and the update rule allow (batching needs SGD and
            no running statistics); unmeasured (`KERAS_META_AUTOTUNE=0`), batched whenever
            allowed, except convolutions on a CPU whose TensorFlow has no grouped-convolution
            gradients (oneDNN off, its default on AVX2-only CPUs): the loop there. Every form
            gives the same meta-gradient.
        task_chunk_size: with task batching, run the meta-batch in chunks of this many tasks
            (`None`: all at once). The batched pass keeps every task's activations alive at
            once; chunks bound that, down to the loop's footprint at 1, at some speed.
        recompute_inner_steps: `False`, `True` or an int `k`: recompute the inner steps in the
            outer backward pass, in segments of `k` steps (`True`: 1), instead of keeping their
            activations (`keras_meta.recompute`). Memory then holds one set of per-task
            parameters per segment and one segment's activations; each step runs once more.
            Same gradient. Segments of a few steps balance the two when parameters are large
            next to the support set's activations.
        inner_loss_scale: a fixed loss scale for the inner gradients (mixed float16), or
            `None`: then the outer `LossScaleOptimizer`'s current scale is used when there is
            one (a `mixed_float16` policy wraps the optimizer in one at `compile`), else none.
        fused_batch_norm: with task batching, transductive `MetaBatchNormalization` layers
            run TensorFlow's fused batch norm (default; about 1.4x faster on the Omniglot
            conv4, see the README) where it applies (the grouped float32 layout), or plain
            ops (`False`). Both are exact to second order (the fused kernels' second
            derivative is a closed form in plain ops, `keras_meta.layers.fused_batch_norm`)
            and differ only by float32 rounding; the per-task loop always uses plain ops.
        shared_first_step: with task batching, the first inner step (where every task still
            has theta) runs each dense layer and convolution as one ordinary op over all
            tasks' support examples, and only the kernel gradients per task (default); `False`
            runs it in the per-task batched forms. Exact to second order either way
            (`keras_meta.core.batching.shared_start`).

    Example:

    >>> base = keras.Sequential([keras.Input((1,)), keras.layers.Dense(40, "relu"),
    ...                          keras.layers.Dense(1)])
    >>> maml = MAML(base, inner_lr=0.01, inner_steps=1, loss="mse")
    >>> maml.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> maml.fit(sinusoid_episodes(num_shots=10, meta_batch_size=25), steps_per_epoch=100)
    """

    def __init__(
        self,
        model,
        inner_lr=0.01,
        inner_steps=1,
        eval_inner_steps=None,
        first_order=False,
        learn_inner_lr=None,
        multi_step_loss_weights=None,
        update_rule=None,
        loss=None,
        task_batching="auto",
        recompute_inner_steps=False,
        task_chunk_size=None,
        inner_loss_scale=None,
        fused_batch_norm=True,
        shared_first_step=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(f"MAML wraps a keras.Model; got {type(model).__name__}.")
        if not model.built:
            raise ValueError(
                f"The base model {model.name!r} is not built; give it a keras.Input or call it "
                "on a batch before wrapping it in MAML."
            )
        check_int("inner_steps", inner_steps, minimum=0)
        check_int("eval_inner_steps", eval_inner_steps, minimum=0, allow_none=True)
        if not float(inner_lr) >= 0:
            raise ValueError(f"inner_lr must be >= 0; got {inner_lr!r}.")
        check_one_of("learn_inner_lr", learn_inner_lr, LR_MODES)
        if learn_inner_lr == "per_step" and inner_steps < 1:
            raise ValueError(
                "learn_inner_lr='per_step' learns one rate per trained inner step; with "
                f"inner_steps={inner_steps} there is none. Use inner_steps >= 1 or another "
                "learn_inner_lr.")
        if isinstance(multi_step_loss_weights, dict):
            multi_step_loss_weights = keras.saving.deserialize_keras_object(
                multi_step_loss_weights)
        if isinstance(multi_step_loss_weights, MultiStepLossSchedule):
            if multi_step_loss_weights.num_steps != inner_steps:
                raise ValueError(
                    f"The MultiStepLossSchedule has {multi_step_loss_weights.num_steps} steps; "
                    f"inner_steps is {inner_steps}.")
        elif multi_step_loss_weights is not None:
            multi_step_loss_weights = [float(w) for w in multi_step_loss_weights]
            if len(multi_step_loss_weights) != inner_steps:
                raise ValueError(
                    f"multi_step_loss_weights needs one weight per inner step ({inner_steps}); "
                    f"got {len(multi_step_loss_weights)}."
                )
        check_one_of("task_batching", task_batching, TASK_BATCHING_MODES)
        self.model = model
        self.task_batching = task_batching
        if not (isinstance(recompute_inner_steps, bool) or (
                is_int(recompute_inner_steps) and recompute_inner_steps >= 1)):
            raise ValueError(
                "recompute_inner_steps must be a bool or a positive int (steps per segment); "
                f"got {recompute_inner_steps!r}.")
        self.recompute_inner_steps = recompute_inner_steps
        check_int("task_chunk_size", task_chunk_size, allow_none=True)
        self.task_chunk_size = task_chunk_size
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = bool(first_order)
        self.learn_inner_lr = learn_inner_lr
        self.multi_step_loss_weights = multi_step_loss_weights
        self.update_rule = update_rule
        self.loss_fn = keras.losses.get(loss) if loss is not None else None
        if inner_loss_scale is not None and not float(inner_loss_scale) > 0:
            raise ValueError(f"inner_loss_scale must be > 0 or None; got {inner_loss_scale!r}.")
        self.inner_loss_scale = None if inner_loss_scale is None else float(inner_loss_scale)
        if not isinstance(fused_batch_norm, bool):
            raise ValueError(f"fused_batch_norm must be True or False; got {fused_batch_norm!r}.")
        self.fused_batch_norm = fused_batch_norm
        if not isinstance(shared_first_step, bool):
            raise ValueError(
                f"shared_first_step must be True or False; got {shared_first_step!r}.")
        self.shared_first_step = shared_first_step
        # Per-step rates for the trained steps only: a rate of a step past `inner_steps`
        # would never receive a meta-gradient. Longer adaptation reuses the last one.
        self.inner_lrs = make_inner_rates(
            self, self.model.trainable_variables, learn_inner_lr, self.inner_lr,
            num_steps=self.inner_steps)
        self.meta_loss_tracker = keras.metrics.Mean(name="loss")
        # What `autotune` measured to be fastest here (`TaskBatchingChoice`), for "auto".
        self._task_batching_choice = None
        if task_batching == "batched":
            problems = self._batching_problems()
            if problems:
                raise ValueError(
                    "task_batching='batched' is not possible here: " + "; ".join(problems)
                    + ". Use task_batching='auto' or 'loop'.")

    def _batching_problems(self):
        problems = batching.unsupported_layers(self.model)
        if self.update_rule is not None:
            problems.append(
                f"the update rule {type(self.update_rule).__name__} is not known to be "
                "task-batchable (only SGD is)")
        return problems

    @property
    def uses_task_batching(self):
        """Whether meta-batches run task-batched (see `task_batching` and `autotune`)."""
        if self.task_batching == "loop":
            return False
        choice = self._task_batching_choice
        if choice is not None and self.task_batching == "auto":
            return choice.task_batching == "batched"
        # Unmeasured, the rule: batched wherever it can run, except where its convolutions
        # would fall back to the slow patch form (a CPU without oneDNN's grouped gradients).
        return (not self._batching_problems() and (
            self.task_batching == "batched"
            or not batching.convolutions_fall_back_to_patches(self.model)))

    @property
    def task_batching_choice(self):
        """The `TaskBatchingChoice` that `autotune` made (or was given), or `None`."""
        return self._task_batching_choice

    def set_task_batching_choice(self, choice):
        """Runs `"auto"` task batching as `choice` (a `TaskBatchingChoice`, or `None`: the rule).

        Every choice computes the same meta-gradient (up to float32 rounding); this changes
        only how fast. Already traced step functions keep what they traced.
        """
        from keras_meta.maml.task_batching_autotune import TaskBatchingChoice
        if choice is not None and not isinstance(choice, TaskBatchingChoice):
            raise TypeError(f"set_task_batching_choice takes a TaskBatchingChoice or None; got "
                            f"{type(choice).__name__} {choice!r}.")
        if choice is not None:
            if self.task_batching != "auto":
                raise ValueError(
                    f"task_batching={self.task_batching!r} is fixed; a measured choice "
                    f"({choice.label}) applies only to task_batching='auto'.")
            if choice.task_batching == "batched" and self._batching_problems():
                raise ValueError(f"The choice {choice.label!r} is not possible here: "
                                 + "; ".join(self._batching_problems()) + ".")
        self._task_batching_choice = choice

    def autotune(self, episodes, *, repeats=5, jit_compile=False, use_cache=True, log=print,
                 run_iterations=None):
        """Times the ways to run a meta-batch on `episodes` and keeps the fastest.

        Only for `task_batching="auto"` (a fixed `"batched"` or `"loop"` is the override and
        is returned unmeasured). The timings are cached per machine and model signature
        (`keras_meta.maml.task_batching_autotune`), so later runs on the same machine skip
        the measurement. `fit` calls this on its first meta-batch; a custom loop calls it
        before tracing its step.

        Args:
            episodes: one meta-batch as training will see it.
            repeats: timed rounds per candidate.
            jit_compile: time the candidates compiled with XLA (as the trainer's flag).
            use_cache: read and write the timings cache.
            log: a `print`-like callable for the choice and its timings.
            run_iterations: the meta-iterations of the run the choice is for: the
                measurement then takes at most a tenth of the run's time, leaving out the
                candidates whose trace would not fit (`autotune_task_batching`). None times
                every candidate.

        Returns:
            `(choice, report)`, see `autotune_task_batching`; `report` is `None` when nothing
            was measured.

        Example:

        >>> choice, report = maml.autotune(next(iter(train_episodes)))
        >>> choice.label
        'batched, chunks of 8'
        """
        from keras_meta.maml.task_batching_autotune import (TaskBatchingChoice,
                                                            autotune_task_batching)
        self._check_ready()
        if self.task_batching != "auto":
            fixed = TaskBatchingChoice(self.task_batching, self.task_chunk_size,
                                       self.fused_batch_norm)
            return fixed, None
        choice, report = autotune_task_batching(self, episodes, repeats=repeats,
                                                jit_compile=jit_compile, use_cache=use_cache,
                                                log=log, run_iterations=run_iterations)
        self.set_task_batching_choice(choice)
        # Keras' compiled step functions read the choice when they trace: make them anew.
        for name in ("train_function", "test_function", "predict_function"):
            if getattr(self, name, None) is not None:
                setattr(self, name, None)
        return choice, report

    def fit(self, x=None, *args, **kwargs):
        """Keras `fit`; with `task_batching="auto"`, first times the ways to run a meta-batch.

        The measurement (see `autotune`) runs once, on the first meta-batch of a
        `tf.data.Dataset`, unless `KERAS_META_AUTOTUNE=0` or a choice is already made. Where
        the run's length is known (`steps_per_epoch`, or a finite dataset, times the epochs),
        it takes at most a tenth of the run.
        """
        from keras_meta.maml.task_batching_autotune import autotune_enabled
        if (self.task_batching == "auto" and self._task_batching_choice is None
                and isinstance(x, tf.data.Dataset) and autotune_enabled()
                and not self._batching_problems() and self.loss_fn is not None
                and not tf.distribute.has_strategy()):
            # Under a tf.distribute strategy each replica's step is what runs; the timings
            # of a single-device step would not describe it, so the rule applies there.
            first = next(iter(x), None)
            if first is not None:
                self.autotune(first, jit_compile=bool(getattr(self, "jit_compile", False)),
                              run_iterations=_fit_iterations(x, args, kwargs))
        return super().fit(x, *args, **kwargs)

    def compile(self, optimizer="adam", loss=None, metrics=None, jit_compile=False, **kwargs):
        """Sets the outer optimizer, the task loss (if not given to the constructor) and metrics."""
        if loss is not None:
            self.loss_fn = keras.losses.get(loss)
        if self.loss_fn is None:
            raise ValueError(
                "MAML needs a task loss: pass `loss=` to MAML(...) or to compile(...)."
            )
        super().compile(optimizer=optimizer, metrics=metrics, jit_compile=jit_compile, **kwargs)
        # Slot variables created inside the first traced step would make tf.function trace it
        # a second time; creating them now keeps the train step at one trace.
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def compile_from_config(self, config):
        # The task loss travels in get_config(); optimizer, metrics and jit_compile here.
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)

    def call(self, inputs, training=False):
        """The base model at the meta-learned initialisation (no adaptation)."""
        return self.model(inputs, training=training)

    # -- the meta-objective ---------------------------------------------------------------------

    def _inner_loss_scale(self):
        """The inner loop's loss scale: `None` or a float32 scalar tensor.

        Under `mixed_float16` small inner gradients underflow in float16 as the outer ones do,
        so the inner loss is scaled too: by the fixed `inner_loss_scale` if given, else by the
        outer `LossScaleOptimizer`'s current (dynamic) scale. A step whose scaled inner
        gradients overflow gives a non-finite meta-gradient, which that optimizer skips while
        it halves the scale.
        """
        if self.inner_loss_scale is not None:
            return tf.constant(self.inner_loss_scale, tf.float32)
        optimizer = getattr(self, "optimizer", None)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and optimizer.built:
            # A constant of the meta-gradient: no gradient flows into the scale.
            return tf.stop_gradient(tf.cast(optimizer.dynamic_scale.value, tf.float32))
        return None

    def objective(self, steps=None, first_order=None, query_training=True):
        """The `MetaObjective` of the current settings and learned rates.

        Args:
            steps: inner steps (default `inner_steps`); the multi-step loss applies only at
                `inner_steps`.
            first_order: default `self.first_order`.
            query_training: the `training` flag of the query pass: `True` in meta-training,
                `False` at evaluation and inference (per-step batch norm then normalizes the
                queries with its running statistics, as MAML++; see `MetaObjective`).
        """
        return MetaObjective(
            model=self.model, loss_fn=self.loss_fn, inner_lr=read_inner_rates(self.inner_lrs, learn_inner_lr=self.learn_inner_lr,
                                      fixed=self.inner_lr),
            update_rule=self.update_rule,
            inner_steps=self.inner_steps if steps is None else steps,
            first_order=self.first_order if first_order is None else first_order,
            multi_step_loss_weights=self._step_loss_weights(),
            task_batched=self.uses_task_batching, task_chunk_size=self._chunk_size(),
            inner_loss_scale=self._inner_loss_scale(), recompute=self.recompute_inner_steps,
            fused_batch_norm=self._fused_batch_norm(), query_training=query_training,
            shared_first_step=self.shared_first_step)

    def _chunk_size(self):
        choice = self._task_batching_choice
        if choice is not None and self.task_batching == "auto":
            return choice.task_chunk_size
        return self.task_chunk_size

    def _fused_batch_norm(self):
        choice = self._task_batching_choice
        if choice is not None and self.task_batching == "auto":
            return choice.fused_batch_norm
        return self.fused_batch_norm

    def _step_loss_weights(self):
        weights = self.multi_step_loss_weights
        if weights is None:
            return None
        if isinstance(weights, MultiStepLossSchedule):
            # The schedule follows the outer step count, which the outer optimizer keeps and
            # checkpoints; before `compile` (no optimizer) it is at its start.
            iteration = self.optimizer.iterations if self.optimizer is not None else 0
            return tuple(tf.unstack(weights(iteration)))
        return tuple(weights)

    @_not_converted
    def task_query_loss(self, params, episode, *, steps, first_order, state=None,
                        query_training=True):
        """Query loss of one (unbatched) task after adaptation: `(loss, predictions, state)`.

        Evaluation passes `query_training=False`: per-step batch norm then predicts each
        query from its running statistics, independently of the rest of the query set.
        """
        self._check_ready()
        objective = self.objective(steps, first_order, query_training).replace(
            task_batched=False)
        return objective.task_query_loss(params, episode, state)

    @_not_converted
    def meta_batch_losses(self, episodes, *, steps=None, first_order=None, return_state=False,
                          query_training=True):
        """Per-task post-adaptation query losses `[meta_batch]` and query predictions.

        See `MetaObjective.meta_batch_losses`; the parameters are the base model's.
        `query_training=False` at evaluation (see `objective`).
        """
        self._check_ready()
        return self.objective(steps, first_order, query_training).meta_batch_losses(
            functional.get_params(self.model), episodes, return_state=return_state)

    # -- Keras hooks ----------------------------------------------------------------------------

    @_not_converted
    def meta_gradients(self, episodes, *, loss_weight=1.0, scale_loss=False,
                       return_state=False, first_order=None):
        """The mean post-adaptation query loss of a meta-batch and its gradient.

        Args:
            episodes: a batched `Episode` (static meta-batch size).
            loss_weight: the gradient is that of `loss_weight * meta_loss`: a replica's share
                of the global mean (`1 / num_replicas`) under `tf.distribute`.
            scale_loss: also scale the objective by the optimizer (`LossScaleOptimizer`,
                which unscales the gradients in `apply_gradients`).
            return_state: also return the non-trainable state after the tasks.
            first_order: `None` (the model's `first_order`) or a bool for this step: a
                trainer anneals the derivative order this way (MAML++).

        Returns:
            `(meta_loss, grads, query_preds)` (and `state`), `grads` aligned with
            `self.trainable_variables` (the base model's and any learned inner rates or rule).
            `meta_loss` is never weighted or scaled.
        """
        episodes = as_episode(episodes)
        with tf.GradientTape() as tape:
            losses, preds, state = self.meta_batch_losses(episodes, first_order=first_order,
                                                          return_state=True)
            meta_loss = tf.reduce_mean(tf.cast(losses, tf.float32))
            objective = meta_loss if loss_weight == 1.0 else meta_loss * loss_weight
            if scale_loss:
                objective = self.optimizer.scale_loss(objective)
        grads = tape.gradient(objective, self.trainable_variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        out = (meta_loss, grads, preds)
        return out + (state,) if return_state else out

    @_not_converted
    def replica_meta_train_step(self, episodes, first_order=None):
        """One replica's part of an outer step; the single-device step outside any strategy.

        This is the step Keras' `fit` runs on each replica; `keras_meta.training.distribute`
        runs it with `strategy.run` and reduces what it returns.

        Computes the meta-gradient of this replica's tasks weighted by `1 / num_replicas`
        and applies it: Keras' TF optimizer all-reduces the replicas' gradients with SUM, so
        the update uses the mean meta-loss over all tasks of the global meta-batch. Nothing
        non-trainable is assigned: returns `(meta_loss, preds, state)` with this replica's
        unweighted mean meta-loss and the running-statistics state after its tasks.
        Under a strategy, call it through
        `keras_meta.training.distribute.distributed_meta_train_step`.
        """
        weight = replica_loss_weight()
        meta_loss, grads, preds, state = self.meta_gradients(
            episodes, loss_weight=weight, scale_loss=True, return_state=True,
            first_order=first_order)
        if weight != 1.0 and isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            grads = _agree_on_finiteness(grads)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return meta_loss, preds, state

    @_not_converted
    def meta_train_step(self, episodes, first_order=None):
        """One outer step: meta-gradient, then the outer optimizer. Returns `(loss, preds)`.

        Running statistics of the base model (per-step batch norm) take the state reached
        after the meta-batch's tasks. Under `mixed_float16` (a `LossScaleOptimizer`) the
        meta-loss is scaled for the gradient and a step with non-finite gradients is skipped.
        """
        meta_loss, preds, state = self.replica_meta_train_step(episodes, first_order)
        for variable, value in zip(self.model.non_trainable_variables, state or ()):
            variable.assign(value)
        return meta_loss, preds

    def meta_train_steps(self, episodes, first_order=None):
        """Several outer steps in one call: `episodes` has a leading axis of `K` meta-batches.

        Meant for a `tf.function` (optionally `jit_compile=True`): `K` steps run in one graph
        loop, which removes the per-call dispatch cost (about 0.3 ms on CPU) that dominates
        small models such as the sinusoid MLP. Returns the mean meta-loss of the `K` steps.
        """
        episodes = as_episode(episodes)
        num_steps = episodes.support_x.shape[0]
        if num_steps is None:
            raise ValueError(
                "meta_train_steps needs a static number of stacked meta-batches; got "
                f"support_x with shape {episodes.support_x.shape}.")
        total = tf.constant(0.0, tf.float32)
        for k in tf.range(num_steps):
            loss, _ = self.meta_train_step(Episode(*(x[k] for x in episodes)), first_order)
            total += tf.cast(loss, tf.float32)
        return total / num_steps

    def train_step(self, data):
        episodes = as_episode(data)
        meta_loss, preds = self.meta_train_step(episodes)
        return self._record(meta_loss, episodes.query_y, preds)

    def test_step(self, data):
        episodes = as_episode(data)
        losses, preds = self.meta_batch_losses(
            episodes, steps=self.eval_inner_steps, first_order=True, query_training=False)
        return self._record(tf.reduce_mean(losses), episodes.query_y, preds)

    def _record(self, meta_loss, query_y, preds):
        self.meta_loss_tracker.update_state(meta_loss)
        results = {"loss": self.meta_loss_tracker.result()}
        compile_metrics = getattr(self, "_compile_metrics", None)
        if compile_metrics is not None:
            compile_metrics.update_state(query_y, preds)
            results.update(compile_metrics.result())
        return results

    @property
    def metrics(self):
        metrics = [self.meta_loss_tracker]
        compile_metrics = getattr(self, "_compile_metrics", None)
        if compile_metrics is not None:
            metrics.append(compile_metrics)
        return metrics

    def _check_ready(self):
        if self.loss_fn is None:
            raise ValueError("MAML has no task loss: pass `loss=` to MAML(...) or compile(...).")

    # -- adaptation for users -------------------------------------------------------------------

    @_not_converted
    def adapt_params(self, support_x, support_y, steps=None):
        """Adapted parameter tensors for one support set (no variable is assigned)."""
        self._check_ready()
        support_x = tf.convert_to_tensor(support_x)
        support_y = tf.convert_to_tensor(support_y)
        objective = self.objective(self._user_steps(steps), first_order=True)
        return objective.adapt(functional.get_params(self.model), support_x, support_y)[0]

    @_not_converted
    def adapt_and_predict(self, support_x, support_y, query_x, steps=None):
        """Adapts on one support set and returns the predictions for `query_x`.

        Adaptation runs in training mode (batch norm: the support set's statistics); the
        queries are predicted in inference mode: per-step batch norm uses its running
        statistics (MAML++), so each query's answer does not depend on the other queries.
        Transductive batch norm normalizes the queries with their own batch's statistics.
        """
        steps = self._user_steps(steps)
        adapted = self.adapt_params(support_x, support_y, steps)
        objective = self.objective(steps, first_order=True, query_training=False)
        return objective.query(adapted, tf.convert_to_tensor(query_x), steps)[0]

    def _user_steps(self, steps):
        return self.eval_inner_steps if steps is None else steps

    def adapt(self, support_x, support_y, steps=None):
        """Returns a new ordinary `keras.Model`: the base model with the adapted weights.

        The meta-learned model is untouched. The copy is a plain Keras model, usable with
        `predict`, `save` and export.
        """
        adapted = self.adapt_params(support_x, support_y, steps)
        clone = keras.models.clone_model(self.model)
        if not clone.built:
            clone.build(self.model.input_shape if hasattr(self.model, "input_shape") else None)
        clone.set_weights([v.numpy() for v in self.model.weights])
        functional.assign_params(clone, adapted)
        return clone

    # -- serialization --------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            model=keras.saving.serialize_keras_object(self.model),
            inner_lr=self.inner_lr,
            inner_steps=self.inner_steps,
            eval_inner_steps=self.eval_inner_steps,
            first_order=self.first_order,
            learn_inner_lr=self.learn_inner_lr,
            multi_step_loss_weights=(
                keras.saving.serialize_keras_object(self.multi_step_loss_weights)
                if isinstance(self.multi_step_loss_weights, MultiStepLossSchedule)
                else self.multi_step_loss_weights),
            update_rule=(keras.saving.serialize_keras_object(self.update_rule)
                         if self.update_rule is not None else None),
            loss=(keras.saving.serialize_keras_object(self.loss_fn)
                  if self.loss_fn is not None else None),
            task_batching=self.task_batching,
            recompute_inner_steps=self.recompute_inner_steps,
            task_chunk_size=self.task_chunk_size,
            inner_loss_scale=self.inner_loss_scale,
            fused_batch_norm=self.fused_batch_norm,
            shared_first_step=self.shared_first_step,
        )
        return config

    @classmethod
    def from_preset(cls, preset):
        """A meta-trained `MAML` from a pretrained preset, ready to adapt and predict.

        Args:
            preset: a shipped preset's name (`keras_meta.presets.list_presets()`) or a preset
                directory. Its files are checked against their sha256 before any is read.

        Example:

        >>> maml = MAML.from_preset("omniglot_5way_1shot")
        >>> logits = maml.adapt_and_predict(support_images, support_labels, query_images)
        """
        info = Preset.load(preset)
        maml = cls.from_config(info.model_config)
        status = tf.train.Checkpoint(model=maml).read(info.weights_prefix)
        saved = [name for name, _ in tf.train.list_variables(info.weights_prefix)
                 if name.startswith("model/")]
        try:
            # Every weight of the model from the preset, and nothing in the preset unused.
            status.assert_existing_objects_matched()
            if len(saved) != len(maml.variables):
                raise AssertionError(f"the preset holds {len(saved)} values, the model has "
                                     f"{len(maml.variables)} variables")
        except AssertionError as error:
            raise PresetError(f"Preset {info.name!r}: its weights do not fit the model its "
                              f"{info.directory}/model.json describes: {error}") from None
        return maml

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        if config.get("update_rule") is not None:
            config["update_rule"] = keras.saving.deserialize_keras_object(config["update_rule"])
        if config.get("loss") is not None:
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)


def _agree_on_finiteness(grads):
    """Makes every replica's gradients non-finite when any replica's are.

    `LossScaleOptimizer` decides to skip a step from the first replica's *local* gradients;
    without this, an overflow on another replica would reach the all-reduced update.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    context = tf.distribute.get_replica_context()
    all_finite = context.all_reduce(tf.distribute.ReduceOp.MIN, tf.cast(finite, tf.float32)) > 0
    poison = tf.where(all_finite, 0.0, float("nan"))
    return [g + tf.cast(poison, g.dtype) for g in grads]


def _fit_iterations(dataset, args, kwargs):
    """The meta-iterations a `fit(dataset, ...)` call will run, or None where unknown (the
    arguments after `x` given by position, or an endless dataset without `steps_per_epoch`)."""
    epochs, first = kwargs.get("epochs", 1), kwargs.get("initial_epoch", 0)
    if args or not isinstance(epochs, int) or not isinstance(first, int):
        return None  # Keras judges odd arguments with its own message, not a TypeError here
    steps = kwargs.get("steps_per_epoch")
    if steps is None:
        cardinality = int(dataset.cardinality())
        steps = cardinality if cardinality > 0 else None
    if not isinstance(steps, int) or steps * (epochs - first) < 1:
        return None
    return steps * (epochs - first)
