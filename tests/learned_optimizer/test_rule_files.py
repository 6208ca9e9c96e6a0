"""Learned rules as `.keras` files: `save_rule`, `load_rule`, `read_rule_metadata`, `from_file`."""

import json
import os
import re
import shutil
import zipfile

import keras
import numpy as np
import pytest

from lopt_helpers import regression_data, small_regression_model
from keras_meta.learned_optimizer import (LearnedOptimizer, LSTMOptimizer, MLPOptimizer,
                                          load_rule, read_rule_metadata, save_rule)


def _lstm():
    return LSTMOptimizer(hidden_size=20, num_layers=2, seed=1,
                         output_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=2))


def _mlp():
    return MLPOptimizer(hidden_sizes=(8, 4), step_scale=0.02, param_feature=True, seed=3,
                        output_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=4))


def _perturbed(rule, seed=0):
    # Weights that differ from any freshly initialised rule's (as after meta-training).
    rng = np.random.RandomState(seed)
    rule.set_weights([np.asarray(w + rng.randn(*np.shape(w)) * 0.1, dtype=np.asarray(w).dtype)
                      for w in rule.get_weights()])
    return rule


def _assert_same_rule(a, b):
    assert type(a) is type(b)
    assert a.get_config() == b.get_config()
    assert [w.name for w in a.weights] == [w.name for w in b.weights]
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)


def _message(excinfo):
    return str(excinfo.value)


@pytest.mark.parametrize("make", [_lstm, _mlp], ids=["lstm", "mlp"])
def test_round_trip_with_metadata(tmp_path, make):
    rule = _perturbed(make())
    path = tmp_path / "rule.keras"
    metadata = {"iteration": 12, "config": {"num_steps": 20, "meta_lr": 0.003},
                "optimizee": "quadratic", "losses": [1.5, 0.25]}
    save_rule(rule, path, metadata=metadata)
    assert sorted(os.listdir(tmp_path)) == ["rule.keras"]
    assert read_rule_metadata(path) == metadata
    loaded = load_rule(path)
    _assert_same_rule(rule, loaded)
    _assert_same_rule(rule, load_rule(str(path), expected_class=type(rule)))
    plain = keras.saving.load_model(path)
    _assert_same_rule(rule, plain)


def test_metadata_defaults_and_plain_keras_archives(tmp_path):
    rule = _mlp()
    save_rule(rule, tmp_path / "a.keras")
    assert read_rule_metadata(tmp_path / "a.keras") == {}
    # A rule saved with keras.saving.save_model (no metadata member) loads too.
    keras.saving.save_model(rule, tmp_path / "b.keras")
    assert read_rule_metadata(tmp_path / "b.keras") == {}
    _assert_same_rule(rule, load_rule(tmp_path / "b.keras"))


def test_save_refuses_a_path_without_the_keras_suffix(tmp_path):
    path = str(tmp_path / "rule.h5")
    with pytest.raises(ValueError) as excinfo:
        save_rule(_mlp(), path)
    assert ".keras" in _message(excinfo) and path in _message(excinfo)
    assert not os.listdir(tmp_path)


def test_load_refuses_a_path_without_the_keras_suffix_with_the_right_reason(tmp_path):
    save_rule(_mlp(), tmp_path / "rule.keras")
    path = str(tmp_path / "rule.zip")
    shutil.copy(tmp_path / "rule.keras", path)
    with pytest.raises(ValueError) as excinfo:
        load_rule(path)
    assert path in _message(excinfo)
    assert "weights do not fit" not in _message(excinfo)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nothing.keras")
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        load_rule(path)
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        read_rule_metadata(path)


