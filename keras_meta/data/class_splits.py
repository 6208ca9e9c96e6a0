"""Class splits: which classes of a dataset meta-train, validate and test.

A class split is a small text file. Lines starting with ``#`` are comments (the first one cites
where the split comes from); ``key: value`` lines before the first section form the header;
then one section per meta-split, ``[train]``, ``[validation]``, ``[test]``, each listing one
class per line as ``NAME``, ``ID`` or ``ID NAME``::

    # CIFAR-FS: Bertinetto et al., ICLR 2019.
    dataset: tfds:cifar100
    label_key: label
    counts: train 64, validation 16, test 20
    [train]
    0 apple
    ...

An ``ID`` is the dataset's integer label (TFDS's ClassLabel index); a ``NAME`` is the label's
name (a folder dataset's class folder, e.g. a WordNet id). With both, the ID selects the class
and the NAME is checked against the dataset's own name when the dataset has names, so a split
written for another version of a dataset is refused instead of silently selecting other
classes. A ``group_key`` header (FC100) lists groups instead of classes: a split then holds
every class whose group (e.g. CIFAR-100's superclass) is listed.

The standard splits ship with the package (`STANDARD_SPLITS`); `class_split(name_or_path)`
reads either.
"""

import dataclasses
import re
from pathlib import Path

from keras_meta.data.data_error import DataError

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
SPLIT_NAMES = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SplitEntry:
    """One line of a split section: a class (or group) by integer id, by name, or both."""

    id: int | None
    name: str | None

    def __str__(self):
        return " ".join(str(x) for x in (self.id, self.name) if x is not None)


@dataclasses.dataclass(frozen=True)
class ClassSplit:
    """A parsed class-split file.

    Args:
        header: the ``key: value`` lines (e.g. ``dataset``, ``label_key``, ``group_key``).
        sections: split name -> tuple of `SplitEntry`, in file order.
        source: where it was read from (for messages).

    Example:

    >>> split = class_split("cifar_fs")
    >>> {name: len(entries) for name, entries in split.sections.items()}
    {'train': 64, 'validation': 16, 'test': 20}
    """

    header: dict
    sections: dict
    source: str = "<memory>"

    @property
    def group_key(self):
        return self.header.get("group_key")

    @property
    def counts(self):
        return {name: len(entries) for name, entries in self.sections.items()}


def standard_splits():
    """Names of the class splits shipped with keras-meta (files in `SPLITS_DIR`)."""
    return sorted(p.stem for p in SPLITS_DIR.glob("*.txt"))


