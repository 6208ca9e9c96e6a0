"""`TimeBreakdown`: where a training loop's steady-state seconds went."""

import contextlib
import time

PARTS = ("steps", "checkpoints", "validation")


class TimeBreakdown:
    """The seconds of a training loop's timed window, by what they were spent on.

    The window opens after the first call of the step (which traces and compiles) and closes
    when the loop ends. Inside it, the parts in `PARTS` are timed as they happen: `steps` (the
    compiled calls, reading each loss included), `checkpoints` (each save with the finiteness
    check before it) and `validation`. What is left is `other`: the loop's own work, reading
    the next chunk of data where it passes through Python, progress lines and summaries. A
    run's "seconds per iteration" is the window over its iterations, so this says how much of
    it the step itself was.

    Example:

    >>> breakdown = TimeBreakdown()
    >>> with breakdown.measure("steps"):
    ...     loss = float(step())  # the first call: traces, not counted
    >>> breakdown.start(iteration=1)
    >>> with breakdown.measure("checkpoints"):
    ...     manager.save()
    >>> breakdown.summary(iteration=100)["seconds_per_iteration"]
    """

    def __init__(self):
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self._opened = None  # (iteration, perf_counter) when the window opened

    @property
    def started(self):
        return self._opened is not None

    def start(self, iteration):
        """Opens the window after `iteration` (the iterations already run)."""
        self._opened = (int(iteration), time.perf_counter())

    @contextlib.contextmanager
    def measure(self, part):
        """Adds the seconds of the `with` body to `part`, where the body starts in the window."""
        if part not in self.seconds:
            raise ValueError(f"Unknown part {part!r}; expected one of {PARTS}.")
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, began)

    def add(self, part, began):
        """Adds the seconds since `began` (a `time.perf_counter()` reading) to `part`, where
        `began` is in the window.

        The form for the loop's every iteration. Timed inside a run between compiled XLA
        sinusoid calls, entering and leaving a `with measure(...)` block took about 17 us
        (1.4 us in a micro-benchmark), 2% of the step on a 2-core CPU; this call, 3 us.
        """
        if part not in self.seconds:
            raise ValueError(f"Unknown part {part!r}; expected one of {PARTS}.")
        if self._opened is not None and began >= self._opened[1]:
            self.seconds[part] += time.perf_counter() - began

    def summary(self, iteration):
        """The window's figures at `iteration`, or None if no iteration ran inside it.

        Returns a dict: `iterations`, `window_seconds`, `seconds_per_iteration`, and
        `{part}_seconds` for each part and for `other`, which add up to `window_seconds`.
        """
        if self._opened is None or int(iteration) <= self._opened[0]:
            return None
        window = time.perf_counter() - self._opened[1]
        iterations = int(iteration) - self._opened[0]
        figures = {"iterations": iterations, "window_seconds": window,
                   "seconds_per_iteration": window / iterations}
        figures.update({f"{part}_seconds": seconds for part, seconds in self.seconds.items()})
        figures["other_seconds"] = window - sum(self.seconds.values())
        return figures


def describe(figures):
    """One line for a `TimeBreakdown.summary`: the window and each part's share of it."""
    window = max(figures["window_seconds"], 1e-12)
    shares = ", ".join(
        f"{part} {100 * figures[f'{part}_seconds'] / window:.1f}%"
        for part in PARTS + ("other",))
    return (f"{figures['iterations']} iterations after the first call in {window:.2f} s "
            f"({1e3 * figures['seconds_per_iteration']:.3f} ms each): {shares}")
