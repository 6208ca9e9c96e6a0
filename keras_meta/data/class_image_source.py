"""An in-memory, class-indexed store of uint8 images: the data behind episode sampling."""

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_meta.data.image_preprocessing import ImagePreprocessing

_ROTATIONS = (1, 4)


class ClassImageSource:
    """Images grouped by class, `[num_base_classes, max_count, h, w, c]` uint8, in memory.

    Images are decoded and resized once and kept as uint8 (4x smaller than float32); the
    float conversion (`preprocessing`) runs in-graph per meta-batch. Classes with fewer images
    than `max_count` are zero-padded and `counts` says how many are real.

    With `rotations=4`, class `c` is base class `c // 4` turned by `c % 4` quarter turns
    (MAML's Omniglot augmentation): four times the classes, with no extra memory.

    Args:
        images: uint8 array `[num_base_classes, max_count, height, width, channels]`.
        counts: valid images per class, `[num_base_classes]` (default: all `max_count`).
        class_ids: original label of each base class (default: `0..num_base_classes-1`).
        rotations: 1, or 4 to make each quarter turn a class of its own (square images only).
        preprocessing: `ImagePreprocessing` that turns the stored uint8 into model inputs
            (default: scale to [0, 1] at the stored size and channels).
        name: a label for messages.
        class_names: the name of each base class (e.g. its folder), or None.
        rows: for a memory-mapped `images` (`np.memmap`, a cache larger than memory), the row
            of `images` of each base class: selecting classes then copies no image.
        info: what the loader knows of the data (its cache's info: where, how big, the split
            folders of an image folder, ...).

    Example:

    >>> images = np.zeros([10, 6, 28, 28, 1], np.uint8)
    >>> source = ClassImageSource(images).select([0, 1, 2]).with_rotations()
    >>> source.num_classes, source.image_shape
    (12, (28, 28, 1))
    """

    def __init__(self, images, counts=None, class_ids=None, rotations=1, preprocessing=None,
                 name="images", class_names=None, rows=None, info=None):
        if not isinstance(images, np.memmap):
            images = np.asarray(images)
        if images.ndim != 5:
            raise ValueError(f"{name}: images must be [num_classes, images_per_class, height, "
                             f"width, channels]; got shape {images.shape}.")
        if images.dtype != np.uint8:
            raise ValueError(f"{name}: images must be uint8 (decode and resize with "
                             f"from_labelled_images); got {images.dtype}.")
        num_classes, max_count, height, width, channels = images.shape
        if rows is not None:
            rows = np.asarray(rows, np.int64)
            if rows.ndim != 1 or rows.size < 1 or rows.min() < 0 or rows.max() >= num_classes:
                raise ValueError(f"{name}: rows must be indices into the {num_classes} rows of "
                                 f"images; got {rows!r}.")
            num_classes = rows.size
        if num_classes < 1 or max_count < 1:
            raise ValueError(f"{name}: need at least one class and one image; got {images.shape}.")
        if channels not in (1, 3):
            raise ValueError(f"{name}: images must have 1 or 3 channels; got {channels}.")
        counts = (np.full([num_classes], max_count, np.int32) if counts is None
                  else np.asarray(counts, np.int32))
        if counts.shape != (num_classes,) or counts.min() < 1 or counts.max() > max_count:
            raise ValueError(f"{name}: counts must be {num_classes} values in [1, {max_count}]; "
                             f"got shape {counts.shape}, range {counts.min()}..{counts.max()}.")
        class_ids = (np.arange(num_classes, dtype=np.int64) if class_ids is None
                     else np.asarray(class_ids, np.int64))
        if class_ids.shape != (num_classes,) or len(np.unique(class_ids)) != num_classes:
            raise ValueError(f"{name}: class_ids must be {num_classes} distinct ids; "
                             f"got shape {class_ids.shape}.")
        if rotations not in _ROTATIONS:
            raise ValueError(f"{name}: rotations must be 1 or 4; got {rotations!r}.")
        if rotations > 1 and height != width:
            raise ValueError(f"{name}: rotations need square images; got {height}x{width}.")
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if len(class_names) != num_classes:
                raise ValueError(f"{name}: class_names must name the {num_classes} classes; "
                                 f"got {len(class_names)} names.")
        if preprocessing is None:
            preprocessing = ImagePreprocessing((height, width), channels)
        if tuple(preprocessing.image_size) != (height, width):
            raise ValueError(f"{name}: preprocessing.image_size {preprocessing.image_size} must "
                             f"match the stored images' {(height, width)}.")
        self.images = images
        self.counts = counts
        self.class_ids = class_ids
        self.rotations = rotations
        self.preprocessing = preprocessing
        self.name = name
        self.class_names = class_names
        self.rows = rows
        self.info = dict(info or {})

    @property
    def is_memory_mapped(self):
        """Whether the images stay on disk (a memory-mapped cache), read per episode."""
        return isinstance(self.images, np.memmap)

    @property
    def num_base_classes(self):
        return len(self.counts)

    def base_images(self):
        """`[num_base_classes, max_count, h, w, c]` uint8 in memory (reads a mapped cache)."""
        return np.asarray(self.images if self.rows is None else self.images[self.rows])

    @property
    def nbytes(self):
        """Bytes of this source's images (padding included)."""
        return int(np.prod(self.images.shape[1:], dtype=np.int64)) * self.num_base_classes

    @property
    def num_classes(self):
        """Classes an episode can draw from (base classes x rotations)."""
        return self.num_base_classes * self.rotations

    @property
    def num_images(self):
        return int(self.counts.sum())

    @property
    def min_count(self):
        return int(self.counts.min())

    @property
    def image_shape(self):
        return tuple(self.images.shape[2:])

    def __repr__(self):
        return (f"ClassImageSource({self.name!r}, classes={self.num_classes} "
                f"({self.num_base_classes} x {self.rotations} rotations), "
                f"images/class={self.min_count}..{int(self.counts.max())}, "
                f"shape={self.image_shape})")

    def _replace(self, **changes):
        fields = dict(images=self.images, counts=self.counts, class_ids=self.class_ids,
                      rotations=self.rotations, preprocessing=self.preprocessing, name=self.name,
                      class_names=self.class_names, rows=self.rows, info=self.info)
        fields.update(changes)
        return ClassImageSource(**fields)

    def select(self, class_ids, name=None):
        """The classes whose original ids are `class_ids` (a meta-split), in that order."""
        class_ids = np.asarray(class_ids, np.int64).reshape(-1)
        position = {int(c): i for i, c in enumerate(self.class_ids)}
        unknown = [int(c) for c in class_ids if int(c) not in position]
        if unknown:
            raise ValueError(f"{self.name}: unknown class ids {unknown[:10]}"
                             f"{' ...' if len(unknown) > 10 else ''}; this source has ids "
                             f"{int(self.class_ids.min())}..{int(self.class_ids.max())}.")
        if len(np.unique(class_ids)) != len(class_ids):
            raise ValueError(f"{self.name}: class ids of a split must be distinct.")
        rows = np.array([position[int(c)] for c in class_ids], np.int64)
        names = None if self.class_names is None else [self.class_names[r] for r in rows]
        if self.is_memory_mapped:
            # A mapped cache may be larger than memory: keep the file, remember the rows.
            base = np.arange(len(self.counts)) if self.rows is None else self.rows
            return self._replace(rows=base[rows], counts=self.counts[rows],
                                 class_ids=class_ids, name=name or self.name, class_names=names)
        return self._replace(images=self.images[rows], counts=self.counts[rows],
                             class_ids=class_ids, name=name or self.name, class_names=names)

    def with_rotations(self, rotations=4):
        """This source with each quarter turn of each class as a class of its own."""
        return self._replace(rotations=rotations)

    def with_preprocessing(self, preprocessing):
        """This source served through another `ImagePreprocessing` (e.g. inverted)."""
        return self._replace(preprocessing=preprocessing)

    @classmethod
    def from_labelled_images(cls, images, labels, image_size=None, channels=None,
                             preprocessing=None, name="images"):
        """Groups `[n, H, W(, C)]` images by integer `labels`, resized to `image_size`.

        Args:
            images: uint8 (0..255) or float (0..1) array, `[n, H, W]` or `[n, H, W, C]`.
            labels: `[n]` integer class labels; the sorted distinct labels become class ids.
            image_size: stored (height, width); default: as given.
            channels: stored channels (1 or 3); default: as given.
            preprocessing: how episodes serve the stored images (see the class docstring).
        """
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(f"{name}: images must be [num_images, height, width] or "
                             f"[num_images, height, width, channels]; got shape {images.shape}.")
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name}: labels must be {images.shape[0]} integers, one per image; "
                             f"got shape {labels.shape}, dtype {labels.dtype}.")
        image_size = tuple(image_size or images.shape[1:3])
        channels = channels or images.shape[-1]
        stored = _to_uint8(images, ImagePreprocessing(image_size, channels))
        return cls._group(stored, labels, preprocessing, name)

    @classmethod
    def _group(cls, images, labels, preprocessing, name):
        order = np.argsort(labels, kind="stable")
        class_ids, first, counts = np.unique(labels[order], return_index=True, return_counts=True)
        grouped = np.zeros((len(class_ids), counts.max()) + images.shape[1:], np.uint8)
        for row, (start, count) in enumerate(zip(first, counts)):
            grouped[row, :count] = images[order[start:start + count]]
        return cls(grouped, counts, class_ids, preprocessing=preprocessing, name=name)

    @classmethod
    def from_tfds(cls, dataset, split="train", data_dir=None, image_key="image",
                  label_key="label", image_size=(28, 28), channels=1, preprocessing=None,
                  download=False):
        """Loads a prepared TFDS image-classification dataset once, decoded and resized.

        Args:
            dataset: TFDS name, e.g. "omniglot" or "omniglot:3.0.0".
            split: a split name or a sequence of them (their classes are pooled).
            data_dir: TFDS data directory.
            image_key, label_key: feature names of the image and its integer class.
            image_size, channels: stored geometry.
            preprocessing: how episodes serve the stored images.
            download: let TFDS download and prepare when the data is missing.
        """
        import tensorflow_datasets as tfds

        splits = [split] if isinstance(split, str) else list(split)
        try:
            builder = tfds.builder(dataset, data_dir=os.fspath(data_dir) if data_dir else None)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(f"Unknown TFDS dataset {dataset!r}: {e}") from None
        if download:
            builder.download_and_prepare()
        elif not builder.is_prepared():
            raise FileNotFoundError(f"TFDS {dataset!r} is not prepared under {builder.data_dir}; "
                                    "prepare it first (or pass download=True).")
        known = sorted(builder.info.splits)
        unknown = [s for s in splits if s not in builder.info.splits]
        if unknown:
            raise ValueError(f"Unknown split(s) {unknown} of TFDS {dataset!r}; expected some "
                             f"of {known}.")
        features = builder.info.features
        for key in (image_key, label_key):
            if key not in features:
                raise ValueError(f"TFDS {dataset!r} has no feature {key!r}; it has "
                                 f"{sorted(features)}.")
        geometry = ImagePreprocessing(tuple(image_size), channels)

        def decode(example):
            image = example[image_key]
            if image.shape.rank != 3:
                raise ValueError(f"TFDS {dataset!r} feature {image_key!r} must be an image "
                                 f"[height, width, channels]; got shape {image.shape}.")
            return _to_uint8_tensor(geometry(image)), example[label_key]

        ds = builder.as_dataset(split="+".join(splits), shuffle_files=False)
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
                    name="decode_resize").batch(2048, name="decode_batch")
        parts = [(x, y) for x, y in ds.as_numpy_iterator()]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
        name = f"{dataset}/{'+'.join(splits)}"
        return cls._group(images, labels, preprocessing, name)

    def save(self, path):
        """Writes the arrays to an `.npz` (atomically, so readers never see half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, images=self.base_images(), counts=self.counts, class_ids=self.class_ids)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path, preprocessing=None, name=None):
        """Reads what `save` wrote (base classes, no rotations)."""
        with np.load(path) as data:
            return cls(data["images"], data["counts"], data["class_ids"],
                       preprocessing=preprocessing, name=name or Path(path).stem)


def _to_uint8_tensor(unit_float):
    return tf.cast(tf.round(tf.clip_by_value(unit_float, 0.0, 1.0) * 255.0), tf.uint8)


def _to_uint8(images, geometry, batch=4096):
    if images.dtype == np.uint8 and images.shape[1:] == (*geometry.image_size, geometry.channels):
        return images
    out = [_to_uint8_tensor(geometry(images[i:i + batch])).numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, *geometry.image_size,
                                                      geometry.channels), np.uint8)
