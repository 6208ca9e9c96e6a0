"""`LearnedOptimizer` in `model.fit`, and its state through .keras files and checkpoints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lopt_helpers import descent_rule, regression_data, small_regression_model
from keras_meta.learned_optimizer import LearnedOptimizer
from keras_meta.learned_optimizer import LSTMOptimizer


def _compiled_model():
    model = small_regression_model()
    model.compile(optimizer=LearnedOptimizer(descent_rule()), loss="mse")
    return model


def test_fit_lowers_the_loss_and_creates_one_state_per_coordinate():
    model = _compiled_model()
    x, y = regression_data()
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    optimizer = model.optimizer
    num_states = len(optimizer.variables) - 2  # minus iterations and learning rate
    assert num_states == 2 * len(model.trainable_variables)  # (h, c), one LSTM layer
    sizes = sorted(int(v.shape[0]) for v in optimizer.variables[2:])
    expected = sorted(2 * [int(np.prod(v.shape)) for v in model.trainable_variables])
    assert sizes == expected
    assert max(float(np.abs(v.numpy()).max()) for v in optimizer.variables[2:]) > 0.0


def _one_more_epoch(model, x, y):
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    return model.get_weights()


def test_keras_file_round_trip_gives_identical_subsequent_updates(tmp_path):
    model = _compiled_model()
    x, y = regression_data()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.optimizer, LearnedOptimizer)
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(model.optimizer.lstm_optimizer.weights,
                    restored.optimizer.lstm_optimizer.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    before = model.get_weights()
    for a, b in zip(_one_more_epoch(model, x, y), _one_more_epoch(restored, x, y)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_checkpoint_round_trip_restores_phi_and_lstm_state(tmp_path):
    model = _compiled_model()
    x, y = regression_data()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
        str(tmp_path / "ckpt"))

    other = small_regression_model(seed=5)
    # A different (untrained-looking) phi: the checkpoint must overwrite it.
    optimizer = LearnedOptimizer(LSTMOptimizer(hidden_size=1, num_layers=1,
                                               preprocessing="none", output_scale=0.01, seed=3))
    other.compile(optimizer=optimizer, loss="mse")
    optimizer.build(other.trainable_variables)
    tf.train.Checkpoint(model=other, optimizer=optimizer).restore(
        prefix).assert_existing_objects_matched()
    for a, b in zip(model.optimizer.lstm_optimizer.weights, optimizer.lstm_optimizer.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(_one_more_epoch(model, x, y), _one_more_epoch(other, x, y)):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip_and_bad_arguments():
    optimizer = LearnedOptimizer(descent_rule(0.02), learning_rate=0.5)
    clone = LearnedOptimizer.from_config(optimizer.get_config())
    assert clone.lstm_optimizer.get_config() == optimizer.lstm_optimizer.get_config()
    assert float(clone.learning_rate.numpy()) == 0.5
    with pytest.raises(TypeError, match=r"needs a learned update rule \(LSTMOptimizer, MLPOptimizer.*got SGD"):
        LearnedOptimizer(keras.optimizers.SGD())
    with pytest.raises(ValueError, match="use_loss_feature=True"):
        LearnedOptimizer(LSTMOptimizer(use_loss_feature=True))
