"""The meta-training loop behind `keras-meta-train`: config -> checkpoints -> eval JSON.

A custom loop rather than `fit()`, because it must (1) resume exactly, data included, after a
kill, (2) refuse to checkpoint a NaN model, and (3) keep the best checkpoint by validation.
Episode streams are pure functions of (seed, episode index), so resuming at step `s` restarts
the stream at episode `s * meta_batch_size` instead of serialising iterator buffers. What a
run directory keeps about itself (the config inside each checkpoint, the history of resumes,
corrupt-checkpoint fallback) is `run_state.py`.
"""

import json
import math
import os
import shutil
import time
import zlib

import keras
import numpy as np
import tensorflow as tf

from keras_meta.maml.task_batching_autotune import autotune_enabled, machine_description
from keras_meta.training import run_state
from keras_meta.data.episode_indices import shard_meta_batch_size
from keras_meta.training.cluster import (PEER_ERRORS, TF_CONFIG_ENV, ClusterError,
                                         cluster_role, finish_together, start_multi_worker,
                                         worker_lost)
from keras_meta.training.concrete_step import ConcreteStep
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.distribute import (all_gather_rows, distribute_episodes,
                                            distributed_meta_train_step, make_strategy,
                                            replica_meta_batch_size, worker_episodes)
from keras_meta.training.episode_pool import EpisodePool
from keras_meta.training.evaluation import TaskEvaluator, per_task_lists, summarize
from keras_meta.training.progress import Progress, crossed
from keras_meta.training.time_breakdown import TimeBreakdown
from keras_meta.training.time_breakdown import describe as describe_breakdown
from keras_meta.training.task_families import (build_maml, build_task_family,
                                               check_before_run, complete_config,
                                               meta_learning_rate)

CONFIG_FILE = run_state.CONFIG_FILE
RESULTS_FILE = "eval_results.json"
# The classes of each meta-split when the run started (image datasets, whose folders can change).
CLASSES_FILE = "classes.json"


def _write_json_atomically(path, value):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def _check_same_classes(model_dir, classes):
    """Refuses to resume a run whose meta-splits now hold other classes than when it started.

    A folder that gained or lost classes re-splits them (a seeded random split moves classes
    between splits): resuming would then train on classes the run's first part tested on, and
    the reported test would no longer be held out.
    """
    path = os.path.join(model_dir, CLASSES_FILE)
    if classes is None or not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    if saved == classes:
        return
    from keras_meta.data.data_error import DataError

    changes = []
    for split in sorted(set(saved) | set(classes)):
        before, now = set(saved.get(split, [])), set(classes.get(split, []))
        if before != now:
            changes.append(f"{split}: {len(now - before)} added (e.g. {sorted(now - before)[:3]}), "
                           f"{len(before - now)} gone (e.g. {sorted(before - now)[:3]})")
    raise DataError(
        f"The data's meta-splits changed since this run started in {model_dir} ("
        + "; ".join(changes or ["same classes, another order"]) + "); resuming would train and "
        f"test on other classes than the checkpoints did. Restore the data as it was (its "
        f"classes are in {path}) or start a new model_dir.")


def _saved_config(model_dir, printer, writer=True):
    """The config of the run already in `model_dir` (its newest intact checkpoint's), or None.

    Corrupt checkpoints are set aside here, before anything is built, with a warning (by the
    process that writes the run directory; other workers only read it).
    """
    latest, _ = run_state.intact_checkpoints(os.path.join(model_dir, "checkpoints"), printer,
                                             set_aside=writer)
    run_state.intact_checkpoints(os.path.join(model_dir, "best"), printer, set_aside=writer)
    if not latest:
        return None
    saved = run_state.config_of_checkpoint(latest[0])
    if saved is None:
        # A checkpoint written before configs travelled inside checkpoints.
        saved = run_state.read_config_file(os.path.join(model_dir, CONFIG_FILE))
    return saved


