"""Listing a folder of labelled images: each folder that holds image files is a class.

TFDS's `ImageFolder` convention is ``root/split/label/image``; here the split level is optional
and class folders may nest (``root/alphabet/character/*.png``): a class is named by its
folder's path below the root (or below the split folder), with ``/`` separators.
"""

import dataclasses
import os
from pathlib import Path

from keras_meta.data.data_error import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# Top-level folder names that mean "this is a split, not a class" (TFDS's ImageFolder layout).
SPLIT_FOLDER_NAMES = {"train": "train", "val": "validation", "valid": "validation",
                      "validation": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class ImageFolderListing:
    """What `list_image_folder` found.

    Args:
        root: the folder.
        class_names: sorted class names (folder paths below the root or split folder).
        files: `(path, class index)` of every image file, sorted by path.
        skipped: `(path, why)` of files that are not images by their extension.
        class_splits: class name -> split name when the root holds split folders
            (``train``, ``val``/``validation``, ``test``), else None.
    """

    root: str
    class_names: tuple
    files: tuple
    skipped: tuple = ()
    class_splits: dict | None = None


def list_image_folder(root):
    """Lists the images of a class-folder tree (see the module docstring).

    Files whose extension is not an image's (`IMAGE_EXTENSIONS`, any case) are skipped and
    listed in `skipped`; hidden files and folders are ignored.

    Raises:
        FileNotFoundError: `root` is not a directory.
        ValueError: no image files, or images directly in `root` (they have no class).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Image folder {str(root)!r} is not a directory; expected a "
                                "folder with one subfolder of images per class.")
    top = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    has_splits = bool(top) and all(name.lower() in SPLIT_FOLDER_NAMES for name in top)
    by_class, skipped, loose = {}, [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        relative = Path(dirpath).relative_to(root)
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = os.path.join(dirpath, filename)
            if not filename.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append((path, f"not an image file (extension not one of "
                                      f"{', '.join(IMAGE_EXTENSIONS)})"))
                continue
            if relative == Path(".") or (has_splits and len(relative.parts) == 1):
                loose.append(path)
                continue
            by_class.setdefault(relative.as_posix(), []).append(path)
    if loose:
        raise DataError(f"{len(loose)} image(s) lie outside any class folder, e.g. "
                         f"{loose[0]!r}; expected {root}/<class>/<image> "
                         f"{'(below each split folder) ' if has_splits else ''}so that each "
                         "image's folder names its class.")
    if not by_class:
        raise DataError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}; "
                         "expected one subfolder of images per class.")
    class_splits = None
    if has_splits:
        class_splits, renamed = {}, {}
        for folder, paths in by_class.items():
            split, _, name = folder.partition("/")
            if name in renamed:
                raise DataError(f"Class {name!r} appears under two split folders of {root}; "
                                 "meta-splits must be class-disjoint.")
            renamed[name] = paths
            class_splits[name] = SPLIT_FOLDER_NAMES[split.lower()]
        by_class = renamed
    class_names = tuple(sorted(by_class))
    index = {name: i for i, name in enumerate(class_names)}
    files = tuple(sorted((path, index[name]) for name, paths in by_class.items()
                         for path in paths))
    return ImageFolderListing(str(root), class_names, files, tuple(skipped), class_splits)