def class_split(name_or_path):
    """A `ClassSplit` by standard name (`standard_splits()`) or from a file path.

    Raises:
        DataError: an unknown name (listing the standard ones) or a malformed file.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.is_file():
        if "/" in text or text.endswith(".txt"):
            raise DataError(f"Class split file {text!r} does not exist; expected a split file "
                             f"or one of the standard splits {standard_splits()}.")
        path = SPLITS_DIR / f"{text}.txt"
        if not path.is_file():
            raise DataError(f"Unknown class split {text!r}; expected a split file's path or one "
                             f"of the standard splits {standard_splits()}.")
    return read_split_file(path)


_HEADER = re.compile(r"^([A-Za-z_]+)\s*:\s*(.*)$")
_SECTION = re.compile(r"^\[([A-Za-z_]+)\]$")


def read_split_file(path):
    """Parses a class-split file (format: the module docstring) into a `ClassSplit`."""
    path = Path(path)
    header, sections, current = {}, {}, None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        def bad(why):
            return DataError(f"{path}:{number}: {why}; got {raw!r}.")

        section = _SECTION.match(line)
        if section:
            current = section.group(1)
            if current not in SPLIT_NAMES:
                raise bad(f"a section must be one of {['[%s]' % s for s in SPLIT_NAMES]}")
            if current in sections:
                raise bad(f"section [{current}] appears twice")
            sections[current] = []
            continue
        if current is None:
            match = _HEADER.match(line)
            if not match:
                raise bad("expected a 'key: value' header line or a [section] before classes")
            header[match.group(1)] = match.group(2).strip()
            continue
        parts = line.split()
        if len(parts) > 2 or (len(parts) == 2 and not parts[0].isdigit()):
            raise bad("expected one class per line: NAME, ID or 'ID NAME'")
        if parts[0].isdigit():
            entry = SplitEntry(int(parts[0]), parts[1] if len(parts) == 2 else None)
        else:
            entry = SplitEntry(None, parts[0])
        sections[current].append(entry)
    if not sections:
        raise DataError(f"{path}: no [train]/[validation]/[test] sections; a class split "
                         "needs at least [train] and [test].")
    missing = [s for s in ("train", "test") if s not in sections]
    if missing:
        raise DataError(f"{path}: missing section(s) {missing}; a class split needs at least "
                         "[train] and [test].")
    split = ClassSplit(header, {k: tuple(v) for k, v in sections.items()}, str(path))
    _check_disjoint(split)
    return split


def _check_disjoint(split):
    owner = {}
    for name, entries in split.sections.items():
        for entry in entries:
            for key in (("id", entry.id), ("name", entry.name)):
                if key[1] is None:
                    continue
                if key in owner:
                    where = "twice in" if owner[key] == name else f"in both [{owner[key]}] and"
                    raise DataError(f"{split.source}: class {key[0]} {key[1]!r} is listed "
                                     f"{where} [{name}]; meta-splits must be class-disjoint.")
                owner[key] = name


def write_split_file(path, sections, header=None, comments=()):
    """Writes `sections` (split name -> list of `SplitEntry` or names) as a split file."""
    lines = [f"# {c}" for c in comments]
    lines += [f"{k}: {v}" for k, v in (header or {}).items()]
    for name, entries in sections.items():
        lines.append(f"[{name}]")
        lines += [str(e) if isinstance(e, SplitEntry) else str(e) for e in entries]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _normalise(name):
    # "001.Black_footed_Albatross", "black footed albatross" and "Black-Footed_Albatross"
    # name the same class; a split is refused only for names that differ beyond spelling.
    name = re.sub(r"^\d+[.\s_-]+", "", str(name).strip().lower())
    return re.sub(r"[\s_\-]+", "_", name)


def resolve_split(split, class_ids, class_names=None, class_groups=None, group_names=None,
                  match_by="id"):
    """Maps a `ClassSplit` onto a dataset's classes: split name -> array of class ids.

    Args:
        split: a `ClassSplit`.
        class_ids: the dataset's integer class ids (its labels).
        class_names: the dataset's name of each class, or None when it has none (a TFDS
            dataset prepared without label names, e.g. TFDS's mock data).
        class_groups: with a ``group_key`` split, the group id of each class.
        group_names: the groups' names by group id (optional, for the name check).
        match_by: "id": an entry's ID selects the class (its NAME is checked); "name": its
            NAME does (a folder dataset, whose ids are its own, e.g. Omniglot's class folders
            against a split written with TFDS labels).

    Returns:
        dict split name -> list of class ids, in the file's order.

    Raises:
        DataError: naming the classes the dataset lacks, or the names that disagree.
    """
    import numpy as np

    class_ids = [int(c) for c in class_ids]
    names = None if class_names is None else [str(n) for n in class_names]
    if names is not None and all(n == str(i) for n, i in zip(names, class_ids)):
        names = None  # TFDS's stand-in names are the ids themselves: nothing to check.
    if split.group_key:
        if class_groups is None:
            raise DataError(f"{split.source} lists groups ({split.group_key!r}) but the "
                             "dataset was loaded without them; load it with "
                             f"group_key={split.group_key!r}.")
        keys = sorted(set(int(g) for g in class_groups))
        key_names = None if group_names is None else {g: str(group_names[g]) for g in keys
                                                      if g < len(group_names)}
        if key_names is not None and (len(key_names) < len(keys) or all(
                n == str(g) for g, n in key_names.items())):
            key_names = None
    else:
        keys, key_names = class_ids, (None if names is None else dict(zip(class_ids, names)))
    by_name = None if key_names is None else {_normalise(n): k for k, n in key_names.items()}
    chosen, missing, mismatched, known = {}, [], [], set(keys)
    if match_by not in ("id", "name"):
        raise DataError(f"match_by must be 'id' or 'name'; got {match_by!r}.")
    if match_by == "name":
        nameless = [str(e) for entries in split.sections.values() for e in entries if not e.name]
        if nameless or by_name is None:
            raise DataError(f"{split.source}: matching classes by name needs a NAME on every "
                             "line and class names in the dataset; got "
                             + (f"entries without names {nameless[:5]}." if nameless
                                else "a dataset without class names."))
    for split_name, entries in split.sections.items():
        picked = []
        for entry in entries:
            if entry.id is not None and match_by == "id":
                if entry.id not in known:
                    missing.append(str(entry))
                    continue
                if (entry.name is not None and key_names is not None
                        and _normalise(key_names[entry.id]) != _normalise(entry.name)):
                    mismatched.append(f"{entry.id}: split says {entry.name!r}, dataset "
                                      f"{key_names[entry.id]!r}")
                picked.append(entry.id)
            else:
                if by_name is None or _normalise(entry.name) not in by_name:
                    missing.append(entry.name)
                    continue
                picked.append(by_name[_normalise(entry.name)])
        chosen[split_name] = picked
    what = "groups" if split.group_key else "classes"
    if missing:
        raise DataError(f"{split.source}: {len(missing)} {what} of the split are not in the "
                         f"dataset: {missing[:20]}{' ...' if len(missing) > 20 else ''}. "
                         "Expected a dataset that holds every class the split lists (the "
                         "right dataset, version and label_key?).")
    if mismatched:
        raise DataError(f"{split.source}: the dataset names {len(mismatched)} {what} "
                         f"differently: {mismatched[:10]}. The split was written for another "
                         "labelling of the classes; refusing to select the wrong ones.")
    if split.group_key:
        groups = np.asarray(class_groups)
        ids = np.asarray(class_ids)
        chosen = {s: [int(c) for g in picked for c in ids[groups == g]]
                  for s, picked in chosen.items()}
    return chosen


def random_class_split(class_ids, seed=0, fractions=(0.64, 0.16, 0.20)):
    """A seeded split of `class_ids` into train/validation/test by `fractions` (default:
    mini-ImageNet's 64/16/20 proportions), for a dataset without a split of its own."""
    import numpy as np

    ids = np.asarray(sorted(int(c) for c in class_ids))
    if len(ids) < 3:
        raise DataError(f"A random class split needs at least 3 classes; got {len(ids)}.")
    order = np.random.default_rng(seed).permutation(ids)
    n_val = max(1, int(round(fractions[1] * len(ids))))
    n_test = max(1, int(round(fractions[2] * len(ids))))
    n_train = len(ids) - n_val - n_test
    return {"train": order[:n_train].tolist(), "validation": order[n_train:n_train + n_val].tolist(),
            "test": order[n_train + n_val:].tolist()}
