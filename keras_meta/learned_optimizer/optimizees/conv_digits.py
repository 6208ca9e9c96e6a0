"""`ConvDigitsOptimizee`: a small two-layer convnet on scikit-learn's 8x8 digits."""

import numpy as np
import tensorflow as tf

from keras_meta._checks import check_one_of, is_int
from keras_meta.learned_optimizer.optimizees._seeds import as_seed
from keras_meta.learned_optimizer.optimizees.digits import ACTIVATIONS, DigitsClassifierFamily


class ConvDigitsOptimizee(DigitsClassifierFamily):
    """Training a convnet on mini-batches of digits: a test "shift" for a rule trained on MLPs.

    The network is conv 3x3 (`filters[0]`) -> activation -> 2x2 max-pool -> conv 3x3
    (`filters[1]`) -> activation -> 2x2 max-pool -> flatten (2 * 2 * `filters[1]`) -> dense 10,
    with softmax cross-entropy; convolutions are SAME-padded, so 8x8 images pool to 4x4, then
    2x2. Functions, mini-batches and splits are those of `MLPDigitsOptimizee`: a seed names an
    initialisation and a sequence of batches (the batch of step `t` is drawn from a stateless
    seed derived from (seed, t)).

    Params are the flat list `[k1, b1, k2, b2, w, b]`. Kernels are Gaussian with scale
    sqrt(2/fan_in) for relu (He et al. 2015) and 1/sqrt(fan_in) otherwise, fan_in = 3 * 3 *
    in_channels; the dense kernel uses 1/sqrt(fan_in); biases start at zero. Max-pooling has
    second derivatives in TensorFlow, so second-order meta-gradients go through it.

    Args:
        filters: output channels of the two convolutions.
        activation: `"relu"` (default), `"sigmoid"` or `"tanh"`, after each convolution.
        batch_size: examples per mini-batch.
        split: `"train"` or `"heldout"`: which part of the digits the batches come from.
        heldout_fraction: share of the 1797 images in the held-out split.
        split_seed: seed of the (fixed) train/held-out permutation.
        dtype: float dtype of the parameters and inputs.

    Example:

    >>> optimizee = ConvDigitsOptimizee(split="heldout")
    >>> params = optimizee.init_params(tf.constant([0, 3]))
    >>> [tuple(p.shape) for p in params]
    [(3, 3, 1, 8), (8,), (3, 3, 8, 16), (16,), (64, 10), (10,)]
    >>> optimizee.loss(params, tf.constant([0, 3]), step=0).shape
    TensorShape([])
    """


    def __init__(self, filters=(8, 16), activation="relu", batch_size=128, split="train",
                 heldout_fraction=0.3, split_seed=0, dtype="float32"):
        if (not isinstance(filters, (tuple, list)) or len(filters) != 2
                or not all(is_int(f) and f >= 1 for f in filters)):
            raise ValueError("ConvDigitsOptimizee filters must be a tuple/list of two ints >= 1; "
                             f"got {filters!r}.")
        check_one_of("ConvDigitsOptimizee activation", activation, tuple(ACTIVATIONS))
        self.filters = tuple(filters)
        self.activation = activation
        self._load_digits("ConvDigitsOptimizee", batch_size, split, heldout_fraction, split_seed,
                          dtype, (8, 8, 1))

    def init_params(self, seed):
        f1, f2 = self.filters
        seeds = tf.random.experimental.stateless_split(as_seed(seed), num=3)
        conv_scale = 2.0 if self.activation == "relu" else 1.0
        params = []
        for i, shape in enumerate([(3, 3, 1, f1), (3, 3, f1, f2)]):
            fan_in = 3 * 3 * shape[2]
            kernel = tf.random.stateless_normal(shape, seeds[i], dtype=self.dtype)
            params += [kernel * np.sqrt(conv_scale / fan_in),
                       tf.zeros([shape[3]], dtype=self.dtype)]
        fan_in = 2 * 2 * f2
        dense = tf.random.stateless_normal([fan_in, 10], seeds[2], dtype=self.dtype)
        return params + [dense / np.sqrt(fan_in), tf.zeros([10], dtype=self.dtype)]

    def _cross_entropy(self, params, x, y):
        k1, b1, k2, b2, w, b = params
        activation = ACTIVATIONS[self.activation]
        h = x
        for kernel, bias in ((k1, b1), (k2, b2)):
            h = activation(tf.nn.conv2d(h, kernel, strides=1, padding="SAME") + bias)
            h = tf.nn.max_pool2d(h, ksize=2, strides=2, padding="VALID")
        # Row-major (height, width, channel) flattening, as keras.layers.Flatten does.
        logits = tf.matmul(tf.reshape(h, [-1, 2 * 2 * self.filters[1]]), w) + b
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

    def get_config(self):
        return {"filters": list(self.filters), "activation": self.activation,
                "batch_size": self.batch_size, "split": self.split,
                "heldout_fraction": self.heldout_fraction, "split_seed": self.split_seed,
                "dtype": self.dtype.name}
