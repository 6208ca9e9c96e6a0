r"""Seconds per MAML meta-iteration, peak memory and GFLOP/s, for the configurations we track.

    python benchmarks/meta_step.py                      # the summary table (issue #17)
    python benchmarks/meta_step.py --configs=all        # every configuration
    python benchmarks/meta_step.py --configs=omniglot_5w1s_second,omniglot_5w1s_first
    python benchmarks/meta_step.py --in_process --rounds=10 --repeats=3   # plain/auto, one process

The summary times, in one run, plain TF nested tapes, keras-meta's per-task loop, its batched
pass and the choice `task_batching="auto"` measures (`MAML.autotune`, from an empty timings
cache, so the measurement is part of the run), for Omniglot 5w1s (first and second order),
Omniglot 20w1s with 5 inner steps, and the sinusoid MLP, next to the machine's float32
matmul peak (`matmul_peak`: the best of square matmuls of 512 to 4096 in a `tf.function`).

Each configuration runs in its own process (so peak RSS is its own), times the compiled outer
step (meta-gradient + Adam) over `--repeats` iterations after `--warmup`, and reports the
median, min and max. Memory: the process's peak RSS (tracing and graph optimisation included)
and the peak bytes of live tensors during the timed iterations, from TensorFlow's allocator
statistics (reset after warm-up; on CPU the children run with the BFC allocator, which keeps
them). FLOPs come from TensorFlow's graph profiler on the traced step (matmuls
and convolutions, forward and backward), divided by the median time.

`--in_process` measures only the ratio plain / auto, for the Omniglot workloads (`--configs`
names their auto rows): both steps in one process, taking turns block by block (`--repeats`
calls per block, `--rounds` blocks each, the order alternating; `benchmarks/interleaved.py`),
so that the machine's drift over minutes hits both alike. It prints the median over rounds of the ratio within a round,
with a 90% bootstrap interval (`benchmarks/interleaved.py`).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", None, "Configurations to run (default: the summary table's; "
                  "\"all\": every configuration except the memory rows with many inner steps).")
flags.DEFINE_integer("repeats", 10, "Timed iterations.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed iterations after tracing.")
flags.DEFINE_float("min_seconds", 0.0,
                   "Keep timing each row past --repeats until its timed iterations add up to "
                   "this many seconds, so that one invocation gives the millisecond sinusoid rows "
                   "thousands of iterations and the Omniglot rows their --repeats.",
                   lower_bound=0.0)
flags.DEFINE_integer("rounds", 1, "Run every configuration this many times, round-robin (a "
                     "fresh process each time), and pool the timed iterations. On a shared "
                     "machine whose speed drifts over minutes, interleaving keeps the drift out "
                     "of the ratios; the summary then shows each ratio's range over the rounds.",
                     lower_bound=1)
flags.DEFINE_string("child", None, "Internal: run one configuration in this process.")
flags.DEFINE_boolean("in_process", False,
                     "Time plain TF against keras-meta's auto row in one process, taking turns, "
                     "for the Omniglot workloads whose auto rows --configs names (default: all "
                     "three); prints the ratio plain / auto with its interval.")
flags.DEFINE_integer("settle", 0,
                     "--in_process: untimed calls at the start of each turn, so that the first "
                     "call after the other step's turn (which refills the caches and memory that "
                     "turn evicted) is charged to neither.", lower_bound=0)
flags.DEFINE_string("child_pair", None, "Internal: run one --in_process pair in this process.")
flags.DEFINE_string("omniglot_source_dir", None,
                    "The Omniglot zips (for the omniglot trainer row; e.g. ../shared/data/omniglot).")
flags.DEFINE_string("data_dir", None, "Where the trainer rows prepare TFDS data (default: a "
                    "temporary folder).")
flags.DEFINE_string("jax_python", None,
                    "The Python that runs the JAX rows (benchmarks/jax_sinusoid.py; default: this "
                    "one). JAX is not a keras-meta dependency: without it there, those rows are "
                    "skipped with a note.")
flags.DEFINE_string("output", None, "Also write the rows as JSON here.")
flags.DEFINE_boolean("count_flops_everywhere", False,
                     "Also count FLOPs (GFLOP/s) for the plain and loop rows (another trace of "
                     "their unrolled graphs).")
flags.DEFINE_boolean("tensor_memory", True,
                     "Measure the peak tensor memory of the timed iterations (CPU: runs with "
                     "TensorFlow's BFC allocator, which keeps statistics).")

# "plain" is the baseline every MAML user can write: one tf.function, a Python loop over the
# tasks, nested tapes, `stateless_call`, and Keras' own BatchNormalization. "loop" is keras-meta
# with one fast-weights call per task; "batched" is keras-meta's default (all tasks in one pass).
# steps: outer steps per call (meta_train_steps); inner: inner steps; recompute: see MAML;
# fused: MAML(fused_batch_norm=) (the "_unfused" rows run the batched batch norm as plain ops);
# shared: MAML(shared_first_step=) (the "_unshared" rows run step 0 in the per-task forms).
# impl "auto": MAML(task_batching="auto") after `MAML.autotune` on the benchmark's meta-batch.
# inter_op: TensorFlow's inter-op threads for that process (None: its default, one per core);
# 1 runs the graph's ops one at a time, each with every core.
def _config(task, impl, first_order=False, jit=False, steps=1, inner=1, recompute=False,
            policy=None, chunk=None, fused=True, ways=5, queries=15, shared=True,
            inter_op=None):
    return dict(task=task, impl=impl, first_order=first_order, jit=jit, steps=steps,
                inner=inner, recompute=recompute, policy=policy, chunk=chunk, fused=fused,
                ways=ways, queries=queries, shared=shared, inter_op=inter_op,
                meta_batch={"omniglot": 32 if ways == 5 else 16}.get(task, 25))


def _omniglot_20w1s(impl, **kwargs):
    # The MAML paper's 20-way setting: 5 inner steps, meta-batch 16; one query per class,
    # as its code (and the omniglot_20way_1shot preset) trains.
    return _config("omniglot", impl, inner=5, ways=20, queries=1, **kwargs)


CONFIGS = {
    "omniglot_5w1s_second_plain": _config("omniglot", "plain"),
    "omniglot_5w1s_second_plain_xla": _config("omniglot", "plain", jit=True),
    "omniglot_5w1s_second_loop": _config("omniglot", "loop"),
    "omniglot_5w1s_second": _config("omniglot", "batched"),
    "omniglot_5w1s_second_unfused": _config("omniglot", "batched", fused=False),
    "omniglot_5w1s_second_unshared": _config("omniglot", "batched", shared=False),
    # Two big convolutions at once on a 2-core machine share its cores and its caches.
    "omniglot_5w1s_second_plain_inter_op_1": _config("omniglot", "plain", inter_op=1),
    "omniglot_5w1s_second_inter_op_1": _config("omniglot", "batched", inter_op=1),
    "omniglot_5w1s_first_plain_inter_op_1": _config("omniglot", "plain", first_order=True,
                                                    inter_op=1),
    "omniglot_5w1s_first_inter_op_1": _config("omniglot", "batched", first_order=True,
                                              inter_op=1),
    # The Omniglot presets' training episodes: 1 query per class, as the MAML paper's code.
    "omniglot_5w1s_1_query_second_plain": _config("omniglot", "plain", queries=1),
    "omniglot_5w1s_1_query_second": _config("omniglot", "batched", queries=1),
    "omniglot_5w1s_1_query_second_unshared": _config("omniglot", "batched", queries=1,
                                                     shared=False),
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
    "sinusoid_second_unshared": _config("sinusoid", "batched", shared=False),
    "sinusoid_second_xla": _config("sinusoid", "batched", jit=True),
    "sinusoid_second_xla_unshared": _config("sinusoid", "batched", jit=True, shared=False),
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
    "omniglot_5w1s_second_auto": _config("omniglot", "auto"),
    "omniglot_5w1s_first_loop": _config("omniglot", "loop", first_order=True),
    "omniglot_5w1s_first_auto": _config("omniglot", "auto", first_order=True),
    "omniglot_20w1s_second_plain": _omniglot_20w1s("plain"),
    "omniglot_20w1s_second_loop": _omniglot_20w1s("loop"),
    "omniglot_20w1s_second": _omniglot_20w1s("batched"),
    "omniglot_20w1s_second_auto": _omniglot_20w1s("auto"),
    "sinusoid_second_loop": _config("sinusoid", "loop"),
    "sinusoid_second_auto": _config("sinusoid", "auto"),
    "sinusoid_second_loop_xla": _config("sinusoid", "loop", jit=True),
    "sinusoid_second_auto_xla": _config("sinusoid", "auto", jit=True),
    "matmul_peak": dict(task="matmul", impl="peak", steps=1),
    # The JAX reference (benchmarks/jax_sinusoid.py: vmap over the tasks, one jit), run by
    # --jax_python; the bar for the sinusoid.
    "sinusoid_second_jax": dict(task="sinusoid", impl="jax", steps=1),
    "sinusoid_second_jax_10_per_call": dict(task="sinusoid", impl="jax", steps=10),
    # keras-meta's trainer on the same settings (real episodes from its data pipeline,
    # progress lines, summaries and its final checkpoint included): its seconds per iteration
    # against the matching benchmark row. Omniglot needs --omniglot_source_dir.
    "sinusoid_second_trainer": dict(_config("sinusoid", "trainer"), compare="sinusoid_second"),
    "sinusoid_second_xla_10_per_call_trainer": dict(
        _config("sinusoid", "trainer", jit=True, steps=10),
        compare="sinusoid_second_xla_10_per_call"),
    "omniglot_5w1s_second_trainer": dict(_config("omniglot", "trainer"),
                                         compare="omniglot_5w1s_second_auto"),
}
TRAINER_CONFIGS = [n for n in CONFIGS if n.endswith("_trainer")]
# The summary: workload -> {column: configuration}.
SUMMARY = {
    "Omniglot 5w1s, second order": {
        "plain": "omniglot_5w1s_second_plain", "loop": "omniglot_5w1s_second_loop",
        "batched": "omniglot_5w1s_second", "auto": "omniglot_5w1s_second_auto"},
    "Omniglot 5w1s, first order": {
        "plain": "omniglot_5w1s_first_plain", "loop": "omniglot_5w1s_first_loop",
        "batched": "omniglot_5w1s_first", "auto": "omniglot_5w1s_first_auto"},
    "Omniglot 20w1s, 5 inner steps, second order": {
        "plain": "omniglot_20w1s_second_plain", "loop": "omniglot_20w1s_second_loop",
        "batched": "omniglot_20w1s_second", "auto": "omniglot_20w1s_second_auto"},
    "sinusoid, second order": {
        "plain": "sinusoid_second_plain", "loop": "sinusoid_second_loop",
        "batched": "sinusoid_second", "auto": "sinusoid_second_auto"},
    "sinusoid, second order, XLA": {
        "plain": "sinusoid_second_plain_xla", "loop": "sinusoid_second_loop_xla",
        "batched": "sinusoid_second_xla", "auto": "sinusoid_second_auto_xla",
        "jax": "sinusoid_second_jax"},
    "sinusoid, XLA, 10 outer steps per call": {
        "batched": "sinusoid_second_xla_10_per_call", "jax": "sinusoid_second_jax_10_per_call"},
}
SUMMARY_CONFIGS = ["matmul_peak"] + [c for row in SUMMARY.values() for c in row.values()]
# --configs=all: every configuration but the memory rows of 50 inner steps (minutes each).
DEFAULT_CONFIGS = [n for n in CONFIGS if "_50_inner" not in n]
# The shared first inner step against the per-task forms, same settings otherwise.
SHARED_PAIRS = [(n, n + "_unshared") for n in CONFIGS if n + "_unshared" in CONFIGS]


def _episode(task, meta_batch, ways=5, queries=15):
    import numpy as np
    import tensorflow as tf

    import keras_meta as km

    rng = np.random.default_rng(0)
    if task == "sinusoid":
        from keras_meta.data.sinusoid import sinusoid_episodes
        return next(iter(sinusoid_episodes(10, 10, meta_batch, seed=0)))
    # The MAML paper's Omniglot episode: N-way 1-shot, 28x28x1 inputs, `queries` per class.
    # Pixel values do not change the cost, so random images stand in for real ones.
    return km.Episode(
        tf.constant(rng.random((meta_batch, ways, 28, 28, 1)), tf.float32),
        tf.constant(np.tile(np.arange(ways), (meta_batch, 1)), tf.int32),
        tf.constant(rng.random((meta_batch, ways * queries, 28, 28, 1)), tf.float32),
        tf.constant(np.tile(np.repeat(np.arange(ways), queries), (meta_batch, 1)), tf.int32))


def _flops(concrete):
    import tensorflow as tf

    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    try:
        return tf.compat.v1.profiler.profile(concrete.graph, options=opts).total_float_ops
    except Exception:  # the profiler is best-effort; timing does not depend on it
        return None


def _plain_step(task, first_order, meta_batch, ways=5, inner_steps=1):
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
        # The MAML paper's Omniglot network, as keras-meta's conv4 builds it: the last
        # feature map averaged over its positions.
        layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(ways)]
        model = keras.Sequential(layers)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        alpha = 0.4 if ways == 5 else 0.1
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)

    def step(episode):
        state = [v.value for v in model.non_trainable_variables]
        with tf.GradientTape() as outer:
            losses = []
            for t in range(meta_batch):
                fast = [tf.identity(v.value) for v in model.trainable_variables]
                for _ in range(inner_steps):
                    with tf.GradientTape() as inner:
                        inner.watch(fast)
                        pred, _ = model.stateless_call(fast, state, episode.support_x[t],
                                                       training=True)
                        loss = loss_fn(episode.support_y[t], pred)
                    grads = inner.gradient(loss, fast)
                    if first_order:
                        grads = [tf.stop_gradient(g) for g in grads]
                    fast = [p - alpha * g for p, g in zip(fast, grads)]
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
                  task_batching=spec["impl"],
                  recompute_inner_steps=spec["recompute"],
                  task_chunk_size=spec["chunk"], fused_batch_norm=spec["fused"],
                  shared_first_step=spec["shared"])
    if spec["task"] == "sinusoid":
        maml = km.MAML(mlp(), inner_lr=0.01, loss="mse", **kwargs)
    else:
        maml = km.MAML(conv4(spec["ways"]), inner_lr=0.4 if spec["ways"] == 5 else 0.1,
                       **kwargs, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    maml.compile(keras.optimizers.Adam(1e-3))
    if spec["steps"] > 1:
        return (lambda episodes: maml.meta_train_steps(episodes)), maml
    return (lambda episodes: maml.meta_train_step(episodes)), maml


def _trainer_row(name, spec):
    """Runs keras-meta's trainer for warm-up + repeats iterations; its own seconds/iteration."""
    import resource

    from keras_meta.training import train
    from keras_meta.training.presets import PRESETS

    # Long enough that the final checkpoint and the first call's tracing weigh little; the
    # presets' own checkpoint and log periods.
    iterations = 5000 if spec["task"] == "sinusoid" else 60
    # The same way of running the tasks as the row it is compared with: the gap is then the
    # trainer's own (pipeline, checkpoints, logging), not a different autotuned choice.
    common = dict(num_iterations=iterations, eval_every=0, num_eval_tasks=spec["meta_batch"],
                  steps_per_execution=spec["steps"], jit_compile=spec["jit"],
                  first_order=spec["first_order"],
                  task_batching=CONFIGS[spec["compare"]]["impl"])
    if spec["task"] == "sinusoid":
        config = PRESETS["sinusoid_one_step"].replace(**common)
    else:
        if not FLAGS.omniglot_source_dir:
            raise app.UsageError(f"{name} needs --omniglot_source_dir (the Omniglot zips).")
        config = PRESETS["omniglot_5way_1shot_15queries"].replace(
            omniglot_source_dir=FLAGS.omniglot_source_dir, data_dir=FLAGS.data_dir, **common)
    with tempfile.TemporaryDirectory() as model_dir:
        results = train(config, model_dir, verbose=False)
    seconds = results["seconds_per_iteration"]
    row = {"config": name, "median_s": seconds, "min_s": seconds, "max_s": seconds,
           "first_call_s": None, "peak_rss_mib": resource.getrusage(
               resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_step_mib": None,
           "tensor_peak_mib": None, "gflop": None, "gflops_per_s": None,
           "compare": spec["compare"], "iterations": iterations,
           # Where the trainer's window went (keras_meta/training/time_breakdown.py): what is
           # not `steps` is its checkpoints, validation and loop.
           "time_breakdown": results["time_breakdown"]}
    print("ROW " + json.dumps(row), flush=True)


def _matmul_peak():
    """The machine's float32 matmul rate: the best of square matmuls in a `tf.function`."""
    import numpy as np
    import tensorflow as tf

    best = None
    for n in (512, 1024, 2048, 4096):
        a = tf.random.normal([n, n])
        b = tf.random.normal([n, n])
        repeats = max(2, int(2e10 // (2 * n ** 3)))

        @tf.function
        def chain(a, b, repeats=repeats):
            out = tf.zeros([], tf.float32)
            for _ in range(repeats):
                # Each product depends on the last sum, so none is skipped or overlapped away.
                out += tf.reduce_sum(tf.matmul(a + out * 0.0, b)) * 0.0
            return out

        chain(a, b).numpy()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            chain(a, b).numpy()
            times.append(time.perf_counter() - t)
        rate = 2 * n ** 3 * repeats / float(np.median(times)) / 1e9
        if best is None or rate > best[0]:
            best = (rate, n)
    row = {"config": "matmul_peak", "median_s": None, "min_s": None, "max_s": None,
           "first_call_s": None, "peak_rss_mib": None, "rss_before_step_mib": None,
           "tensor_peak_mib": None, "gflop": None, "gflops_per_s": best[0],
           "matmul_size": best[1]}
    print("ROW " + json.dumps(row), flush=True)


def run_child(name):
    import resource

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_meta as km

    spec = CONFIGS[name]
    if spec.get("inter_op"):
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op"])
    if spec["impl"] == "peak":
        _matmul_peak()
        return
    if spec["impl"] == "trainer":
        _trainer_row(name, spec)
        return
    keras.utils.set_random_seed(0)
    if spec["policy"]:
        keras.config.set_dtype_policy(spec["policy"])
    episode = _episode(spec["task"], spec["meta_batch"], spec["ways"], spec["queries"])
    choice, tuning_seconds = None, None
    if spec["impl"] == "plain":
        python_step = _plain_step(spec["task"], spec["first_order"], spec["meta_batch"],
                                  spec["ways"], spec["inner"])
    else:
        python_step, maml = _ours_step(spec)
        if spec["impl"] == "auto":
            # From an empty cache (the parent gives each child its own): the measurement
            # is timed here, as a first run on a new machine pays it.
            t = time.perf_counter()
            choice, _ = maml.autotune(episode, jit_compile=spec["jit"],
                                      log=lambda m: print(m, file=sys.stderr, flush=True))
            tuning_seconds = time.perf_counter() - t
            choice = choice.label
    if spec["steps"] > 1:
        # Distinct meta-batches stacked on a leading axis, one graph loop over them.
        episode = km.Episode(*(tf.stack([tf.roll(x, k, axis=0) for k in range(spec["steps"])])
                               for x in episode))
    step = tf.function(python_step, jit_compile=spec["jit"])
    if spec["impl"] != "plain":
        # As keras-meta's trainer calls its step: through the concrete function, which skips
        # tf.function's per-call argument binding. "plain" is called as users call theirs.
        from keras_meta.training.concrete_step import ConcreteStep
        step = ConcreteStep(step)

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
    times, timed = [], 0.0
    while len(times) < FLAGS.repeats or timed < FLAGS.min_seconds:
        t = time.perf_counter()
        run()
        seconds = time.perf_counter() - t
        timed += seconds
        times.append(seconds / spec["steps"])
    tensor_peak_mib = None
    if device:
        tensor_peak_mib = tf.config.experimental.get_memory_info(device)["peak"] / 2**20
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flops = None
    # The FLOPs of a workload do not depend on how its tasks run; counting them traces the
    # step again, which for the unrolled plain and loop graphs costs as much as the timing.
    if spec["steps"] == 1 and (FLAGS.count_flops_everywhere or spec["impl"] not in ("plain",
                                                                                       "loop")):
        flops = _flops(tf.function(python_step).get_concrete_function(episode))
    median = float(np.median(times))
    row = {"config": name, "median_s": median, "min_s": float(np.min(times)),
           "max_s": float(np.max(times)), "first_call_s": trace_seconds,
           "peak_rss_mib": peak_mib, "rss_before_step_mib": rss_before / 1024,
           "tensor_peak_mib": tensor_peak_mib,
           "gflop": flops / 1e9 if flops else None,
           "gflops_per_s": flops / 1e9 / median if flops else None,
           "choice": choice, "tuning_s": tuning_seconds, "times": times}
    print("ROW " + json.dumps(row), flush=True)


def _pooled(runs):
    """One configuration's rows from several rounds as one row: its timed iterations pooled.

    `round_medians` keeps each round's own median, from which the summary gives a ratio's
    range over the rounds. A row without its iterations (the trainer's) pools the medians.
    """
    import numpy as np

    if len(runs) == 1:
        return dict(runs[0], round_medians=[runs[0]["median_s"]])
    if runs[0]["median_s"] is None:
        # The matmul peak: a rate, no iterations; its median over the rounds, and each.
        rates = [r["gflops_per_s"] for r in runs]
        return dict(runs[-1], gflops_per_s=float(np.median(rates)), round_gflops_per_s=rates)
    times = [t for r in runs for t in (r.get("times") or [r["median_s"]])]
    row = dict(runs[-1], times=times, median_s=float(np.median(times)),
               min_s=min(r["min_s"] for r in runs), max_s=max(r["max_s"] for r in runs),
               round_medians=[r["median_s"] for r in runs])
    for key in ("first_call_s", "peak_rss_mib", "tensor_peak_mib"):
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = max(values) if values else None
    if row.get("gflop"):
        row["gflops_per_s"] = row["gflop"] / row["median_s"]
    choices = [r["choice"] for r in runs if r.get("choice")]
    if choices and len(set(choices)) > 1:
        # Autotuning measures afresh in every round; say so when the rounds disagreed.
        row["choice"] = "; ".join(f"{c} ({choices.count(c)} of {len(choices)} rounds)"
                                  for c in sorted(set(choices)))
    return row


def _ratio(slow, fast):
    """`slow / fast` from the pooled medians, with its range over the rounds when there are
    several (each round's ratio from that round's own medians)."""
    text = f"{slow['median_s'] / fast['median_s']:.2f}x"
    pairs = list(zip(slow.get("round_medians", []), fast.get("round_medians", [])))
    if len(pairs) > 1:
        ratios = [a / b for a, b in pairs]
        text += f" ({min(ratios):.2f}-{max(ratios):.2f})"
    return text


def _cpu_model():
    """The CPU's model name, TensorFlow's thread variables where they are set and whether its
    oneDNN kernels run (every child inherits them, so they hold for both sides of every
    ratio)."""
    from keras_meta.maml.task_batching_autotune import (INTER_OP_ENV, INTRA_OP_ENV,
                                                        machine_description)
    threads = [f"{v}={os.environ[v]}" for v in (INTRA_OP_ENV, INTER_OP_ENV) if os.environ.get(v)]
    machine = machine_description()
    # oneDNN changes every convolution's kernel, and is off by default on AVX2-only CPUs.
    threads.append("oneDNN " + {True: "on", False: "off", None: "unknown"}[machine["onednn"]])
    return machine["cpu"] + f" ({', '.join(threads)})"


def _print_summary(rows):
    """The issue-17 table: plain / loop / batched / auto per workload, and the matmul peak."""
    peak = rows.get("matmul_peak", {}).get("gflops_per_s")
    if peak:
        print(f"float32 matmul peak: {peak:.0f} GFLOP/s "
              f"({rows['matmul_peak']['matmul_size']}x{rows['matmul_peak']['matmul_size']})\n")
    lines = []
    for workload, columns in SUMMARY.items():
        got = {k: rows.get(v) for k, v in columns.items()}
        if not any(got.values()):
            continue
        ms = "sinusoid" in workload
        unit = 1e3 if ms else 1.0

        def cell(key):
            r = got.get(key)
            return f"{r['median_s'] * unit:.{2 if ms else 3}f}" if r else "-"

        auto = got.get("auto")
        ratio = _ratio(got["plain"], auto) if auto and got.get("plain") else "-"
        rate = "-"
        if auto and auto.get("gflops_per_s"):
            rate = f"{auto['gflops_per_s']:.0f}"
            if peak:
                rate += f" ({100 * auto['gflops_per_s'] / peak:.0f}% of peak)"
        choice = f"{auto['choice']} (tuned in {auto['tuning_s']:.0f} s)" if auto and \
            auto.get("choice") else "-"
        # Against JAX: its time over keras-meta's faster of batched and auto (>1: we are faster).
        best = min((r for r in (got.get("batched"), auto) if r), key=lambda r: r["median_s"],
                   default=None)
        against_jax = _ratio(got["jax"], best) if got.get("jax") and best else "-"
        lines.append(f"| {workload} ({'ms' if ms else 's'}) | {cell('plain')} | {cell('loop')} | "
                     f"{cell('batched')} | {cell('auto')} | {cell('jax')} | {choice} | {ratio} | "
                     f"{against_jax} | {rate} |")
    if lines:
        print("| median per meta-iteration | plain TF | loop | batched | auto | JAX (vmap, one jit) "
              "| auto's choice | plain / auto | JAX / keras-meta's best | auto GFLOP/s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(lines) + "\n")


# --in_process: each Omniglot workload's auto row and the plain row it is compared with.
IN_PROCESS_PAIRS = {columns["auto"]: columns["plain"] for workload, columns in SUMMARY.items()
                    if workload.startswith("Omniglot")}


def run_pair(name):
    """Plain TF and keras-meta's `name` (an auto row) in this process, taking turns."""
    import keras
    import numpy as np
    import tensorflow as tf

    from interleaved import median_interval, time_interleaved
    from keras_meta.training.concrete_step import ConcreteStep

    spec, plain_spec = CONFIGS[name], CONFIGS[IN_PROCESS_PAIRS[name]]
    keras.utils.set_random_seed(0)
    episode = _episode(spec["task"], spec["meta_batch"], spec["ways"], spec["queries"])
    plain = tf.function(_plain_step(plain_spec["task"], plain_spec["first_order"],
                                    plain_spec["meta_batch"], plain_spec["ways"],
                                    plain_spec["inner"]))
    python_step, maml = _ours_step(spec)
    choice, _ = maml.autotune(episode, log=lambda m: print(m, file=sys.stderr, flush=True))
    ours = ConcreteStep(tf.function(python_step))
    milliseconds = time_interleaved(
        {"plain": lambda: plain(episode)[0], "auto": lambda: ours(episode)[0]},
        FLAGS.rounds, FLAGS.repeats, warmup=1 + FLAGS.warmup,  # tracing, then warm-up
        alternate=True, settle=FLAGS.settle)
    seconds = {key: [v / 1e3 for v in values] for key, values in milliseconds.items()}
    ratios = [p / a for p, a in zip(seconds["plain"], seconds["auto"])]
    low, high = median_interval(ratios) if len(ratios) > 1 else (ratios[0], ratios[0])
    print("PAIR " + json.dumps({
        "config": name, "plain": IN_PROCESS_PAIRS[name], "choice": choice.label,
        "plain_s": float(np.median(seconds["plain"])), "auto_s": float(np.median(seconds["auto"])),
        "ratio": float(np.median(ratios)), "interval": [low, high],
        "range": [min(ratios), max(ratios)], "seconds": seconds}), flush=True)


def _main_in_process(env):
    names = FLAGS.configs or list(IN_PROCESS_PAIRS)
    unknown = [n for n in names if n not in IN_PROCESS_PAIRS]
    if unknown:
        raise app.UsageError(f"--in_process takes the Omniglot auto rows; got {unknown}, "
                             f"expected some of {sorted(IN_PROCESS_PAIRS)}.")
    rows = []
    for name in names:
        print(f"running {IN_PROCESS_PAIRS[name]} against {name}, one process ...", flush=True)
        command = [sys.executable, os.path.abspath(__file__), f"--child_pair={name}",
                   f"--rounds={FLAGS.rounds}", f"--repeats={FLAGS.repeats}",
                   f"--warmup={FLAGS.warmup}", f"--settle={FLAGS.settle}"]
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run(command, capture_output=True, text=True,
                                 env=dict(env, KERAS_META_CACHE_DIR=cache))
        lines = [l for l in out.stdout.splitlines() if l.startswith("PAIR ")]
        if out.returncode or not lines:
            print(out.stderr[-3000:])
            print(f"{name} FAILED (exit {out.returncode})", flush=True)
            continue
        rows.append(json.loads(lines[-1][5:]))
        if FLAGS.output:
            with open(FLAGS.output, "w") as f:
                json.dump(rows, f, indent=2)
    print(f"\ncommand: python {' '.join(sys.argv)}")
    print(f"CPU: {_cpu_model()}, {os.cpu_count()} CPUs; one process per workload, {FLAGS.rounds} "
          f"rounds of {FLAGS.repeats} calls each, taking turns"
          + (f", each turn after {FLAGS.settle} untimed" if FLAGS.settle else "") + "\n")
    print("| workload | plain TF (s) | auto (s) | auto's choice | plain / auto, median of rounds "
          "(90% interval) | range over rounds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['plain_s']:.3f} | {r['auto_s']:.3f} | {r['choice']} | "
              f"**{r['ratio']:.2f}x** ({r['interval'][0]:.2f}-{r['interval'][1]:.2f}) | "
              f"{r['range'][0]:.2f}-{r['range'][1]:.2f} |")


def main(argv):
    if FLAGS.child:
        run_child(FLAGS.child)
        return
    if FLAGS.child_pair:
        run_pair(FLAGS.child_pair)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    # "auto" measures from an empty timings cache in every child, as on a new machine.
    env["KERAS_META_AUTOTUNE"] = "1"
    if FLAGS.in_process:
        _main_in_process(env)
        return
    names = FLAGS.configs or SUMMARY_CONFIGS
    if names == ["all"]:
        names = SUMMARY_CONFIGS + [n for n in DEFAULT_CONFIGS if n not in SUMMARY_CONFIGS]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise app.UsageError(f"Unknown --configs {unknown}; known: {sorted(CONFIGS)}.")
    if FLAGS.jax_python and not (os.path.isfile(FLAGS.jax_python)
                                 and os.access(FLAGS.jax_python, os.X_OK)):
        raise app.UsageError(f"--jax_python={FLAGS.jax_python!r} is not an executable file; "
                             "expected the path of a Python that has JAX installed.")
    rows = []
    if FLAGS.tensor_memory:
        # TensorFlow's BFC allocator on the CPU keeps statistics (current and peak bytes of
        # live tensors), like the GPU allocator does; the default CPU allocator keeps none.
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    # The trainer rows prepare Omniglot once, here or in --data_dir.
    data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="meta_step_tfds_")
    failed, skipped = set(), set()
    runs = {}  # config -> its rows, one per round
    for round_index, name in [(r, n) for r in range(FLAGS.rounds) for n in names]:
        if name in failed or name in skipped:
            continue
        print(f"running {name} ..." + (f" (round {round_index + 1} of {FLAGS.rounds})"
                                       if FLAGS.rounds > 1 else ""), flush=True)
        if CONFIGS[name]["impl"] == "jax":
            command = [FLAGS.jax_python or sys.executable,
                       os.path.join(root, "benchmarks", "jax_sinusoid.py"),
                       f"--steps={CONFIGS[name]['steps']}", f"--repeats={FLAGS.repeats}",
                       f"--warmup={FLAGS.warmup}", f"--min_seconds={FLAGS.min_seconds}",
                       f"--name={name}"]
        else:
            command = ([sys.executable, os.path.abspath(__file__), f"--child={name}",
                        f"--repeats={FLAGS.repeats}", f"--warmup={FLAGS.warmup}",
                        f"--min_seconds={FLAGS.min_seconds}",
                        f"--count_flops_everywhere={FLAGS.count_flops_everywhere}"]
                       + ([f"--omniglot_source_dir={FLAGS.omniglot_source_dir}",
                           f"--data_dir={data_dir}"] if FLAGS.omniglot_source_dir else []))
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run(command, capture_output=True, text=True,
                                 env=dict(env, KERAS_META_CACHE_DIR=cache))
        lines = [l for l in out.stdout.splitlines() if l.startswith("ROW ")]
        if CONFIGS[name]["impl"] == "jax" and "No module named 'jax'" in out.stderr:
            print(f"{name} skipped: no JAX in {command[0]} (install jax[cpu] there, or pass "
                  f"--jax_python=PYTHON_WITH_JAX)", flush=True)
            skipped.add(name)
            continue
        if out.returncode or not lines:
            # One failed row is reported, not allowed to lose the others' figures.
            print(out.stderr[-3000:])
            print(f"{name} FAILED (exit {out.returncode})", flush=True)
            failed.add(name)
            continue
        runs.setdefault(name, []).append(json.loads(lines[-1][4:]))
        rows = [_pooled(runs[n]) for n in names if n in runs]
        if FLAGS.output:
            with open(FLAGS.output, "w") as f:
                json.dump(rows, f, indent=2)
    print(f"\ncommand: python {' '.join(sys.argv)}")
    print(f"CPU: {_cpu_model()}, {os.cpu_count()} CPUs; {FLAGS.repeats} timed iterations after "
          f"{FLAGS.warmup} warm-up" + (f", in each of {FLAGS.rounds} interleaved rounds "
                                       f"(medians over all of them)" if FLAGS.rounds > 1 else "")
          + (f"; skipped (no JAX): {', '.join(sorted(skipped))}" if skipped else "") + "\n")
    by_name = {r["config"]: r for r in rows}
    _print_summary(by_name)
    for shared, unshared in SHARED_PAIRS:
        if shared in by_name and unshared in by_name:
            a, b = by_name[shared]["median_s"], by_name[unshared]["median_s"]
            print(f"shared first step: {shared} {a * 1e3:.2f} ms against {b * 1e3:.2f} ms "
                  f"without it: {_ratio(by_name[unshared], by_name[shared])}")
    for name, row in by_name.items():
        one = by_name.get(name.replace("_inter_op_1", ""))
        if name.endswith("_inter_op_1") and one:
            print(f"one op at a time: {name} {row['median_s'] * 1e3:.1f} ms against "
                  f"{one['median_s'] * 1e3:.1f} ms with the default inter-op threads: "
                  f"{_ratio(one, row)}")
    for r in rows:
        other = by_name.get(r.get("compare"))
        if other:
            pairs = list(zip(r.get("round_medians", []), other.get("round_medians", [])))
            spread = (f" (rounds: {', '.join(f'{100 * (a / b - 1):+.0f}%' for a, b in pairs)})"
                      if len(pairs) > 1 else "")
            timing = r.get("time_breakdown")
            steps = (f"; its calls {100 * timing['steps_seconds'] / timing['window_seconds']:.1f}%"
                     " of its time" if timing else "")
            print(f"trainer: {r['config']} {r['median_s'] * 1e3:.2f} ms per iteration against "
                  f"{other['config']} {other['median_s'] * 1e3:.2f} ms: "
                  f"{100 * (r['median_s'] / other['median_s'] - 1):+.0f}%{spread}{steps}")
    print()
    print("| configuration | median s | min s | max s | first call s | peak RSS MiB | "
          "peak tensor MiB | GFLOP | GFLOP/s | auto's choice (tuning s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["config"] == "matmul_peak" or r.get("compare"):
            continue
        g = f"{r['gflop']:.1f}" if r["gflop"] else "-"
        gs = f"{r['gflops_per_s']:.1f}" if r["gflops_per_s"] else "-"
        sp = f"{r['tensor_peak_mib']:.0f}" if r.get("tensor_peak_mib") else "-"
        choice = (f"{r['choice']} ({r['tuning_s']:.0f})" if r.get("choice") else "-")
        print(f"| {r['config']} | {r['median_s']:.4f} | {r['min_s']:.4f} | {r['max_s']:.4f} | "
              f"{r['first_call_s']:.1f} | {r['peak_rss_mib']:.0f} | {sp} | {g} | {gs} | "
              f"{choice} |")
    if failed:
        print(f"FAILED: {', '.join(sorted(failed))}")
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
