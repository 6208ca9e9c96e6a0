"""Batch normalization whose second derivatives are exact, for higher-order meta-learning."""

import keras

from keras_meta._checks import is_int
from keras_meta.core.step_context import current_inner_step, is_query_pass
from keras_meta.layers.batch_norm_ops import BATCH_NORM_MODES, broadcast_to_axis, moments

# The layer's own modes; "none" (no layer at all) completes BATCH_NORM_MODES for backbones.
_MODES = tuple(mode for mode in BATCH_NORM_MODES if mode != "none")


@keras.saving.register_keras_serializable(package="keras_meta")
class MetaBatchNormalization(keras.layers.Layer):
    """Batch normalization for MAML-style meta-learning, exact to second order.

    The batch statistics are computed with plain differentiable operations, so gradients of
    gradients through the normalization (MAML's Hessian-vector terms) are exact, unlike Keras'
    `BatchNormalization`, whose variance blocks the gradient through the mean.

    Two modes:

    * `"transductive"` (the MAML paper's code): always normalizes with the statistics of the
      current batch, at meta-training and at test time, whatever `training` says. The layer has
      no running statistics and no non-trainable weights. Predictions for one example depend on
      the rest of the batch (the task's query set).
    * `"per_step"` (MAML++, Antoniou et al. 2019): `num_steps + 1` slots of gamma/beta and of
      running mean/variance, one per trained inner step plus the query slot (the last). The
      slot is the inner step being traced (`keras_meta.core.current_inner_step()`):
      adaptation step `k` uses slot `min(k, num_steps - 1)`, i.e. adapting with more steps
      than were trained reuses the LAST trained step's slot for every step past it (MAML++);
      the query pass after `k` steps (`inner_step(k, query=True)`) uses slot
      `min(k, num_steps)`, the query slot once all trained steps are taken; outside any inner
      step (`None`: plain `model(x)`, serving) the query slot is used. With `training=True`
      the batch statistics normalize and the slot's running statistics receive a momentum
      update; with `training=False` the slot's running statistics normalize, so each
      example's output depends only on that example (safe for serving). `MAML` adapts in
      training mode (support-set statistics, as MAML++) and, at evaluation and inference,
      predicts the queries with `training=False`.

    Running statistics (per-step mode only) are updated only when the layer is called with
    `training=True`: `model(x, training=True)` assigns them; inside `stateless_call` /
    `keras_meta.functional_call(..., return_state=True)` the updated values come back as the new
    non-trainable state and nothing is assigned. `adapt_params` and `maml_loss` discard that state, so a
    caller that wants serving statistics must either run `model(x, training=True)` on data
    (from the slot's scope) or assign the returned state (`functional.assign_params`).

    Args:
        mode: `"transductive"` or `"per_step"`.
        num_steps: number of trained inner steps (per-step mode only; a Python int >= 0):
            MAML's `inner_steps`. The layer keeps `num_steps + 1` slots: one per trained
            inner step plus one for the query pass. More adaptation steps reuse the last
            step's slot.
        axis: the feature axis (an int; the statistics are taken over all other axes).
        momentum: running-statistics momentum (per-step mode).
        epsilon: added to the variance before the square root.
        center: learn an offset beta.
        scale: learn a scale gamma.
        beta_initializer, gamma_initializer: initializers for beta and gamma.
        moving_mean_initializer, moving_variance_initializer: initializers for the running
            statistics (per-step mode).
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Example:

    >>> from keras_meta.core import inner_step
    >>> bn = MetaBatchNormalization(mode="per_step", num_steps=1)
    >>> x = keras.random.normal((8, 4, 4, 3))
    >>> with inner_step(0):
    ...     y0 = bn(x, training=True)   # slot 0
    >>> y1 = bn(x, training=False)      # last slot, running statistics
    >>> bn.gamma.shape
    (2, 3)
    """

    def __init__(
        self,
        mode="transductive",
        num_steps=None,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in _MODES:
            raise ValueError(
                f"MetaBatchNormalization mode must be one of {_MODES}; got {mode!r}. (For no "
                "normalization, leave the layer out.)"
            )
        if mode == "per_step":
            if not is_int(num_steps) or num_steps < 0:
                raise ValueError(
                    "MetaBatchNormalization(mode='per_step') needs num_steps, the number of "
                    f"inner steps, as a Python int >= 0; got {num_steps!r}."
                )
        elif num_steps is not None:
            raise ValueError(
                f"num_steps applies only to mode='per_step'; got num_steps={num_steps!r} with "
                f"mode={mode!r}."
            )
        if not is_int(axis):
            raise ValueError(f"axis must be a single int; got {axis!r}.")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1]; got {momentum!r}.")
        if not float(epsilon) > 0.0:
            raise ValueError(f"epsilon must be > 0; got {epsilon!r}.")
        self.mode = mode
        self.num_steps = num_steps
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)

    @property
    def num_slots(self):
        """Number of per-step slots (1 in transductive mode)."""
        return self.num_steps + 1 if self.mode == "per_step" else 1

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 2:
            raise ValueError(
                f"MetaBatchNormalization needs inputs of rank >= 2; got shape {input_shape}."
            )
        axis = self.axis if self.axis >= 0 else self.axis + rank
        if not 0 < axis < rank:
            raise ValueError(
                f"axis={self.axis} is not a feature axis of inputs with shape {input_shape} "
                "(axis 0 is the batch)."
            )
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                f"The feature axis {self.axis} of inputs with shape {input_shape} must be known."
            )
        self._axis = axis
        self._reduction_axes = [i for i in range(rank) if i != axis]
        shape = (self.num_slots, channels) if self.mode == "per_step" else (channels,)
        self.gamma = self.add_weight(
            shape=shape, name="gamma", initializer=self.gamma_initializer, trainable=True
        ) if self.scale else None
        self.beta = self.add_weight(
            shape=shape, name="beta", initializer=self.beta_initializer, trainable=True
        ) if self.center else None
        if self.mode == "per_step":
            self.moving_mean = self.add_weight(
                shape=shape, name="moving_mean", initializer=self.moving_mean_initializer,
                trainable=False, autocast=False,
            )
            self.moving_variance = self.add_weight(
                shape=shape, name="moving_variance",
                initializer=self.moving_variance_initializer, trainable=False, autocast=False,
            )
        else:
            self.moving_mean = self.moving_variance = None

    def current_slot(self):
        """The slot used by a call traced now (a Python int)."""
        if self.mode != "per_step":
            return 0
        step = current_inner_step()
        if step is None:
            return self.num_steps
        if step < 0:
            raise ValueError(f"Inner step must be >= 0; got {step}.")
        if is_query_pass():
            return min(step, self.num_steps)
        # An adaptation step past the trained ones reuses the last trained step's slot.
        return min(step, max(self.num_steps - 1, 0))

    def _broadcast(self, vector, rank, dtype):
        return broadcast_to_axis(vector, self._axis, rank, dtype)

    def _slot_of(self, variable, slot):
        # A static Python index lowers to a strided slice, whose gradient is a dense tensor
        # (a gather would give IndexedSlices that the inner update rules do not expect).
        value = variable.value if hasattr(variable, "value") else variable
        return value[slot] if self.mode == "per_step" else value

    def call(self, inputs, training=None):
        # Statistics in at least float32: half-precision sums overflow.
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = keras.ops.cast(inputs, compute_dtype)
        rank = len(x.shape)
        slot = self.current_slot()
        use_batch = self.mode == "transductive" or bool(training)
        if use_batch:
            mean, variance, centred = moments(x, self._reduction_axes)
            if self.mode == "per_step":
                self._update_running(slot, mean, variance)
        else:
            mean = self._broadcast(self._slot_of(self.moving_mean, slot), rank, compute_dtype)
            variance = self._broadcast(
                self._slot_of(self.moving_variance, slot), rank, compute_dtype)
            centred = x - mean
        # Folding gamma into the inverse standard deviation leaves one multiply and one add
        # over the activation tensor.
        inv = keras.ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            inv = inv * self._broadcast(self._slot_of(self.gamma, slot), rank, compute_dtype)
        outputs = centred * inv
        if self.beta is not None:
            outputs = outputs + self._broadcast(
                self._slot_of(self.beta, slot), rank, compute_dtype)
        return keras.ops.cast(outputs, self.compute_dtype)

    def _update_running(self, slot, mean, variance):
        # Only the slot's row moves; a one-hot blend keeps the update a single dense assign
        # that works identically under stateless_call.
        mean = keras.ops.reshape(mean, (1, -1))
        variance = keras.ops.reshape(variance, (1, -1))
        one_hot = keras.ops.one_hot([slot], self.num_slots, dtype=self.moving_mean.dtype)
        rows = keras.ops.reshape(one_hot, (self.num_slots, 1)) * (1.0 - self.momentum)
        for variable, batch_value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            batch_value = keras.ops.cast(batch_value, variable.dtype)
            # Running statistics are bookkeeping, not part of the meta-objective.
            batch_value = keras.ops.stop_gradient(batch_value)
            variable.assign(variable.value + rows * (batch_value - variable.value))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            mode=self.mode,
            num_steps=self.num_steps,
            axis=self.axis,
            momentum=self.momentum,
            epsilon=self.epsilon,
            center=self.center,
            scale=self.scale,
            beta_initializer=keras.initializers.serialize(self.beta_initializer),
            gamma_initializer=keras.initializers.serialize(self.gamma_initializer),
            moving_mean_initializer=keras.initializers.serialize(self.moving_mean_initializer),
            moving_variance_initializer=keras.initializers.serialize(
                self.moving_variance_initializer),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("beta_initializer", "gamma_initializer", "moving_mean_initializer",
                    "moving_variance_initializer"):
            if key in config:
                config[key] = keras.initializers.deserialize(config[key])
        return cls(**config)
