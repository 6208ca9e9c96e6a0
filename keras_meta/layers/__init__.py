"""Layers for meta-learning backbones."""

from keras_meta.layers.frozen_batch_normalization import FrozenBatchNormalization
from keras_meta.layers.meta_batch_normalization import MetaBatchNormalization

__all__ = ["FrozenBatchNormalization", "MetaBatchNormalization"]
