"""Omniglot (Lake et al. 2015) for few-shot learning: offline TFDS preparation and meta-splits.

Two protocols:

* ``"maml"`` (Finn et al. 2017): all 1623 characters are pooled and split by a seeded shuffle
  into 1100 train / 100 validation / 423 test characters; images are 28x28, inverted (strokes
  are 1), and each 90 degree rotation of a character is a class of its own (x4).
* ``"background_evaluation"`` (Lake et al.): the 964 background characters train, the 659
  evaluation characters test; a validation split can be carved out of the background set.

The TFDS ``omniglot`` builder downloads four zips from GitHub. Offline, `prepare_omniglot`
checks a local copy of them against a local TFDS-format checksum file and lets TFDS build the
dataset from that copy. Decoded, resized images are cached as one ``.npz`` next to the TFDS
data so that later loads take about a second.
"""

import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np

from keras_meta.data.class_image_source import ClassImageSource
from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.data.meta_splits import MetaSplits

TFDS_NAME = "omniglot"
TFDS_VERSION = "3.0.0"
CHECKSUMS_FILENAME = "tfds_checksums.tsv"
# Where a local copy of the Omniglot zips lives, for offline preparation. The library never
# guesses a folder: this variable, a flag or an argument says where it is.
SOURCE_DIR_ENV = "KERAS_META_OMNIGLOT_DIR"
DATA_DIR_ENV = "KERAS_META_DATA_DIR"

NUM_BACKGROUND_CLASSES = 964
NUM_EVALUATION_CLASSES = 659
NUM_CLASSES = NUM_BACKGROUND_CLASSES + NUM_EVALUATION_CLASSES
IMAGES_PER_CLASS = 20
PROTOCOLS = ("maml", "background_evaluation")
_MAML_NUM_TRAIN = 1100
_CACHE_FORMAT = 1


def default_omniglot_source_dir():
    """`$KERAS_META_OMNIGLOT_DIR` as a `Path`, or `None` when it is unset (then TFDS downloads).

    Raises:
        FileNotFoundError: the variable is set but names no directory (a typo must not turn
            into a silent download attempt).
    """
    env = os.environ.get(SOURCE_DIR_ENV)
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"${SOURCE_DIR_ENV}={env!r} is not a directory; expected a folder with the Omniglot "
            f"zips and {CHECKSUMS_FILENAME}.")
    return path


def default_data_dir():
    """`$KERAS_META_DATA_DIR`, else ``~/tensorflow_datasets``; prepared data goes there."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / "tensorflow_datasets").expanduser()


def read_checksums(path):
    """Parses a TFDS checksum file (url, size, sha256, filename; tab separated).

    Returns a dict url -> (size, sha256, filename).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checksum file {path} does not exist; expected a TFDS-format "
                                "tab separated file with columns url, size, sha256, filename.")
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 4 or not fields[1].isdigit() or len(fields[2]) != 64:
            raise ValueError(f"{path}:{number}: expected 'url<TAB>size<TAB>sha256<TAB>filename'; "
                             f"got {line!r}.")
        url, size, sha256, filename = fields
        entries[url] = (int(size), sha256.lower(), filename)
    return entries


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_source_dir(source_dir, checksums_path=None):
    """Checks every file listed in the local checksum file by size and sha256.

    Returns the parsed checksums (url -> (size, sha256, filename)). Raises `FileNotFoundError`
    for a missing file and `ValueError`, naming the file and both values, for a mismatch.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"Omniglot source directory {source_dir} does not exist.")
    entries = read_checksums(checksums_path or source_dir / CHECKSUMS_FILENAME)
    for size, sha256, filename in entries.values():
        path = source_dir / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in the checksum file but missing.")
        actual_size = path.stat().st_size
        if actual_size != size:
            raise ValueError(f"{path} is corrupted or not the expected file: expected {size} "
                             f"bytes, got {actual_size} bytes.")
        actual = _sha256(path)
        if actual != sha256:
            raise ValueError(f"{path} is corrupted or not the expected file: expected sha256 "
                             f"{sha256}, got {actual}.")
    return entries


def _tfds_builder(data_dir):
    import tensorflow_datasets as tfds

    return tfds.builder(f"{TFDS_NAME}:{TFDS_VERSION}", data_dir=os.fspath(data_dir))


def is_prepared(data_dir=None):
    """Whether TFDS `omniglot` 3.0.0 is already prepared under `data_dir`."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    return (data_dir / TFDS_NAME / TFDS_VERSION / "dataset_info.json").is_file()


