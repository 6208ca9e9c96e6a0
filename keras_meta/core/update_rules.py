"""Inner-loop update rules: how adaptation turns gradients into new parameters.

An update rule is anything with two methods, both pure functions of tensors:

    init_state(params) -> state
    apply(grads, params, state, *, step, loss) -> (new_params, new_state)

`step` is the Python index of the inner step (0-based), `loss` the support loss at `params`
(a scalar tensor), `state` any nest of tensors. Plain SGD (the MAML paper) is `SGDRule`; the
learned `LSTMOptimizer` follows the same protocol, so either can drive `adapt`.

`step` may also be a scalar int tensor (a `tf.range` loop inside a `tf.function`), so rules do
their arithmetic on `tf.cast(step, dtype)`, never on the Python value.

Hand-designed baselines (the learned optimizer's comparison points) follow the Keras 3 optimizer
of the same name with its default hyperparameters, as pure functions: `MomentumRule` (heavy ball
or Nesterov, `keras.optimizers.SGD`), `RMSpropRule` and `AdamRule`; `hand_designed_rule` builds
one from its name in `HAND_DESIGNED_RULES`. Their state is a tuple of lists of tensors shaped
like the parameters, and Adam's step count comes from `step` (step `k` is Keras' iteration
`k + 1`). Python-float hyperparameters enter the graph in the parameters' dtype exactly (Keras
rounds `momentum` and Adam's betas through float32 first, a 1e-7 relative difference in
float64), and the learning rate may be a scalar tensor.
"""

import numbers

import tensorflow as tf

from keras_meta._checks import is_finite_number, is_int


class SGDRule:
    """theta' = theta - lr * grad, with one learning rate, one per variable, or one per step.

    Args:
        learning_rate: a scalar (float or scalar tensor/variable); a list with one entry per
            parameter (each a scalar, or a tensor of the parameter's shape as in Meta-SGD); or a
            list of such lists, one per inner step (MAML++ per-step, per-layer rates).

    Per-step rates exist for the inner steps that were trained (MAML's `inner_steps`).
    Adaptation with more steps than that (e.g. evaluation with 10 steps after training with
    1) reuses the LAST step's rates for every step past it, as MAML++ does: step `k` uses
    `learning_rate[min(k, len(learning_rate) - 1)]`.

    Example:

    >>> rule = SGDRule(0.1)
    >>> new, _ = rule.apply([tf.ones([2])], [tf.zeros([2])], (), step=0, loss=None)
    >>> new[0].numpy()
    array([-0.1, -0.1], dtype=float32)
    """

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate

    def init_state(self, params):
        return ()

    def rate(self, step, index, num_params):
        lr = self.learning_rate
        if isinstance(lr, (list, tuple)):
            if lr and isinstance(lr[0], (list, tuple)):
                if step < 0:
                    raise ValueError(f"Inner step must be >= 0; got {step}.")
                # Past the trained steps, the last step's rates (MAML++).
                lr = lr[min(step, len(lr) - 1)]
            if len(lr) != num_params:
                raise ValueError(
                    f"Got {len(lr)} per-variable learning rates for {num_params} parameters."
                )
            lr = lr[index]
        return lr

    def apply(self, grads, params, state, *, step, loss=None):
        n = len(params)
        new_params = [
            p - _as_dtype(self.rate(step, i, n), p.dtype) * g
            for i, (p, g) in enumerate(zip(params, grads))
        ]
        return new_params, state


def _as_dtype(value, dtype):
    # A Python float goes straight to `dtype`: tf.cast would round it through float32 first,
    # which shows up as a 1e-8 relative error in float64 meta-gradients.
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype=dtype)
    return tf.cast(value, dtype)


def _check_real(name, value, *, low, high, low_open=False, high_open=False):
    """`float(value)` if it is a real number in the interval, else `ValueError` naming both."""
    if is_finite_number(value):
        value = float(value)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if above and below:
            return value
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ValueError(f"{name} must be a float in {interval}; got {value!r}.")


def _check_learning_rate(learning_rate):
    # A tensor or variable (a traced grid of rates, a learned rate) is taken as it is.
    if isinstance(learning_rate, (numbers.Number, bool)):
        if not is_finite_number(learning_rate) or learning_rate < 0:
            raise ValueError(
                f"learning_rate must be a finite float >= 0 (or a scalar tensor); "
                f"got {learning_rate!r}.")
        return float(learning_rate)
    return learning_rate


def _config_float(name, value):
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"get_config needs a concrete {name}; got the symbolic tensor {value!r}.") from error


def _check_step(step):
    if is_int(step) and step < 0:
        raise ValueError(f"Inner step must be >= 0; got {step}.")


def _zeros_like(params):
    return [tf.zeros_like(p) for p in params]


