r"""Seconds per second-order MAML meta-iteration on ResNet-12, and peak memory, with and without
recomputing the inner steps.

    python benchmarks/resnet12.py                                    # both configurations
    python benchmarks/resnet12.py --repeats=1 --output=benchmarks/results/resnet12_cpu.md

The mini-ImageNet setting: `keras_meta.backbones.resnet12` (widths 64-160-320-640, transductive
batch norm) on 84x84x3 images, 5-way 1-shot with 15 queries per class, meta-batch 4, 5 inner SGD
steps of 0.01, the exact second-order meta-gradient and an Adam step (`MAML.meta_train_step` in
one `tf.function`, float32). ResNet-12 has residual branches, so MAML runs the per-task loop of
fast-weights calls. Random images stand in for real ones: pixel values do not change the cost.

Two configurations: "stored" keeps every inner step's activations for the outer backward pass;
"recompute" passes `recompute_inner_steps=--recompute_segment` to MAML, which recomputes them
in the outer backward pass instead. Each runs in its own process, so that its peak resident
memory (`ru_maxrss`, tracing and graph optimization included) is its own. The first call
traces the step and runs it once (the warm-up iteration, reported as "first call"); then
`--warmup` more untimed iterations and `--repeats` timed ones. A configuration that exceeds
`--memory_limit_gib` fails cleanly (its allocations are refused) instead of waking the kernel's
out-of-memory killer, and is reported as such.
"""

import json
import os
import resource
import shlex
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["stored", "recompute"], "Configurations: stored, recompute.")
flags.DEFINE_integer("repeats", 2, "Timed iterations per configuration.")
flags.DEFINE_integer("warmup", 0, "Untimed iterations after the first (tracing) call.")
flags.DEFINE_integer("recompute_segment", 1,
                     "recompute_inner_steps of the 'recompute' configuration (steps per segment).")
flags.DEFINE_list("widths", ["64", "160", "320", "640"], "resnet12 widths.")
flags.DEFINE_integer("image_size", 84, "Image height and width (3 channels).")
flags.DEFINE_integer("ways", 5, "Classes per task.")
flags.DEFINE_integer("shots", 1, "Support examples per class.")
flags.DEFINE_integer("queries", 15, "Query examples per class.")
flags.DEFINE_integer("meta_batch", 4, "Tasks per meta-iteration.")
flags.DEFINE_integer("inner_steps", 5, "Inner SGD steps.")
flags.DEFINE_float("inner_lr", 0.01, "Inner SGD learning rate.")
flags.DEFINE_float("memory_limit_gib", None,
                   "Refuse a configuration's allocations above this many GiB (RLIMIT_DATA); "
                   "default: 90% of the memory available when the benchmark starts; 0: none.")
flags.DEFINE_string("output", None, "Also write the report (markdown) to this file.")
flags.DEFINE_string("child", None, "Internal: run one configuration in this process.")


def _recompute(name):
    if name == "stored":
        return False
    if name == "recompute":
        return FLAGS.recompute_segment
    raise app.UsageError(f"Unknown configuration {name!r}; known: stored, recompute.")


def _log(message):
    # To stderr, which the parent lets through: progress of a run that takes minutes.
    print(f"[{FLAGS.child}] {message}", file=sys.stderr, flush=True)


