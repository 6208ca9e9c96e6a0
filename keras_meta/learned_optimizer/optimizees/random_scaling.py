"""`RandomScaling`: any optimizee family with random per-coordinate rescaling (Lv et al. 2017)."""

import tensorflow as tf

from keras_meta._checks import is_finite_number
from keras_meta.learned_optimizer.optimizees._seeds import as_seed

# Folded into a function's seed to key its scales. Negative, so it equals no step index that
# a family folds in for its mini-batches, and `stateless_split` (the families' other stream)
# derives seeds differently: the scales are independent of the base family's randomness.
_SCALE_STREAM = -7919


class RandomScaling:
    """Wraps a family so that each function is seen through random per-coordinate scales.

    Lv et al. 2017 ("Learning gradient descent: better generalization and longer horizons")
    meta-train on randomly rescaled functions so that a learned rule cannot memorise the scale
    of its training problems. For a function (seed) of `optimizee` with loss f, this family's
    function is g(theta) = f(c * theta), started at theta_0 = theta_0_base / c, where
    c = exp(u), u ~ Uniform(-max_log_scale, max_log_scale) is drawn per coordinate (one tensor
    per parameter, same shape) from a stateless seed derived from the function's seed. Thus
    g(theta_0) is the base function's starting loss, while the gradient dg/dtheta = c * f'(c
    theta) is rescaled per coordinate: the same problem, differently conditioned.

    Args:
        optimizee: the base family (any registered one, e.g. `MLPDigitsOptimizee()`).
        max_log_scale: a > 0; log-scales are uniform in [-a, a], so c lies in [exp(-a), exp(a)].

    Example:

    >>> scaled = RandomScaling(QuadraticOptimizee(dim=10, num_functions=4), max_log_scale=1.0)
    >>> seed = tf.constant([0, 1])
    >>> theta = scaled.init_params(seed)
    >>> scaled.function_losses(theta, seed, 0).shape
    TensorShape([4])
    """

    def __init__(self, optimizee, max_log_scale=1.0):
        if not is_finite_number(max_log_scale) or max_log_scale <= 0:
            raise ValueError("RandomScaling max_log_scale must be a finite number > 0; "
                             f"got {max_log_scale!r}.")
        self.optimizee = optimizee
        self.max_log_scale = float(max_log_scale)

    @property
    def num_functions(self):
        return self.optimizee.num_functions

    @property
    def dtype(self):
        return self.optimizee.dtype

    def scales(self, seed, params=None):
        """The scales c of function `seed`: one tensor per parameter, shaped like `params`.

        `params` only supplies shapes; it defaults to the base family's theta_0 for `seed`.
        """
        if params is None:
            params = self.optimizee.init_params(seed)
        scale_seed = tf.random.experimental.stateless_fold_in(
            as_seed(seed), tf.constant(_SCALE_STREAM, tf.int64))
        seeds = tf.random.experimental.stateless_split(scale_seed, num=len(params))
        a = self.max_log_scale
        return [tf.exp(tf.random.stateless_uniform(tf.shape(p), seeds[i], minval=-a, maxval=a,
                                                   dtype=self.dtype))
                for i, p in enumerate(params)]

    def _rescaled(self, params, seed):
        return [c * p for c, p in zip(self.scales(seed, params), params)]

    def init_params(self, seed):
        base = self.optimizee.init_params(seed)
        return [p / c for p, c in zip(base, self.scales(seed, base))]

    def function_losses(self, params, seed, step=0):
        return self.optimizee.function_losses(self._rescaled(params, seed), seed, step)

    def loss(self, params, seed, step=0):
        return tf.reduce_sum(self.function_losses(params, seed, step))

    def eval_losses(self, params, seed):
        return self.optimizee.eval_losses(self._rescaled(params, seed), seed)

    def get_config(self):
        # Imported here: the registry's module imports this one.
        from keras_meta.learned_optimizer.optimizees import optimizee_name

        return {"optimizee": {"name": optimizee_name(self.optimizee),
                              "config": self.optimizee.get_config()},
                "max_log_scale": self.max_log_scale}

    @classmethod
    def from_config(cls, config):
        from keras_meta.learned_optimizer.optimizees import OPTIMIZEE_NAMES, OPTIMIZEES

        config = dict(config)
        base = config.pop("optimizee")
        if base["name"] not in OPTIMIZEES:
            raise ValueError(f"Unknown optimizee {base['name']!r} in a RandomScaling config; "
                             f"expected one of {OPTIMIZEE_NAMES}.")
        return cls(OPTIMIZEES[base["name"]].from_config(base["config"]), **config)
