"""What every digits family shares: the 8x8 digits split, mini-batches named by seeds, losses.

`digits_split` is scikit-learn's 1797 digits (shipped with the package, nothing downloaded),
permuted once by `split_seed` and cut into a training part and a held-out part. A family is a
classifier on one part; `DigitsClassifierFamily` draws the mini-batch of step t from a stateless
seed derived from (function seed, t), so a seed names the same batches everywhere.
"""

import numpy as np
import tensorflow as tf

from keras_meta._checks import check_int, check_one_of
from keras_meta.learned_optimizer.optimizees._seeds import as_seed

SPLITS = ("train", "heldout")
ACTIVATIONS = {"sigmoid": tf.sigmoid, "relu": tf.nn.relu, "tanh": tf.tanh}


def digits_split(split, heldout_fraction=0.3, split_seed=0):
    """`(x [N, 64] in [0, 1], y [N])` of one part of the digits (`"train"` or `"heldout"`)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(split_seed).permutation(len(x))
    num_heldout = int(round(heldout_fraction * len(x)))
    idx = order[num_heldout:] if split == "train" else order[:num_heldout]
    return (x[idx] / 16.0).astype(np.float64), y[idx].astype(np.int64)


class DigitsClassifierFamily:
    """The mini-batch and loss methods of a digits classifier family.

    A subclass calls `_load_digits` from its constructor and defines
    `_cross_entropy(params, x, y)`; one function is one classifier (`num_functions = 1`).
    """

    num_functions = 1

    def _load_digits(self, name, batch_size, split, heldout_fraction, split_seed, dtype,
                     image_shape):
        """Checks and stores the data settings; loads the split as `[N, *image_shape]`."""
        check_int(f"{name} batch_size", batch_size)
        check_one_of(f"{name} split", split, SPLITS)
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1); got {heldout_fraction!r}.")
        self.batch_size = batch_size
        self.split = split
        self.heldout_fraction = float(heldout_fraction)
        self.split_seed = split_seed
        self.dtype = tf.as_dtype(dtype)
        x, y = digits_split(split, heldout_fraction, split_seed)
        self.x = tf.constant(x.reshape((-1,) + tuple(image_shape)), dtype=self.dtype)
        self.y = tf.constant(y)
        self.num_examples = len(x)

    def function_losses(self, params, seed, step=0):
        batch_seed = tf.random.experimental.stateless_fold_in(
            as_seed(seed), tf.cast(step, tf.int64))
        idx = tf.random.stateless_uniform([self.batch_size], batch_seed, 0, self.num_examples,
                                          dtype=tf.int64)
        loss = self._cross_entropy(params, tf.gather(self.x, idx), tf.gather(self.y, idx))
        return loss[None]

    def loss(self, params, seed, step=0):
        return tf.reduce_sum(self.function_losses(params, seed, step))

    def eval_losses(self, params, seed):
        """Cross-entropy on the whole split (no mini-batch noise)."""
        return self._cross_entropy(params, self.x, self.y)[None]

    @classmethod
    def from_config(cls, config):
        return cls(**config)
