"""Few-shot backbones: `conv4` (Omniglot and mini-ImageNet), `resnet12` (mini-ImageNet and
other natural images) and `mlp` (sinusoid regression)."""

from keras_meta.backbones.conv4 import conv4
from keras_meta.backbones.mlp import mlp
from keras_meta.backbones.resnet12 import resnet12

__all__ = ["conv4", "mlp", "resnet12"]