# Scratch folders of `prepare_omniglot` (the extracted zips, ~100 MB) are named
# "omniglot-downloads-<host>-<pid>-<random>" under the data directory, so that a later run can
# tell a folder left by a killed preparation (its process is gone) from one in use. Folders
# named "omniglot-downloads-<random>" were made by versions that did not record their owner.
_SCRATCH_PREFIX = "omniglot-downloads-"
_OWNED_SCRATCH = re.compile(
    re.escape(_SCRATCH_PREFIX) + r"(?P<host>[A-Za-z0-9._]+)-(?P<pid>[0-9]+)-[a-z0-9_]+")
_UNOWNED_SCRATCH = re.compile(re.escape(_SCRATCH_PREFIX) + r"[a-z0-9_]+")


def _host():
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def _scratch_prefix(pid=None):
    """The `tempfile.mkdtemp` prefix of a scratch folder of process `pid` (default: this one)."""
    return f"{_SCRATCH_PREFIX}{_host()}-{os.getpid() if pid is None else int(pid)}-"


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # Someone else's live process.
    return True


def remove_stale_scratch(data_dir, printer=print):
    """Removes the scratch folders that killed `prepare_omniglot` runs left under `data_dir`.

    Only folders named like this module's own scratch folders are considered, and of those only
    the ones whose preparation cannot still be running: made on this machine by a process that
    no longer exists, or by an older version that did not record its process. A folder of a
    live process, or of another machine sharing the directory, is kept.

    Returns:
        The removed folders (`Path`s); each one is also reported through `printer`.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    removed = []
    for path in sorted(data_dir.glob(_SCRATCH_PREFIX + "*")):
        if not path.is_dir() or path.is_symlink():
            continue
        owned = _OWNED_SCRATCH.fullmatch(path.name)
        if owned:
            pid = int(owned["pid"])
            if owned["host"] != _host() or _process_alive(pid):
                continue
            why = f"its preparation (process {pid}) is gone"
        elif _UNOWNED_SCRATCH.fullmatch(path.name):
            why = "made by an interrupted preparation"
        else:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
            printer(f"[omniglot] removed {path}: scratch files of a killed Omniglot "
                    f"preparation ({why})", flush=True)
    return removed


def prepare_omniglot(source_dir=None, data_dir=None):
    """Prepares TFDS `omniglot` 3.0.0 under `data_dir`, offline when `source_dir` is given.

    Offline, the four zips in `source_dir` are checked against ``source_dir/tfds_checksums.tsv``
    (size and sha256) first, then TFDS reads them from there instead of downloading; its
    pinned upstream checksums are replaced by the local ones, since a rebuilt copy has other
    bytes. Scratch files (extracted zips) live in a temporary folder under `data_dir` and are
    removed afterwards; nothing is written anywhere else. The folders that killed preparations
    left there are removed first (`remove_stale_scratch`). A second call returns at once.

    Args:
        source_dir: folder with images_background.zip, images_evaluation.zip,
            images_background_small{1,2}.zip and tfds_checksums.tsv; `None` downloads.
        data_dir: TFDS data directory (default: `default_data_dir()`).

    Returns:
        The data directory, as a `Path`.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    # A killed preparation cannot remove its scratch folder; the next one does.
    remove_stale_scratch(data_dir)
    if is_prepared(data_dir):
        return data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    # Several processes may share one data directory (the workers of a local multi-worker
    # run): one prepares, the others wait and find the dataset ready.
    with open(data_dir / _LOCK_FILENAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_prepared(data_dir):
                _prepare(source_dir, data_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return data_dir


_LOCK_FILENAME = ".keras_meta_omniglot.lock"


def _prepare(source_dir, data_dir):
    import tensorflow_datasets as tfds

    if source_dir is None:
        tfds.builder(TFDS_NAME, data_dir=os.fspath(data_dir)).download_and_prepare()
        return

    source_dir = Path(source_dir)
    entries = verify_source_dir(source_dir)
    builder_cls = type(_tfds_builder(data_dir))
    required = set(builder_cls.url_infos or ())
    missing = sorted(required - set(entries))
    if missing:
        raise ValueError(f"{source_dir / CHECKSUMS_FILENAME} lacks entries for {missing}; "
                         f"TFDS {TFDS_NAME} {TFDS_VERSION} needs {sorted(required)}.")
    url_infos = {
        url: tfds.download.checksums.UrlInfo(size=size, checksum=sha256, filename=filename)
        for url, (size, sha256, filename) in entries.items()
    }
    # A subclass is the one place TFDS reads expected checksums from; it keeps the dataset's
    # name and version, so the result is an ordinary `omniglot` 3.0.0 for `tfds.load`.
    local_cls = type("OmniglotFromLocalFiles", (builder_cls,),
                     {"name": TFDS_NAME, "url_infos": url_infos, "__module__": __name__},
                     skip_registration=True)
    builder = local_cls(data_dir=os.fspath(data_dir))
    scratch = Path(tempfile.mkdtemp(prefix=_scratch_prefix(), dir=data_dir))
    try:
        builder.download_and_prepare(
            download_dir=os.fspath(scratch),
            download_config=tfds.download.DownloadConfig(
                manual_dir=os.fspath(source_dir),
                try_download_gcs=False,
                force_checksums_validation=True,
            ),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class _CacheKey:
    image_size: tuple
    channels: int

    def path(self, data_dir):
        h, w = self.image_size
        return (Path(data_dir) / "keras_meta_cache"
                / f"{TFDS_NAME}-{TFDS_VERSION}-{h}x{w}x{self.channels}-v{_CACHE_FORMAT}.npz")


def load_omniglot_classes(data_dir=None, source_dir="default", image_size=(28, 28), channels=1):
    """All 1623 Omniglot characters as one `ClassImageSource` (class id = TFDS label).

    Prepares TFDS data when needed (offline from `source_dir`, which defaults to
    `default_omniglot_source_dir()`; `None` downloads), decodes and resizes once, and caches
    the uint8 result under ``data_dir/keras_meta_cache``. Images keep Omniglot's polarity
    (white background); the returned source's preprocessing inverts them.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    key = _CacheKey(tuple(int(s) for s in image_size), int(channels))
    preprocessing = ImagePreprocessing(key.image_size, key.channels, invert=True)
    cache = key.path(data_dir)
    if cache.is_file():
        return ClassImageSource.load(cache, preprocessing=preprocessing)
    if source_dir == "default":
        source_dir = default_omniglot_source_dir()
    prepare_omniglot(source_dir, data_dir)
    source = ClassImageSource.from_tfds(
        TFDS_NAME, split=("train", "test"), data_dir=data_dir, image_size=key.image_size,
        channels=key.channels, preprocessing=preprocessing)
    if source.num_base_classes != NUM_CLASSES or int(source.counts.min()) != IMAGES_PER_CLASS:
        raise ValueError(f"TFDS {TFDS_NAME} under {data_dir} has {source.num_base_classes} "
                         f"classes and {int(source.counts.min())}..{int(source.counts.max())} "
                         f"images per class; expected {NUM_CLASSES} and {IMAGES_PER_CLASS}.")
    source.save(cache)
    return source


def omniglot_alphabets(data_dir=None, source_dir="default"):
    """`[1623]` int array: the alphabet (TFDS's `alphabet` label) of each character label.

    Read once from the prepared TFDS data (preparing it when needed, as
    `load_omniglot_classes`) and cached beside the image cache.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    cache = Path(data_dir) / "keras_meta_cache" / f"{TFDS_NAME}-{TFDS_VERSION}-alphabets.npy"
    if cache.is_file():
        return np.load(cache)
    if not is_prepared(data_dir):
        prepare_omniglot(default_omniglot_source_dir() if source_dir == "default"
                         else source_dir, data_dir)
    import tensorflow_datasets as tfds

    ds = tfds.load(TFDS_NAME, split="train+test", data_dir=os.fspath(data_dir), download=False,
                   decoders={"image": tfds.decode.SkipDecoding()})
    alphabet = np.full(NUM_CLASSES, -1, np.int64)
    for label, alpha in ds.map(lambda e: (e["label"], e["alphabet"])).as_numpy_iterator():
        if alphabet[label] not in (-1, alpha):
            raise ValueError(f"TFDS {TFDS_NAME} gives character {label} two alphabets.")
        alphabet[label] = alpha
    if (alphabet < 0).any():
        raise ValueError(f"TFDS {TFDS_NAME} under {data_dir} lacks characters "
                         f"{np.flatnonzero(alphabet < 0)[:10].tolist()}.")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}.npy")
    np.save(tmp, alphabet)
    os.replace(tmp, cache)
    return alphabet


def alphabet_class_groups(class_ids, alphabet, rotations=1):
    """Class groups for `EpisodeSampler(class_groups=)`: one per alphabet, of a split.

    Args:
        class_ids: the split's character labels, in the split's class order
            (`ClassImageSource.class_ids`).
        alphabet: `omniglot_alphabets()`.
        rotations: the split's rotations; only the unturned class of each character (id
            `rotations * j`) is grouped, as Lake et al.'s within-alphabet tasks use upright
            characters.
    """
    of_class = np.asarray(alphabet)[np.asarray(class_ids)]
    return [rotations * np.flatnonzero(of_class == a) for a in np.unique(of_class)]


def omniglot_class_splits(protocol="maml", seed=1, num_validation=None):
    """Character (TFDS label) ids of the train / validation / test meta-splits.

    Returns a dict split name -> sorted int array; "validation" is absent when it is empty.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown Omniglot protocol {protocol!r}; expected one of {PROTOCOLS}.")
    if num_validation is None:
        num_validation = 100 if protocol == "maml" else 0
    rng = np.random.default_rng(seed)
    if protocol == "maml":
        if not 0 <= num_validation <= NUM_CLASSES - _MAML_NUM_TRAIN - 1:
            raise ValueError(f"num_validation must be in [0, {NUM_CLASSES - _MAML_NUM_TRAIN - 1}] "
                             f"for the maml protocol; got {num_validation}.")
        order = rng.permutation(NUM_CLASSES)
        train = order[:_MAML_NUM_TRAIN]
        validation = order[_MAML_NUM_TRAIN:_MAML_NUM_TRAIN + num_validation]
        test = order[_MAML_NUM_TRAIN + num_validation:]
    else:
        if not 0 <= num_validation < NUM_BACKGROUND_CLASSES:
            raise ValueError(f"num_validation must be in [0, {NUM_BACKGROUND_CLASSES - 1}] for "
                             f"the background_evaluation protocol; got {num_validation}.")
        background = rng.permutation(NUM_BACKGROUND_CLASSES)
        validation = background[:num_validation]
        train = background[num_validation:]
        test = np.arange(NUM_BACKGROUND_CLASSES, NUM_CLASSES)
    splits = {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}
    return {name: ids for name, ids in splits.items() if len(ids)}


def omniglot_split_sizes(protocol="maml", rotations=True, num_validation=None):
    """Classes in each meta-split that `omniglot_splits` gives, without loading any data.

    Returns a dict split name -> number of classes (characters, x4 with `rotations`), e.g.
    ``{"train": 4400, "validation": 400, "test": 1692}`` for the maml protocol. Every class
    has `IMAGES_PER_CLASS` images.
    """
    turns = 4 if rotations else 1
    return {name: len(ids) * turns
            for name, ids in omniglot_class_splits(protocol, num_validation=num_validation).items()}


def omniglot_splits(data_dir=None, source_dir="default", protocol="maml", image_size=(28, 28),
                    rotations=True, seed=1, num_validation=None):
    """Omniglot meta-splits as `ClassImageSource`s, ready for `EpisodeSampler`.

    Args:
        data_dir: TFDS data directory (default: `default_data_dir()`).
        source_dir: local copy of the zips for offline preparation; "default" uses
            `default_omniglot_source_dir()`, `None` lets TFDS download.
        protocol: "maml" (1100/100/423 characters) or "background_evaluation" (964/659).
        image_size: (height, width) of the stored and served images.
        rotations: make each 0/90/180/270 degree rotation its own class (x4 classes).
        seed: seed of the class split.
        num_validation: validation characters (default: 100 for maml, 0 otherwise).

    Returns:
        A `MetaSplits` mapping "train", "validation" (when non-empty), "test" to sources.

    Example:

    >>> splits = omniglot_splits()
    >>> splits["train"].num_classes, splits["validation"].num_classes, splits["test"].num_classes
    (4400, 400, 1692)
    """
    class_splits = omniglot_class_splits(protocol, seed, num_validation)
    everything = load_omniglot_classes(data_dir, source_dir, image_size, channels=1)
    sources = {}
    for name, ids in class_splits.items():
        split = everything.select(ids, name=f"omniglot/{protocol}/{name}")
        sources[name] = split.with_rotations() if rotations else split
    return MetaSplits(sources)


def write_omniglot_folder(source_dir, out_dir):
    """Writes Omniglot's 32,460 PNGs as a class-folder tree, ``out_dir/<alphabet>/<character>/``.

    The images are the original zips' files, unchanged (background and evaluation alphabets
    side by side), so `image_classes("folder:" + out_dir)` reads the same pixels TFDS does;
    the class split files ``omniglot_maml`` and ``omniglot_lake`` name these folders.

    Args:
        source_dir: a folder with ``images_background.zip`` and ``images_evaluation.zip``.
        out_dir: where the tree goes (written to a temporary sibling, then renamed).

    Returns:
        `out_dir` as a `Path`; an existing complete tree is left as it is.
    """
    import zipfile

    out_dir = Path(out_dir)
    done = out_dir / ".complete"
    if done.is_file():
        return out_dir
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    for name in ("images_background", "images_evaluation"):
        path = Path(source_dir) / f"{name}.zip"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; expected Omniglot's "
                                    f"{name}.zip in {source_dir}.")
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                parts = Path(member.filename).parts
                if member.is_dir() or len(parts) != 4 or not parts[-1].endswith(".png"):
                    continue
                target = tmp.joinpath(*parts[1:])  # drop images_background/ etc.
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
                count += 1
    if count != NUM_CLASSES * IMAGES_PER_CLASS:
        raise ValueError(f"{source_dir} holds {count} Omniglot images; expected "
                         f"{NUM_CLASSES * IMAGES_PER_CLASS}.")
    (tmp / ".complete").write_text(f"{count} images\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir
