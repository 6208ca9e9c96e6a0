"""Argument checks shared by every subpackage, so that every bad value gets the same wording.

Each check returns the value it accepted and raises `ValueError` naming the argument, the value
received and what is expected. It lives at the package top (below every subpackage) because
the core, the layers, the configs and the command line all validate their inputs.
"""


def is_int(value):
    """A Python int that is not a bool (`True` is an int to Python, never a count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value):
    """A real number (not a bool) that is neither NaN nor infinite, e.g. a learning rate."""
    import math
    import numbers

    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def check_int(name, value, *, minimum=1, allow_none=False):
    """`value` if it is an int >= `minimum` (or None when `allow_none`), else `ValueError`."""
    if value is None and allow_none:
        return value
    if not is_int(value) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {expected}; got {value!r}.")
    return value


def check_one_of(name, value, allowed):
    """`value` if it is one of `allowed`, else `ValueError` listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}; got {value!r}.")
    return value
