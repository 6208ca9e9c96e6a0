"""Layers for meta-learning backbones: batch norm with exact second derivatives.

Importing this package also registers `MetaBatchNormalization`'s task-batched kernel with
`keras_meta.core.batching`, and the layers with Keras' serialization (a saved backbone loads
after a plain `import keras_meta`).
"""

from keras_meta.layers import batched_batch_norm as _batched_batch_norm  # noqa: F401
from keras_meta.layers.batch_norm_ops import BATCH_NORM_MODES, check_batch_norm_mode
from keras_meta.layers.frozen_batch_normalization import FrozenBatchNormalization
from keras_meta.layers.meta_batch_normalization import MetaBatchNormalization

__all__ = ["BATCH_NORM_MODES", "FrozenBatchNormalization", "MetaBatchNormalization",
           "check_batch_norm_mode"]
