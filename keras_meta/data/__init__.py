"""Episodic data: tasks as `Episode`s, class-indexed image sources, any image dataset or
folder (`image_classes`), class splits, Omniglot."""

from keras_meta.data.augmentation import CropFlip
from keras_meta.data.class_image_source import ClassImageSource
from keras_meta.data.class_splits import ClassSplit, class_split, standard_splits
from keras_meta.data.data_error import DataError
from keras_meta.data.episode import Episode
from keras_meta.data.episode_config import EpisodeConfig
from keras_meta.data.episode_sampler import EpisodeSampler
from keras_meta.data.image_classes import image_classes, image_meta_splits
from keras_meta.data.image_folder import list_image_folder
from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.data.meta_splits import MetaSplits
from keras_meta.data.omniglot import (
    default_data_dir,
    default_omniglot_source_dir,
    load_omniglot_classes,
    omniglot_splits,
    prepare_omniglot,
    write_omniglot_folder,
)

__all__ = [
    "ClassImageSource",
    "ClassSplit",
    "CropFlip",
    "DataError",
    "Episode",
    "EpisodeConfig",
    "EpisodeSampler",
    "ImagePreprocessing",
    "MetaSplits",
    "default_data_dir",
    "class_split",
    "default_omniglot_source_dir",
    "image_classes",
    "image_meta_splits",
    "list_image_folder",
    "load_omniglot_classes",
    "omniglot_splits",
    "prepare_omniglot",
    "standard_splits",
    "write_omniglot_folder",
]
