"""`QuadraticOptimizee`: random quadratics f(theta) = ||W theta - y||^2 (Andrychowicz et al. 2016)."""

import tensorflow as tf

from keras_meta._checks import check_int
from keras_meta.learned_optimizer.optimizees._seeds import as_seed as _as_seed


class QuadraticOptimizee:
    """A batch of random `dim`-dimensional quadratics with Gaussian W and y.

    Each of the `num_functions` functions has its own W [dim, dim] and y [dim], drawn from
    stateless normals keyed by the seed, so a seed names the same functions everywhere
    (training, held-out evaluation, tests). theta_0 is also Gaussian. The family is
    deterministic: `step` is ignored.

    Args:
        dim: dimension of theta (10 in the paper).
        num_functions: functions optimised side by side (params have shape [num_functions, dim]).
        dtype: float dtype of the parameters and data (`"float64"` for gradient checks).

    Example:

    >>> optimizee = QuadraticOptimizee(dim=10, num_functions=4)
    >>> theta = optimizee.init_params(tf.constant([0, 1]))
    >>> optimizee.function_losses(theta, tf.constant([0, 1]), 0).shape
    TensorShape([4])
    """

    def __init__(self, dim=10, num_functions=1, dtype="float32"):
        check_int("QuadraticOptimizee dim", dim)
        check_int("QuadraticOptimizee num_functions", num_functions)
        self.dim = dim
        self.num_functions = num_functions
        self.dtype = tf.as_dtype(dtype)
        if not self.dtype.is_floating:
            raise ValueError(f"QuadraticOptimizee dtype must be a float dtype; got {dtype!r}.")

    def _problem(self, seed):
        seeds = tf.random.experimental.stateless_split(_as_seed(seed), num=3)
        w = tf.random.stateless_normal([self.num_functions, self.dim, self.dim], seeds[0],
                                       dtype=self.dtype)
        y = tf.random.stateless_normal([self.num_functions, self.dim], seeds[1], dtype=self.dtype)
        return w, y, seeds[2]

    def init_params(self, seed):
        _, _, theta_seed = self._problem(seed)
        return [tf.random.stateless_normal([self.num_functions, self.dim], theta_seed,
                                           dtype=self.dtype)]

    def function_losses(self, params, seed, step=0):
        w, y, _ = self._problem(seed)
        (theta,) = params
        residual = tf.linalg.matvec(w, theta) - y
        return tf.reduce_sum(tf.square(residual), axis=-1)

    def loss(self, params, seed, step=0):
        return tf.reduce_sum(self.function_losses(params, seed, step))

    def eval_losses(self, params, seed):
        return self.function_losses(params, seed)

    def get_config(self):
        return {"dim": self.dim, "num_functions": self.num_functions, "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