def test_text_file_named_keras_is_not_a_zip(tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("hidden_size=20\n")
    for reader in (load_rule, read_rule_metadata):
        with pytest.raises(ValueError) as excinfo:
            reader(path)
        assert str(path) in _message(excinfo)
        assert "not a .keras archive (not a zip file)" in _message(excinfo)


def test_zip_without_config_is_refused(tmp_path):
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no config")
    with pytest.raises(ValueError) as excinfo:
        load_rule(path)
    assert str(path) in _message(excinfo)
    assert "is not a Keras archive of a learned rule" in _message(excinfo)


def test_a_keras_model_file_is_not_a_rule(tmp_path):
    path = tmp_path / "model.keras"
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(path)
    with pytest.raises(ValueError) as excinfo:
        load_rule(path)
    assert str(path) in _message(excinfo)
    assert "needs a learned update rule" in _message(excinfo)
    assert "got Sequential" in _message(excinfo)
    with pytest.raises(ValueError, match="holds a Sequential; expected a MLPOptimizer"):
        load_rule(path, expected_class=MLPOptimizer)


def test_another_rule_than_expected_is_refused(tmp_path):
    path = tmp_path / "mlp.keras"
    save_rule(_mlp(), path)
    with pytest.raises(ValueError) as excinfo:
        load_rule(path, expected_class=LSTMOptimizer)
    assert _message(excinfo) == f"{path} holds a MLPOptimizer; expected a LSTMOptimizer."
    lstm_path = tmp_path / "lstm.keras"
    save_rule(_lstm(), lstm_path)
    with pytest.raises(ValueError, match="holds a LSTMOptimizer; expected a MLPOptimizer"):
        load_rule(lstm_path, expected_class=MLPOptimizer)


def _rewrite_config(source, destination, edit):
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(destination, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config["config"])
                data = json.dumps(config)
            dst.writestr(item, data)


def test_tampered_config_whose_weights_do_not_fit(tmp_path):
    good = tmp_path / "good.keras"
    save_rule(_lstm(), good, metadata={"iteration": 3})
    bad = tmp_path / "bad.keras"
    _rewrite_config(good, bad, lambda config: config.update(hidden_size=10))
    assert read_rule_metadata(bad) == {"iteration": 3}  # the archive itself is fine
    with pytest.raises(ValueError) as excinfo:
        load_rule(bad)
    message = _message(excinfo)
    assert str(bad) in message and "LSTMOptimizer" in message
    assert "weights do not fit its config" in message

    mlp_good, mlp_bad = tmp_path / "mlp.keras", tmp_path / "mlp_bad.keras"
    save_rule(_mlp(), mlp_good)
    _rewrite_config(mlp_good, mlp_bad, lambda config: config.update(hidden_sizes=[8, 4, 4]))
    with pytest.raises(ValueError, match=re.escape(f"{mlp_bad} could not be read as a "
                                                   "MLPOptimizer: its weights do not fit")):
        load_rule(mlp_bad)


def test_non_finite_weights_are_never_saved(tmp_path):
    rule = _mlp()
    weights = rule.get_weights()
    weights[0][0, 0] = np.nan
    rule.set_weights(weights)
    path = tmp_path / "rule.keras"
    with pytest.raises(FloatingPointError) as excinfo:
        save_rule(rule, path)
    assert "hidden_0_kernel" in _message(excinfo) and str(path) in _message(excinfo)
    assert os.listdir(tmp_path) == []  # neither the file nor a partial one


def test_a_failed_save_leaves_the_good_file(tmp_path):
    good = _perturbed(_mlp())
    path = tmp_path / "rule.keras"
    save_rule(good, path, metadata={"iteration": 1})
    before = path.read_bytes()

    broken = _mlp()
    broken.set_weights([np.full_like(w, np.inf) for w in broken.get_weights()])
    with pytest.raises(FloatingPointError):
        save_rule(broken, path, metadata={"iteration": 2})
    with pytest.raises(TypeError):  # metadata that is not JSON
        save_rule(_mlp(), path, metadata={"iteration": object()})

    assert path.read_bytes() == before
    assert read_rule_metadata(path) == {"iteration": 1}
    _assert_same_rule(good, load_rule(path))


def test_a_failed_metadata_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "rule.keras"
    with pytest.raises(TypeError):
        save_rule(_mlp(), path, metadata={"iteration": object()})
    assert os.listdir(tmp_path) == []


def test_learned_optimizer_from_file_trains_a_model(tmp_path):
    path = tmp_path / "adam_like.keras"
    save_rule(MLPOptimizer(step_scale=0.01, output_initializer="zeros", seed=0), path)
    optimizer = LearnedOptimizer.from_file(path)
    assert isinstance(optimizer, LearnedOptimizer) and isinstance(optimizer.rule, MLPOptimizer)
    model = small_regression_model()
    model.compile(optimizer=optimizer, loss="mse")
    x, y = regression_data()
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    # from_file passes optimizer arguments on.
    assert float(LearnedOptimizer.from_file(path, learning_rate=0.5).learning_rate) == 0.5


def test_a_rule_file_of_another_update_formula_is_refused(tmp_path):
    # A file written when the MLP rule computed its steps differently must not load into
    # today's formula: the same weights would mean another optimizer.
    path = tmp_path / "rule.keras"
    save_rule(_mlp(), path)
    tampered = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                config = json.loads(data)
                assert config["config"]["formula_version"] == MLPOptimizer.FORMULA_VERSION
                config["config"]["formula_version"] = 1
                data = json.dumps(config)
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="trained with update formula version 1; this "
                                         "keras-meta computes version 2"):
        load_rule(tampered)
    with pytest.raises(ValueError, match="formula version 1"):
        MLPOptimizer.from_config(dict(_mlp().get_config(), formula_version=1))
