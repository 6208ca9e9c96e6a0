"""Small helpers shared by the notebooks and scripts."""

from keras_meta.utils.accelerator import detect_accelerator

__all__ = ["detect_accelerator"]
