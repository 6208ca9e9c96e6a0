r"""keras-meta's compiled sinusoid meta-step against JAX's, taking turns between two processes.

    python benchmarks/sinusoid_vs_jax.py --jax_python=PYTHON_WITH_JAX [--rounds=15 --calls=300]
    python benchmarks/sinusoid_vs_jax.py --jax_python=PYTHON_WITH_JAX --steps_per_call=10 --calls=30

Issue 17's bar for small models is JAX with vmap and one jit (`benchmarks/jax_sinusoid.py`).
`meta_step.py` times the two in separate processes, one after the other, and this machine's
speed drifts between processes by more than the gap being measured (the same ratio read 0.77x
and 0.96x on consecutive days). Here both stay resident: keras-meta's step (XLA,
`MAML.meta_train_step` on one fixed meta-batch through `ConcreteStep`, as the trainer calls
it) in this process, JAX's in a child run by `--jax_python` (`jax_sinusoid.py --serve`). Each
round times a block of calls of one, then of the other, every other round in the opposite
order; a turn starts with `--settle` untimed calls. While one side runs, the other waits on a
pipe. The ratio is taken within each round, so a drift between rounds cancels; the summary
gives its median over rounds with a 90% bootstrap interval. Ratios above 1 mean keras-meta is
faster. JAX is not a keras-meta dependency; its Python is given by `--jax_python`.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

flags.DEFINE_string("jax_python", None, "The Python that has JAX (runs jax_sinusoid.py).")
flags.DEFINE_integer("rounds", 15, "Rounds; each times one block of each side.", lower_bound=1)
flags.DEFINE_integer("calls", 300, "Timed calls per block.", lower_bound=1)
flags.DEFINE_integer("settle", 20, "Untimed calls at the start of each turn.", lower_bound=0)
flags.DEFINE_integer("warmup", 50, "Untimed calls after compiling, on each side.", lower_bound=0)
flags.DEFINE_integer("steps_per_call", 1, "Meta-iterations per call on both sides "
                     "(keras-meta's steps_per_execution, a lax.scan in JAX).", lower_bound=1)
flags.DEFINE_enum("task_batching", "batched", ["batched", "loop"],
                  "keras-meta's way to run the 25 tasks.")
flags.DEFINE_string("output", None, "Also write every block's time here (JSON).")
FLAGS = flags.FLAGS

HERE = os.path.dirname(os.path.abspath(__file__))


class JaxChild:
    """`jax_sinusoid.py --serve` in `python`, timing a block of calls per `turn`.

    Args:
        python: the interpreter that has JAX.
        steps: meta-iterations per call.
        warmup: untimed calls after compiling.

    Example:

    >>> with JaxChild("/opt/jax/bin/python", steps=1, warmup=50) as jax_side:
    ...     ms_per_iteration = jax_side.turn(calls=300, settle=20)
    """

    def __init__(self, python, steps, warmup):
        command = [python, os.path.join(HERE, "jax_sinusoid.py"), "--serve",
                   f"--steps={steps}", f"--warmup={warmup}"]
        self.python = python
        # A file, not a pipe: a child that logs much would otherwise block on a full pipe.
        self._stderr = tempfile.TemporaryFile("w+")
        # XLA_FLAGS is for keras-meta's side: JAX's XLA is another build, with other flags.
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, text=True, bufsize=1, env=env)
        self._read("READY")

    def _read(self, expected=None):
        line = self._process.stdout.readline()
        if not line or (expected and line.strip() != expected):
            self._process.kill()
            self._process.wait()
            self._stderr.seek(0)
            error = self._stderr.read()
            if "No module named 'jax'" in error:
                raise RuntimeError(
                    f"--jax_python={self.python} has no JAX: install jax[cpu] in that "
                    "environment (JAX is not a keras-meta dependency).")
            last = error.strip().splitlines()[-1:] or [f"it printed {line!r}"]
            raise RuntimeError(f"The JAX side ({self.python} jax_sinusoid.py --serve) stopped: "
                               f"{last[0]}")
        return line

    def turn(self, calls, settle):
        """Milliseconds per meta-iteration over `calls` timed calls after `settle` untimed."""
        self._process.stdin.write(f"{calls} {settle}\n")
        return json.loads(self._read())["ms_per_iteration"]

    def close(self):
        if self._process.poll() is None:
            self._process.stdin.write("quit\n")
            self._process.stdin.close()
            self._process.wait(timeout=60)
        self._stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def take_turns(sides, rounds):
    """`{name: [ms per meta-iteration, one per round]}`: each round runs every side's turn
    (a callable returning its block's time), every other round in the opposite order."""
    times = {name: [] for name in sides}
    for index in range(rounds):
        order = list(sides.items())
        for name, turn in (order[::-1] if index % 2 else order):
            times[name].append(turn())
    return times


def _keras_meta_turn(steps, task_batching, warmup):
    """keras-meta's side: a `turn(calls, settle)` timing its compiled meta-step."""
    import time

    import keras
    import tensorflow as tf

    import keras_meta as km
    from keras_meta.backbones import mlp
    from keras_meta.data.sinusoid import sinusoid_episodes
    from keras_meta.training.concrete_step import ConcreteStep

    keras.utils.set_random_seed(0)
    # The same problem as the JAX side: 1-40-40-1 ReLU MLP, 25 tasks of 10 support and 10
    # query points, one inner step of 0.01, exact second order, Adam 1e-3.
    maml = km.MAML(mlp(), inner_lr=0.01, loss="mse", task_batching=task_batching)
    maml.compile(keras.optimizers.Adam(1e-3))
    episodes = next(iter(sinusoid_episodes(10, 10, 25, seed=0)))
    if steps > 1:
        episodes = km.Episode(*(tf.stack([tf.roll(x, k, axis=0) for k in range(steps)])
                                for x in episodes))
        python_step = maml.meta_train_steps
    else:
        python_step = lambda e: maml.meta_train_step(e)[0]  # noqa: E731
    step = ConcreteStep(tf.function(python_step, jit_compile=True))
    for _ in range(1 + warmup):
        float(step(episodes))

    def turn(calls, settle):
        for _ in range(settle):
            float(step(episodes))
        start = time.perf_counter()
        for _ in range(calls):
            float(step(episodes))
        return (time.perf_counter() - start) / calls / steps * 1e3

    return turn


def main(argv):
    del argv
    if not FLAGS.jax_python:
        raise app.UsageError("--jax_python is required: the Python that has JAX.")
    if not (os.path.isfile(FLAGS.jax_python) and os.access(FLAGS.jax_python, os.X_OK)):
        raise app.UsageError(f"--jax_python={FLAGS.jax_python!r} is not an executable file.")
    os.environ.setdefault("KERAS_META_AUTOTUNE", "0")
    from interleaved import median_interval  # beside this script
    import numpy as np

    calls, settle, steps = FLAGS.calls, FLAGS.settle, FLAGS.steps_per_call
    with JaxChild(FLAGS.jax_python, steps, FLAGS.warmup) as jax_side:
        ours = _keras_meta_turn(steps, FLAGS.task_batching, FLAGS.warmup)
        times = take_turns({"keras-meta": lambda: ours(calls, settle),
                            "JAX": lambda: jax_side.turn(calls, settle)}, FLAGS.rounds)
    ratios = np.asarray(times["JAX"]) / np.asarray(times["keras-meta"])
    low, high = median_interval(ratios)
    print(f"command: python {' '.join(sys.argv)}")
    for name, values in times.items():
        print(f"{name}: median {np.median(values):.3f} ms per meta-iteration "
              f"(rounds: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"JAX / keras-meta, per round: median {np.median(ratios):.3f}x "
          f"(90% interval {low:.3f}-{high:.3f}; rounds {ratios.min():.3f}-{ratios.max():.3f}); "
          "above 1: keras-meta faster")
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump({"command": "python " + " ".join(sys.argv), "times_ms": times,
                       "ratio_median": float(np.median(ratios)), "ratio_interval": [low, high],
                       "steps_per_call": steps, "calls": calls, "settle": settle}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
