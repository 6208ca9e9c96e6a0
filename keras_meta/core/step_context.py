"""Which inner step is being traced, for layers that keep per-step parameters or statistics.

The inner loop is unrolled in Python, so the step index is a Python int known at trace time.
`adapt` enters `inner_step(i)` around each step's forward pass; a layer such as per-step batch
norm (MAML++) reads `current_inner_step()` and picks its slice. The query pass after `k` steps
enters `inner_step(k, query=True)` (`is_query_pass()` is then true); plain `model(x)` runs
outside any scope (`None`). The flag matters when a model adapts with more steps than it was
trained for: adaptation step `k` past the trained steps reuses the last trained step's slot,
while the query pass after `k` steps uses the query slot.
"""

import contextlib
import threading

_local = threading.local()


def current_inner_step():
    """The inner step being traced (0-based), or `None` outside any `inner_step` scope."""
    return getattr(_local, "step", None)


def is_query_pass():
    """Whether the forward pass traced now is a query pass (`inner_step(k, query=True)`)."""
    return getattr(_local, "query", False)


@contextlib.contextmanager
def inner_step(step, *, query=False):
    """Marks the forward passes inside the block as belonging to inner step `step`.

    With `query=True` they are the query pass after `step` adaptation steps instead.
    """
    previous = (getattr(_local, "step", None), getattr(_local, "query", False))
    _local.step, _local.query = step, bool(query)
    try:
        yield
    finally:
        _local.step, _local.query = previous
