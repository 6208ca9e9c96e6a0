"""Evaluation summaries never hide a diverged task, and the sharded evaluation is exact."""

import math

import numpy as np
import pytest

from keras_meta.training.evaluation import (eval_batch_size, mean_confidence_interval,
                                            per_task_lists, summarize)


def test_a_diverged_task_shows_in_the_mean_median_and_count():
    losses = np.array([0.5, 0.4, np.nan, 0.6, np.inf], np.float32)
    accuracy = np.array([1.0, 0.8, 0.2, 0.6, 0.2], np.float32)
    stats = summarize({10: {"loss": losses, "accuracy": accuracy}})[10]
    assert stats["loss"]["num_diverged"] == stats["accuracy"]["num_diverged"] == 2
    assert math.isinf(stats["loss"]["mean"]) and math.isnan(stats["loss"]["ci95"])
    # Diverged losses count as +inf: the median is the 3rd of (0.4, 0.5, 0.6, inf, inf).
    assert stats["loss"]["median"] == pytest.approx(0.6)
    assert stats["accuracy"]["median"] == pytest.approx(0.6)
    assert per_task_lists({10: {"loss": losses}})["10"]["loss"] == [
        pytest.approx(0.5), pytest.approx(0.4), None, pytest.approx(0.6), None]


def test_finite_tasks_give_the_usual_summary():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    stats = summarize({1: {"loss": values}})[1]["loss"]
    mean, half = mean_confidence_interval(values)
    assert (stats["mean"], stats["ci95"], stats["median"]) == (mean, half, 2.5)
    assert stats["num_diverged"] == 0 and stats["num_tasks"] == 4


@pytest.mark.parametrize("num_tasks,expected", [(600, 25), (100, 25), (7, 7), (26, 13), (29, 1)])
def test_eval_batch_size_divides_the_tasks(num_tasks, expected):
    assert eval_batch_size(num_tasks) == expected


@pytest.mark.parametrize("num_tasks,workers", [(10, 2), (10, 4), (7, 3), (3, 4), (600, 8)])
def test_sharded_blocks_gathered_are_the_tasks_in_order(num_tasks, workers):
    import tensorflow as tf

    from keras_meta.training.evaluation import TaskEvaluator

    class Indexed(TaskEvaluator):
        def __init__(self):
            self.classification = True

        def per_task_metrics(self, dataset, count, steps_list):
            indices = np.concatenate([b.numpy() for b in dataset])
            assert indices.size == count
            return {s: {"loss": indices + 0.5 * s, "accuracy": -indices.astype(np.float32)}
                    for s in steps_list}

    def stream():
        return tf.data.Dataset.range(num_tasks).batch(eval_batch_size(num_tasks))

    rows = {}
    for w in range(workers):
        Indexed().sharded_per_task_metrics(
            stream, num_tasks, [1, 5], shard=(w, workers),
            gather=lambda r, w=w: rows.__setitem__(w, r) or np.zeros((0, r.shape[1])))
    everything = np.concatenate([rows[w] for w in range(workers)])
    result = Indexed().sharded_per_task_metrics(stream, num_tasks, [1, 5], shard=(0, workers),
                                                gather=lambda r: everything)
    np.testing.assert_array_equal(result[1]["loss"], np.arange(num_tasks) + 0.5)
    np.testing.assert_array_equal(result[5]["loss"], np.arange(num_tasks) + 2.5)
    np.testing.assert_array_equal(result[5]["accuracy"], -np.arange(num_tasks))


def test_a_run_whose_test_tasks_diverge_reports_them(tmp_path, capsys):
    """No inner loop in training (finite), an inner rate far past 2/curvature at test time:
    the test tasks blow up, and the results and the log must say so."""
    import json

    from keras_meta.training import train
    from keras_meta.training.config import MAMLTrainConfig

    config = MAMLTrainConfig(task_family="sinusoid", inner_steps=0, inner_lr=50.0,
                             num_iterations=5, meta_batch_size=4, eval_every=0,
                             num_eval_tasks=6, eval_inner_steps=(0, 10), log_every=5)
    results = train(config, str(tmp_path / "run"))
    assert results["results"]["0"]["loss"]["num_diverged"] == 0
    stats = results["results"]["10"]["loss"]
    assert stats["num_diverged"] > 0 and math.isinf(stats["mean"])
    saved = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert saved["per_task"]["10"]["loss"].count(None) == stats["num_diverged"]
    assert (f"warning: {stats['num_diverged']} of 6 tasks diverged (non-finite loss) at 10 "
            "inner steps") in capsys.readouterr().out
