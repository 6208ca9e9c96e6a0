r"""Seconds per MAML meta-iteration, peak memory and GFLOP/s, for the configurations we track.

    python benchmarks/meta_step.py                      # all configurations
    python benchmarks/meta_step.py --configs=omniglot_5w1s_second,omniglot_5w1s_first

Each configuration runs in its own process (so peak RSS is its own), times the compiled outer
step (meta-gradient + Adam) over `--repeats` iterations after `--warmup`, and reports the
median, min and max. Memory: the process's peak RSS (tracing and graph optimisation included)
and the peak bytes of live tensors during the timed iterations, from TensorFlow's allocator
statistics (reset after warm-up; on CPU the children run with the BFC allocator, which keeps
them). FLOPs come from TensorFlow's graph profiler on the traced step (matmuls
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
flags.DEFINE_boolean("tensor_memory", True,
                     "Measure the peak tensor memory of the timed iterations (CPU: runs with "
                     "TensorFlow's BFC allocator, which keeps statistics).")

# "plain" is the baseline every MAML user can write: one tf.function, a Python loop over the
# tasks, nested tapes, `stateless_call`, and Keras' own BatchNormalization. "loop" is keras-meta
# with one fast-weights call per task; "batched" is keras-meta's default (all tasks in one pass).
# steps: outer steps per call (meta_train_steps); inner: inner steps; recompute: see MAML;
# fused: MAML(fused_batch_norm=) (the "_unfused" rows run the batched batch norm as plain ops).
def _config(task, impl, first_order=False, jit=False, steps=1, inner=1, recompute=False,
            policy=None, chunk=None, fused=True):
    return dict(task=task, impl=impl, first_order=first_order, jit=jit, steps=steps,
                inner=inner, recompute=recompute, policy=policy, chunk=chunk, fused=fused,
                meta_batch=32 if task == "omniglot" else 25)


CONFIGS = {
    "omniglot_5w1s_second_plain": _config("omniglot", "plain"),
    "omniglot_5w1s_second_plain_xla": _config("omniglot", "plain", jit=True),
    "omniglot_5w1s_second_loop": _config("omniglot", "loop"),
    "omniglot_5w1s_second": _config("omniglot", "batched"),
    "omniglot_5w1s_second_unfused": _config("omniglot", "batched", fused=False),
    "omniglot_5w1s_second_chunks_of_4": _config("omniglot", "batched", chunk=4),
    "omniglot_5w1s_second_chunks_of_8": _config("omniglot", "batched", chunk=8),
    "omniglot_5w1s_second_chunks_of_16": _config("omniglot", "batched", chunk=16),
    "omniglot_5w1s_first_chunks_of_8": _config("omniglot", "batched", first_order=True, chunk=8),
    "omniglot_5w1s_first_plain": _config("omniglot", "plain", first_order=True),
    "omniglot_5w1s_first": _config("omniglot", "batched", first_order=True),
    "omniglot_5w1s_first_unfused": _config("omniglot", "batched", first_order=True,
                                           fused=False),
    "omniglot_5w1s_second_xla": _config("omniglot", "batched", jit=True),
    "omniglot_5w1s_second_bf16": _config("omniglot", "batched", policy="mixed_bfloat16"),
    "omniglot_5w1s_first_bf16": _config("omniglot", "batched", first_order=True,
                                        policy="mixed_bfloat16"),
    "sinusoid_second_plain": _config("sinusoid", "plain"),
    "sinusoid_second_plain_xla": _config("sinusoid", "plain", jit=True),
    "sinusoid_second": _config("sinusoid", "batched"),
    "sinusoid_second_xla": _config("sinusoid", "batched", jit=True),
    "sinusoid_second_xla_10_per_call": _config("sinusoid", "batched", jit=True, steps=10),
    # Memory: 5 inner steps stored, against 50 recomputed (same peak is the goal); recompute=3
    # checkpoints every third step (segments of 3).
    "omniglot_5w1s_second_5_inner": _config("omniglot", "batched", inner=5),
    "omniglot_5w1s_second_5_inner_recompute": _config("omniglot", "batched", inner=5,
                                                       recompute=True),
    "omniglot_5w1s_second_50_inner": _config("omniglot", "batched", inner=50),
    "omniglot_5w1s_second_50_inner_recompute": _config("omniglot", "batched", inner=50,
                                                        recompute=True),
    "omniglot_5w1s_second_50_inner_recompute_3": _config("omniglot", "batched", inner=50,
                                                          recompute=3),
}
DEFAULT_CONFIGS = [n for n in CONFIGS if "_inner" not in n]


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


def _plain_step(task, first_order, meta_batch):
    """The baseline: what a user writes with TensorFlow alone (see the comment on CONFIGS)."""
    import keras
    import tensorflow as tf

    if task == "sinusoid":
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(40, "relu"),
                                  keras.layers.Dense(40, "relu"), keras.layers.Dense(1)])
        loss_fn, alpha = keras.losses.MeanSquaredError(), 0.01
    else:
        layers = [keras.Input((28, 28, 1))]
        for _ in range(4):
            layers += [keras.layers.Conv2D(64, 3, 2, "same", use_bias=False),
                       keras.layers.BatchNormalization(), keras.layers.ReLU()]
        layers += [keras.layers.Flatten(), keras.layers.Dense(5)]
        model = keras.Sequential(layers)
        loss_fn, alpha = keras.losses.SparseCategoricalCrossentropy(from_logits=True), 0.4
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)

    def step(episode):
        state = [v.value for v in model.non_trainable_variables]
        with tf.GradientTape() as outer:
            losses = []
            for t in range(meta_batch):
                params = [tf.identity(v.value) for v in model.trainable_variables]
                with tf.GradientTape() as inner:
                    inner.watch(params)
                    pred, _ = model.stateless_call(params, state, episode.support_x[t],
                                                   training=True)
                    loss = loss_fn(episode.support_y[t], pred)
                grads = inner.gradient(loss, params)
                if first_order:
                    grads = [tf.stop_gradient(g) for g in grads]
                fast = [p - alpha * g for p, g in zip(params, grads)]
                pred, _ = model.stateless_call(fast, state, episode.query_x[t], training=True)
                losses.append(loss_fn(episode.query_y[t], pred))
            meta_loss = tf.add_n(losses) / meta_batch
        grads = outer.gradient(meta_loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return meta_loss, None

    return step


def _ours_step(spec):
    import keras

    import keras_meta as km
    from keras_meta.backbones import conv4, mlp

    kwargs = dict(first_order=spec["first_order"], inner_steps=spec["inner"],
                  task_batching=spec["impl"], recompute_inner_steps=spec["recompute"],
                  task_chunk_size=spec["chunk"], fused_batch_norm=spec["fused"])
    if spec["task"] == "sinusoid":
        maml = km.MAML(mlp(), inner_lr=0.01, loss="mse", **kwargs)
    else:
        maml = km.MAML(conv4(5), inner_lr=0.4, **kwargs,
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    maml.compile(keras.optimizers.Adam(1e-3))
    return maml.meta_train_steps if spec["steps"] > 1 else maml.meta_train_step


def run_child(name):
    import resource

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_meta as km

    spec = CONFIGS[name]
    keras.utils.set_random_seed(0)
    if spec["policy"]:
        keras.config.set_dtype_policy(spec["policy"])
    if spec["impl"] == "plain":
        python_step = _plain_step(spec["task"], spec["first_order"], spec["meta_batch"])
    else:
        python_step = _ours_step(spec)
    episode = _episode(spec["task"], spec["meta_batch"])
    if spec["steps"] > 1:
        # Distinct meta-batches stacked on a leading axis, one graph loop over them.
        episode = km.Episode(*(tf.stack([tf.roll(x, k, axis=0) for k in range(spec["steps"])])
                               for x in episode))
    step = tf.function(python_step, jit_compile=spec["jit"])

    def run():
        out = step(episode)
        return (out[0] if isinstance(out, tuple) else out).numpy()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    run()
    trace_seconds = time.perf_counter() - t
    for _ in range(FLAGS.warmup):
        run()
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    try:
        tf.config.experimental.reset_memory_stats(device)
    except (ValueError, tf.errors.InvalidArgumentError):  # allocator without statistics
        device = None
    times = []
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) / spec["steps"])
    tensor_peak_mib = None
    if device:
        tensor_peak_mib = tf.config.experimental.get_memory_info(device)["peak"] / 2**20
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flops = None
    if spec["steps"] == 1:
        flops = _flops(tf.function(python_step).get_concrete_function(episode))
    median = float(np.median(times))
    row = {"config": name, "median_s": median, "min_s": float(np.min(times)),
           "max_s": float(np.max(times)), "first_call_s": trace_seconds,
           "peak_rss_mib": peak_mib, "rss_before_step_mib": rss_before / 1024,
           "tensor_peak_mib": tensor_peak_mib,
           "gflop": flops / 1e9 if flops else None,
           "gflops_per_s": flops / 1e9 / median if flops else None}
    print("ROW " + json.dumps(row), flush=True)


def main(argv):
    if FLAGS.child:
        run_child(FLAGS.child)
        return
    names = FLAGS.configs or DEFAULT_CONFIGS
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise app.UsageError(f"Unknown --configs {unknown}; known: {sorted(CONFIGS)}.")
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    if FLAGS.tensor_memory:
        # TensorFlow's BFC allocator on the CPU keeps statistics (current and peak bytes of
        # live tensors), like the GPU allocator does; the default CPU allocator keeps none.
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
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
    print("| configuration | median s | min s | max s | first call s | peak RSS MiB | "
          "peak tensor MiB | GFLOP | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = f"{r['gflop']:.1f}" if r["gflop"] else "-"
        gs = f"{r['gflops_per_s']:.1f}" if r["gflops_per_s"] else "-"
        sp = f"{r['tensor_peak_mib']:.0f}" if r.get("tensor_peak_mib") else "-"
        print(f"| {r['config']} | {r['median_s']:.4f} | {r['min_s']:.4f} | {r['max_s']:.4f} | "
              f"{r['first_call_s']:.1f} | {r['peak_rss_mib']:.0f} | {sp} | {g} | {gs} |")
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