def _tidy_and_read(model_dir, config, printer, writer=True):
    """Removes a killed run's leftovers (writer only); returns the resume's `(saved, changes)`.

    A changed resume is refused here, before anything is built or written.
    """
    if writer:
        leftovers = [path for sub in ("checkpoints", "best")
                     for path in run_state.remove_leftovers(os.path.join(model_dir, sub))]
        # save()'s atomic copy of config.json is written beside the checkpoints, at every save.
        leftovers += run_state.remove_leftovers(
            model_dir, patterns=(run_state.ATOMIC_WRITE_LEFTOVERS,))
        for path in leftovers:
            printer(f"[train] removed {path}, left by an interrupted checkpoint write", flush=True)
    saved = _saved_config(model_dir, printer, writer)
    changes = run_state.resume_changes(saved, config) if saved is not None else {}
    return saved, changes


def _refuse_ignored_cluster(config):
    """A cluster in TF_CONFIG that this run would ignore is an error, not N lone runs."""
    try:
        role = cluster_role()
    except ValueError:
        return
    if role.num_workers > 1:
        raise ValueError(
            f"{TF_CONFIG_ENV} describes a cluster of {role.num_workers} tasks, but "
            f"strategy={config.strategy!r}: every task would train alone into the same "
            "model_dir. Use strategy='multi_worker' (--strategy=multi_worker), or unset "
            f"{TF_CONFIG_ENV}.")


def _printer(verbose, role):
    if not verbose:
        return lambda *a, **k: None
    if role is None or role.is_chief:
        return print

    # The chief reports the run; the other workers print only what concerns them.
    def worker_printer(message, **kwargs):
        if message.startswith(("[cluster]", "[warning]")):
            print(message, **kwargs)
    return worker_printer


def _describe(changes):
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())


def _threads_running():
    """TensorFlow's pool sizes for the run's record (0: one per core, TensorFlow's default),
    and whether its oneDNN kernels run. They change the order of float sums, so two runs that
    differ only in them can differ in the last bits of their weights."""
    machine = machine_description()
    return {name: machine[name] for name in ("intra_op_threads", "inter_op_threads", "onednn")}


def _all_finite(variables):
    return all(bool(np.all(np.isfinite(v.numpy()))) for v in variables)


def _headline(summary, classification):
    steps = next(iter(summary))
    return summary[steps]["accuracy" if classification else "loss"]["mean"]


def _skipped_by_loss_scaling(maml):
    """Whether a non-finite meta-loss is a step `LossScaleOptimizer` skipped (mixed float16).

    The inner gradients are scaled by the optimizer's loss scale, so while the scale is too
    high they overflow, the meta-loss itself is non-finite, and the optimizer skips the step
    and halves the scale. Once the scale has fallen below 1 overflow is no longer the cause.
    """
    optimizer = maml.optimizer
    return (isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            and float(optimizer.dynamic_scale.numpy()) >= 1.0)


