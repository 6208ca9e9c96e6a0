r"""What one compiled call costs before any arithmetic: TensorFlow against JAX, per variable.

    python benchmarks/call_overhead.py [--jax_python=PYTHON_WITH_JAX] [--rounds=5 --calls=500]

Issue 17's single-call sinusoid gap to JAX is mostly not arithmetic: the two compiled steps have
the same dots and about as many fused kernels. This measures the rest. For each count N, a
`tf.function` updates N float32 [40, 40] variables by a scalar (`assign_add`, what an optimizer
does to its parameters and slots) and returns the scalar plus one, called through
`ConcreteStep` as keras-meta's trainer calls its step, with XLA and as a plain graph. The same
function in JAX (`jax_call_overhead.py`, N arrays in and out of one `jax.jit`) runs in its own
process under `--jax_python`. Rounds alternate between the counts; every call's result is
read. A straight line through each framework's times gives its fixed cost per call and its
cost per updated variable; the summary applies both to the sinusoid meta-step, whose call
updates 19 variables (6 parameters, 12 Adam slots, the step counter) and reads one.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

flags.DEFINE_list("variables", ["0", "1", "5", "10", "20", "40"], "Variable counts.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_integer("calls", 500, "Calls of each count per round.", lower_bound=1)
flags.DEFINE_string("jax_python", None, "The Python that runs the JAX side (default: none, "
                    "TensorFlow only). JAX is not a keras-meta dependency.")
FLAGS = flags.FLAGS

# The sinusoid meta-step's call: 6 parameters, 12 Adam slots and the iteration counter
# updated; the learning rate read.
SINUSOID_UPDATED = 19


def _updater(count, jit_compile):
    import tensorflow as tf

    from keras_meta.training.concrete_step import ConcreteStep

    variables = [tf.Variable(tf.zeros([40, 40])) for _ in range(count)]

    @tf.function(jit_compile=jit_compile)
    def update(x):
        for v in variables:
            v.assign_add(tf.fill([40, 40], x))
        return x + 1.0

    step = ConcreteStep(update)
    x = tf.constant(0.0)
    return lambda: step(x)


def _fit(counts, times):
    """(fixed cost, cost per variable) in microseconds, least squares over the counts."""
    import numpy as np

    slope, intercept = np.polyfit(np.array(counts, float), np.array(times, float), 1)
    return float(intercept), float(slope)


def main(argv):
    import numpy as np

    try:
        counts = [int(c) for c in FLAGS.variables]
    except ValueError:
        raise app.UsageError(f"--variables takes whole numbers; got {FLAGS.variables}.")
    if min(counts) < 0 or len(set(counts)) < 2:
        raise app.UsageError(f"--variables needs at least two distinct counts >= 0; got "
                             f"{FLAGS.variables}.")
    if FLAGS.jax_python and not (os.path.isfile(FLAGS.jax_python)
                                 and os.access(FLAGS.jax_python, os.X_OK)):
        raise app.UsageError(f"--jax_python={FLAGS.jax_python!r} is not an executable file; "
                             "expected the path of a Python that has JAX installed.")
    os.environ.setdefault("KERAS_META_AUTOTUNE", "0")
    from interleaved import time_interleaved

    functions = {}
    for jit_compile in (True, False):
        for n in counts:
            functions[("XLA" if jit_compile else "graph", n)] = _updater(n, jit_compile)
    times = time_interleaved(functions, FLAGS.rounds, FLAGS.calls, warmup=50)
    # time_interleaved gives milliseconds per call; microseconds read better here.
    medians = {key: float(np.median(values)) * 1e3 for key, values in times.items()}
    columns = {"TF XLA": [medians[("XLA", n)] for n in counts],
               "TF graph": [medians[("graph", n)] for n in counts]}
    jax_rows = []
    if FLAGS.jax_python:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jax_call_overhead.py")
        out = subprocess.run([FLAGS.jax_python, script, f"--variables={','.join(map(str, counts))}",
                              f"--rounds={FLAGS.rounds}", f"--calls={FLAGS.calls}"],
                             capture_output=True, text=True)
        jax_rows = [json.loads(l[4:]) for l in out.stdout.splitlines() if l.startswith("ROW ")]
        if out.returncode or len(jax_rows) != len(counts):
            print(f"JAX side failed (exit {out.returncode}); TensorFlow only:\n"
                  f"{out.stderr[-2000:]}")
            jax_rows = []
        else:
            columns["JAX jit"] = [r["us_per_call"] for r in jax_rows]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"{FLAGS.rounds} interleaved rounds of {FLAGS.calls} calls (TensorFlow in one process"
          + (f", JAX {jax_rows[0]['jax_version']} in another" if jax_rows else "") + ")\n")
    print("| updated variables | " + " | ".join(f"{c} (us per call)" for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for i, n in enumerate(counts):
        print(f"| {n} | " + " | ".join(f"{values[i]:.0f}" for values in columns.values()) + " |")
    print()
    for name, values in columns.items():
        fixed, per = _fit(counts, values)
        print(f"{name}: {fixed:.0f} us per call + {per:.1f} us per updated variable; the "
              f"sinusoid step's {SINUSOID_UPDATED}: {fixed + per * SINUSOID_UPDATED:.0f} us")


if __name__ == "__main__":
    app.run(main)
