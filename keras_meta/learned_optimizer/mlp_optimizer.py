"""`MLPOptimizer`: a per-parameter MLP update rule over momentum and second-moment accumulators.

The coordinatewise LSTM of Andrychowicz et al. (2016) sees one gradient at a time and must
build every statistic it needs in its hidden state; it stalls on long horizons and generalizes
poorly to other networks. The rules that replaced it (Wichrowska et al. 2017; Metz et al. 2019,
2022, the "small_fc_lopt" line of google/learned_optimization) hand the rule what
hand-designed optimizers already know how to compute, running averages of the gradient at
several timescales and of its square, and learn only the map from those to a step:

    m_k <- b_k m_k + (1 - b_k) g          (momentum at decays b_1..b_K)
    v   <- b_v v   + (1 - b_v) g^2        (second moment)
    x    = [g, m_1..m_K, g / sqrt(v), m_1..m_K / sqrt(v)]   (per coordinate; + theta, optionally)
    x    = x / rms_over_the_tensor(x)     (each feature, each parameter tensor)
    [d, a] = MLP(x) + [x . w_direct, 0]
    theta <- theta + step_scale * d * exp(magnitude_scale * a) * min(1, rms(m_2 / sqrt(v)))

`step_scale` is learned (as its log). The last factor, per tensor, is Adam's annealing, which
the per-tensor normalization would otherwise remove (see `annealing`). The linear `w_direct` path starts at -1 on m_2 / sqrt(v),
so before any meta-training the rule is an Adam-like step of size `step_scale`
(`direct_initializer="zeros"` starts it at exactly zero instead). The rule keeps no step count
and no horizon feature, so nothing in it is tied to the length of the runs it was trained on.
The parameter's own value is off by default: meta-trained on the sigmoid MLP, a rule that
sees it learns to grow the weights (saturated sigmoids tolerate that), and the same rule
blows up a ReLU network or a convnet within a few steps.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_meta._checks import check_int, check_one_of
from keras_meta.core.update_rules import check_gradients

_DIRECT_INITIALIZERS = ("adam", "zeros")
_FEATURE_FLOOR = 1e-5


@keras.saving.register_keras_serializable(package="keras_meta")
class MLPOptimizer(keras.layers.Layer):
    """A learned update rule: one small MLP shared by every coordinate, fed Adam-like accumulators.

    It follows the update-rule protocol of `keras_meta.core.update_rules` (`init_state(params)`,
    `apply(grads, params, state, *, step, loss)`), so it drives `adapt_params`, `MAML(
    update_rule=...)`, `MetaOptimizerTrainer` and `LearnedOptimizer` exactly as `LSTMOptimizer`
    does. `apply` is a pure function of tensors (it assigns nothing), differentiable w.r.t. its
    weights phi and, to any order, w.r.t. theta.

    Args:
        hidden_sizes: units of the MLP's hidden ReLU layers (32, 32 by default).
        momentum_decays: decay rates b_k of the gradient's running averages (one feature each).
        second_moment_decay: decay rate of the squared gradient's running average.
        step_scale: the initial step scale (the learned `log_step_scale` starts at its log).
        magnitude_scale: multiplier of the magnitude head inside `exp`; it keeps the step's
            scale near `step_scale` early in meta-training.
        epsilon: added to v before the square root.
        param_feature: also feed the parameter's value (normalized per tensor).
        direct_initializer: `"adam"` (the linear path starts as -m / sqrt(v) at the second
            decay, an Adam-like rule) or `"zeros"`.
        formula_version: the version of the update formula the weights were trained with.
            Saved in the config, so that a rule file from a keras-meta whose formula differs
            is refused rather than applied with other math; only `FORMULA_VERSION` loads.
        output_initializer: initializer of the MLP's output kernel (small random by default;
            `"zeros"` with `direct_initializer="zeros"` gives exactly zero updates).
        seed: integer seed of the weight initializers.
        **kwargs: `keras.layers.Layer` arguments, e.g. `dtype="float64"`.

    Example:

    >>> rule = MLPOptimizer(hidden_sizes=(32, 32))
    >>> params = [tf.zeros([3, 2]), tf.zeros([2])]
    >>> state = rule.init_state(params)
    >>> new_params, state = rule.apply([tf.ones([3, 2]), tf.ones([2])], params, state, step=0)
    >>> [p.shape for p in new_params]
    [TensorShape([3, 2]), TensorShape([2])]
    """

    # Bumped whenever the map from (weights, gradients) to steps changes.
    FORMULA_VERSION = 2

    def __init__(
        self,
        hidden_sizes=(32, 32),
        momentum_decays=(0.5, 0.9, 0.99, 0.999),
        second_moment_decay=0.999,
        step_scale=1e-2,
        magnitude_scale=0.1,
        epsilon=1e-12,
        param_feature=False,
        direct_initializer="adam",
        output_initializer=None,
        seed=None,
        formula_version=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if formula_version is not None and formula_version != self.FORMULA_VERSION:
            raise ValueError(
                f"This MLPOptimizer was trained with update formula version {formula_version!r}; "
                f"this keras-meta computes version {self.FORMULA_VERSION} (2 added the per-tensor "
                "annealing factor). Its weights would be applied with other math: retrain it.")
        hidden_sizes = tuple(hidden_sizes)
        for size in hidden_sizes:
            check_int("MLPOptimizer hidden_sizes entry", size)
        momentum_decays = tuple(float(b) for b in momentum_decays)
        if len(momentum_decays) < 2:
            raise ValueError(
                f"MLPOptimizer momentum_decays needs at least two decays; got {momentum_decays}.")
        for name, decays in (("momentum_decays", momentum_decays),
                             ("second_moment_decay", (float(second_moment_decay),))):
            for b in decays:
                if not 0.0 <= b < 1.0:
                    raise ValueError(f"MLPOptimizer {name} must lie in [0, 1); got {b!r}.")
        for name, value in (("step_scale", step_scale), ("epsilon", epsilon)):
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"MLPOptimizer {name} must be a finite number > 0; got {value!r}.")
        if not math.isfinite(float(magnitude_scale)):
            raise ValueError(
                f"MLPOptimizer magnitude_scale must be a finite number; got {magnitude_scale!r}.")
        check_one_of("MLPOptimizer direct_initializer", direct_initializer, _DIRECT_INITIALIZERS)
        self.hidden_sizes = hidden_sizes
        self.momentum_decays = momentum_decays
        self.second_moment_decay = float(second_moment_decay)
        self.step_scale = float(step_scale)
        self.magnitude_scale = float(magnitude_scale)
        self.epsilon = float(epsilon)
        self.param_feature = bool(param_feature)
        self.direct_initializer = direct_initializer
        if output_initializer is None:
            output_initializer = keras.initializers.RandomNormal(stddev=0.01, seed=seed)
        self.output_initializer = keras.initializers.get(output_initializer)
        self.seed = seed
        self._create_weights()

    # -- weights --------------------------------------------------------------------------------

    @property
    def num_features(self):
        """Input features per coordinate: g, each m_k, g/sqrt(v), each m_k/sqrt(v) (, theta)."""
        return 2 + 2 * len(self.momentum_decays) + int(self.param_feature)

    @property
    def adam_feature_index(self):
        """Index of m_2 / sqrt(v) (b_2 = 0.9 by default), the feature the direct path starts on."""
        return 2 + len(self.momentum_decays) + 1

    def _create_weights(self):
        # Shapes follow from the config alone, so a restored rule can load weights before it
        # has seen any parameter (as LSTMOptimizer does).
        seed_gen = (lambda k: None) if self.seed is None else (lambda k: self.seed + k)
        fan_in = self.num_features
        self._layer_names = []
        for i, units in enumerate(self.hidden_sizes):
            kernel = self.add_weight(
                shape=(fan_in, units), name=f"hidden_{i}_kernel",
                initializer=keras.initializers.HeNormal(seed=seed_gen(i)))
            bias = self.add_weight(shape=(units,), name=f"hidden_{i}_bias", initializer="zeros")
            setattr(self, f"hidden_{i}_kernel", kernel)
            setattr(self, f"hidden_{i}_bias", bias)
            fan_in = units
        self.output_kernel = self.add_weight(
            shape=(fan_in, 2), name="output_kernel", initializer=self.output_initializer)
        self.output_bias = self.add_weight(shape=(2,), name="output_bias", initializer="zeros")
        direct = [0.0] * self.num_features
        if self.direct_initializer == "adam":
            direct[self.adam_feature_index] = -1.0
        self.direct_kernel = self.add_weight(
            shape=(self.num_features,), name="direct_kernel",
            initializer=keras.initializers.Constant(direct))
        self.log_step_scale = self.add_weight(
            shape=(), name="log_step_scale", initializer="zeros")
        # Assigned rather than given as a Constant initializer, which rounds through float32.
        self.log_step_scale.assign(np.asarray(math.log(self.step_scale), dtype=self.variable_dtype))
        self.built = True

    def build(self, input_shape=None):
        self.built = True

    # -- the per-tensor computation -------------------------------------------------------------

    def zero_state(self, num_coordinates):
        """`(m [n, K], v [n])` for one parameter tensor of `num_coordinates` coordinates."""
        dtype = self.variable_dtype
        return (tf.zeros([num_coordinates, len(self.momentum_decays)], dtype=dtype),
                tf.zeros([num_coordinates], dtype=dtype))

    def accumulate(self, flat_grad, state):
        """The accumulators after one more gradient: `(m, v)`."""
        m, v = state
        g = tf.cast(flat_grad, self.variable_dtype)
        decays = tf.constant(self.momentum_decays, dtype=self.variable_dtype)
        m = decays * m + (1.0 - decays) * g[:, None]
        b = self.second_moment_decay
        v = b * v + (1.0 - b) * tf.square(g)
        return m, v

    def features(self, flat_param, flat_grad, state):
        """Normalized per-coordinate features `[n, num_features]` (state already accumulated)."""
        m, v = state
        dtype = self.variable_dtype
        p = tf.cast(flat_param, dtype)
        g = tf.cast(flat_grad, dtype)
        inv_rms = tf.math.rsqrt(v + self.epsilon)
        columns = [g[:, None], m, (g * inv_rms)[:, None], m * inv_rms[:, None]]
        if self.param_feature:
            columns.append(p[:, None])
        x = tf.concat(columns, axis=-1)
        # Each feature divided by its root mean square over the tensor: the rule sees the
        # shape of the statistics, not their units, which differ by orders of magnitude
        # between networks, layers and training stages. The floor bounds the derivative of
        # a feature that is all zeros (a zero-initialised bias) or nearly so; below it a raw
        # feature shrinks rather than being blown up, and the 1/sqrt(v) features carry the
        # signal (google/learned_optimization uses the same floor).
        scale = tf.math.rsqrt(
            tf.reduce_mean(tf.square(x), axis=0, keepdims=True) + _FEATURE_FLOOR)
        return x * scale

    def coordinate_update(self, flat_param, flat_grad, state):
        """One tensor's update: `(delta [n], new_state)`, from its flat params and gradient."""
        state = self.accumulate(flat_grad, state)
        x = self.features(flat_param, flat_grad, state)
        h = x
        for i in range(len(self.hidden_sizes)):
            kernel = getattr(self, f"hidden_{i}_kernel").value
            bias = getattr(self, f"hidden_{i}_bias").value
            h = tf.nn.relu(tf.matmul(h, kernel) + bias)
        out = tf.matmul(h, self.output_kernel.value) + self.output_bias.value
        direction = out[:, 0] + tf.linalg.matvec(x, self.direct_kernel.value)
        magnitude = out[:, 1]
        step = tf.exp(self.log_step_scale.value + self.magnitude_scale * magnitude)
        return direction * step * self.annealing(state), state

    def annealing(self, state):
        """A tensor's step factor in (0, 1]: the RMS of m_2 / sqrt(v) over it, capped at 1.

        The features are normalized per tensor, which keeps meta-training stable but hides
        what makes Adam's steps shrink near a minimum: the momenta average out while v keeps
        the noise, so m / sqrt(v) falls. Without this factor every step stays full size, and
        a rule excellent at 200 steps drifts back up by 500.
        """
        m, v = state
        ratio = m[:, 1] * tf.math.rsqrt(v + self.epsilon)
        return tf.minimum(1.0, tf.sqrt(tf.reduce_mean(tf.square(ratio)) + 1e-12))

    def call(self, features, state=None):
        raise NotImplementedError(
            "MLPOptimizer is applied to parameters with apply(grads, params, state, step=...); "
            "it has no layer call.")

    # -- the update-rule protocol ---------------------------------------------------------------

    def init_state(self, params):
        """Zero accumulators for every parameter tensor: one `(m, v)` pair per tensor."""
        params = list(params)
        if not params:
            raise ValueError("MLPOptimizer.init_state got an empty list of parameters.")
        return tuple(self.zero_state(tf.size(p)) for p in params)

    def updates(self, grads, params, state, *, step=None, loss=None):
        """`(deltas, new_state)`: the change of each parameter, not yet added."""
        grads, params = check_gradients("MLPOptimizer.apply", grads, params)
        if not isinstance(state, (tuple, list)) or len(state) != len(params):
            raise ValueError(
                f"MLPOptimizer state must hold one (m, v) pair per parameter ({len(params)}); "
                f"got {type(state).__name__} of length "
                f"{len(state) if hasattr(state, '__len__') else 'n/a'}.")
        deltas, new_state = [], []
        for g, p, s in zip(grads, params, state):
            delta, s = self.coordinate_update(tf.reshape(p, [-1]), tf.reshape(g, [-1]), s)
            deltas.append(tf.cast(tf.reshape(delta, tf.shape(p)), p.dtype))
            new_state.append(s)
        return deltas, tuple(new_state)

    def apply(self, grads, params, state, *, step=None, loss=None):
        """`(new_params, new_state)` with `new_params[i] = params[i] + delta[i]`."""
        deltas, new_state = self.updates(grads, params, state, step=step, loss=loss)
        return [p + d for p, d in zip(params, deltas)], new_state

    # -- serialization --------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_sizes=list(self.hidden_sizes),
            momentum_decays=list(self.momentum_decays),
            second_moment_decay=self.second_moment_decay,
            step_scale=self.step_scale,
            magnitude_scale=self.magnitude_scale,
            epsilon=self.epsilon,
            param_feature=self.param_feature,
            direct_initializer=self.direct_initializer,
            output_initializer=keras.initializers.serialize(self.output_initializer),
            seed=self.seed,
            formula_version=self.FORMULA_VERSION,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("output_initializer") is not None:
            config["output_initializer"] = keras.initializers.deserialize(
                config["output_initializer"])
        return cls(**config)

