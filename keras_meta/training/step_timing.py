"""`time_training_step`: how long the trainer's own call takes per meta-iteration.

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
    the trainer does. Nothing is written. With `task_batching="auto"` the batched pass runs
    where the model allows it, unless the caller measured otherwise first.

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
    for name, value in (("warmup", warmup), ("max_calls", max_calls)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "max_calls"):
            raise ValueError(f"{name} must be an int >= {int(name == 'max_calls')}; got "
                             f"{value!r}.")
    task = build_task_family(config)
    maml = build_maml(config, task.model, task.loss_fn)
    # As many iterations as the timing could need, whatever the run's own length.
    endless = config.replace(num_iterations=10**9)
    size, source = next(loop._local_chunks(task, endless, 0))
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    call = loop._step_function(maml, config, None, False, size, source, step)
    done = 0
    for _ in range(1 + warmup):
        float(call(done))
        done += size
    calls, start = 0, time.perf_counter()
    while True:
        float(call(done))
        done += size
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= max_calls:
            return elapsed / (calls * size) * 1e3
