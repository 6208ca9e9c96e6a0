"""`MLPDigitsOptimizee`: an MLP (by default 20 sigmoid units) on scikit-learn's 8x8 digits."""

import numpy as np
import tensorflow as tf

from keras_meta._checks import check_int, check_one_of, is_int
from keras_meta.learned_optimizer.optimizees._seeds import as_seed
from keras_meta.learned_optimizer.optimizees.digits import ACTIVATIONS, DigitsClassifierFamily

def _check_hidden_units(hidden_units):
    """`hidden_units` as a tuple of layer widths (an int is one layer)."""
    if is_int(hidden_units):
        return (check_int("MLPDigitsOptimizee hidden_units", hidden_units),)
    if (isinstance(hidden_units, (tuple, list)) and hidden_units
            and all(is_int(units) and units >= 1 for units in hidden_units)):
        return tuple(hidden_units)
    raise ValueError("MLPDigitsOptimizee hidden_units must be an int >= 1 or a non-empty "
                     f"tuple/list of ints >= 1; got {hidden_units!r}.")


class MLPDigitsOptimizee(DigitsClassifierFamily):
    """Training an MLP (64 -> hidden layer(s) -> 10 softmax) on mini-batches of digits.

    A function is a random initialisation plus a random sequence of mini-batches, both named by
    the seed; the mini-batch of step `t` is drawn (with replacement) from a stateless seed
    derived from (seed, t). Meta-train on `split="train"` and evaluate on `split="heldout"`
    (disjoint images) with unseen seeds. The defaults are the paper's training network; other
    widths, depths and activations are its test-time "shifts".

    Kernels are Gaussian with scale 1/sqrt(fan_in), except that kernels feeding a relu layer
    use sqrt(2/fan_in) (He et al. 2015); biases start at zero.

    Args:
        hidden_units: units of the hidden layer (20 in the paper), or a tuple/list of widths for
            several hidden layers, e.g. `(20, 20)`.
        batch_size: examples per mini-batch (128 in the paper).
        split: `"train"` or `"heldout"`: which part of the digits the batches come from.
        heldout_fraction: share of the 1797 images in the held-out split.
        split_seed: seed of the (fixed) train/held-out permutation.
        dtype: float dtype of the parameters and inputs.
        activation: hidden activation, `"sigmoid"` (the paper's), `"relu"` or `"tanh"`.

    Example:

    >>> optimizee = MLPDigitsOptimizee(split="train")
    >>> params = optimizee.init_params(tf.constant([0, 3]))
    >>> [tuple(p.shape) for p in params]
    [(64, 20), (20,), (20, 10), (10,)]
    >>> deep = MLPDigitsOptimizee(hidden_units=(20, 20), activation="relu")
    >>> [tuple(p.shape) for p in deep.init_params(tf.constant([0, 3]))]
    [(64, 20), (20,), (20, 20), (20,), (20, 10), (10,)]
    """


    # `activation` comes last so that positional calls written before it still mean the same.
    def __init__(self, hidden_units=20, batch_size=128, split="train", heldout_fraction=0.3,
                 split_seed=0, dtype="float32", activation="sigmoid"):
        self.layer_units = _check_hidden_units(hidden_units)
        check_one_of("MLPDigitsOptimizee activation", activation, tuple(ACTIVATIONS))
        # An int for one layer keeps the attribute (and the config) as it was before depth.
        self.hidden_units = (self.layer_units[0] if len(self.layer_units) == 1
                             else self.layer_units)
        self.activation = activation
        self._load_digits("MLPDigitsOptimizee", batch_size, split, heldout_fraction, split_seed,
                          dtype, (64,))

    def init_params(self, seed):
        widths = (64,) + self.layer_units + (10,)
        shapes = list(zip(widths[:-1], widths[1:]))
        # One seed per weight matrix; with one hidden layer this is the original split(num=2),
        # so the default family keeps the functions (and trained results) it always had.
        seeds = tf.random.experimental.stateless_split(as_seed(seed), num=len(shapes))
        params = []
        for i, (fan_in, fan_out) in enumerate(shapes):
            s = seeds[i]  # indexed: iterating a tensor is not allowed inside tf.function
            kernel = tf.random.stateless_normal([fan_in, fan_out], s, dtype=self.dtype)
            if self.activation == "relu" and i < len(shapes) - 1:
                kernel = kernel * np.sqrt(2.0 / fan_in)
            else:
                kernel = kernel / np.sqrt(fan_in)  # the exact original op, for bit-identity
            params += [kernel, tf.zeros([fan_out], dtype=self.dtype)]
        return params

    def _cross_entropy(self, params, x, y):
        activation = ACTIVATIONS[self.activation]
        h = x
        for i in range(0, len(params) - 2, 2):
            h = activation(tf.matmul(h, params[i]) + params[i + 1])
        logits = tf.matmul(h, params[-2]) + params[-1]
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

    def get_config(self):
        hidden_units = (self.hidden_units if is_int(self.hidden_units)
                        else list(self.hidden_units))
        return {"hidden_units": hidden_units, "activation": self.activation,
                "batch_size": self.batch_size,
                "split": self.split, "heldout_fraction": self.heldout_fraction,
                "split_seed": self.split_seed, "dtype": self.dtype.name}
