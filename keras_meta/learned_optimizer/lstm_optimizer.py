"""`LSTMOptimizer`: the coordinatewise learned update rule of Andrychowicz et al. (2016).

theta_t = theta_{t-1} + g_t with [g_t; h_t] = LSTM(grad L(theta_{t-1}), h_{t-1}; phi). The LSTM
weights phi are shared by every coordinate of every parameter tensor; each coordinate has its own
hidden and cell state. All coordinates are flattened into one `[n, features]` batch, so one step
is a handful of matrix products whatever the number or shapes of the parameter tensors.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_meta._checks import check_int, check_one_of
from keras_meta.core.update_rules import check_gradients

_PREPROCESSING = ("log_sign", "none")


@keras.saving.register_keras_serializable(package="keras_meta")
class LSTMOptimizer(keras.layers.Layer):
    """A coordinatewise LSTM that maps gradients (and its state) to parameter updates.

    It follows the inner update-rule protocol of `keras_meta.core.update_rules`
    (`init_state(params)`, `apply(grads, params, state, *, step, loss)`), so it can be passed as
    `update_rule=` to `adapt_params` and `MAML`. `apply` is a pure function of tensors: it reads phi
    and assigns nothing, so it is differentiable w.r.t. phi and (to any order) w.r.t. theta.

    Args:
        hidden_size: units of each LSTM layer (20 in the paper).
        num_layers: stacked LSTM layers (2 in the paper).
        preprocessing: `"log_sign"` (the paper's appendix: (log|g|/p, sign g) when
            |g| >= e^-p, else (-1, e^p g)) or `"none"` (the raw gradient as one feature).
        preprocessing_p: p of the log-sign preprocessing (10 in the paper).
        output_scale: factor applied to the linear head's output (0.1 in the paper).
        use_loss_feature: also feed the (preprocessed) loss value to every coordinate, as in
            Ravi & Larochelle (2017); `apply` then needs `loss=`.
        output_initializer: initializer of the output head's kernel. With `"zeros"` the rule
            starts as the identity (exactly zero updates); the default is small random.
        seed: integer seed of the weight initializers (reproducible phi).
        **kwargs: `keras.layers.Layer` arguments, e.g. `dtype="float64"`.

    Example:

    >>> rule = LSTMOptimizer(hidden_size=20, num_layers=2)
    >>> params = [tf.zeros([3, 2]), tf.zeros([2])]
    >>> state = rule.init_state(params)
    >>> new_params, state = rule.apply([tf.ones([3, 2]), tf.ones([2])], params, state, step=0)
    >>> [p.shape for p in new_params]
    [TensorShape([3, 2]), TensorShape([2])]
    """

    def __init__(
        self,
        hidden_size=20,
        num_layers=2,
        preprocessing="log_sign",
        preprocessing_p=10.0,
        output_scale=0.1,
        use_loss_feature=False,
        output_initializer=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("LSTMOptimizer hidden_size", hidden_size)
        check_int("LSTMOptimizer num_layers", num_layers)
        check_one_of("LSTMOptimizer preprocessing", preprocessing, _PREPROCESSING)
        if not float(preprocessing_p) > 0:
            raise ValueError(f"preprocessing_p must be > 0; got {preprocessing_p!r}.")
        if not math.isfinite(float(output_scale)):
            raise ValueError(f"output_scale must be a finite number; got {output_scale!r}.")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.preprocessing = preprocessing
        self.preprocessing_p = float(preprocessing_p)
        self.output_scale = float(output_scale)
        self.use_loss_feature = bool(use_loss_feature)
        if output_initializer is None:
            output_initializer = keras.initializers.RandomNormal(stddev=0.01, seed=seed)
        self.output_initializer = keras.initializers.get(output_initializer)
        self.seed = seed
        self._create_weights()

    # -- weights --------------------------------------------------------------------------------

    @property
    def num_features(self):
        """Input features per coordinate."""
        per_value = 2 if self.preprocessing == "log_sign" else 1
        return per_value * (2 if self.use_loss_feature else 1)

    def _create_weights(self):
        # Every shape is known from the config, so phi exists from construction: a restored
        # optimizer can load weights before it has seen any parameter.
        seed_gen = (lambda k: None) if self.seed is None else (lambda k: self.seed + k)
        input_size = self.num_features
        units = self.hidden_size
        for layer in range(self.num_layers):
            kernel = self.add_weight(
                shape=(input_size, 4 * units), name=f"lstm_{layer}_kernel",
                initializer=keras.initializers.GlorotUniform(seed=seed_gen(3 * layer)),
            )
            recurrent = self.add_weight(
                shape=(units, 4 * units), name=f"lstm_{layer}_recurrent_kernel",
                initializer=keras.initializers.Orthogonal(seed=seed_gen(3 * layer + 1)),
            )
            # A forget-gate bias of 1 keeps the cell memory alive early in meta-training.
            bias = self.add_weight(
                shape=(4 * units,), name=f"lstm_{layer}_bias",
                initializer=keras.initializers.Constant(
                    [0.0] * units + [1.0] * units + [0.0] * (2 * units)),
            )
            # Plain attributes (not a list of tuples) so that tf.train.Checkpoint tracks them.
            setattr(self, f"lstm_{layer}_kernel", kernel)
            setattr(self, f"lstm_{layer}_recurrent_kernel", recurrent)
            setattr(self, f"lstm_{layer}_bias", bias)
            input_size = units
        self.output_kernel = self.add_weight(
            shape=(units, 1), name="output_kernel", initializer=self.output_initializer)
        self.output_bias = self.add_weight(shape=(1,), name="output_bias", initializer="zeros")
        self.built = True

    @property
    def cells(self):
        """(kernel, recurrent_kernel, bias) of each LSTM layer."""
        return [
            tuple(getattr(self, f"lstm_{layer}_{part}")
                  for part in ("kernel", "recurrent_kernel", "bias"))
            for layer in range(self.num_layers)
        ]

    def build(self, input_shape=None):
        # Weights are created in the constructor; nothing depends on the input shape.
        self.built = True

    # -- the coordinatewise computation -------------------------------------------------------

    def preprocess(self, values):
        """Features `[n, 1 or 2]` of a vector of values, in the layer's dtype."""
        values = tf.cast(tf.reshape(values, [-1]), self.variable_dtype)
        if self.preprocessing == "none":
            return values[:, None]
        p = self.preprocessing_p
        threshold = math.exp(-p)
        magnitude = tf.abs(values)
        large = magnitude >= threshold
        # log is taken of a clipped magnitude so that the unselected branch of tf.where has a
        # finite gradient (a NaN there would poison the selected branch's gradient too).
        log_part = tf.math.log(tf.maximum(magnitude, threshold)) / p
        first = tf.where(large, log_part, -tf.ones_like(values))
        second = tf.where(large, tf.sign(values), math.exp(p) * values)
        return tf.stack([first, second], axis=-1)

    def features(self, flat_grads, loss=None):
        """Per-coordinate input features `[n, num_features]` from a flat gradient vector."""
        feats = self.preprocess(flat_grads)
        if self.use_loss_feature:
            if loss is None:
                raise ValueError(
                    "This LSTMOptimizer was built with use_loss_feature=True, so apply() needs "
                    "the loss value (loss=...); got loss=None."
                )
            loss_feats = self.preprocess(tf.reshape(loss, [1]))
            loss_feats = tf.broadcast_to(loss_feats, [tf.shape(feats)[0], loss_feats.shape[-1]])
            feats = tf.concat([feats, loss_feats], axis=-1)
        return feats

    def zero_state(self, num_coordinates):
        """The initial state for `num_coordinates` coordinates: ((h, c), ...) per layer."""
        zeros = tf.zeros([num_coordinates, self.hidden_size], dtype=self.variable_dtype)
        return tuple((zeros, zeros) for _ in range(self.num_layers))

    def coordinate_step(self, features, state):
        """One LSTM step on a batch of coordinates: `features [n, F]` -> `(updates [n], state)`.

        `updates` already includes `output_scale`.
        """
        self._check_state(state)
        x = tf.cast(features, self.variable_dtype)
        new_state = []
        for (kernel, recurrent, bias), (h, c) in zip(self.cells, state):
            z = tf.matmul(x, kernel.value) + tf.matmul(h, recurrent.value) + bias.value
            i, f, g, o = tf.split(z, 4, axis=-1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            new_state.append((h, c))
            x = h
        out = tf.matmul(x, self.output_kernel.value) + self.output_bias.value
        return self.output_scale * out[:, 0], tuple(new_state)

    def _check_state(self, state):
        if not isinstance(state, (tuple, list)) or len(state) != self.num_layers:
            raise ValueError(
                f"LSTMOptimizer state must hold one (h, c) pair per layer ({self.num_layers}); "
                f"got {type(state).__name__} of length "
                f"{len(state) if hasattr(state, '__len__') else 'n/a'}."
            )

    def call(self, features, state=None):
        """Keras entry point: `features [n, F]` (and optional state) -> `(updates, state)`."""
        if state is None:
            state = self.zero_state(tf.shape(features)[0])
        return self.coordinate_step(features, state)

    # -- the update-rule protocol ---------------------------------------------------------------

    def init_state(self, params):
        """Zero hidden and cell state for every coordinate of `params`."""
        params = list(params)
        if not params:
            raise ValueError("LSTMOptimizer.init_state got an empty list of parameters.")
        sizes = [tf.size(p) for p in params]
        return self.zero_state(tf.add_n(sizes) if len(sizes) > 1 else sizes[0])

    def updates(self, grads, params, state, *, step=None, loss=None):
        """`(deltas, new_state)`: the change of each parameter, not yet added."""
        grads, params = check_gradients("LSTMOptimizer.apply", grads, params)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
        updates, new_state = self.coordinate_step(self.features(flat, loss), state)
        sizes = [tf.size(p) for p in params]
        pieces = tf.split(updates, tf.stack(sizes), num=len(params))
        deltas = [tf.cast(tf.reshape(u, tf.shape(p)), p.dtype) for p, u in zip(params, pieces)]
        return deltas, new_state

    def apply(self, grads, params, state, *, step=None, loss=None):
        """`(new_params, new_state)` with `new_params[i] = params[i] + update[i]`."""
        deltas, new_state = self.updates(grads, params, state, step=step, loss=loss)
        return [p + d for p, d in zip(params, deltas)], new_state

    # -- serialization --------------------------------------------------------------------------

    def save_weights(self, path):
        """Writes phi to a `.npz` file (keyed by variable name)."""
        if not str(path).endswith(".npz"):
            raise ValueError(f"LSTMOptimizer.save_weights writes .npz files; got path {path!r}.")
        np.savez(path, **{v.name: v.numpy() for v in self.weights})

    def load_weights(self, path):
        """Reads phi written by `save_weights` into this (identically configured) layer."""
        with np.load(path) as stored:
            names = sorted(stored.files)
            expected = sorted(v.name for v in self.weights)
            if names != expected:
                raise ValueError(
                    f"{path!r} holds weights {names}; this LSTMOptimizer has {expected}.")
            for v in self.weights:
                if tuple(stored[v.name].shape) != tuple(v.shape):
                    raise ValueError(
                        f"Weight {v.name!r} in {path!r} has shape {stored[v.name].shape}; this "
                        f"LSTMOptimizer expects {tuple(v.shape)} (check hidden_size/num_layers)."
                    )
            for v in self.weights:
                v.assign(stored[v.name])

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            preprocessing=self.preprocessing,
            preprocessing_p=self.preprocessing_p,
            output_scale=self.output_scale,
            use_loss_feature=self.use_loss_feature,
            output_initializer=keras.initializers.serialize(self.output_initializer),
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("output_initializer") is not None:
            config["output_initializer"] = keras.initializers.deserialize(
                config["output_initializer"])
        return cls(**config)
