"""Progress lines of long runs: iteration, loss, iterations per second and time left."""

import math
import time


class Progress:
    """One line every `every` iterations: iteration, loss, iterations/s and ETA."""

    def __init__(self, total, every, start, printer=print):
        self.total, self.every, self.printer = total, every, printer
        self.mark_step, self.mark_time = start, time.perf_counter()

    def maybe_print(self, step, loss, extra=""):
        if step % self.every and step != self.total:
            return None
        now = time.perf_counter()
        rate = (step - self.mark_step) / max(now - self.mark_time, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        self.printer(f"[train] iter {step}/{self.total}  meta_loss {loss:.4f}  "
                     f"{rate:.1f} it/s  eta {_fmt_seconds(eta)}{extra}", flush=True)
        self.mark_step, self.mark_time = step, now
        return rate


def _fmt_seconds(s):
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def crossed(step, size, every):
    """Whether the last `size` iterations, ending at `step`, passed a multiple of `every`."""
    return step // every > (step - size) // every
