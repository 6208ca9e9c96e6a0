"""Batch normalization with fixed statistics: the serving form of `MetaBatchNormalization`."""

import keras

from keras_meta._checks import is_int
from keras_meta.layers.batch_norm_ops import broadcast_to_axis


@keras.saving.register_keras_serializable(package="keras_meta")
class FrozenBatchNormalization(keras.layers.Layer):
    """Normalizes with stored mean and variance, whatever `training` says.

    Each example's output depends only on that example, so a model made of these layers can be
    batched freely by a server. `keras_meta.export.freeze_batch_norm` builds it from a
    `MetaBatchNormalization`: in transductive mode with the statistics the layer saw on a
    support set, in per-step mode with one slot's running statistics and gamma/beta.

    The arithmetic follows `MetaBatchNormalization` (`(x - mean) * (rsqrt(var + eps) * gamma)
    + beta`), so a frozen layer fed the statistics of a batch reproduces the transductive layer
    on that batch to float rounding.

    Args:
        axis: the feature axis (an int).
        epsilon: added to the variance before the square root.
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Example:

    >>> bn = FrozenBatchNormalization(name="bn0")
    >>> bn.build((None, 4, 4, 3))
    >>> # mean, variance, gamma, beta
    >>> bn.set_weights([np.ones(3), np.full(3, 4.0), np.ones(3), np.zeros(3)])
    >>> bn(np.full((1, 4, 4, 3), 3.0)).numpy()[0, 0, 0]   # (3 - 1) / sqrt(4 + 1e-3)
    array([0.99987507, 0.99987507, 0.99987507], dtype=float32)
    """

    def __init__(self, axis=-1, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        if not is_int(axis):
            raise ValueError(f"axis must be a single int; got {axis!r}.")
        if not float(epsilon) > 0.0:
            raise ValueError(f"epsilon must be > 0; got {epsilon!r}.")
        self.axis = axis
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        rank = len(input_shape)
        axis = self.axis if self.axis >= 0 else self.axis + rank
        if not 0 < axis < rank or input_shape[axis] is None:
            raise ValueError(
                f"axis={self.axis} is not a known feature axis of inputs with shape "
                f"{input_shape} (axis 0 is the batch).")
        self._axis = axis
        channels = input_shape[axis]
        # Serving weights: nothing here is trained, and all four travel with the model.
        self.mean = self.add_weight(shape=(channels,), name="mean", initializer="zeros",
                                    trainable=False, autocast=False)
        self.variance = self.add_weight(shape=(channels,), name="variance", initializer="ones",
                                        trainable=False, autocast=False)
        self.gamma = self.add_weight(shape=(channels,), name="gamma", initializer="ones",
                                     trainable=False, autocast=False)
        self.beta = self.add_weight(shape=(channels,), name="beta", initializer="zeros",
                                    trainable=False, autocast=False)

    def _broadcast(self, vector, rank, dtype):
        return broadcast_to_axis(vector, self._axis, rank, dtype)

    def call(self, inputs, training=None):
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = keras.ops.cast(inputs, compute_dtype)
        rank = len(x.shape)
        mean = self._broadcast(self.mean, rank, compute_dtype)
        inv = keras.ops.rsqrt(self._broadcast(self.variance, rank, compute_dtype) + self.epsilon)
        inv = inv * self._broadcast(self.gamma, rank, compute_dtype)
        outputs = (x - mean) * inv + self._broadcast(self.beta, rank, compute_dtype)
        return keras.ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis, epsilon=self.epsilon)
        return config
