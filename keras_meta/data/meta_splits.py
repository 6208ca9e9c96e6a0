"""A read-only name -> split mapping whose errors list the splits there are."""

import collections.abc


class MetaSplits(collections.abc.Mapping):
    """Class-disjoint meta-splits of one dataset, e.g. "train" / "validation" / "test".

    Args:
        splits: mapping from split name to `ClassImageSource`. Splits may not share an
            original class id (a class seen in meta-training must not reappear at test).

    Example:

    >>> splits = MetaSplits({"train": ClassImageSource(np.zeros([4, 2, 8, 8, 1], np.uint8))})
    >>> splits["train"].num_classes
    4
    """

    def __init__(self, splits):
        self._splits = dict(splits)
        owner = {}
        for name, source in self._splits.items():
            for class_id in source.class_ids.tolist():
                if class_id in owner:
                    raise ValueError(f"Meta-splits {owner[class_id]!r} and {name!r} share class "
                                     f"id {class_id}; meta-splits must be class-disjoint.")
                owner[class_id] = name

    def __getitem__(self, name):
        try:
            return self._splits[name]
        except KeyError:
            raise KeyError(
                f"Unknown split {name!r}; expected one of {list(self._splits)}.") from None

    def __iter__(self):
        return iter(self._splits)

    def __len__(self):
        return len(self._splits)

    def __repr__(self):
        inner = ", ".join(f"{name}: {source!r}" for name, source in self._splits.items())
        return f"MetaSplits({inner})"