def train(config, model_dir, *, verbose=True):
    """Meta-trains MAML as `config` says, in `model_dir`; resumes if a checkpoint is there.

    Writes `config.json`, checkpoints under `checkpoints/` (latest) and `best/` (by
    validation), TensorBoard summaries under `logs/`, and the final test summary to
    `eval_results.json`. Raises `FloatingPointError` on a NaN/Inf meta-loss without
    checkpointing the diverged model.

    With `config.strategy`, meta-training runs under that `tf.distribute` strategy (each
    replica takes an equal share of the meta-batch); with `config.mixed_precision`, the Keras
    global dtype policy is set while the model is built and restored before returning.

    Returns:
        The dict written to `eval_results.json`.
    """
    if not isinstance(config, MAMLTrainConfig):
        raise TypeError(f"train() needs a MAMLTrainConfig; got {type(config).__name__}.")
    # Impossible sizes are refused here, before any data loads or any memory is taken.
    check_before_run(config)
    # The serving inputs travel with the run, so that an export needs no dataset.
    config = complete_config(config)
    role = None
    if config.strategy != "multi_worker" and os.environ.get(TF_CONFIG_ENV):
        _refuse_ignored_cluster(config)
    if config.strategy == "multi_worker":
        # Who this process is, and whether the meta-batch splits, before anything starts.
        role = cluster_role()
        shard_meta_batch_size(config.meta_batch_size, (0, role.num_workers))
    printer = _printer(verbose, role)
    # Every worker reads the run directory before the cluster forms; the chief also tidies
    # it first. Forming the cluster is a barrier, and the chief joins only once it is done,
    # so every worker then restores the same checkpoint (checked after the restore).
    resume = _tidy_and_read(model_dir, config, printer, writer=role is None or role.is_chief)
    if role is not None:
        strategy = start_multi_worker(role, config.worker_timeout_seconds, printer)
    else:
        strategy = make_strategy(config.strategy, tpu=config.tpu)
    if config.strategy != "default":
        replica_meta_batch_size(config.meta_batch_size, strategy)
    previous_policy = keras.config.dtype_policy()
    try:
        if config.mixed_precision:
            keras.config.set_dtype_policy(config.mixed_precision)
        return _train(config, model_dir, strategy, role, resume, printer)
    finally:
        # The policy is global: the caller's models must not become mixed precision.
        keras.config.set_dtype_policy(previous_policy)


def _distributed_chunks(task, config, start, strategy, role=None):
    """`(1, episodes)` per meta-iteration from `start` on, distributed over `strategy`'s
    replicas (one step per call: `steps_per_execution` is 1 under a strategy)."""
    if role is not None:
        # Each worker samples only its own share of every meta-batch.
        iterator = iter(worker_episodes(strategy, task.train_dataset, start,
                                        config.meta_batch_size))
        for _ in range(config.num_iterations - start):
            yield 1, next(iterator)
        return
    dataset = task.train_dataset(start * config.meta_batch_size).take(
        config.num_iterations - start)
    for episodes in distribute_episodes(strategy, dataset):
        yield 1, episodes


def _local_chunks(task, config, start, in_graph=True):
    """`(size, source)` per call covering iterations `start .. num_iterations` in one process.

    With `steps_per_execution` K > 1, `size` is K and each call runs K meta-batches stacked on
    a leading axis (one call of `MAML.meta_train_steps`); a remainder shorter than K runs one
    meta-batch at a time. Streams are pure functions of the episode index, so the chunking does
    not change which episodes are seen, and no episode passes through Python:

    * where the family computes its episodes from their index in TF ops
      (`TaskFamilySpec.train_episodes_at`, the sinusoid) and `in_graph` is True, `source` is
      that function, and the call's episodes are computed in TensorFlow's kernels (see
      `_step_function`). A tf.data element costs more than a whole sinusoid meta-batch (0.35
      of a 1.5 ms call, measured on a 2-core CPU), and its producer thread takes a core from
      the step;
    * otherwise `source` is a tf.data iterator (K meta-batches per element when K > 1), read
      inside the call's graph while tf.data prepares the next ones on its own threads.
    """
    per_call = config.steps_per_execution
    full = (config.num_iterations - start) // per_call if per_call > 1 else 0
    if in_graph and task.train_episodes_at is not None:
        for _ in range(full):
            yield per_call, task.train_episodes_at
        for _ in range(config.num_iterations - start - full * per_call):
            yield 1, task.train_episodes_at
        return
    if full:
        stacked = task.train_dataset(start * config.meta_batch_size).batch(
            per_call, drop_remainder=True).prefetch(1)
        iterator = iter(stacked)
        for _ in range(full):
            yield per_call, iterator
    rest_start = start + full * per_call
    if rest_start < config.num_iterations:
        iterator = iter(task.train_dataset(rest_start * config.meta_batch_size))
        for _ in range(config.num_iterations - rest_start):
            yield 1, iterator


