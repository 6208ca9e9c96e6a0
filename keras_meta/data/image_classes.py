"""`image_classes`: any TFDS image dataset or folder of images as a `ClassImageSource`, and
`image_meta_splits`: its classes split into meta-train / validation / test.

A dataset is named by a spec string:

* ``tfds:NAME`` or ``tfds:NAME:CONFIG``: a prepared TFDS dataset with an image feature and a
  class-label feature (keys configurable), e.g. ``tfds:cifar100``;
* ``folder:PATH``: a folder with one subfolder of images per class (`list_image_folder`).

Images are decoded and resized once, at the episode resolution, into a uint8 cache
(`image_cache`); later loads read the cache.
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_meta.data import class_splits, image_cache
from keras_meta.data.image_folder import list_image_folder
from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.data.meta_splits import MetaSplits
from keras_meta.data.data_error import DataError

SPEC_KINDS = ("tfds", "folder")


def parse_dataset_spec(spec):
    """`("tfds", "NAME[/CONFIG]")` or `("folder", PATH)` from a spec string.

    Raises:
        ValueError: saying what was received and the two accepted forms.
    """
    text = str(spec).strip()
    kind, sep, rest = text.partition(":")
    if not sep or kind not in SPEC_KINDS or not rest:
        raise DataError(f"Invalid dataset {spec!r}: expected 'tfds:NAME[:CONFIG]' (a TFDS "
                         "image dataset, e.g. 'tfds:cifar100') or 'folder:PATH' (a folder "
                         "of class subfolders of images).")
    if kind == "tfds":
        name, _, config = rest.partition(":")
        if not name or "/" in name or ":" in config:
            raise DataError(f"Invalid dataset {spec!r}: expected 'tfds:NAME' or "
                             "'tfds:NAME:CONFIG'.")
        return kind, f"{name}/{config}" if config else name
    return kind, rest


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def _slug(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")[-40:]


def default_cache_dir():
    """``$KERAS_META_DATA_DIR/keras_meta_cache/images`` (default ``~/tensorflow_datasets``)."""
    from keras_meta.data.omniglot import default_data_dir

    return default_data_dir() / "keras_meta_cache" / "images"


def image_classes(dataset, image_size, channels=3, *, invert=False, split=None,
                  image_key="image", label_key="label", group_key=None, data_dir=None,
                  cache_dir=None, in_memory="auto", download=False, only_classes=None,
                  printer=print):
    """A dataset's images grouped by class, decoded and resized once, from its cache.

    Args:
        dataset: ``"tfds:NAME[:CONFIG]"`` or ``"folder:PATH"`` (module docstring).
        image_size: stored (height, width), or an int for square images.
        channels: stored channels: 3 (RGB) or 1 (greyscale).
        invert: episodes serve 1 - x (dark strokes on white become 1 on 0, as Omniglot).
        split: TFDS splits whose examples are pooled (a name or a list; default: all).
        image_key, label_key: TFDS features holding the image and its class.
        group_key: TFDS feature holding a group of the class (CIFAR-100's ``coarse_label``
            for FC100's superclass split), kept per class.
        data_dir: TFDS data directory.
        cache_dir: where caches go (default `default_cache_dir()`).
        in_memory: True, False (memory-map the cache) or "auto" (map only when it is larger
            than half of this machine's memory).
        download: let TFDS download and prepare a missing dataset.
        only_classes: a folder dataset: decode only the classes of these names (e.g. the 100
            WordNet ids of mini-ImageNet's split out of ImageNet's 1000 class folders); the
            names the folder lacks are left for the class split to report.
        printer: where progress lines go (`print`; `lambda *a, **k: None` to silence them).

    Returns:
        A `ClassImageSource`; `.class_names` holds the class names and `.info` the cache's
        description (path, bytes, seconds it took, files skipped).

    Example:

    >>> source = image_classes("folder:/data/my_images", image_size=84)
    >>> splits = image_meta_splits(source)          # seeded 64/16/20% split of the classes
    """
    kind, target = parse_dataset_spec(dataset)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    geometry = ImagePreprocessing(size, channels)  # validates size and channels
    prep = ImagePreprocessing(size, channels, invert=bool(invert))
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    shape = (*size, channels)
    if kind == "folder":
        return _folder_classes(target, geometry, shape, prep, cache_root, in_memory, printer,
                               only_classes)
    return _tfds_classes(target, geometry, shape, prep, cache_root, in_memory, printer,
                         split=split, image_key=image_key, label_key=label_key,
                         group_key=group_key, data_dir=data_dir, download=download)


def _to_uint8(geometry, image):
    out = geometry(image)
    return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 1.0) * 255.0), tf.uint8)


def _read(path, prep, in_memory, printer, name):
    source, cached = image_cache.read_cache(path, in_memory=in_memory, preprocessing=prep,
                                            name=name, printer=printer)
    source.info.update(cached, cache=str(path))
    return source


def _folder_classes(folder, geometry, shape, prep, cache_root, in_memory, printer,
                    only_classes=None):
    listing = list_image_folder(folder)
    if only_classes is not None:
        listing = _keep_classes(listing, set(only_classes))
    root = Path(listing.root).resolve()
    # The cache is keyed by what was listed (names and sizes), so adding, removing or
    # replacing files rebuilds it instead of serving stale images.
    key = _digest({"root": str(root), "shape": shape,
                   "files": [(os.path.relpath(p, root), os.path.getsize(p))
                             for p, _ in listing.files]})
    path = cache_root / f"folder-{_slug(root.name)}-{'x'.join(map(str, shape))}-{key}"
    extra = {"dataset": f"folder:{root}", "class_splits": listing.class_splits,
             "skipped_files": [list(s) for s in listing.skipped]}
    if not image_cache.is_cache(path):
        for skipped, why in listing.skipped:
            printer(f"[skipped] {skipped}: {why}", flush=True)
        paths = [p for p, _ in listing.files]
        labels = np.array([c for _, c in listing.files], np.int64)

        def decode(index, file_path):
            image = tf.io.decode_image(tf.io.read_file(file_path), channels=shape[-1],
                                       expand_animations=False)
            return index, _to_uint8(geometry, image)

        ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # A file that fails to decode is dropped here and reported by path below, instead of
        # ending the whole pipeline deep in tf.data.
        ds = ds.ignore_errors().batch(256)
        info = image_cache.write_cache(
            path, labels, ds.as_numpy_iterator(), shape, class_names=listing.class_names,
            describe=f"folder:{root}", printer=printer)
        for index in info["dropped_examples"]:
            printer(f"[skipped] {paths[index]}: could not be decoded as an image (corrupt or "
                    "truncated file)", flush=True)
        extra["corrupt_files"] = [paths[i] for i in info["dropped_examples"]]
        _write_extra(path, extra)
    source = _read(path, prep, in_memory, printer, f"folder:{root.name}")
    source.info.update(json.loads((path / "extra.json").read_text()))
    return source


def _keep_classes(listing, names):
    """The listing restricted to the classes named (renumbered in their sorted order)."""
    kept = [n for n in listing.class_names if n in names]
    if not kept:
        raise DataError(f"None of the {len(names)} classes asked for (e.g. "
                        f"{sorted(names)[:3]}) is a class folder of {listing.root}; it has "
                        f"{list(listing.class_names[:3])}...")
    index = {n: i for i, n in enumerate(kept)}
    old = listing.class_names
    files = tuple((p, index[old[c]]) for p, c in listing.files if old[c] in index)
    splits = (None if listing.class_splits is None
              else {n: s for n, s in listing.class_splits.items() if n in index})
    return dataclasses.replace(listing, class_names=tuple(kept), files=files,
                               class_splits=splits)


def _write_extra(path, extra):
    tmp = path / f"extra.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(extra, indent=1))
    os.replace(tmp, path / "extra.json")


def _tfds_classes(name, geometry, shape, prep, cache_root, in_memory, printer, *, split,
                  image_key, label_key, group_key, data_dir, download):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=os.fspath(data_dir) if data_dir else None)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as error:
        raise DataError(f"Unknown TFDS dataset {name!r}: {error}") from None
    if download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise DataError(f"TFDS {name!r} is not prepared under {builder.data_dir}; "
                                "prepare it first (`tfds build`, or download=True when this "
                                "machine has the internet).")
    features = builder.info.features
    for role, key in (("image_key", image_key), ("label_key", label_key),
                      ("group_key", group_key)):
        if key is not None and key not in features:
            raise DataError(f"TFDS {name!r} has no feature {key!r} ({role}); it has "
                             f"{sorted(features)}.")
    if not isinstance(features[image_key], tfds.features.Image):
        raise DataError(f"TFDS {name!r} feature {image_key!r} (image_key) must be an Image; "
                         f"got {type(features[image_key]).__name__}.")
    for role, key in (("label_key", label_key), ("group_key", group_key)):
        if key is not None and not isinstance(features[key], tfds.features.ClassLabel):
            raise DataError(f"TFDS {name!r} feature {key!r} ({role}) must be a ClassLabel; "
                             f"got {type(features[key]).__name__}.")
    known = sorted(builder.info.splits) or ["train"]  # a build without split info: "train"
    splits = known if split is None else ([split] if isinstance(split, str) else list(split))
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise DataError(f"Unknown split(s) {unknown} of TFDS {name!r}; expected some of "
                         f"{known}.")
    key = _digest({"name": name, "version": str(builder.info.version), "splits": splits,
                   "keys": [image_key, label_key, group_key], "shape": shape,
                   "data_dir": str(builder.data_dir)})
    path = cache_root / f"tfds-{_slug(name)}-{'x'.join(map(str, shape))}-{key}"
    if not image_cache.is_cache(path):
        ds_split = "+".join(splits)
        keys = [label_key] + ([group_key] if group_key else [])
        plain = builder.as_dataset(split=ds_split, shuffle_files=False,
                                   decoders={image_key: tfds.decode.SkipDecoding()})
        pairs = np.array([[ex[k] for k in keys] for ex in plain.map(
            lambda ex: {k: ex[k] for k in keys}).as_numpy_iterator()], np.int64)
        class_ids, labels = np.unique(pairs[:, 0], return_inverse=True)
        groups = None
        if group_key:
            groups = np.zeros(len(class_ids), np.int64)
            groups[labels] = pairs[:, 1]
            if (groups[labels] != pairs[:, 1]).any():
                raise DataError(f"TFDS {name!r}: {group_key!r} is not a function of "
                                 f"{label_key!r}; a class must belong to one group.")
        names = features[label_key].names
        class_names = [names[c] for c in class_ids]

        def decode(index, example):
            return index, _to_uint8(geometry, example[image_key])

        ds = builder.as_dataset(split=ds_split, shuffle_files=False).enumerate()
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
        image_cache.write_cache(path, labels, ds.as_numpy_iterator(), shape, class_ids=class_ids,
                                class_names=class_names, class_groups=groups,
                                describe=f"tfds:{name} ({ds_split})", printer=printer)
        extra = {"dataset": f"tfds:{name}", "class_splits": None,
                 "group_names": (list(features[group_key].names) if group_key else None)}
        _write_extra(path, extra)
    source = _read(path, prep, in_memory, printer, f"tfds:{name}")
    source.info.update(json.loads((path / "extra.json").read_text()))
    return source


def image_meta_splits(source, class_split=None, seed=0, printer=print):
    """`MetaSplits` ("train", "validation" when there is one, "test") of `source`'s classes.

    Args:
        source: a `ClassImageSource` from `image_classes`.
        class_split: a standard split's name (`class_splits.standard_splits()`), a split
            file's path, or None: the folder's own split folders (``train/``, ``val/``,
            ``test/``) when it has them, else a split of the classes seeded by `seed` in
            mini-ImageNet's 64/16/20 proportions.
        seed: the random split's seed.

    Raises:
        ValueError: a split whose classes the data lacks, naming them.
    """
    info = source.info
    if class_split is None and info.get("class_splits"):
        owner = info["class_splits"]
        chosen = {}
        for class_id, class_name in zip(source.class_ids, source.class_names):
            chosen.setdefault(owner[class_name], []).append(int(class_id))
        how = "the folder's split folders"
    elif class_split is None:
        chosen = class_splits.random_class_split(source.class_ids, seed=seed)
        how = f"a random 64/16/20% split of the classes (seed {seed})"
    else:
        split = class_splits.class_split(class_split)
        groups = info.get("class_groups")
        folder = str(info.get("dataset", "")).startswith("folder:")
        chosen = class_splits.resolve_split(
            split, source.class_ids, source.class_names,
            class_groups=groups, group_names=info.get("group_names"),
            match_by="name" if folder else "id")
        how = f"class split {split.source}"
    ordered = {s: chosen[s] for s in class_splits.SPLIT_NAMES if chosen.get(s)}
    printer(f"{source.name}: {how}: " + ", ".join(f"{s} {len(c)} classes"
                                                  for s, c in ordered.items()), flush=True)
    return MetaSplits({s: source.select(c, name=f"{source.name}/{s}")
                       for s, c in ordered.items()})