class _HandDesignedRule:
    """Shared plumbing: the learning rate in the parameters' dtype, config round trip."""

    def _lr(self, dtype):
        return _as_dtype(self.learning_rate, dtype)

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self._repr_config().items())
        return f"{type(self).__name__}({args})"

    def _repr_config(self):
        try:
            return self.get_config()
        except ValueError:
            return {"learning_rate": self.learning_rate}


class MomentumRule(_HandDesignedRule):
    """SGD with heavy-ball or Nesterov momentum (NAG), as `keras.optimizers.SGD` computes it.

    With velocity `v` (zero at first) and gradient `g`:

        v' = momentum * v - lr * g
        theta' = theta + v'                              (nesterov=False)
        theta' = theta + momentum * v' - lr * g          (nesterov=True, NAG)

    Args:
        learning_rate: a float >= 0, or a scalar tensor (e.g. a traced learning-rate grid),
            which is not checked.
        momentum: a float in [0, 1] (Keras' range); 0 is plain SGD.
        nesterov: whether to use Nesterov momentum (a bool).

    The state is `([v_1, ..., v_n],)`, one velocity per parameter.

    Example:

    >>> rule = MomentumRule(0.5, momentum=0.5)
    >>> params, state = [tf.zeros([2])], rule.init_state([tf.zeros([2])])
    >>> for step in range(2):
    ...     params, state = rule.apply([tf.ones([2])], params, state, step=step)
    >>> params[0].numpy()  # -0.5, then -0.5 + (0.5 * -0.5 - 0.5)
    array([-1.25, -1.25], dtype=float32)
    """

    def __init__(self, learning_rate, momentum=0.9, nesterov=False):
        self.learning_rate = _check_learning_rate(learning_rate)
        self.momentum = _check_real("momentum", momentum, low=0.0, high=1.0)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be a bool; got {nesterov!r}.")
        self.nesterov = nesterov

    def init_state(self, params):
        return (_zeros_like(params),)

    def apply(self, grads, params, state, *, step, loss=None):
        _check_step(step)
        (velocities,) = state
        new_params, new_velocities = [], []
        for p, g, v in zip(params, grads, velocities):
            lr, momentum = self._lr(p.dtype), _as_dtype(self.momentum, p.dtype)
            g = tf.cast(g, p.dtype)
            v = v * momentum - g * lr
            if self.nesterov:
                p = p + (v * momentum - g * lr)
            else:
                p = p + v
            new_params.append(p)
            new_velocities.append(v)
        return new_params, (new_velocities,)

    def get_config(self):
        return {"learning_rate": _config_float("learning_rate", self.learning_rate),
                "momentum": self.momentum, "nesterov": self.nesterov}


class RMSpropRule(_HandDesignedRule):
    """RMSprop as `keras.optimizers.RMSprop` with its defaults (no momentum, not centred).

    With the running mean `s` of squared gradients (zero at first):

        s' = rho * s + (1 - rho) * g ** 2
        theta' = theta - lr * g / sqrt(s' + epsilon)

    (Keras adds `epsilon` inside the square root.)

    Args:
        learning_rate: a float >= 0, or a scalar tensor, which is not checked.
        rho: decay of the running mean, a float in [0, 1).
        epsilon: a float > 0 (and <= 1) added to `s'` for numerical stability.

    The state is `([s_1, ..., s_n],)`.

    Example:

    >>> rule = RMSpropRule(0.01, rho=0.75, epsilon=1e-7)
    >>> params, state = [tf.zeros([2], tf.float64)], rule.init_state([tf.zeros([2], tf.float64)])
    >>> params, state = rule.apply([tf.ones([2], tf.float64)], params, state, step=0)
    >>> params[0].numpy().round(6)  # -0.01 / sqrt(0.25 + 1e-7)
    array([-0.02, -0.02])
    """

    def __init__(self, learning_rate, rho=0.9, epsilon=1e-7):
        self.learning_rate = _check_learning_rate(learning_rate)
        self.rho = _check_real("rho", rho, low=0.0, high=1.0, high_open=True)
        self.epsilon = _check_real("epsilon", epsilon, low=0.0, high=1.0, low_open=True)

    def init_state(self, params):
        return (_zeros_like(params),)

    def apply(self, grads, params, state, *, step, loss=None):
        _check_step(step)
        (averages,) = state
        new_params, new_averages = [], []
        for p, g, s in zip(params, grads, averages):
            dtype = p.dtype
            g = tf.cast(g, dtype)
            s = _as_dtype(self.rho, dtype) * s + _as_dtype(1.0 - self.rho, dtype) * tf.square(g)
            increment = (self._lr(dtype) * g) / tf.sqrt(s + _as_dtype(self.epsilon, dtype))
            new_params.append(p - increment)
            new_averages.append(s)
        return new_params, (new_averages,)

    def get_config(self):
        return {"learning_rate": _config_float("learning_rate", self.learning_rate),
                "rho": self.rho, "epsilon": self.epsilon}