def run_child(name):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_meta as km
    from keras_meta.backbones import resnet12

    keras.utils.set_random_seed(0)
    size, ways, mb = FLAGS.image_size, FLAGS.ways, FLAGS.meta_batch
    base = resnet12(ways, (size, size, 3), widths=[int(w) for w in FLAGS.widths])
    maml = km.MAML(base, inner_lr=FLAGS.inner_lr, inner_steps=FLAGS.inner_steps,
                   recompute_inner_steps=_recompute(name),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    maml.compile(keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    labels = lambda k: np.tile(np.repeat(np.arange(ways), k), (mb, 1))  # noqa: E731
    episode = km.Episode(
        tf.constant(rng.random((mb, ways * FLAGS.shots, size, size, 3)), tf.float32),
        tf.constant(labels(FLAGS.shots), tf.int32),
        tf.constant(rng.random((mb, ways * FLAGS.queries, size, size, 3)), tf.float32),
        tf.constant(labels(FLAGS.queries), tf.int32))
    step = tf.function(maml.meta_train_step)

    def run():
        start = time.perf_counter()
        loss = float(step(episode)[0].numpy())
        if not np.isfinite(loss):
            raise RuntimeError(f"non-finite meta-loss {loss}")
        return time.perf_counter() - start

    rss_before_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _log(f"{base.count_params():,} parameters, task batching: "
         f"{'batched' if maml.uses_task_batching else 'loop'}; tracing and first call ...")
    first = run()
    _log(f"first call {first:.1f} s")
    for _ in range(FLAGS.warmup):
        _log(f"warm-up {run():.1f} s")
    times = []
    for i in range(FLAGS.repeats):
        times.append(run())
        _log(f"iteration {i + 1}/{FLAGS.repeats}: {times[-1]:.1f} s")
    row = {"config": name, "recompute_inner_steps": _recompute(name),
           "task_batching": "batched" if maml.uses_task_batching else "loop",
           "parameters": base.count_params(),
           "median_s": float(np.median(times)), "min_s": float(np.min(times)),
           "max_s": float(np.max(times)), "first_call_s": first,
           "rss_before_step_mib": rss_before_mib,
           # ru_maxrss is in KiB on Linux.
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("ROW " + json.dumps(row), flush=True)


def _available_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _limit_memory(limit_gib):
    # RLIMIT_DATA (Linux >= 4.7) counts heap and private anonymous mappings, i.e. what the
    # tensors take: past it an allocation fails inside the child, which exits with an error
    # the parent reports, rather than the whole machine running out of memory.
    limit = int(limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv):
    if FLAGS.child:
        run_child(FLAGS.child)
        return
    for name in FLAGS.configs:
        _recompute(name)  # refuse an unknown name before any run
    limit = FLAGS.memory_limit_gib
    if limit is None:
        available = _available_gib()
        limit = 0.9 * available if available else 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    passed = [a for a in sys.argv[1:] if not a.startswith("--output")]
    rows = []
    for name in FLAGS.configs:
        print(f"running {name} ...", flush=True)
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--child={name}", *passed],
            stdout=subprocess.PIPE, text=True, env=env,
            preexec_fn=(lambda: _limit_memory(limit)) if limit else None)
        lines = [l for l in out.stdout.splitlines() if l.startswith("ROW ")]
        if out.returncode or not lines:
            rows.append({"config": name, "recompute_inner_steps": _recompute(name),
                         "failed": f"exit {out.returncode} after "
                                   f"{time.perf_counter() - start:.0f} s (out of memory "
                                   f"under the {limit:.1f} GiB limit?)"})
        else:
            rows.append(json.loads(lines[-1][4:]))

    import tensorflow as tf

    devices = ", ".join(d.name for d in tf.config.list_logical_devices())
    command = shlex.join(["python", os.path.relpath(os.path.abspath(__file__), root),
                          *sys.argv[1:]])
    report = [
        f"ResNet-12 ({'-'.join(FLAGS.widths)}), {FLAGS.image_size}x{FLAGS.image_size}x3, "
        f"{FLAGS.ways}-way {FLAGS.shots}-shot, {FLAGS.queries} queries per class, meta-batch "
        f"{FLAGS.meta_batch}, {FLAGS.inner_steps} inner SGD steps of {FLAGS.inner_lr}, "
        "second-order MAML + Adam, float32, one tf.function (no XLA).",
        "",
        f"command: `{command}`",
        "",
        f"TensorFlow {tf.__version__}; devices: {devices}; {os.cpu_count()} CPUs visible; "
        f"memory limit per configuration {_fmt(limit)} GiB. Seconds per meta-iteration over "
        f"{FLAGS.repeats} timed iteration(s) after the first call (tracing + one iteration)"
        + (f" and {FLAGS.warmup} more warm-up iteration(s)" if FLAGS.warmup else "")
        + "; peak RSS of the configuration's own process.",
        "",
        "| configuration | recompute_inner_steps | task batching | s / iteration (median) "
        "| min s | max s | first call s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failed" in r:
            report.append(f"| {r['config']} | {r['recompute_inner_steps']} | - | failed: "
                          f"{r['failed']} | - | - | - | - |")
            continue
        report.append(
            f"| {r['config']} | {r['recompute_inner_steps']} | {r['task_batching']} | "
            f"{r['median_s']:.1f} | {r['min_s']:.1f} | {r['max_s']:.1f} | "
            f"{r['first_call_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    text = "\n".join(report)
    print("\n" + text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
