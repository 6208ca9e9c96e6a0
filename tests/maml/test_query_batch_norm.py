"""Batch norm of the query pass: per-step (MAML++) predicts from running statistics at
evaluation and inference, so one query's answer does not depend on the other queries;
transductive (the MAML paper) keeps normalizing with the query batch. Adaptation on the
support set runs in training mode (support statistics) in both, as does meta-training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.core import functional
from keras_meta.core.step_context import inner_step
from keras_meta.training.evaluation import TaskEvaluator

WAYS = 3
QUERIES = 6
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _episode(rng, shots, queries):
    """One task whose classes differ in brightness, as [N, 8, 8, 1] floats."""
    def images(labels):
        return (0.3 * labels[:, None, None, None]
                + rng.random((len(labels), 8, 8, 1))).astype(np.float32)
    sy = np.tile(np.arange(WAYS, dtype=np.int32), shots)
    qy = rng.integers(0, WAYS, queries).astype(np.int32)
    return images(sy), sy, images(qy), qy


def _trained_maml(batch_norm, inner_steps=1, eval_inner_steps=None):
    """A conv4 MAML after a few meta-train steps (non-trivial running statistics)."""
    keras.utils.set_random_seed(1)
    base = km.backbones.conv4(WAYS, (8, 8, 1), filters=4, batch_norm=batch_norm,
                              num_inner_steps=inner_steps if batch_norm == "per_step" else None)
    maml = km.MAML(base, inner_lr=0.1, inner_steps=inner_steps,
                   eval_inner_steps=eval_inner_steps, loss=LOSS)
    maml.compile(keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    tasks = [_episode(rng, 1, 6) for _ in range(2)]
    batch = km.Episode(*(tf.constant(np.stack(parts)) for parts in zip(*tasks)))
    # Eager: three tiny steps cost less than tracing the step once.
    for _ in range(3):
        maml.meta_train_step(batch)
    if batch_norm == "per_step":
        stats = [v.numpy() for v in base.non_trainable_variables if "moving_mean" in v.path]
        assert stats and all(np.abs(s).max(axis=1).min() > 0 for s in stats)
    return maml


def _task(seed=5):
    return _episode(np.random.default_rng(seed), 2, QUERIES)


def _alone_and_in_batch(predict, qx):
    """Each query's answer alone, and the answers of all queries in one batch."""
    batch = np.asarray(predict(qx))
    alone = np.concatenate([np.asarray(predict(qx[i:i + 1])) for i in range(len(qx))])
    return alone, batch


def _evaluator_losses(maml, sx, sy, qx, qy, steps):
    """TaskEvaluator's per-task query losses: each query alone (one task each), then all."""
    evaluator = TaskEvaluator(maml, classification=True)

    def run(q, y):
        n = len(q)
        tasks = km.Episode(np.repeat(sx[None], n, 0), np.repeat(sy[None], n, 0), q, y)
        dataset = tf.data.Dataset.from_tensors(tuple(tf.constant(t) for t in tasks))
        return evaluator.per_task_metrics(dataset, n, steps)

    alone = run(qx[:, None], qy[:, None])
    together = run(qx[None], qy[None])
    return ({s: m["loss"] for s, m in alone.items()}, {s: m["loss"] for s, m in together.items()})


@pytest.fixture(scope="module")
def models():
    return {mode: _trained_maml(mode, eval_inner_steps=3) for mode in ("per_step", "transductive")}


def test_per_step_evaluation_does_not_depend_on_the_other_queries(models):
    sx, sy, qx, qy = _task()
    # 1 step (as trained) and 3 (past the trained steps: the last trained slot, then the
    # query slot for the queries).
    alone, together = _evaluator_losses(models["per_step"], sx, sy, qx, qy, [1, 3])
    for steps in (1, 3):
        # The mean query loss of the task equals the mean of each query's loss alone.
        np.testing.assert_allclose(together[steps][0], alone[steps].mean(), rtol=1e-5)
    # Evaluation's predictions: the same with each query alone and in the batch.
    maml = models["per_step"]
    params = functional.get_params(maml.model)

    def predict(q):
        return maml.task_query_loss(params, km.Episode(sx, sy, q, qy[:len(q)]), steps=1,
                                    first_order=True, query_training=False)[1]

    alone, batch = _alone_and_in_batch(predict, qx)
    np.testing.assert_allclose(alone, batch, rtol=1e-5, atol=1e-5)


