"""Episodic data: tasks as `Episode`s, class-indexed image sources, Omniglot."""

from keras_meta.data.class_image_source import ClassImageSource
from keras_meta.data.episode import Episode
from keras_meta.data.episode_config import EpisodeConfig
from keras_meta.data.episode_sampler import EpisodeSampler
from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.data.meta_splits import MetaSplits
from keras_meta.data.omniglot import (
    default_data_dir,
    default_omniglot_source_dir,
    load_omniglot_classes,
    omniglot_splits,
    prepare_omniglot,
)

__all__ = [
    "ClassImageSource",
    "Episode",
    "EpisodeConfig",
    "EpisodeSampler",
    "ImagePreprocessing",
    "MetaSplits",
    "default_data_dir",
    "default_omniglot_source_dir",
    "load_omniglot_classes",
    "omniglot_splits",
    "prepare_omniglot",
]
