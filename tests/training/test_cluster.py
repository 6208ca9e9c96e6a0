"""TF_CONFIG is checked before anything starts, and a run that would ignore it is refused.

Nothing here forms a cluster (that is `test_multi_worker.py`): every refusal must come before
TensorFlow's multi-worker runtime starts, so it costs milliseconds and leaves no model_dir.
"""

import json

import pytest

from keras_meta.training import train
from keras_meta.training.cluster import ClusterRole, parse_tf_config
from keras_meta.training.config import MAMLTrainConfig


def _tf_config(cluster, task_type="worker", index=0):
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


TWO = {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}


def test_workers_only_worker_0_is_chief():
    roles = [parse_tf_config(_tf_config(TWO, index=i)) for i in range(2)]
    assert [r.worker_index for r in roles] == [0, 1]
    assert [r.is_chief for r in roles] == [True, False]
    assert roles[1].peers() == {"127.0.0.1:2001": "worker 0"}
    assert roles[0].num_workers == 2


def test_chief_job_comes_first():
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    chief = parse_tf_config(_tf_config(cluster, "chief", 0))
    worker = parse_tf_config(_tf_config(cluster, "worker", 1))
    assert chief == ClusterRole("chief", 0, 0, ("h0:1", "h1:1", "h2:1"), True)
    assert chief.is_chief and not worker.is_chief
    assert worker.worker_index == 2
    assert worker.peers() == {"h0:1": "chief 0", "h1:1": "worker 0"}


@pytest.mark.parametrize("text,message", [
    ("", "needs the TF_CONFIG environment variable"),
    ("{not json", "not valid JSON"),
    ('["a"]', "must be an object with a 'cluster' object"),
    (_tf_config({"worker": ["a:1"], "ps": ["b:1"]}), r"jobs \['ps'\]"),
    (_tf_config({"worker": ["a:1"], "evaluator": ["b:1"]}), r"jobs \['evaluator'\]"),
    (_tf_config({"worker": []}), "must be a non-empty list"),
    (_tf_config({"worker": ["a"]}), r"must be a 'host:port' string; got 'a'"),
    (_tf_config({"worker": ["a:99999"]}), "port in 1..65535; got 'a:99999'"),
    (_tf_config({"worker": ["a:1", "a:1"]}), r"\['a:1'\] for more than one task"),
    (_tf_config({"chief": ["a:1", "b:1"], "worker": ["c:1"]}, "chief"), "exactly one address"),
    # The missing chief: this task says it is the chief, the cluster has none.
    (_tf_config(TWO, "chief", 0), "task type 'chief' is not in the cluster: it has no 'chief'"),
    (_tf_config(TWO, "worker", 2), r"task index 2 is out of range.*\[0, 2\)"),
    (_tf_config(TWO, "worker", -1), "task index -1 is out of range"),
    (json.dumps({"cluster": TWO}), "must say which task this process is"),
])
def test_bad_tf_config_is_refused_with_what_was_expected(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tf_config(text)


def _config(**overrides):
    values = dict(task_family="sinusoid", num_iterations=2, meta_batch_size=4,
                  strategy="multi_worker", eval_every=0, num_eval_tasks=2)
    values.update(overrides)
    return MAMLTrainConfig(**values)


def test_uneven_split_is_refused_before_the_cluster(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_CONFIG", _tf_config(TWO))
    with pytest.raises(ValueError, match="meta-batch of 3 tasks does not split evenly across 2 "
                                         "workers"):
        train(_config(meta_batch_size=3), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_bad_tf_config_stops_train_before_anything(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_CONFIG", _tf_config(TWO, "worker", 5))
    with pytest.raises(ValueError, match="task index 5 is out of range"):
        train(_config(), str(tmp_path / "run"))
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        train(_config(), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_cluster_the_run_would_ignore_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_CONFIG", _tf_config(TWO, "worker", 1))
    with pytest.raises(ValueError, match="describes a cluster of 2 tasks, but "
                                         "strategy='default'"):
        train(_config(strategy="default"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_worker_timeout_applies_to_multi_worker_only():
    with pytest.raises(ValueError, match="worker_timeout_seconds"):
        _config(strategy="default", worker_timeout_seconds=10.0)
    with pytest.raises(ValueError, match="a number of seconds > 0"):
        _config(worker_timeout_seconds=0)
    assert _config(worker_timeout_seconds=10.0).worker_timeout_seconds == 10.0


def test_a_lost_worker_is_named_with_the_checkpoint_to_resume_from():
    import tensorflow as tf

    from keras_meta.training.cluster import worker_lost

    role = parse_tf_config(_tf_config(TWO, index=0))
    error = tf.errors.UnavailableError(
        None, None, "{{function_node f}} Collective ops is aborted by: The following tasks "
        "are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nmore")
    message = str(worker_lost(role, error, 12, "/runs/x/checkpoints/ckpt-10"))
    assert message.startswith("worker 0 (chief): another worker failed or stopped answering "
                              "during iteration 12")
    assert "stopped sending heartbeats): /job:worker/replica:0/task:1" in message
    assert "ckpt-10; relaunch every worker with the same command" in message
