"""Few-shot evaluation: per-task metrics after adaptation, summarised as mean and 95% CI."""

import math

import numpy as np
import tensorflow as tf

from keras_meta.core import functional
from keras_meta.core.losses import scalar_loss
from keras_meta.data.episode import as_episode


def mean_confidence_interval(values, confidence=0.95):
    """Mean and the half-width of its normal-approximation confidence interval.

    With 600 tasks (the MAML protocol) the normal and Student-t intervals agree to 3 digits.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("mean_confidence_interval needs at least one value.")
    z = {0.95: 1.959963984540054, 0.99: 2.5758293035489004}.get(confidence)
    if z is None:
        raise ValueError(f"confidence must be 0.95 or 0.99; got {confidence!r}.")
    if values.size == 1:
        return float(values[0]), float("nan")
    half = z * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean()), float(half)


def accuracy(y_true, logits):
    """Fraction of `argmax(logits) == y_true` over the last axis."""
    pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(pred, tf.cast(y_true, tf.int32)), tf.float32))


class TaskEvaluator:
    """Adapts on each task of a dataset and records per-task query loss (and accuracy).

    One `tf.function` per number of inner steps is traced once and reused.

    Args:
        maml: a `MAML` model.
        classification: also record query accuracy.

    Example:

    >>> evaluator = TaskEvaluator(maml)
    >>> summary = evaluator.evaluate(test_episodes, num_tasks=600, inner_steps=[1, 5, 10])
    >>> summary[1]["loss"]["mean"]
    """

    def __init__(self, maml, classification=False):
        self.maml = maml
        self.classification = classification
        self._functions = {}

    def _function(self, steps):
        if steps not in self._functions:
            def per_task(task):
                task = as_episode(task)
                # Inference on the queries (per-step batch norm: running statistics, so each
                # query's answer does not depend on the rest of the query set).
                _, pred, _ = self.maml.task_query_loss(
                    functional.get_params(self.maml.model), task, steps=steps, first_order=True,
                    query_training=False)
                # The multi-step loss is a training device; report the plain final query loss.
                loss = scalar_loss(self.maml.loss_fn, task.query_y, pred)
                out = {"loss": tf.cast(loss, tf.float32)}
                if self.classification:
                    out["accuracy"] = accuracy(task.query_y, pred)
                return out

            def per_batch(episodes):
                # A loop in the graph rather than one unrolled copy per task: evaluation needs
                # no outer gradient, and tracing one task body is many times faster.
                signature = {"loss": tf.TensorSpec([], tf.float32)}
                if self.classification:
                    signature["accuracy"] = tf.TensorSpec([], tf.float32)
                return tf.map_fn(per_task, tuple(as_episode(episodes)),
                                 fn_output_signature=signature)

            # No AutoGraph: the loop is `tf.map_fn`, and converting the task body only costs.
            self._functions[steps] = tf.function(per_batch, autograph=False)
        return self._functions[steps]

    def per_task_metrics(self, dataset, num_tasks, inner_steps):
        """`{steps: {metric: np.ndarray[num_tasks]}}` for each entry of `inner_steps`."""
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1; got {num_tasks}.")
        steps_list = [inner_steps] if isinstance(inner_steps, int) else list(inner_steps)
        collected = {s: {} for s in steps_list}
        seen = 0
        for batch in dataset:
            for s in steps_list:
                for name, values in self._function(s)(batch).items():
                    collected[s].setdefault(name, []).append(values.numpy())
            seen += int(as_episode(batch).support_x.shape[0])
            if seen >= num_tasks:
                break
        if seen < num_tasks:
            raise ValueError(f"The evaluation dataset ran out after {seen} of {num_tasks} tasks.")
        return {s: {k: np.concatenate(v)[:num_tasks] for k, v in m.items()}
                for s, m in collected.items()}

    def evaluate(self, dataset, num_tasks, inner_steps):
        """`{steps: {metric: {"mean", "ci95", "median", "num_tasks", "num_diverged"}}}`."""
        return summarize(self.per_task_metrics(dataset, num_tasks, inner_steps))

    def sharded_per_task_metrics(self, make_dataset, num_tasks, inner_steps, shard, gather):
        """`per_task_metrics` of all `num_tasks` tasks, computed by several workers together.

        Worker `i` of `n` (`shard=(i, n)`) adapts on the `i`-th block of `ceil(num_tasks/n)`
        tasks of the stream, and `gather` (a collective all-gather of equal-shape rows, in
        worker order) brings every block to every worker. Each task is adapted exactly as
        `per_task_metrics` would adapt it, so every worker returns the one-process result.

        Args:
            make_dataset: `() -> dataset` of the batched evaluation stream.
            num_tasks: tasks in all.
            inner_steps: an int or a list of ints.
            shard: `(index, count)` of this worker.
            gather: `rows [k, c] -> [count * k, c]`, called exactly once by every worker.
        """
        index, count = shard
        steps_list = [inner_steps] if isinstance(inner_steps, int) else list(inner_steps)
        names = ["loss"] + (["accuracy"] if self.classification else [])
        block = -(-num_tasks // count)
        start = min(index * block, num_tasks)
        mine = min(block, num_tasks - start)
        rows = np.full([block, len(steps_list) * len(names)], np.nan, np.float32)
        if mine > 0:
            dataset = make_dataset().unbatch().skip(start).take(mine).batch(
                eval_batch_size(mine), drop_remainder=True)
            metrics = self.per_task_metrics(dataset, mine, steps_list)
            for j, (s, name) in enumerate((s, n) for s in steps_list for n in names):
                rows[:mine, j] = metrics[s][name]
        everything = np.asarray(gather(rows))
        blocks = [everything[w * block: w * block + max(0, min(block, num_tasks - w * block))]
                  for w in range(count)]
        table = np.concatenate(blocks)
        return {s: {name: table[:, i * len(names) + j].astype(np.float32)
                    for j, name in enumerate(names)}
                for i, s in enumerate(steps_list)}


def eval_batch_size(num_tasks):
    """The largest divisor of `num_tasks` up to 25: every task kept with one static batch."""
    for b in range(min(25, num_tasks), 0, -1):
        if num_tasks % b == 0:
            return b
    return 1


def summarize(per_task):
    """`{steps: {metric: {"mean", "ci95", "median", "num_tasks", "num_diverged"}}}`.

    A task diverged when its loss is not finite (its inner loop blew up). Its loss counts as
    +inf, so the mean says so (inf, with no CI) rather than hiding it; the median and the
    number of diverged tasks say how many and how typical. Every metric of a step reports the
    same `num_diverged`.
    """
    summary = {}
    for s, metrics in per_task.items():
        summary[s] = {}
        losses = metrics.get("loss")
        diverged = int(np.sum(~np.isfinite(losses))) if losses is not None else 0
        for name, values in metrics.items():
            values = np.asarray(values, np.float64)
            if name == "loss":
                values = np.where(np.isfinite(values), values, np.inf)
            with np.errstate(invalid="ignore"):
                mean, half = mean_confidence_interval(values)
            summary[s][name] = {"mean": mean, "ci95": half, "median": float(np.median(values)),
                                "num_tasks": int(values.size), "num_diverged": diverged}
    return summary


def per_task_lists(per_task):
    """`{steps: {metric: [value or None]}}` for JSON: a diverged task's loss is `None`."""
    return {str(s): {name: [float(v) if np.isfinite(v) else None for v in values]
                     for name, values in metrics.items()}
            for s, metrics in per_task.items()}
