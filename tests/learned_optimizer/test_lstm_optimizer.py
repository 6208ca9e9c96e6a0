import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_meta.learned_optimizer import LSTMOptimizer


def _params(dtype="float32"):
    rng = np.random.RandomState(0)
    return [tf.constant(rng.randn(*s), dtype=dtype) for s in [(3, 4), (4,), (2, 1, 5), ()]]


def _grads(dtype="float32"):
    rng = np.random.RandomState(1)
    return [tf.constant(rng.randn(*s) * 10 ** rng.uniform(-6, 1), dtype=dtype)
            for s in [(3, 4), (4,), (2, 1, 5), ()]]


def test_zero_output_head_gives_exactly_zero_updates():
    rule = LSTMOptimizer(output_initializer="zeros", seed=0)
    params = _params()
    state = rule.init_state(params)
    for step in range(3):  # the state evolves, the updates must stay zero
        new_params, state = rule.apply(_grads(), params, state, step=step)
        for p, q in zip(params, new_params):
            np.testing.assert_array_equal(p.numpy(), q.numpy())
    assert float(tf.reduce_max(tf.abs(state[0][1]))) > 0.0


def test_updates_have_the_shapes_and_dtypes_of_the_params():
    rule = LSTMOptimizer(seed=0)
    params = _params()
    new_params, state = rule.apply(_grads(), params, rule.init_state(params), step=0)
    assert [q.shape for q in new_params] == [p.shape for p in params]
    assert all(q.dtype == tf.float32 for q in new_params)
    num_coordinates = sum(int(np.prod(p.shape)) for p in params)
    assert len(state) == 2
    assert all(h.shape == (num_coordinates, 20) and c.shape == (num_coordinates, 20)
               for h, c in state)
    diffs = [float(tf.reduce_max(tf.abs(q - p))) for p, q in zip(params, new_params)]
    assert all(d > 0 for d in diffs)


def test_variable_counts_of_the_paper_configuration():
    rule = LSTMOptimizer(hidden_size=20, num_layers=2)
    # layer 0: (2 + 20) * 80 + 80; layer 1: (20 + 20) * 80 + 80; head: 20 + 1.
    assert rule.num_features == 2
    assert len(rule.trainable_variables) == 8
    assert sum(int(np.prod(v.shape)) for v in rule.trainable_variables) == 5141
    with_loss = LSTMOptimizer(hidden_size=20, num_layers=2, use_loss_feature=True)
    assert sum(int(np.prod(v.shape)) for v in with_loss.trainable_variables) == 5141 + 2 * 80
    raw = LSTMOptimizer(hidden_size=3, num_layers=1, preprocessing="none")
    assert sum(int(np.prod(v.shape)) for v in raw.trainable_variables) == (1 + 3) * 12 + 12 + 3 + 1


def test_log_sign_preprocessing_matches_the_paper():
    rule = LSTMOptimizer(preprocessing_p=10.0)
    g = np.array([2.0, -0.5, 1e-6, -1e-5, 0.0], "float32")
    feats = rule.preprocess(tf.constant(g)).numpy()
    threshold = np.exp(-10.0)
    expected = np.where(np.abs(g)[:, None] >= threshold,
                        np.stack([np.log(np.abs(g) + 1e-30) / 10, np.sign(g)], -1),
                        np.stack([-np.ones_like(g), np.exp(10.0) * g], -1))
    np.testing.assert_allclose(feats, expected, rtol=1e-5)


def test_loss_feature_is_used_and_required():
    rule = LSTMOptimizer(use_loss_feature=True, seed=0)
    params = _params()
    state = rule.init_state(params)
    with pytest.raises(ValueError, match="use_loss_feature=True.*loss=None"):
        rule.apply(_grads(), params, state, step=0)
    a, _ = rule.apply(_grads(), params, state, step=0, loss=tf.constant(1.0))
    b, _ = rule.apply(_grads(), params, state, step=0, loss=tf.constant(100.0))
    assert not np.allclose(a[0].numpy(), b[0].numpy())


def test_serialization_round_trip_gives_the_same_updates(tmp_path):
    rule = LSTMOptimizer(hidden_size=6, num_layers=3, output_scale=0.3, use_loss_feature=True,
                         output_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=2),
                         seed=4)
    clone = LSTMOptimizer.from_config(rule.get_config())
    assert clone.get_config() == rule.get_config()
    clone.set_weights(rule.get_weights())
    generic = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(rule))
    path = str(tmp_path / "phi.npz")
    rule.save_weights(path)
    generic.load_weights(path)
    with pytest.raises(ValueError, match=r"has shape \(4, 24\); this LSTMOptimizer expects \(4, 20\)"):
        LSTMOptimizer(hidden_size=5, num_layers=3, use_loss_feature=True).load_weights(path)
    params = _params()
    outputs = []
    for r in (rule, clone, generic):
        new, state = r.apply(_grads(), params, r.init_state(params), step=0, loss=tf.constant(2.0))
        outputs.append(np.concatenate([q.numpy().ravel() for q in new]))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


def test_float64_layer_keeps_float64():
    rule = LSTMOptimizer(dtype="float64", seed=0)
    params = _params("float64")
    new, state = rule.apply(_grads("float64"), params, rule.init_state(params), step=0)
    assert all(v.dtype == "float64" for v in rule.weights)
    assert all(q.dtype == tf.float64 for q in new) and state[0][0].dtype == tf.float64


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden_size": 0}, "hidden_size must be an int >= 1; got 0"),
    ({"num_layers": 1.5}, "num_layers must be an int >= 1; got 1.5"),
    ({"preprocessing": "log"}, r"preprocessing must be one of \('log_sign', 'none'\); got 'log'"),
    ({"output_scale": float("nan")}, "output_scale must be a finite number; got nan"),
])
def test_bad_constructor_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LSTMOptimizer(**kwargs)


def test_bad_apply_inputs_are_named():
    rule = LSTMOptimizer()
    params = _params()
    state = rule.init_state(params)
    with pytest.raises(ValueError, match="got 3 gradients for 4 parameters"):
        rule.apply(_grads()[:3], params, state, step=0)
    with pytest.raises(ValueError, match=r"gradient 1 has shape \(5,\); its parameter has shape"):
        rule.apply([_grads()[0], tf.zeros([5])] + _grads()[2:], params, state, step=0)
    with pytest.raises(ValueError, match="one \\(h, c\\) pair per layer \\(2\\)"):
        rule.apply(_grads(), params, state[:1], step=0)