def test_transductive_evaluation_uses_the_query_batch(models):
    sx, sy, qx, qy = _task()
    alone, together = _evaluator_losses(models["transductive"], sx, sy, qx, qy, [1])
    assert abs(together[1][0] - alone[1].mean()) > 1e-3
    # Evaluation's flag changes nothing for transductive batch norm.
    maml = models["transductive"]
    batch = km.Episode(*(tf.constant(x[None]) for x in (sx, sy, qx, qy)))
    train_mode, _ = maml.meta_batch_losses(batch, steps=1, first_order=True)
    eval_mode, _ = maml.meta_batch_losses(batch, steps=1, first_order=True, query_training=False)
    np.testing.assert_array_equal(train_mode.numpy(), eval_mode.numpy())


@pytest.mark.parametrize("steps", [1, 3])
def test_per_step_adapt_and_predict_does_not_depend_on_the_other_queries(models, steps):
    sx, sy, qx, _ = _task()
    maml = models["per_step"]
    alone, batch = _alone_and_in_batch(
        lambda q: maml.adapt_and_predict(sx, sy, q, steps=steps), qx)
    np.testing.assert_allclose(alone, batch, rtol=1e-5, atol=1e-5)
    # The queries are predicted from the running statistics of the query slot: the adapted
    # model called in inference mode, outside any inner step.
    adapted = maml.adapt(sx, sy, steps)
    np.testing.assert_allclose(adapted(qx, training=False).numpy(), batch, rtol=1e-5, atol=1e-5)


def test_transductive_adapt_and_predict_uses_the_query_batch(models):
    sx, sy, qx, _ = _task()
    maml = models["transductive"]
    alone, batch = _alone_and_in_batch(lambda q: maml.adapt_and_predict(sx, sy, q), qx)
    assert np.abs(alone - batch).max() > 1e-3


def test_support_adaptation_still_uses_support_statistics(models):
    # MAML++: the inner steps normalize with the support set's batch statistics (training
    # mode); only the query pass changed.
    sx, sy, _, _ = _task()
    maml = models["per_step"]
    got = maml.adapt_params(sx, sy, steps=3)
    params = functional.get_params(maml.model)

    def adapt(training):
        return km.adapt_params(maml.model, params, sx, sy, loss_fn=LOSS, inner_lr=0.1,
                               inner_steps=3, training=training)

    for a, b in zip(got, adapt(True)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(got, adapt(False))) > 1e-4


def test_per_step_meta_training_keeps_the_query_batch_statistics(models):
    # The meta-objective normalizes the queries with their batch (training mode), as MAML++,
    # unlike evaluation.
    sx, sy, qx, qy = _task()
    maml = models["per_step"]
    batch = km.Episode(*(tf.constant(x[None]) for x in (sx, sy, qx, qy)))
    train_mode, _ = maml.meta_batch_losses(batch)
    params = functional.get_params(maml.model)
    adapted = km.adapt_params(maml.model, params, sx, sy, loss_fn=LOSS, inner_lr=0.1,
                              inner_steps=1, training=True)
    with inner_step(1, query=True):
        pred = functional.functional_call(maml.model, adapted, qx, training=True)
    np.testing.assert_allclose(train_mode.numpy()[0], LOSS(qy, pred).numpy(), rtol=1e-5)
    eval_mode, _ = maml.meta_batch_losses(batch, query_training=False)
    assert abs(float(train_mode[0]) - float(eval_mode[0])) > 1e-4
