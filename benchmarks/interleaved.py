"""Timing several calls in one process, in interleaved rounds (used by `trainer_call.py` and
`concrete_call.py`)."""

import time


def time_interleaved(functions, rounds, calls, warmup=20, per_call=1):
    """`{name: [ms per meta-iteration, one value per round]}` for `functions` (name -> call).

    Each round times `calls` calls of every function in turn, so that a drift of the machine
    hits all of them. Every call's result is read (`float`), as a training loop reads its
    loss; `per_call` is the meta-iterations one call runs.
    """
    for function in functions.values():
        for _ in range(warmup):
            float(function())
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(calls):
                float(function())
            times[name].append((time.perf_counter() - start) / calls / per_call * 1e3)
    return times
