"""`DataError`: the data cannot give what was asked (a missing class, a split too small for
the episodes, an unreadable folder), as opposed to a bug. Command lines report it as a usage
error, in one line, instead of a traceback."""


class DataError(ValueError):
    """A dataset, folder or class split that cannot serve the requested episodes.

    Example:

    >>> raise DataError("folder:/data/birds: the validation split has 1 class; 5-way "
    ...                 "episodes need at least 5.")
    """
