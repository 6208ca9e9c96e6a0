"""`LearnedOptimizer` driving an `MLPOptimizer`: its state, its updates, .keras files, old names."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from lopt_helpers import descent_rule, regression_data, small_regression_model
from keras_meta.core import functional
from keras_meta.learned_optimizer import LearnedOptimizer, MLPOptimizer


def _rule():
    # A random (not only Adam-like) head, so that the MLP path is exercised too.
    return MLPOptimizer(hidden_sizes=(8,), step_scale=0.01, seed=0,
                        output_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1))


def _compiled_model(rule=None):
    model = small_regression_model()
    model.compile(optimizer=LearnedOptimizer(rule if rule is not None else _rule()), loss="mse")
    return model


def _pure_run(rule, model, x, y, steps):
    """`steps` full-batch steps of `rule.apply` on tensors: what the optimizer must reproduce."""
    params = [tf.constant(v.numpy()) for v in model.trainable_variables]
    state = rule.init_state(params)
    mse = keras.losses.MeanSquaredError()
    for step in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = mse(y, functional.functional_call(model, params, x))
        grads = tape.gradient(loss, params)
        params, state = rule.apply(grads, params, state, step=step)
    return [p.numpy() for p in params], state


def test_optimizer_variables_are_one_accumulator_pair_per_model_variable():
    model = _compiled_model()
    x, y = regression_data()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    optimizer = model.optimizer
    slots = optimizer.variables[2:]  # after iterations and learning rate
    assert len(slots) == 2 * len(model.trainable_variables)
    for i, variable in enumerate(model.trainable_variables):
        size = int(np.prod(variable.shape))
        m, v = slots[2 * i], slots[2 * i + 1]
        assert tuple(m.shape) == (size, 4), (m.path, m.shape)
        assert tuple(v.shape) == (size,), (v.path, v.shape)
        assert float(np.min(v.numpy())) > 0.0  # every coordinate had a nonzero gradient
        assert float(np.max(np.abs(m.numpy()))) > 0.0
    assert int(optimizer.iterations.numpy()) == 4


def test_fit_steps_equal_the_pure_rule():
    x, y = regression_data()
    reference = small_regression_model()
    rule = _rule()
    expected, expected_state = _pure_run(rule, reference, x, y, steps=3)

    model = _compiled_model(rule)
    initial = model.get_weights()
    model.fit(x, y, epochs=3, batch_size=len(x), verbose=0, shuffle=False)  # 3 full-batch steps
    assert int(model.optimizer.iterations.numpy()) == 3
    for a, b, start in zip(model.get_weights(), expected, initial):
        assert np.max(np.abs(b - start)) > 1e-3  # the rule moved them
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    slots = model.optimizer.variables[2:]
    for i, (m, v) in enumerate(expected_state):
        np.testing.assert_allclose(slots[2 * i].numpy(), m.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(slots[2 * i + 1].numpy(), v.numpy(), rtol=1e-5, atol=1e-9)


def test_apply_gradients_steps_equal_the_pure_rule():
    x, y = regression_data()
    rule = _rule()
    expected, _ = _pure_run(rule, small_regression_model(), x, y, steps=3)
    model = small_regression_model()
    optimizer = LearnedOptimizer(rule)
    mse = keras.losses.MeanSquaredError()
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = mse(y, model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    for a, b in zip(model.get_weights(), expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _one_more_epoch(model, x, y):
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    return model.get_weights()


def test_keras_file_round_trip_carries_the_accumulators(tmp_path):
    model = _compiled_model()
    x, y = regression_data()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.optimizer, LearnedOptimizer)
    assert isinstance(restored.optimizer.rule, MLPOptimizer)
    assert restored.optimizer.rule.get_config() == model.optimizer.rule.get_config()
    for a, b in zip(model.optimizer.rule.weights, restored.optimizer.rule.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    before = model.get_weights()
    for a, b in zip(_one_more_epoch(model, x, y), _one_more_epoch(restored, x, y)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    # Restarting the accumulators (a fresh optimizer on the same rule) changes the steps.
    fresh = keras.models.load_model(path)
    fresh.compile(optimizer=LearnedOptimizer(fresh.optimizer.rule), loss="mse")
    fresh.set_weights(before)
    restarted = _one_more_epoch(fresh, x, y)
    assert any(not np.allclose(a, b, rtol=1e-6) for a, b in zip(restarted, model.get_weights()))


_FRESH_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    import keras_meta.learned_optimizer  # registers the rule and the optimizer

    model_path, data_path, out_path = sys.argv[1:4]
    data = np.load(data_path)
    model = keras.models.load_model(model_path)
    assert type(model.optimizer.rule).__name__ == "MLPOptimizer", model.optimizer.rule
    model.fit(data["x"], data["y"], epochs=1, batch_size=16, verbose=0, shuffle=False)
    weights = model.get_weights()
    np.savez(out_path, iterations=model.optimizer.iterations.numpy(),
             **{f"w{i}": w for i, w in enumerate(weights)})
""")


def test_rule_and_state_survive_a_fresh_process(tmp_path):
    model = _compiled_model()
    x, y = regression_data()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    model_path, data_path = tmp_path / "model.keras", tmp_path / "data.npz"
    out_path = tmp_path / "after.npz"
    model.save(model_path)
    np.savez(data_path, x=x, y=y)

    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(keras_meta.__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(
                   [repo_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                  if p]))
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(model_path), str(data_path), str(out_path)],
        env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]

    expected = _one_more_epoch(model, x, y)
    with np.load(out_path) as after:
        assert int(after["iterations"]) == int(model.optimizer.iterations.numpy()) == 12
        got = [after[f"w{i}"] for i in range(len(expected))]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_the_old_keyword_and_config_key_still_work():
    rule = descent_rule()
    optimizer = LearnedOptimizer(lstm_optimizer=rule)
    assert optimizer.rule is rule and optimizer.lstm_optimizer is optimizer.rule
    with pytest.raises(ValueError, match="not both"):
        LearnedOptimizer(MLPOptimizer(), lstm_optimizer=descent_rule())
    with pytest.raises(TypeError, match="got SGD"):
        LearnedOptimizer(keras.optimizers.SGD())
    with pytest.raises(TypeError, match="got SGD"):
        LearnedOptimizer(lstm_optimizer=keras.optimizers.SGD())

    for original in (LearnedOptimizer(descent_rule(0.02), learning_rate=0.5),
                     LearnedOptimizer(MLPOptimizer(hidden_sizes=(3,), seed=1),
                                      learning_rate=0.5)):
        config = original.get_config()
        assert "rule" in config and "lstm_optimizer" not in config
        old = dict(config)
        old["lstm_optimizer"] = old.pop("rule")
        for c in (config, old):
            clone = LearnedOptimizer.from_config(c)
            assert type(clone.rule) is type(original.rule)
            assert clone.rule.get_config() == original.rule.get_config()
            assert clone.lstm_optimizer is clone.rule
            assert float(clone.learning_rate.numpy()) == 0.5
