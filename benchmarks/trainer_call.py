"""The trainer's compiled call against the bare meta-train step, interleaved in one process.

    python benchmarks/trainer_call.py [--rounds=5 --calls=300]
    python benchmarks/trainer_call.py --jit_compile --steps_per_execution=10 --calls=30

Both run the sinusoid preset's MAML (`task_batching="batched"`). "bare step" is
`MAML.meta_train_step` on one fixed meta-batch through `ConcreteStep`, as
`benchmarks/meta_step.py` times it; "trainer call" is what `keras_meta.training.train` calls
each iteration: at one meta-iteration per call it takes its meta-batch out of the window an
`EpisodePool` computed, and with several it computes them from the step counter inside its
graph (the sinusoid's episodes are pure functions of their index); it advances the counter.
"trainer call, tf.data" reads the same meta-batch from the tf.data stream inside its graph instead
(the trainer's way for image families). Rounds alternate between them, so that drifts of the
machine hit all; every call's loss is read, as the trainer reads it.
"""

import os
import sys

from absl import app, flags

flags.DEFINE_integer("rounds", 5, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_integer("calls", 300, "Calls of each per round.", lower_bound=1)
flags.DEFINE_boolean("jit_compile", False, "Compile the meta-step with XLA (the trainer's flag).")
flags.DEFINE_integer("steps_per_execution", 1, "Meta-iterations per call (the trainer's flag).",
                     lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    os.environ.setdefault("KERAS_META_AUTOTUNE", "0")
    # Beside this script (run as `python benchmarks/...`, its folder is on the path).
    from interleaved import bare_step, median_interval, time_interleaved
    import numpy as np
    import tensorflow as tf

    from keras_meta.training import loop
    from keras_meta.training.presets import PRESETS
    from keras_meta.training.task_families import build_maml, build_task_family

    per_call = FLAGS.steps_per_execution
    config = PRESETS["sinusoid_one_step"].replace(task_batching="batched",
                                                  jit_compile=FLAGS.jit_compile,
                                                  steps_per_execution=per_call)
    task = build_task_family(config)
    maml = build_maml(config, task.model, task.loss_fn)
    endless = config.replace(num_iterations=10**9)
    functions = {"bare step": bare_step(config, maml, task)}
    for name, in_graph in [("trainer call", True), ("trainer call, tf.data", False)]:
        _, source = next(loop._local_chunks(task, endless, 0, in_graph=in_graph))
        functions[name] = _counting(loop._step_function(
            maml, config, None, False, per_call, source, tf.Variable(0, dtype=tf.int64)),
            per_call)
    times = time_interleaved(functions, FLAGS.rounds, FLAGS.calls, per_call=per_call)
    print(f"command: python {' '.join(sys.argv)}")
    bare = np.asarray(times["bare step"])
    for name, values in times.items():
        print(f"{name}: median {np.median(values):.3f} ms per meta-iteration "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")
        if name != "bare step":
            # Per round, against the bare step timed beside it: the drift hits both.
            ratios = 100 * (np.asarray(values) / bare - 1)
            low, high = median_interval(ratios)
            print(f"  against the bare step, per round: median {np.median(ratios):+.1f}% "
                  f"(90% bootstrap interval {low:+.1f}% to {high:+.1f}%)")


def _counting(step_function, per_call):
    """The trainer's call as its loop makes it: told how many iterations have run."""
    done = [0]

    def call():
        loss = step_function(done[0])
        done[0] += per_call
        return loss

    return call


if __name__ == "__main__":
    app.run(main)
