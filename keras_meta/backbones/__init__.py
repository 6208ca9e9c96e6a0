"""Few-shot backbones: `conv4` (Omniglot and mini-ImageNet) and `mlp` (sinusoid regression)."""

from keras_meta.backbones.conv4 import conv4
from keras_meta.backbones.mlp import mlp

__all__ = ["conv4", "mlp"]