def _autotune(maml, task, config, iteration, log):
    """Measures `maml`'s task batching on the meta-batch of `iteration`, as a one-process run
    does before its first step (`MAML.autotune`; cached per machine and model signature).

    Returns `MAML.autotune`'s `(choice, report)`, or None where nothing is measured: a fixed
    `task_batching`, or measuring off (`KERAS_META_AUTOTUNE=0`). `step_timing` calls it too, so
    that a timed call runs in the form its run would. The measurement is for the iterations
    left from `iteration` on: it takes at most a tenth of their time (`run_iterations`), so a
    short run does not trace candidates for longer than it trains.
    """
    if config.task_batching != "auto" or not autotune_enabled():
        return None
    first = next(iter(task.train_dataset(iteration * config.meta_batch_size).take(1)))
    return maml.autotune(first, jit_compile=config.jit_compile, log=log,
                         run_iterations=max(1, config.num_iterations - iteration))


def _step_function(maml, config, strategy, first_order, size, source, step):
    """The call that runs `size` meta-iterations, advances `step` by `size`, and returns the
    meta-loss.

    `first_order` True is MAML++'s first-order phase; False keeps the run's own order. With
    `strategy`, the call takes the episodes and runs one distributed meta-step over the
    replicas' shares. Otherwise it takes the loop's count of iterations run so far (its
    mirror of `step`, a Python int) and gets its episodes from `source` (see
    `_local_chunks`; `size` meta-batches stacked when `size` > 1):

    * a tf.data iterator, read inside its graph;
    * a function `(first_index, count)` that computes them in TF ops. At one meta-iteration
      per call, an `EpisodePool` computes them 256 iterations at a time, and the call takes
      that window and its position as arguments and sets `step` from the iteration they
      give. With several per call, the call computes them inside its graph from iteration
      `step` on, and also computes the next call's episodes beside its meta-steps.

    `tests/training/test_step_function.py` checks both against steps fed the stream.
    """
    order = True if first_order else None
    if strategy is not None:
        distributed = tf.function(lambda episodes: distributed_meta_train_step(
            maml, strategy, episodes, return_preds=False, first_order=order)[0])

        def call(episodes):
            loss = distributed(episodes)
            step.assign_add(size)
            return loss
        return call

    def meta_iterations(episodes):
        if size > 1:
            return maml.meta_train_steps(episodes, order)
        return maml.meta_train_step(episodes, order)[0]

    compiled = tf.function(meta_iterations, jit_compile=config.jit_compile)
    # The step counter moves inside the call too: no eager op per iteration, each of which
    # costs a tenth of a compiled sinusoid step.
    if hasattr(source, "get_next"):
        # tf.data prepares the next elements on its own threads.
        def read():
            loss = compiled(source.get_next())
            step.assign_add(size)
            return loss

        reader = ConcreteStep(tf.function(read))
        return lambda iteration: reader()

    batch = config.meta_batch_size
    if size == 1:
        # An XLA step inside a graph function (the form below) is two levels of call, about a
        # fifth of this step's time; here the step is the only call, fed as the benchmark's
        # bare step is (see `episode_pool.py` for why the sampling stays out of XLA). In graph
        # mode too this measured 2-4 points nearer the bare step than the form below. With
        # several iterations per call the form below stays: its sampling runs beside the
        # step, where the pool's fill would run alone (benchmarks/README.md).
        pool = EpisodePool(source, batch)

        def advance(window, first, position):
            loss = compiled(pool.meta_batch(window, position))
            # Set from the iteration the episodes are for: the counter and the data agree.
            step.assign(first + position + 1)
            return loss

        advancing = ConcreteStep(tf.function(advance, jit_compile=config.jit_compile))
        return lambda iteration: advancing(*pool(iteration))

    def episodes_at(iteration):
        # Iteration i's meta-batch is episodes i * batch .. (i + 1) * batch - 1, as in the
        # tf.data stream that `_local_chunks` would have opened at that iteration; `size` of
        # them stacked (one iteration per call took the pool above).
        stacked = source(iteration * batch, size * batch)
        return tf.nest.map_structure(
            lambda x: tf.reshape(x, [size, batch] + x.shape.as_list()[1:]), stacked)

    # Each call computes the next call's episodes while its meta-step runs: the two have no
    # data between them, so the sampling runs beside the step instead of before it (an XLA
    # step waits for all its inputs). They are held in variables with the iteration they
    # are for. A call whose step counter is elsewhere (another step function ran in between:
    # the remainder, MAML++'s first-order phase) computes its own: the held ones are used
    # only for the very iteration they were drawn for.
    start = tf.convert_to_tensor(step)
    held_for = tf.Variable(start, trainable=False, name="episodes_held_for")
    held = tf.nest.map_structure(lambda x: tf.Variable(x, trainable=False, name="episodes_held"),
                                 episodes_at(start))

    def drawn():
        at = step.read_value()
        current = tf.cond(tf.equal(held_for.read_value(), at),
                          lambda: tf.nest.map_structure(lambda v: v.read_value(), held),
                          lambda: episodes_at(at))
        loss = compiled(current)
        tf.nest.map_structure(lambda v, x: v.assign(x), held, episodes_at(at + size))
        held_for.assign(at + size)
        step.assign_add(size)
        return loss

    drawing = ConcreteStep(tf.function(drawn))
    return lambda iteration: drawing()


