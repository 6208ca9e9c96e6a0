"""Same seed, same run: whatever drew random numbers before, or while the data loaded.

`build_task_family` sets the global seed after the data is ready and right before the model is
built. Preparing a dataset (TFDS, decoding) may draw from the global random generators, so a
seed set before the data loads gave the run that prepared Omniglot another initialisation
than every later run of the same command.
"""

import json
import os
import random

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_meta.training import task_families, train
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.task_families import build_task_family

# One count of test steps: each count costs a trace, and the checkpoints compared bit for bit
# already hold everything a second count could differ in.
TINY = MAMLTrainConfig(num_iterations=4, meta_batch_size=2, num_shots=5, num_queries=5,
                       eval_every=2, num_val_tasks=2, num_eval_tasks=4, checkpoint_every=2,
                       log_every=2, eval_inner_steps=(1,))


def _draw_from_every_global_generator():
    random.random()
    np.random.rand(3)
    tf.random.uniform([3])
    keras.random.uniform((3,))


def _initial_weights(config):
    return [w.numpy().tobytes() for w in build_task_family(config).model.weights]


def _make_data_loading_draw_random_numbers(monkeypatch):
    """Makes the sinusoid family draw from every global generator while its data loads."""
    real = task_families._BUILDERS["sinusoid"]

    def preparing(config):
        _draw_from_every_global_generator()
        return real(config)

    monkeypatch.setitem(task_families._BUILDERS, "sinusoid", preparing)


def test_random_numbers_drawn_between_builds_do_not_change_the_initial_weights():
    first = _initial_weights(TINY)
    _draw_from_every_global_generator()
    again = _initial_weights(TINY)
    assert len(first) == len(again) > 0
    assert first == again
    # The seed is what decides the weights.
    assert _initial_weights(TINY.replace(seed=1)) != first


def test_random_numbers_drawn_while_the_data_loads_do_not_change_the_initial_weights(
        monkeypatch):
    quiet = _initial_weights(TINY)
    _make_data_loading_draw_random_numbers(monkeypatch)
    assert _initial_weights(TINY) == quiet


def _checkpoint_tensors(model_dir):
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    # Every saved variable but the wall-clock time (the object graph is metadata, not state).
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if name.endswith("VARIABLE_VALUE") and not name.startswith("train_seconds")}


def test_two_runs_of_one_config_give_bit_identical_checkpoints_and_results(
        tmp_path, monkeypatch):
    # The first run "prepares the data" (draws random numbers while loading it); the second
    # finds it ready. Both must train the same model.
    with monkeypatch.context() as patch:
        _make_data_loading_draw_random_numbers(patch)
        preparing = train(TINY, str(tmp_path / "a"), verbose=False)
    _draw_from_every_global_generator()
    ready = train(TINY, str(tmp_path / "b"), verbose=False)
    a, b = _checkpoint_tensors(str(tmp_path / "a")), _checkpoint_tensors(str(tmp_path / "b"))
    assert sorted(a) == sorted(b)
    weights = [name for name in a if name.startswith("optimizer/_trainable_variables/")]
    assert weights
    for name in weights + sorted(set(a) - set(weights)):
        if isinstance(a[name], bytes):
            assert a[name] == b[name], name  # run_config: the same settings
        else:
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
            assert a[name].tobytes() == b[name].tobytes(), name
    assert any(name.startswith("run_config") for name in a)  # compared above: equal
    with open(tmp_path / "a" / "eval_results.json") as f:
        saved_a = json.load(f)
    with open(tmp_path / "b" / "eval_results.json") as f:
        saved_b = json.load(f)
    assert saved_a["results"] == saved_b["results"] == preparing["results"] == ready["results"]
    assert saved_a["iterations"] == saved_b["iterations"] == TINY.num_iterations


# Heavy: it prepares TFDS omniglot a second time (the session's fixture already did); the
# sinusoid test above checks the same rule with a data preparation that draws random numbers.
@pytest.mark.slow
@pytest.mark.heavy
def test_the_omniglot_run_that_prepares_the_data_starts_like_the_later_ones(
        omniglot_source_dir, tmp_path):
    # The first build prepares TFDS omniglot offline in a new data directory and decodes it;
    # the second finds the decoded cache. Both must start from the same weights.
    data_dir = tmp_path / "tfds"
    config = MAMLTrainConfig(task_family="omniglot", num_ways=5, num_shots=1, num_queries=1,
                             eval_num_shots=None, eval_num_queries=None,
                             meta_batch_size=2, num_val_tasks=2, num_eval_tasks=2,
                             eval_inner_steps=(1,), data_dir=str(data_dir),
                             omniglot_source_dir=str(omniglot_source_dir))
    preparing = _initial_weights(config)
    assert (data_dir / "omniglot" / "3.0.0" / "dataset_info.json").is_file()
    assert list((data_dir / "keras_meta_cache").glob("*.npz"))
    _draw_from_every_global_generator()
    assert _initial_weights(config) == preparing