class AdamRule(_HandDesignedRule):
    """Adam as `keras.optimizers.Adam` with its defaults (no AMSGrad).

    With first and second moments `m`, `v` (zero at first) and `t = step + 1`:

        m' = m + (1 - beta_1) * (g - m)
        v' = v + (1 - beta_2) * (g ** 2 - v)
        alpha = lr * sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        theta' = theta - alpha * m' / (sqrt(v') + epsilon)

    (Keras' bias correction folded into the step size, `epsilon` outside the square root.)

    Args:
        learning_rate: a float >= 0, or a scalar tensor, which is not checked.
        beta_1: decay of the first moment, a float in [0, 1).
        beta_2: decay of the second moment, a float in [0, 1).
        epsilon: a float > 0 (and <= 1) added to `sqrt(v')` for numerical stability.

    The state is `([m_1, ..., m_n], [v_1, ..., v_n])`; the step count is `step`, so a rule
    state restarts its bias correction with every adaptation, as the inner loop does.

    Example:

    >>> rule = AdamRule(0.1)
    >>> params, state = [tf.zeros([2])], rule.init_state([tf.zeros([2])])
    >>> params, state = rule.apply([tf.constant([2.0, -3.0])], params, state, step=0)
    >>> params[0].numpy().round(4)  # the first step moves each entry by about lr
    array([-0.1,  0.1], dtype=float32)
    """

    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        self.learning_rate = _check_learning_rate(learning_rate)
        self.beta_1 = _check_real("beta_1", beta_1, low=0.0, high=1.0, high_open=True)
        self.beta_2 = _check_real("beta_2", beta_2, low=0.0, high=1.0, high_open=True)
        self.epsilon = _check_real("epsilon", epsilon, low=0.0, high=1.0, low_open=True)

    def init_state(self, params):
        return (_zeros_like(params), _zeros_like(params))

    def apply(self, grads, params, state, *, step, loss=None):
        _check_step(step)
        firsts, seconds = state
        new_params, new_firsts, new_seconds = [], [], []
        for p, g, m, v in zip(params, grads, firsts, seconds):
            dtype = p.dtype
            g = tf.cast(g, dtype)
            t = tf.cast(step, dtype) + 1
            beta_1_power = tf.pow(_as_dtype(self.beta_1, dtype), t)
            beta_2_power = tf.pow(_as_dtype(self.beta_2, dtype), t)
            alpha = self._lr(dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
            m = m + (g - m) * _as_dtype(1.0 - self.beta_1, dtype)
            v = v + (tf.square(g) - v) * _as_dtype(1.0 - self.beta_2, dtype)
            new_params.append(p - (m * alpha) / (tf.sqrt(v) + _as_dtype(self.epsilon, dtype)))
            new_firsts.append(m)
            new_seconds.append(v)
        return new_params, (new_firsts, new_seconds)

    def get_config(self):
        return {"learning_rate": _config_float("learning_rate", self.learning_rate),
                "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


HAND_DESIGNED_RULES = ("SGD", "NAG", "Momentum", "RMSprop", "Adam")


def hand_designed_rule(name, learning_rate):
    """The hand-designed update rule called `name`, with Keras' default hyperparameters.

    Args:
        name: one of `HAND_DESIGNED_RULES` (case-insensitive): "SGD" (`SGDRule`), "NAG"
            (Nesterov momentum 0.9), "Momentum" (heavy-ball momentum 0.9), "RMSprop", "Adam".
        learning_rate: a float >= 0 or a scalar tensor.

    Example:

    >>> hand_designed_rule("NAG", 0.1)
    MomentumRule(learning_rate=0.1, momentum=0.9, nesterov=True)
    """
    key = name.lower() if isinstance(name, str) else name
    if key == "sgd":
        return SGDRule(learning_rate)
    if key == "nag":
        return MomentumRule(learning_rate, momentum=0.9, nesterov=True)
    if key == "momentum":
        return MomentumRule(learning_rate, momentum=0.9)
    if key == "rmsprop":
        return RMSpropRule(learning_rate)
    if key == "adam":
        return AdamRule(learning_rate)
    raise ValueError(
        f"Unknown hand-designed rule {name!r}; expected one of {HAND_DESIGNED_RULES}.")


def check_gradients(where, grads, params):
    """`(grads, params)` as lists, if there is one gradient of each parameter's shape.

    Raises `ValueError` naming `where` (the rule) and the offending position otherwise.
    """
    grads, params = list(grads), list(params)
    if len(grads) != len(params):
        raise ValueError(f"{where} got {len(grads)} gradients for {len(params)} parameters.")
    for i, (g, p) in enumerate(zip(grads, params)):
        if g is None:
            raise ValueError(f"{where}: gradient {i} is None (parameter of shape {p.shape}).")
        if g.shape.rank is not None and not g.shape.is_compatible_with(p.shape):
            raise ValueError(
                f"{where}: gradient {i} has shape {g.shape}; its parameter has shape {p.shape}.")
    return grads, params
