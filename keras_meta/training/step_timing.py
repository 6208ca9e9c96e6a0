"""How long a trainer's own call takes per meta-iteration, MAML's or the learned optimizer's.

Some choices have to be made before a run's process starts TensorFlow (the sizes of its
thread pools, `keras_meta/cli/threads.py`), so they are measured in short child processes,
each timing the very call `train()` makes every iteration: the same model, episodes and
compiled step, built from the run's config.
"""

import time

import tensorflow as tf


def time_training_step(config, *, min_seconds=1.0, warmup=3, max_calls=2000):
    """Milliseconds per meta-iteration of the call that `train(config, model_dir)` repeats.

    Builds the task family and the model from `config`, then calls the trainer's step
    function (`loop._step_function`, with its episodes) `warmup` times untimed, then until
    `min_seconds` have passed or `max_calls` calls were made, reading each call's loss as
    the trainer does. With `task_batching="auto"` and measuring on (`autotune_enabled`), the
    ways to run the meta-batch are measured first, by `train`'s own `_autotune`, and the call
    is timed in
    the fastest: which one wins depends on the very settings this timing compares (oneDNN,
    the thread pools). That choice is the only thing written: to the task-batching cache,
    keyed by the machine and those settings, where the run that takes them reads it.

    Args:
        config: a `MAMLTrainConfig` (single device: `strategy="default"`).
        min_seconds: the least time the timed calls take together.
        warmup: untimed calls after the first (tracing) one.
        max_calls: the most timed calls.

    Returns:
        Milliseconds per meta-iteration (float).

    Example:

    >>> time_training_step(get_preset("sinusoid"), min_seconds=2.0)
    3.3
    """
    from keras_meta.training import loop
    from keras_meta.training.task_families import build_maml, build_task_family

    if config.strategy != "default":
        raise ValueError(f"time_training_step times one process's step; got strategy="
                         f"{config.strategy!r}, expected 'default'.")
    _check_counts(warmup, max_calls)
    task = build_task_family(config)
    maml = build_maml(config, task.model, task.loss_fn)
    # Unmeasured, "auto" runs the full batched pass wherever the model allows it. Under oneDNN
    # on an AVX2 CPU that took 0.88 s per Omniglot 5w1s meta-iteration where the run's
    # measured choice, chunks of 8, took 0.71: the setting would be timed in a form its run
    # never takes. So the run's own measurement comes first.
    loop._autotune(maml, task, config, 0, log=lambda *_, **__: None)
    # As many iterations as the timing could need, whatever the run's own length.
    endless = config.replace(num_iterations=10**9)
    size, source = next(loop._local_chunks(task, endless, 0))
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    call = loop._step_function(maml, config, None, False, size, source, step)
    done = [0]

    def one_call():
        loss = call(done[0])
        done[0] += size
        return loss

    return _time_calls(one_call, size, min_seconds, warmup, max_calls)


def time_learned_optimizer_iteration(config, *, min_seconds=1.0, warmup=3, max_calls=2000):
    """Milliseconds per meta-iteration of `train_learned_optimizer(config, model_dir)`'s loop.

    Builds the optimizee family, the rule and its trainer from `config` and times
    `MetaOptimizerTrainer.train_iteration` as `time_training_step` times MAML's call
    (the first iterations of a horizon curriculum are the short ones). Nothing is written.

    Args:
        config: a `LearnedOptimizerTrainConfig`.
        min_seconds, warmup, max_calls: as for `time_training_step`.

    Returns:
        Milliseconds per meta-iteration (float).

    Example:

    >>> time_learned_optimizer_iteration(LearnedOptimizerTrainConfig(optimizee="quadratic"))
    35.0
    """
    from keras_meta.training.learned_optimizer_loop import build_learned_optimizer

    _check_counts(warmup, max_calls)
    _, _, trainer = build_learned_optimizer(config)
    return _time_calls(trainer.train_iteration, 1, min_seconds, warmup, max_calls)


def _check_counts(warmup, max_calls):
    for name, value, least in (("warmup", warmup, 0), ("max_calls", max_calls, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}; got {value!r}.")


def _time_calls(call, per_call, min_seconds, warmup, max_calls):
    """ms per meta-iteration of `call` (returning a loss, read as a float each time)."""
    for _ in range(1 + warmup):  # the first call traces
        float(call())
    calls, start = 0, time.perf_counter()
    while True:
        float(call())
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= max_calls:
            return elapsed / (calls * per_call) * 1e3
