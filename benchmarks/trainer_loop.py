"""The whole trainer against a bare loop of its step, interleaved in one process.

    python benchmarks/trainer_loop.py [--rounds=5 --iterations=5000]
    python benchmarks/trainer_loop.py --jit_compile --steps_per_execution=10

Both run the sinusoid preset's MAML (`task_batching="batched"`) for `--iterations`
meta-iterations and are measured the same way: total seconds over iterations, every call's
loss read, the first call (tracing) left out.

* "bare step": `MAML.meta_train_step` (or `meta_train_steps` for several per call) on one
  fixed meta-batch through `ConcreteStep`, in a Python loop and nothing else: the step
  `benchmarks/meta_step.py` times. Its model and trace are new every round, as the trainer's.
* "trainer": `keras_meta.training.train` with the preset's checkpoint and log periods, its
  in-graph episodes, progress lines, summaries and checkpoints; its figure is the run's
  `time_breakdown` (`keras_meta/training/time_breakdown.py`), which also says how much of it
  went to checkpoints and to the loop's own work.

The two alternate within each round (which goes first alternates too), so that drifts of the
machine hit both, and the ratio is taken within each round. `meta_step.py`'s `_trainer` rows
instead set the trainer's mean against the step's median in another process.
"""

import os
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("rounds", 5, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_integer("iterations", 5000, "Meta-iterations of each per round.", lower_bound=2)
flags.DEFINE_boolean("jit_compile", False, "Compile the meta-step with XLA (the trainer's flag).")
flags.DEFINE_integer("steps_per_execution", 1, "Meta-iterations per call (the trainer's flag).",
                     lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    per_call = FLAGS.steps_per_execution
    if FLAGS.iterations % per_call or FLAGS.iterations // per_call < 2:
        raise app.UsageError(
            f"--iterations={FLAGS.iterations} must be a multiple of --steps_per_execution="
            f"{per_call}, at least twice it, so both run whole calls only.")
    os.environ.setdefault("KERAS_META_AUTOTUNE", "0")
    # Beside this script (run as `python benchmarks/...`, its folder is on the path).
    from interleaved import bare_step, median_interval
    import numpy as np

    from keras_meta.training import train
    from keras_meta.training.presets import PRESETS
    from keras_meta.training.task_families import build_maml, build_task_family
    from keras_meta.training.time_breakdown import PARTS

    config = PRESETS["sinusoid_one_step"].replace(
        task_batching="batched", jit_compile=FLAGS.jit_compile, steps_per_execution=per_call,
        num_iterations=FLAGS.iterations, eval_every=0, num_eval_tasks=25)
    calls = FLAGS.iterations // per_call

    def bare_round():
        # A new model and a new trace every round, as the trainer's: both start cold, and
        # both are timed from after their first call.
        task = build_task_family(config)
        bare = bare_step(config, build_maml(config, task.model, task.loss_fn), task)
        float(bare())
        start = time.perf_counter()
        for _ in range(calls - 1):
            float(bare())
        return (time.perf_counter() - start) / (FLAGS.iterations - per_call)

    def trainer_round():
        with tempfile.TemporaryDirectory() as model_dir:
            return train(config, model_dir, verbose=False)["time_breakdown"]

    rows = []
    for index in range(FLAGS.rounds):
        order = ("bare", "trainer") if index % 2 == 0 else ("trainer", "bare")
        row = {}
        for name in order:
            row[name] = bare_round() if name == "bare" else trainer_round()
        rows.append(row)
        timing = row["trainer"]
        print(f"round {index}: bare step {1e3 * row['bare']:.3f} ms, trainer "
              f"{1e3 * timing['seconds_per_iteration']:.3f} ms "
              f"({100 * (timing['seconds_per_iteration'] / row['bare'] - 1):+.1f}%)", flush=True)

    bare_ms = [1e3 * row["bare"] for row in rows]
    trainer_ms = [1e3 * row["trainer"]["seconds_per_iteration"] for row in rows]
    ratios = [100 * (t / b - 1) for t, b in zip(trainer_ms, bare_ms)]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"bare step: median {np.median(bare_ms):.3f} ms per meta-iteration "
          f"(rounds: {', '.join(f'{v:.3f}' for v in bare_ms)})")
    print(f"trainer:   median {np.median(trainer_ms):.3f} ms per meta-iteration "
          f"(rounds: {', '.join(f'{v:.3f}' for v in trainer_ms)})")
    print(f"trainer against bare step, per round: median {np.median(ratios):+.1f}% "
          f"(rounds: {', '.join(f'{v:+.1f}%' for v in ratios)})")
    # The rounds spread over tens of percent on a shared machine: say how far the median
    # itself could be from the machine's true ratio, by resampling the rounds.
    low, high = median_interval(ratios)
    print(f"  90% bootstrap interval of that median: {low:+.1f}% to {high:+.1f}% "
          f"({len(ratios)} rounds)")
    shares = {part: np.median([100 * row["trainer"][f"{part}_seconds"]
                               / row["trainer"]["window_seconds"] for row in rows])
              for part in PARTS + ("other",)}
    print("trainer's window, median share per part: "
          + ", ".join(f"{part} {share:.1f}%" for part, share in shares.items()))
    steps_ms = [1e3 * row["trainer"]["steps_seconds"] / row["trainer"]["iterations"]
                for row in rows]
    print(f"trainer's calls alone: median {np.median(steps_ms):.3f} ms per meta-iteration "
          f"({100 * (np.median([s / b for s, b in zip(steps_ms, bare_ms)]) - 1):+.1f}% "
          "against the bare step, per round)")


if __name__ == "__main__":
    app.run(main)
