"""Data-parallel MAML meta-training with `tf.distribute`: the meta-batch is split across replicas.

Each replica adapts to its share of the meta-batch's tasks and computes the meta-gradient of
its share. The meta-loss is the *mean* over the whole meta-batch, so a replica's objective is
its local mean divided by the number of replicas: the Keras TF-backend optimizer all-reduces
gradients with SUM inside `apply_gradients` (replica context), and the sum of the replicas'
shares is then exactly the single-device meta-gradient of the whole meta-batch.

Running statistics (per-step batch norm) are threaded task after task within a replica; after
the step every replica's resulting state is averaged (`ReduceOp.MEAN`) and assigned.
"""

import weakref

import numpy as np
import tensorflow as tf

from keras_meta.core.losses import replica_loss_weight
from keras_meta.training.accelerator import connect_tpu

# The strategies a run can use, by name (`MAMLTrainConfig.strategy`, the trainer's --strategy).
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def make_strategy(name, *, tpu=None, devices=None):
    """A `tf.distribute.Strategy` by name.

    Args:
        name: `"default"` (no distribution: `tf.distribute.get_strategy()`), `"one_device"`
            (the first GPU if any, else the CPU), `"mirrored"` (`MirroredStrategy` over
            `devices`, default: all local GPUs, else the CPU), `"multi_worker"`
            (`MultiWorkerMirroredStrategy`; the cluster comes from the `TF_CONFIG` environment
            variable) or `"tpu"` (`TPUStrategy`).
        tpu: the TPU address or name for `TPUClusterResolver` (`"local"`, `"grpc://..."`, a
            Cloud TPU name); `None` lets the resolver find it (Colab, TPU VMs).
        devices: device strings for `"one_device"` (its first entry) or `"mirrored"`.

    Returns:
        The strategy. Create the model, the learned rates and the optimizer under its
        `scope()`.

    Raises:
        ValueError: for an unknown name, or options the strategy does not take.
        RuntimeError: when no TPU can be found or initialised.

    Example:

    >>> strategy = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    >>> with strategy.scope():
    ...     maml = MAML(mlp(), inner_lr=0.01, loss="mse")
    ...     maml.compile(keras.optimizers.Adam(1e-3))
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")
    if tpu is not None and name != "tpu":
        raise ValueError(f"tpu={tpu!r} applies only to strategy 'tpu'; got strategy {name!r}.")
    if devices is not None and name not in ("one_device", "mirrored"):
        raise ValueError(f"devices applies only to 'one_device' and 'mirrored'; got strategy "
                         f"{name!r} with devices={devices!r}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        if devices:
            device = devices[0]
        else:
            device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return connect_tpu(tpu)


def replica_meta_batch_size(meta_batch_size, strategy):
    """The number of tasks each replica gets; raises `ValueError` unless it divides evenly."""
    replicas = strategy.num_replicas_in_sync
    if meta_batch_size % replicas:
        raise ValueError(
            f"The meta-batch size {meta_batch_size} does not divide evenly across the "
            f"{replicas} replicas of {type(strategy).__name__}: use a multiple of {replicas} "
            "(every replica needs the same number of tasks).")
    return meta_batch_size // replicas


def distribute_episodes(strategy, dataset):
    """Splits a dataset of global meta-batches into per-replica meta-batches.

    Replica `r` of `n` gets tasks `[r * B/n, (r+1) * B/n)` of each global meta-batch of `B`
    tasks (static shapes kept), which is what makes the distributed step match one device.
    """
    meta_batch = dataset.element_spec[0].shape[0]
    if meta_batch is None:
        raise ValueError("Distributed MAML needs a static meta-batch size: batch the episode "
                         "dataset with `drop_remainder=True`.")
    replica_meta_batch_size(meta_batch, strategy)
    return strategy.experimental_distribute_dataset(dataset)


def worker_episodes(strategy, make_dataset, start_iteration, meta_batch_size):
    """The distributed stream of meta-batches where each worker samples only its own tasks.

    `make_dataset(start_index, shard=(worker, num_workers))` is a task family's
    `train_dataset`: worker `w` draws tasks `[w*B/n, (w+1)*B/n)` of every global meta-batch
    of `B` tasks, a pure function of the seed, the worker and the iteration, so a resumed
    worker continues its own stream exactly. A worker's replicas take consecutive slices of
    its share, which keeps the global task order of a one-process run.

    Args:
        strategy: a multi-worker strategy (any `tf.distribute.Strategy` works).
        make_dataset: `(start_index, shard) -> dataset` of per-worker meta-batches.
        start_iteration: the first iteration of the stream (a resumed run's step).
        meta_batch_size: the global meta-batch size.
    """
    per_replica = replica_meta_batch_size(meta_batch_size, strategy)

    def dataset_fn(context):
        shard = (context.input_pipeline_id, context.num_input_pipelines)
        dataset = make_dataset(start_iteration * meta_batch_size, shard=shard)
        if per_replica * context.num_input_pipelines != meta_batch_size:
            # Several replicas per worker: each takes the next slice of the worker's share.
            dataset = dataset.unbatch().batch(per_replica, drop_remainder=True)
        return dataset

    return strategy.distribute_datasets_from_function(dataset_fn)


# One traced gather per strategy (and shape), dropped with the strategy.
_GATHER_FUNCTIONS = weakref.WeakKeyDictionary()


def all_gather_rows(strategy, rows):
    """Every worker's `rows` (the same shape `[k, ...]` on all), stacked in worker order.

    A collective: every worker must call it, with rows of the same shape and dtype.

    Returns:
        A NumPy array `[num_workers * k, ...]`.
    """
    rows = np.asarray(rows)
    if strategy not in _GATHER_FUNCTIONS:
        def replica_gather(values):
            # The copy puts the rows on the replica's own device: the collective cannot
            # address the host job's device, where the function's input lives.
            return tf.distribute.get_replica_context().all_gather(tf.identity(values), axis=0)

        _GATHER_FUNCTIONS[strategy] = tf.function(
            lambda values: strategy.run(replica_gather, args=(values,)))
    local = strategy.experimental_local_results(_GATHER_FUNCTIONS[strategy](rows))[0].numpy()
    # Each of a worker's replicas contributed the same rows: keep one block per worker.
    local_replicas = len(strategy.extended.worker_devices)
    blocks = local.reshape((-1, local_replicas) + tuple(rows.shape))
    return blocks[:, 0].reshape((-1,) + tuple(rows.shape[1:]))


def distributed_meta_gradients(maml, strategy, dist_episodes):
    """The all-reduced meta-gradient and mean meta-loss of a distributed meta-batch.

    The same per-replica objective as `distributed_meta_train_step`, without applying it;
    equal (to float rounding) to `maml.meta_gradients` of the whole meta-batch on one device.
    Call it inside a `tf.function` for multi-device strategies.

    Returns:
        `(meta_loss, grads)`, `grads` aligned with `maml.trainable_variables`.
    """
    def share(episodes):
        loss, grads, _ = maml.meta_gradients(episodes, loss_weight=replica_loss_weight())
        return loss, grads

    loss, grads = strategy.run(share, args=(dist_episodes,))
    loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)
    grads = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
    return loss, grads


def distributed_meta_train_step(maml, strategy, dist_episodes, return_preds=True,
                                first_order=None):
    """One outer step with the meta-batch split across the strategy's replicas.

    Every replica runs `maml.replica_meta_train_step` on its tasks; the optimizer sums the
    replicas' gradient shares. The running statistics take the mean over replicas of the state
    each replica reached after its tasks (each replica starts from the same variables, so on
    one device the state would instead be threaded through all tasks in turn).
    Wrap it in a `tf.function`.

    Args:
        return_preds: gather the query predictions of every replica (a collective each step:
            the trainer, which does not use them, passes False).

    Returns:
        `(meta_loss, query_preds)`: the mean meta-loss over all tasks and the predictions
        gathered in the global task order (`None` with `return_preds=False`).
    """
    loss, preds, state = strategy.run(maml.replica_meta_train_step,
                                      args=(dist_episodes,), kwargs={"first_order": first_order})
    loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)
    for variable, value in zip(maml.model.non_trainable_variables, state or ()):
        variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))
    if not return_preds:
        return loss, None
    return loss, strategy.gather(preds, axis=0)
