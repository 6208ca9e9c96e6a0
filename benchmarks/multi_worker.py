r"""Multi-worker MAML against one process: seconds per meta-iteration, and the all-reduce cost.

    python benchmarks/multi_worker.py                       # sinusoid and Omniglot 5w1s
    python benchmarks/multi_worker.py --configs=omniglot_5w1s --workers=2 --repeats=20

For each configuration, in one run:
* **one process** times the compiled outer step (meta-gradient + Adam) on the whole global
  meta-batch;
* **N local workers** (`trainers.launch_local`, MultiWorkerMirroredStrategy, one CPU device
  each) time the same global meta-batch, each worker adapting to its 1/N of the tasks, plus
  one all-reduce of the meta-gradient's bytes alone.

The episodes are synthetic (random images of Omniglot's shape), so nothing needs a dataset.
On one machine the workers share its cores: this measures the overhead of the multi-worker
machinery, not a speed-up. The printed model says what N machines should give: per step,
the compute of B/N tasks plus one ring all-reduce of the gradient, whose time is measured
here on the loopback and extrapolated with the bandwidth `--network_gbps`; the compute is
one process's measured step on B/N tasks (not B divided by N: small batches use the cores
less well).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["sinusoid", "omniglot_5w1s"], "Configurations to run.")
flags.DEFINE_integer("workers", 2, "Local worker processes.")
flags.DEFINE_integer("repeats", 20, "Timed iterations.")
flags.DEFINE_integer("warmup", 3, "Untimed iterations after tracing.")
flags.DEFINE_float("network_gbps", 10.0, "Network bandwidth (Gbit/s) for the N-machine model.")
flags.DEFINE_string("child", None, "Internal: run one configuration in this process.")
flags.DEFINE_string("output", None, "Internal: where a child writes its measurements.")
flags.DEFINE_integer("share", 1, "Internal: a one-process child times 1/share of the tasks.")

# The machine counts of the model.
MACHINES = (2, 4, 8)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The global meta-batch is divisible by 2, 4 and 8 workers.
CONFIGS = {
    "sinusoid": dict(kind="mlp", meta_batch=32, inner_steps=1),
    "omniglot_5w1s": dict(kind="conv4", meta_batch=32, inner_steps=1, ways=5, shots=1,
                          queries=15),
}


def _episodes(config, share, num_shares, seed=0):
    import numpy as np
    import tensorflow as tf

    import keras_meta as km

    rng = np.random.default_rng(seed)
    b = config["meta_batch"]
    if config["kind"] == "mlp":
        arrays = [rng.uniform(-5, 5, (b, 10, 1)), rng.normal(size=(b, 10, 1)),
                  rng.uniform(-5, 5, (b, 10, 1)), rng.normal(size=(b, 10, 1))]
    else:
        n, k, q = config["ways"], config["shots"], config["queries"]
        arrays = [rng.random((b, n * k, 28, 28, 1)), np.tile(np.arange(n), (b, k)),
                  rng.random((b, n * q, 28, 28, 1)), np.tile(np.arange(n), (b, q))]
    per = b // num_shares
    arrays = [a[share * per:(share + 1) * per] for a in arrays]
    return km.Episode(*(tf.constant(a, tf.int32 if a.dtype.kind == "i" else tf.float32)
                        for a in arrays))


def _build(config, strategy):
    import keras

    import keras_meta as km

    with strategy.scope():
        keras.utils.set_random_seed(0)
        if config["kind"] == "mlp":
            maml = km.MAML(km.backbones.mlp(), inner_lr=0.01, loss="mse")
        else:
            maml = km.MAML(km.backbones.conv4(config["ways"]), inner_lr=0.4,
                           inner_steps=config["inner_steps"],
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        maml.compile(keras.optimizers.Adam(1e-3))
    return maml


def _time(function, warmup, repeats):
    first = time.perf_counter()
    function()
    first = time.perf_counter() - first
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return first, times


def child(name, output):
    import numpy as np
    import tensorflow as tf

    from keras_meta.training import distribute as kd

    config = CONFIGS[name]
    row = {"config": name, "meta_batch": config["meta_batch"]}
    if os.environ.get("TF_CONFIG"):
        from keras_meta.training.cluster import cluster_role, start_multi_worker

        role = cluster_role()
        strategy = start_multi_worker(role, timeout_seconds=120, printer=lambda *a, **k: None)
        maml = _build(config, strategy)
        episodes = strategy.experimental_distribute_values_from_function(
            lambda ctx: _episodes(config, ctx.replica_id_in_sync_group,
                                  ctx.num_replicas_in_sync))
        # As the trainer runs it: the query predictions stay on their workers.
        step = tf.function(lambda e: kd.distributed_meta_train_step(maml, strategy, e,
                                                                    return_preds=False))
        first, times = _time(lambda: step(episodes)[0].numpy(), FLAGS.warmup, FLAGS.repeats)
        params = sum(int(np.prod(v.shape)) for v in maml.trainable_variables)
        gradient = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.ones([params]))
        reduce = tf.function(lambda g: strategy.reduce("SUM", g, axis=None))
        _, reduce_times = _time(lambda: reduce(gradient).numpy(), FLAGS.warmup, FLAGS.repeats)
        row.update(workers=role.num_workers, allreduce_s=statistics.median(reduce_times))
        if not role.is_chief:
            return
    else:
        maml = _build(config, tf.distribute.get_strategy())
        # One worker's compute on N machines: the step on its B/N tasks alone.
        episodes = _episodes(config, 0, FLAGS.share)
        step = tf.function(maml.meta_train_step)
        first, times = _time(lambda: step(episodes)[0].numpy(), FLAGS.warmup, FLAGS.repeats)
        params = sum(int(np.prod(v.shape)) for v in maml.trainable_variables)
        row.update(workers=1, tasks=config["meta_batch"] // FLAGS.share)
    row.update(params=params, gradient_bytes=4 * params, first_s=first,
               median_s=statistics.median(times), min_s=min(times), max_s=max(times))
    with open(output, "w") as f:
        json.dump(row, f)


def _run_child(name, workers, folder, share=1):
    output = os.path.join(folder, f"{name}-{workers}-{share}.json")
    args = [f"--child={name}", f"--output={output}", f"--repeats={FLAGS.repeats}",
            f"--warmup={FLAGS.warmup}", f"--share={share}"]
    if workers == 1:
        command = [sys.executable, os.path.abspath(__file__), *args]
    else:
        command = [sys.executable, "-m", "trainers.launch_local", f"--num_workers={workers}",
                   f"--program={os.path.abspath(__file__)}", "--", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    with open(output) as f:
        return json.load(f)


def main(argv):
    del argv
    if FLAGS.child:
        return child(FLAGS.child, FLAGS.output)
    unknown = sorted(set(FLAGS.configs) - set(CONFIGS))
    if unknown:
        raise app.UsageError(f"--configs: unknown {unknown}; expected some of {sorted(CONFIGS)}.")
    if FLAGS.workers < 2:
        raise app.UsageError(f"--workers={FLAGS.workers}: expected >= 2.")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in FLAGS.configs:
            print(f"running {name}: 1 process, then {FLAGS.workers} workers ...", flush=True)
            shares = {n: _run_child(name, 1, folder, share=n) for n in MACHINES}
            rows.append((_run_child(name, 1, folder), _run_child(name, FLAGS.workers, folder),
                         shares))
    print(f"\ncommand: python {' '.join(sys.argv)}")
    print(f"{os.cpu_count()} CPUs shared by all workers; median of {FLAGS.repeats} iterations "
          f"after {FLAGS.warmup} warm-up\n")
    print(f"| configuration | meta-batch | gradient MiB | 1 process s/iter | {FLAGS.workers} "
          "workers s/iter | ratio | all-reduce s (loopback) |")
    print("|---|---|---|---|---|---|---|")
    for one, many, _ in rows:
        print(f"| {one['config']} | {one['meta_batch']} | {one['gradient_bytes'] / 2**20:.3f} | "
              f"{one['median_s']:.4f} | {many['median_s']:.4f} | "
              f"{many['median_s'] / one['median_s']:.2f} | {many['allreduce_s']:.5f} |")
    bandwidth = FLAGS.network_gbps * 1e9 / 8
    print(f"\nN separate machines (model: one process's measured step on B/N tasks, plus a "
          f"ring all-reduce of the gradient at {FLAGS.network_gbps:g} Gbit/s, 2(N-1)/N x bytes "
          "/ bandwidth, plus the all-reduce latency measured above on the loopback):\n")
    print("| configuration | N | step on B/N tasks s | all-reduce s | step s | speed-up |")
    print("|---|---|---|---|---|---|")
    for one, many, shares in rows:
        for n in MACHINES:
            compute = shares[n]["median_s"]
            reduce = 2 * (n - 1) / n * one["gradient_bytes"] / bandwidth + many["allreduce_s"]
            print(f"| {one['config']} | {n} | {compute:.4f} | {reduce:.5f} | "
                  f"{compute + reduce:.4f} | {one['median_s'] / (compute + reduce):.2f}x |")


if __name__ == "__main__":
    app.run(main)
