"""Timing several calls in one process, in interleaved rounds (used by `trainer_call.py`,
`trainer_loop.py`, `concrete_call.py` and `meta_step.py --in_process`), and how far a median
over rounds could be off."""

import time


def time_interleaved(functions, rounds, calls, warmup=20, per_call=1, alternate=False,
                     settle=0):
    """`{name: [ms per meta-iteration, one value per round]}` for `functions` (name -> call).

    Each round times `calls` calls of every function in turn, so that a drift of the machine
    hits all of them. Every call's result is read (`float`), as a training loop reads its
    loss; `per_call` is the meta-iterations one call runs. With `alternate`, every other
    round takes them in reverse order, so that none always runs right after another. With
    `settle`, each turn first makes that many untimed calls: the first call after another
    function's turn pays for refilling what that turn evicted (caches, memory), which a loop
    of one function never pays.
    """
    for function in functions.values():
        for _ in range(warmup):
            float(function())
    times = {name: [] for name in functions}
    for index in range(rounds):
        order = list(functions.items())
        for name, function in (order[::-1] if alternate and index % 2 else order):
            for _ in range(settle):
                float(function())
            start = time.perf_counter()
            for _ in range(calls):
                float(function())
            times[name].append((time.perf_counter() - start) / calls / per_call * 1e3)
    return times


def bare_step(config, maml, task):
    """The bare meta-train step of `maml` on one fixed meta-batch of `task`'s stream, as a
    call without arguments (`meta_train_steps` on `config.steps_per_execution` stacked
    meta-batches when that is above 1), through `ConcreteStep` as the trainer calls its own."""
    import tensorflow as tf

    from keras_meta.training.concrete_step import ConcreteStep

    per_call = config.steps_per_execution
    if per_call > 1:
        episodes = next(iter(task.train_dataset(0).batch(per_call)))
        steps = lambda e: maml.meta_train_steps(e)  # noqa: E731
    else:
        episodes = next(iter(task.train_dataset(0)))
        steps = lambda e: maml.meta_train_step(e)[0]  # noqa: E731
    step = ConcreteStep(tf.function(steps, jit_compile=config.jit_compile))
    return lambda: step(episodes)


def median_interval(values, level=0.9, resamples=20000, seed=0):
    """The `level` bootstrap interval of the median of `values` (percentile method)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(resamples, len(values))), axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))
