"""Meta-gradients and Adam steps of MAML on a multi-worker cluster, or in one process.

Run by every worker of a local cluster (`python -m trainers.launch_local
--program=tests/training/multi_worker_probe.py -- OUT.npz`), the chief writes what the
cluster computed to OUT.npz; `test_multi_worker.py` imports `single_process` for the
reference and compares. Both sides see the same global meta-batches, built here from a
seed; each worker takes its share of the tasks, as the trainer's streams do.
"""

import sys

import keras
import numpy as np
import tensorflow as tf

import keras_meta as km
from keras_meta.training import distribute as kd

# (model, task_batching): conv4 with batch norm on the task-batched default path, and the
# sinusoid MLP on the per-task loop. Each model and each path is crossed with the cluster
# once: the two paths agree in one process (tests/core/test_batching.py), and the sharding
# of tasks and of the meta-loss above them is the same code for both. conv4 on the loop, the
# slowest trace here, doubled the probe's cost for no path of its own.
CASES = (("mlp", "loop"), ("conv4", "batched"))
META_BATCH = 4
ADAM_STEPS = 3


def global_batch(kind, iteration):
    """The global meta-batch of `iteration` as NumPy arrays (support_x, y, query_x, y)."""
    rng = np.random.default_rng(1000 + iteration)
    if kind == "mlp":
        amplitude = rng.uniform(0.1, 5.0, (META_BATCH, 1, 1))
        phase = rng.uniform(0, np.pi, (META_BATCH, 1, 1))
        sx, qx = rng.uniform(-5, 5, (META_BATCH, 5, 1)), rng.uniform(-5, 5, (META_BATCH, 5, 1))
        return (sx.astype(np.float32), (amplitude * np.sin(sx - phase)).astype(np.float32),
                qx.astype(np.float32), (amplitude * np.sin(qx - phase)).astype(np.float32))
    sx = rng.random((META_BATCH, 3, 8, 8, 1)).astype(np.float32)
    qx = rng.random((META_BATCH, 6, 8, 8, 1)).astype(np.float32)
    return (sx, np.tile(np.arange(3, dtype=np.int32), (META_BATCH, 1)),
            qx, np.tile(np.arange(3, dtype=np.int32), (META_BATCH, 2)))


def build(kind, batching, strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        if kind == "mlp":
            maml = km.MAML(km.backbones.mlp(hidden=(16, 16)), inner_lr=0.05, inner_steps=2,
                           task_batching=batching, loss="mse")
        else:
            base = km.backbones.conv4(3, input_shape=(8, 8, 1), filters=4,
                                      batch_norm="transductive")
            maml = km.MAML(base, inner_lr=0.1, inner_steps=1, task_batching=batching,
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        maml.compile(keras.optimizers.Adam(1e-2))
    return maml


def _episode(arrays):
    return km.Episode(*(tf.constant(a) for a in arrays))


def single_process(kind, batching):
    """`{"loss", "grads", "weights"}` of one process on the whole meta-batches."""
    maml = build(kind, batching, tf.distribute.get_strategy())
    # Both sides in graphs: eager and graph execution already differ by float32 rounding.
    loss, grads, _ = tf.function(maml.meta_gradients)(_episode(global_batch(kind, 0)))
    step = tf.function(maml.meta_train_step)
    for i in range(ADAM_STEPS):
        step(_episode(global_batch(kind, i)))
    return {"loss": float(loss), "grads": [g.numpy() for g in grads],
            "weights": [v.numpy() for v in maml.trainable_variables]}


def distributed(kind, batching, strategy):
    """The same as `single_process`, each worker computing its share of every meta-batch."""
    maml = build(kind, batching, strategy)
    per_replica = kd.replica_meta_batch_size(META_BATCH, strategy)

    def dataset_fn(context):
        lo = context.input_pipeline_id * per_replica
        shares = [tuple(a[lo:lo + per_replica] for a in global_batch(kind, i))
                  for i in range(ADAM_STEPS)]
        stacked = tuple(np.stack(field) for field in zip(*shares))
        return tf.data.Dataset.from_tensor_slices(stacked).map(lambda *a: km.Episode(*a))

    batches = iter(strategy.distribute_datasets_from_function(dataset_fn))
    first = next(batches)
    loss, grads = tf.function(lambda e: kd.distributed_meta_gradients(maml, strategy, e))(first)
    step = tf.function(lambda e: kd.distributed_meta_train_step(maml, strategy, e))
    step(first)
    for _ in range(ADAM_STEPS - 1):
        step(next(batches))
    return {"loss": float(loss), "grads": [g.numpy() for g in grads],
            "weights": [v.numpy() for v in maml.trainable_variables]}


def flatten(results):
    """`{name: array}` for `np.savez`."""
    out = {}
    for (kind, batching), r in results.items():
        out[f"{kind}-{batching}/loss"] = np.float64(r["loss"])
        for name in ("grads", "weights"):
            for i, value in enumerate(r[name]):
                out[f"{kind}-{batching}/{name}/{i}"] = value
    return out


def main(out_path):
    from keras_meta.training.cluster import cluster_role, finish_together, start_multi_worker

    role = cluster_role()
    strategy = start_multi_worker(role, timeout_seconds=60)
    results = {case: distributed(*case, strategy) for case in CASES}
    if role.is_chief:
        np.savez(out_path, **flatten(results))
    # The last collective may still be pulling from a peer: nobody leaves before everyone.
    finish_together(role, timeout_seconds=60)
    print(f"[probe] {role.name}: {len(CASES)} cases done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