def _train(config, model_dir, strategy, role, resume, printer):
    distributed = config.strategy != "default"
    writes_run = role is None or role.is_chief
    _, changes = resume

    # Every variable (model, learned rates, optimizer slots, loss scale) is created under the
    # strategy's scope, so it is mirrored on each replica. The data is loaded here too, before
    # the model_dir exists: a run refused for bad data leaves nothing behind.
    with strategy.scope():
        # Seeds the model's initialisation after the data is ready (see build_task_family).
        task = build_task_family(config)
        maml = build_maml(config, task.model, task.loss_fn)
    classes = task.metadata.get("class_names")
    _check_same_classes(model_dir, classes)
    os.makedirs(model_dir, exist_ok=True)
    if classes is not None and writes_run and not os.path.exists(
            os.path.join(model_dir, CLASSES_FILE)):
        _write_json_atomically(os.path.join(model_dir, CLASSES_FILE), classes)
    # TensorFlow's multi-worker checkpointing: every worker saves (a save may need the
    # others), the chief into the run directory and the others into a scratch directory of
    # their own that is removed after each save; every worker restores the chief's.
    save_root = model_dir if writes_run else os.path.join(model_dir,
                                                          f"workertemp_{role.worker_index}")
    if not writes_run:
        shutil.rmtree(save_root, ignore_errors=True)

    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    best_metric = tf.Variable(np.nan, dtype=tf.float64, trainable=False, name="best_metric")
    train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
    # The config that produced the weights is saved inside every checkpoint.
    run_config = tf.Variable(config.to_json(), dtype=tf.string, trainable=False,
                             name="run_config")
    state = dict(model=maml, optimizer=maml.optimizer, step=step, best_metric=best_metric,
                 train_seconds=train_seconds)
    checkpoint = tf.train.Checkpoint(run_config=run_config, **state)
    latest = tf.train.CheckpointManager(checkpoint, os.path.join(save_root, "checkpoints"),
                                        max_to_keep=3)
    best = tf.train.CheckpointManager(checkpoint, os.path.join(save_root, "best"), max_to_keep=1)
    restore_from = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if restore_from:
        restored = checkpoint if run_state.config_of_checkpoint(restore_from) \
            else tf.train.Checkpoint(**state)
        restored.restore(restore_from).assert_existing_objects_matched()
        if {"meta_lr", "num_iterations"} & set(changes) and (
                "meta_lr" in changes or config.meta_lr_schedule != "constant"):
            # The optimizer's checkpoint holds the old rate; the new one (or the schedule
            # over the new length) is applied for real.
            maml.optimizer.learning_rate = meta_learning_rate(config)
        printer(f"[train] resumed from {restore_from} at iteration {int(step)}"
                + (f"; changed: {_describe(changes)}" if changes else ""), flush=True)
        if writes_run:
            run_state.append_history(model_dir, "resume", int(step), checkpoint=restore_from,
                                     changes=changes, **_threads_running())
    elif writes_run:
        run_state.append_history(model_dir, "start", 0, **_threads_running())
    run_config.assign(config.to_json())
    if role is not None:
        _check_workers_agree(strategy, role, config, int(step))

    # Before any step traces: the step functions read the choice when they trace.
    measured = None if distributed else _autotune(maml, task, config, int(step), printer)
    if measured is not None:
        choice, report = measured
        if writes_run and report is not None:
            run_state.append_history(model_dir, "task_batching", int(step),
                                     choice=choice.label, cached=report["cached"],
                                     timings=report["timings"],
                                     over_budget=report.get("over_budget", []))

    def save(manager, iteration):
        manager.save(checkpoint_number=iteration)
        if writes_run:
            # The copy beside the checkpoints names the settings of the newest one.
            run_state.write_atomically(os.path.join(model_dir, CONFIG_FILE), config.to_json())
        else:
            shutil.rmtree(save_root, ignore_errors=True)

    writer = (tf.summary.create_file_writer(os.path.join(model_dir, "logs")) if writes_run
              else tf.summary.create_noop_writer())
    # Derivative-order annealing (MAML++): a first-order step function for the first
    # `first_order_iterations`, the run's own order after; each is traced once per chunk size.
    step_functions = {}

    def run_chunk(size, source, first_order, iteration):
        key = (first_order, size)
        if key not in step_functions:
            step_functions[key] = _step_function(
                maml, config, strategy if distributed else None, first_order, size,
                None if distributed else source, step)
        if distributed:
            return step_functions[key](source)
        return step_functions[key](iteration)

    evaluator = TaskEvaluator(maml, classification=task.classification)
    higher_is_better = task.classification
    metric_name = "accuracy" if task.classification else "mse"

    def evaluate(make_dataset, num_tasks, inner_steps):
        """Per-task metrics `{steps: {metric: array}}`."""
        if role is None:
            return evaluator.per_task_metrics(make_dataset(), num_tasks, inner_steps)
        # Each worker adapts on its block of the tasks; every worker gets all the results.
        return evaluator.sharded_per_task_metrics(
            make_dataset, num_tasks, inner_steps,
            shard=(role.worker_index, role.num_workers),
            gather=lambda rows: all_gather_rows(strategy, rows))

    start = int(step)
    progress = Progress(config.num_iterations, config.log_every, start, printer)
    chunks = (_distributed_chunks(task, config, start, strategy, role) if distributed
              else _local_chunks(task, config, start))
    loop_start = time.perf_counter()
    breakdown = TimeBreakdown()
    last_loss = float("nan")
    try:
        with writer.as_default():
            s = start
            for size, source in chunks:
                # `s` mirrors `step`, which the call advances: no variable read per iteration.
                began = time.perf_counter()
                last_loss = float(run_chunk(size, source, s < config.first_order_iterations, s))
                breakdown.add("steps", began)
                s += size
                if not math.isfinite(last_loss) and not _skipped_by_loss_scaling(maml):
                    if writes_run:
                        run_state.append_history(model_dir, "diverged", s,
                                                 meta_loss=last_loss)
                    raise FloatingPointError(
                        f"The meta-loss is {last_loss} at iteration {s}. "
                        f"Training stopped; the last good checkpoint "
                        f"({latest.latest_checkpoint or 'none'}) is kept. Lower inner_lr or "
                        "meta_lr.")
                if not breakdown.started:
                    # The first step traces the graph: time the steady state from here on.
                    breakdown.start(s)
                last = s == config.num_iterations
                if crossed(s, size, config.log_every) or last:
                    rate = progress.maybe_print(s, last_loss)
                    tf.summary.scalar("train/meta_loss", last_loss, step=s)
                    if rate:
                        tf.summary.scalar("train/iterations_per_second", rate, step=s)
                if (config.eval_every and task.val_dataset is not None
                        and (crossed(s, size, config.eval_every) or last)):
                    with breakdown.measure("validation"):
                        summary = summarize(evaluate(task.val_dataset, config.num_val_tasks,
                                                     config.eval_inner_steps[0]))
                    value = _headline(summary, task.classification)
                    tf.summary.scalar(f"val/{metric_name}", value, step=s)
                    improved = (math.isnan(float(best_metric)) or
                                (value > float(best_metric) if higher_is_better
                                 else value < float(best_metric)))
                    printer(f"[val] iter {s}  {metric_name} {value:.4f}"
                            + ("  (best)" if improved else ""), flush=True)
                    if writes_run:
                        # Seconds of training so far, resumes included: the time axis of
                        # accuracy-against-time curves (benchmarks/time_to_accuracy.py).
                        run_state.append_history(
                            model_dir, "val", s, **{metric_name: value},
                            train_seconds=float(train_seconds) + time.perf_counter() - loop_start)
                    with breakdown.measure("checkpoints"):
                        if improved and _all_finite(maml.trainable_variables):
                            best_metric.assign(value)
                            save(best, s)
                if crossed(s, size, config.checkpoint_every) or last:
                    now = time.perf_counter()
                    train_seconds.assign_add(now - loop_start)
                    loop_start = now
                    with breakdown.measure("checkpoints"):
                        if _all_finite(maml.trainable_variables):
                            save(latest, s)
            writer.flush()
        train_seconds.assign_add(time.perf_counter() - loop_start)
        timing = breakdown.summary(int(step))
        if timing is not None:
            printer(f"[train] {describe_breakdown(timing)}", flush=True)
        final_step = int(step)
        if role is not None:
            # The chief's last saves are on disk before any worker reads them.
            _check_workers_agree(strategy, role, config, final_step)
        results = _test(config, model_dir, task, evaluate, checkpoint, state, printer,
                        writes_run, final_step, timing, float(train_seconds))
    except PEER_ERRORS as error:
        if role is None:
            raise
        newest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        raise worker_lost(role, error, int(step) + 1, newest) from None
    finally:
        if not writes_run:
            shutil.rmtree(save_root, ignore_errors=True)
    if role is not None:
        _finish_together(role, config.worker_timeout_seconds, model_dir, printer)
    return results


