"""The decoded-image cache: images decoded and resized once, stored as uint8 `.npy` files.

A cache is a folder: ``images.npy`` (`[classes, max_count, h, w, c]` uint8), ``counts.npy``,
``class_ids.npy``, ``info.json`` (class names, groups, what was skipped, how long it took). It
is written in two passes so that memory never holds the dataset: the labels first (to size
the array), then the images, streamed into a memory-mapped file. Reading maps the file, so a
cache larger than memory (tiered-ImageNet's ~800k images) is read per episode instead of
failing.
"""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from keras_meta.data.class_image_source import ClassImageSource
from keras_meta.data.data_error import DataError

CACHE_FORMAT = 1
_FILES = ("images.npy", "counts.npy", "class_ids.npy", "info.json")


def machine_memory_bytes():
    """Physical memory (or the container's lower limit), or None when unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        try:
            import psutil

            total = psutil.virtual_memory().total
        except ImportError:
            total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) > 0:
            total = int(limit) if total is None else min(total, int(limit))
    return total


def is_cache(path):
    return all((Path(path) / f).is_file() for f in _FILES)


def write_cache(path, labels, images, image_shape, class_ids=None, class_names=None,
                class_groups=None, describe="", printer=print):
    """Writes a cache from labels known up front and images streamed in the same order.

    Args:
        path: the cache folder (written to a temporary sibling, then renamed: readers never
            see half a cache).
        labels: `[n]` class index of each example, in `0..num_classes-1`.
        images: an iterable of `(example indices [b], uint8 images [b, h, w, c])` batches, in
            any order; an example it never yields (a file that failed to decode) is dropped.
        image_shape: `(h, w, c)` of the stored images.
        class_ids / class_names / class_groups: per class (default ids: 0..num_classes-1).
        describe: what is being cached, for the progress lines.

    Returns:
        The info dict written to ``info.json``.
    """
    path = Path(path)
    labels = np.asarray(labels, np.int64)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    counts = np.bincount(labels, minlength=num_classes)
    if labels.size == 0 or counts.min() == 0:
        empty = [] if labels.size == 0 else np.flatnonzero(counts == 0).tolist()
        raise DataError(f"{describe}: every class needs at least one image; "
                         f"{'no images' if not labels.size else f'classes {empty[:10]} have none'}.")
    # Slot of each example within its class row, in example order.
    order = np.argsort(labels, kind="stable")
    slots = np.empty_like(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slots[order] = np.arange(labels.size) - np.repeat(starts, counts)
    shape = (num_classes, int(counts.max()), *image_shape)
    size = int(np.prod(shape, dtype=np.int64))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    printer(f"Caching {describe}: {labels.size} images of {num_classes} classes as uint8 "
            f"{'x'.join(map(str, image_shape))} ({size / 2**20:.1f} MiB) in {path}", flush=True)
    start = time.monotonic()
    array = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
    seen = np.zeros(labels.size, bool)
    done, last = 0, start
    for indices, batch in images:
        indices = np.asarray(indices, np.int64)
        array[labels[indices], slots[indices]] = batch
        seen[indices] = True
        done += len(indices)
        if time.monotonic() - last > 30:
            last = time.monotonic()
            printer(f"  {done}/{labels.size} images decoded ({last - start:.0f} s)", flush=True)
    valid = np.bincount(labels[seen], minlength=num_classes)
    if (valid != counts).any():
        # Images that failed to decode leave holes: pull each class's images to the front.
        for c in np.flatnonzero(valid != counts):
            keep = np.sort(slots[seen & (labels == c)])
            array[c, :len(keep)] = array[c, keep]
            array[c, len(keep):] = 0
        if valid.min() == 0:
            raise DataError(f"{describe}: no image of class(es) "
                             f"{np.flatnonzero(valid == 0).tolist()[:10]} could be decoded.")
    array.flush()
    del array
    seconds = time.monotonic() - start
    class_ids = np.arange(num_classes) if class_ids is None else np.asarray(class_ids, np.int64)
    np.save(tmp / "counts.npy", valid.astype(np.int32))
    np.save(tmp / "class_ids.npy", class_ids.astype(np.int64))
    info = {"format": CACHE_FORMAT, "describe": describe, "num_images": int(seen.sum()),
            "num_classes": num_classes, "image_shape": list(image_shape), "bytes": size,
            "seconds": round(seconds, 2),
            "class_names": None if class_names is None else [str(n) for n in class_names],
            "class_groups": None if class_groups is None else [int(g) for g in class_groups],
            "dropped_examples": np.flatnonzero(~seen).tolist()}
    (tmp / "info.json").write_text(json.dumps(info, indent=1))
    try:
        os.replace(tmp, path)
    except OSError:
        # Another process finished the same cache first: theirs is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_cache(path):
            raise
    dropped = len(info["dropped_examples"])
    printer(f"Cached {info['num_images']} images ({size / 2**20:.1f} MiB) in {seconds:.1f} s"
            + (f"; {dropped} could not be decoded and were skipped" if dropped else ""),
            flush=True)
    return info


def read_cache(path, in_memory="auto", preprocessing=None, name=None, printer=print):
    """The `ClassImageSource` of a cache, and its info dict.

    Args:
        in_memory: True (load the images), False (memory-map them) or "auto": load them when
            they take under half of this machine's memory, else map them.
    """
    path = Path(path)
    info = json.loads((path / "info.json").read_text())
    if info.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is a cache of format {info.get('format')!r}; this keras-meta "
                         f"reads format {CACHE_FORMAT}. Delete the folder to rebuild it.")
    mapped = np.load(path / "images.npy", mmap_mode="r")
    auto = in_memory == "auto"
    if auto:
        memory = machine_memory_bytes()
        in_memory = memory is None or mapped.nbytes < memory // 2
    if in_memory:
        images = np.array(mapped)
        del mapped
    else:
        images = mapped
        printer(f"{path}: {mapped.nbytes / 2**30:.2f} GiB of images memory-mapped, read per "
                "episode" + (" (more than half of this machine's memory)"
                             if auto else "") + ".", flush=True)
    source = ClassImageSource(images, np.load(path / "counts.npy"), np.load(path / "class_ids.npy"),
                              preprocessing=preprocessing, name=name or path.name,
                              class_names=info.get("class_names"))
    return source, info
