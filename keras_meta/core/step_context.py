"""Which inner step is being traced, for layers that keep per-step parameters or statistics.

The inner loop is unrolled in Python, so the step index is a Python int known at trace time.
`adapt` enters `inner_step(i)` around each step's forward pass; a layer such as per-step batch
norm (MAML++) reads `current_inner_step()` and picks its slice. Outside adaptation (the query
pass after the last step, plain `model(x)`) the index is the number of steps taken, or `None`.
"""

import contextlib
import threading

_local = threading.local()


def current_inner_step():
    """The inner step being traced (0-based), or `None` outside any `inner_step` scope."""
    return getattr(_local, "step", None)


@contextlib.contextmanager
def inner_step(step):
    """Marks the forward passes inside the block as belonging to inner step `step`."""
    previous = getattr(_local, "step", None)
    _local.step = step
    try:
        yield
    finally:
        _local.step = previous