def _finish_together(role, timeout_seconds, model_dir, printer):
    """No worker leaves while a peer may still need it (see `cluster.finish_together`)."""
    try:
        finish_together(role, timeout_seconds, printer)
    except tf.errors.OpError as error:
        detail = " ".join(str(error).split())[:300]
        if role.is_chief:
            # Every worker's share of the test arrived before this: the results are whole.
            printer(f"[cluster] warning: {role.name} finished, but another worker did not "
                    f"reach the end ({type(error).__name__}: {detail}); the results in "
                    f"{model_dir} are complete.", flush=True)
            return
        raise ClusterError(
            f"{role.name} finished, but the chief did not reach the end ({type(error).__name__}: "
            f"{detail}); see the chief's output for whether it wrote "
            f"{os.path.join(model_dir, RESULTS_FILE)}.") from None


def _test(config, model_dir, task, evaluate, checkpoint, state, printer, writes_run,
          final_step, timing, total_train_seconds):
    """Tests the best validated checkpoint (else the last weights); writes the results JSON."""
    step = state["step"]
    tested_config = config
    best_checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "best"))
    if best_checkpoint:
        # Test the model that validated best, as the MAML protocol does.
        tested_config = run_state.config_of_checkpoint(best_checkpoint) or config
        (checkpoint if tested_config is not config else tf.train.Checkpoint(**state)).restore(
            best_checkpoint).expect_partial()
        printer(f"[test] using the best validation checkpoint {best_checkpoint}", flush=True)
    eval_start = time.perf_counter()
    per_task = evaluate(task.test_dataset, config.num_eval_tasks, config.eval_inner_steps)
    summary = summarize(per_task)
    results = {
        "task_family": config.task_family,
        "iterations": final_step,
        "tested_iteration": int(step),
        "checkpoint": best_checkpoint or tf.train.latest_checkpoint(
            os.path.join(model_dir, "checkpoints")),
        "train_seconds": total_train_seconds,
        # The steady state after the first call, and where its seconds went.
        "seconds_per_iteration": timing and timing["seconds_per_iteration"],
        "time_breakdown": timing,
        "eval_seconds": time.perf_counter() - eval_start,
        "num_shots": config.shots_at_eval,
        "num_ways": config.num_ways if task.classification else None,
        "results": {str(s): v for s, v in summary.items()},
        # Every test task's metrics, in task order (a diverged task's loss is null).
        "per_task": per_task_lists(per_task),
        "config": config.to_dict(),
        # The settings that produced the tested weights (the best checkpoint's, which may
        # predate a resume that changed meta_lr or num_iterations), and every start/resume.
        "checkpoint_config": tested_config.to_dict(),
        "history": run_state.read_history(model_dir),
    }
    if task.metadata.get("dataset"):
        # What the data was: where it was cached, and every file that was skipped or could
        # not be decoded, beside the figures it produced.
        results["data"] = {k: task.metadata.get(k) for k in (
            "dataset", "splits", "cache", "cache_bytes", "cache_seconds", "skipped_files",
            "corrupt_files")}
    for s, metrics in summary.items():
        for name, stats in metrics.items():
            printer(f"[test] {config.num_eval_tasks} tasks, {s} inner steps: {name} "
                    f"{stats['mean']:.4f} +/- {stats['ci95']:.4f} (95% CI), median "
                    f"{stats['median']:.4f}", flush=True)
        diverged = next(iter(metrics.values()))["num_diverged"]
        if diverged:
            printer(f"[test] warning: {diverged} of {config.num_eval_tasks} tasks diverged "
                    f"(non-finite loss) at {s} inner steps", flush=True)
    for name, make_dataset in task.extra_test_datasets.items():
        extra = summarize(evaluate(make_dataset, config.num_eval_tasks,
                                   config.eval_inner_steps))
        results[name] = {str(s): v for s, v in extra.items()}
        for s, metrics in extra.items():
            for metric, stats in metrics.items():
                printer(f"[test {name}] {config.num_eval_tasks} tasks, {s} inner steps: "
                        f"{metric} {stats['mean']:.4f} +/- {stats['ci95']:.4f} (95% CI)",
                        flush=True)
    if writes_run:
        run_state.write_atomically(os.path.join(model_dir, RESULTS_FILE),
                                   json.dumps(results, indent=2))
    return results


# Settings that name places on one machine: workers on different machines may differ there.
_PER_MACHINE_FIELDS = ("data_dir", "omniglot_source_dir")


def _check_workers_agree(strategy, role, config, iteration):
    """Every worker runs the same settings from the same iteration, or the run stops here.

    Workers launched with other flags, or that do not see the chief's run directory (no
    shared filesystem), would otherwise train silently on different things.
    """
    values = {k: v for k, v in json.loads(config.to_json()).items()
              if k not in _PER_MACHINE_FIELDS}
    digest = zlib.crc32(json.dumps(values, sort_keys=True).encode())
    rows = all_gather_rows(strategy, np.array([[iteration, digest]], np.int64))
    if (rows == rows[0]).all():
        return
    described = "; ".join(f"{role.task_name(i)}: iteration {int(r[0])}, settings #{int(r[1]):08x}"
                          for i, r in enumerate(rows))
    raise ClusterError(
        f"The workers disagree ({described}). Every worker must run the same command and see "
        "the same model_dir (a shared filesystem), so that each restores the chief's "
        "checkpoint.")
