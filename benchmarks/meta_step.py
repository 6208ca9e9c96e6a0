r"""Seconds per MAML meta-iteration, peak memory and GFLOP/s, for the configurations we track.

    python benchmarks/meta_step.py                      # all configurations
    python benchmarks/meta_step.py --configs=omniglot_5w1s_second,omniglot_5w1s_first

Each configuration runs in its own process (so peak RSS is its own), times the compiled outer
step (meta-gradient + Adam) over `--repeats` iterations after `--warmup`, and reports the
median, min and max. FLOPs come from TensorFlow's graph profiler on the traced step (matmuls
and convolutions, forward and backward), divided by the median time.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", None, "Configurations to run (default: all).")
flags.DEFINE_integer("repeats", 10, "Timed iterations.")
flags.DEFINE_integer("warmup", 2, "Untimed iterations after tracing.")
flags.DEFINE_string("child", None, "Internal: run one configuration in this process.")
flags.DEFINE_string("output", None, "Also write the rows as JSON here.")

# name: (task, meta_batch, first_order, jit_compile)
CONFIGS = {
    "omniglot_5w1s_second": dict(task="omniglot", meta_batch=32, first_order=False, jit=False),
    "omniglot_5w1s_first": dict(task="omniglot", meta_batch=32, first_order=True, jit=False),
    "omniglot_5w1s_second_xla": dict(task="omniglot", meta_batch=32, first_order=False, jit=True),
    "omniglot_5w1s_first_xla": dict(task="omniglot", meta_batch=32, first_order=True, jit=True),
    "sinusoid_second": dict(task="sinusoid", meta_batch=25, first_order=False, jit=False),
    "sinusoid_second_xla": dict(task="sinusoid", meta_batch=25, first_order=False, jit=True),
}


def _episode(task, meta_batch):
    import numpy as np
    import tensorflow as tf

    import keras_meta as km

    rng = np.random.default_rng(0)
    if task == "sinusoid":
        from keras_meta.data.sinusoid import sinusoid_episodes
        return next(iter(sinusoid_episodes(10, 10, meta_batch, seed=0)))
    # The MAML paper's Omniglot episode: 5-way 1-shot, 15 queries per class, 28x28x1 inputs.
    # Pixel values do not change the cost, so random images stand in for real ones.
    return km.Episode(
        tf.constant(rng.random((meta_batch, 5, 28, 28, 1)), tf.float32),
        tf.constant(np.tile(np.arange(5), (meta_batch, 1)), tf.int32),
        tf.constant(rng.random((meta_batch, 75, 28, 28, 1)), tf.float32),
        tf.constant(np.tile(np.repeat(np.arange(5), 15), (meta_batch, 1)), tf.int32))


def _flops(concrete):
    import tensorflow as tf

    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    try:
        return tf.compat.v1.profiler.profile(concrete.graph, options=opts).total_float_ops
    except Exception:  # the profiler is best-effort; timing does not depend on it
        return None


def run_child(name):
    import resource

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_meta as km
    from keras_meta.models import conv4, mlp

    spec = CONFIGS[name]
    keras.utils.set_random_seed(0)
    if spec["task"] == "sinusoid":
        maml = km.MAML(mlp(), inner_lr=0.01, first_order=spec["first_order"], loss="mse")
    else:
        maml = km.MAML(conv4(5), inner_lr=0.4, first_order=spec["first_order"],
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    maml.compile(keras.optimizers.Adam(1e-3))
    episode = _episode(spec["task"], spec["meta_batch"])
    step = tf.function(maml.meta_train_step, jit_compile=spec["jit"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    step(episode)[0].numpy()
    trace_seconds = time.perf_counter() - t
    for _ in range(FLAGS.warmup):
        step(episode)[0].numpy()
    times = []
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        step(episode)[0].numpy()
        times.append(time.perf_counter() - t)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flops = _flops(tf.function(maml.meta_train_step).get_concrete_function(episode))
    median = float(np.median(times))
    row = {"config": name, "median_s": median, "min_s": float(np.min(times)),
           "max_s": float(np.max(times)), "first_call_s": trace_seconds,
           "peak_rss_mib": peak_mib, "rss_before_step_mib": rss_before / 1024,
           "gflop": flops / 1e9 if flops else None,
           "gflops_per_s": flops / 1e9 / median if flops else None}
    print("ROW " + json.dumps(row), flush=True)


def main(argv):
    if FLAGS.child:
        run_child(FLAGS.child)
        return
    names = FLAGS.configs or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise app.UsageError(f"Unknown --configs {unknown}; known: {sorted(CONFIGS)}.")
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    for name in names:
        print(f"running {name} ...", flush=True)
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--child={name}",
             f"--repeats={FLAGS.repeats}", f"--warmup={FLAGS.warmup}"],
            capture_output=True, text=True, env=env)
        lines = [l for l in out.stdout.splitlines() if l.startswith("ROW ")]
        if out.returncode or not lines:
            print(out.stderr[-3000:])
            raise RuntimeError(f"{name} failed (exit {out.returncode}).")
        rows.append(json.loads(lines[-1][4:]))
    print(f"\ncommand: python {' '.join(sys.argv)}")
    print(f"{os.cpu_count()} CPUs; {FLAGS.repeats} timed iterations after {FLAGS.warmup} warm-up\n")
    print("| configuration | median s | min s | max s | first call s | peak RSS MiB | GFLOP | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = f"{r['gflop']:.1f}" if r["gflop"] else "-"
        gs = f"{r['gflops_per_s']:.1f}" if r["gflops_per_s"] else "-"
        print(f"| {r['config']} | {r['median_s']:.4f} | {r['min_s']:.4f} | {r['max_s']:.4f} | "
              f"{r['first_call_s']:.1f} | {r['peak_rss_mib']:.0f} | {g} | {gs} |")
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
