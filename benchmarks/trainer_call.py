"""The trainer's compiled call against the bare meta-train step, interleaved in one process.

    python benchmarks/trainer_call.py [--rounds=5 --calls=300]

Both run the sinusoid preset's MAML (`task_batching="batched"`). "bare step" is
`MAML.meta_train_step` on one fixed meta-batch through `ConcreteStep`, as
`benchmarks/meta_step.py` times it; "trainer call" is what `keras_meta.training.train` calls
each iteration: it draws its meta-batch from the tf.data stream inside its graph and advances
the step counter. Rounds alternate between the two, so that drifts of the machine hit both.
"""

import os
import sys
import time

from absl import app, flags

flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
flags.DEFINE_integer("calls", 300, "Calls of each per round.")
FLAGS = flags.FLAGS


def main(argv):
    os.environ.setdefault("KERAS_META_AUTOTUNE", "0")
    import numpy as np
    import tensorflow as tf

    from keras_meta.training import loop
    from keras_meta.training.concrete_step import ConcreteStep
    from keras_meta.training.presets import PRESETS
    from keras_meta.training.task_families import build_maml, build_task_family

    config = PRESETS["sinusoid_one_step"].replace(task_batching="batched")
    task = build_task_family(config)
    maml = build_maml(config, task.model, task.loss_fn)
    episodes = next(iter(task.train_dataset(0)))
    bare = ConcreteStep(tf.function(lambda e: maml.meta_train_step(e)[0]))
    step = tf.Variable(0, dtype=tf.int64)
    _, iterator = next(loop._local_chunks(task, config.replace(num_iterations=10**9), 0))
    call = loop._step_function(maml, config, None, False, 1, iterator, step)
    functions = {"bare step": lambda: bare(episodes), "trainer call": call}
    for function in functions.values():
        for _ in range(20):
            function()
    times = {name: [] for name in functions}
    for _ in range(FLAGS.rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(FLAGS.calls):
                loss = function()
            float(loss)
            times[name].append((time.perf_counter() - start) / FLAGS.calls * 1e3)
    print(f"command: python {' '.join(sys.argv)}")
    for name, values in times.items():
        print(f"{name}: median {np.median(values):.3f} ms per call "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    app.run(main)
