"""Forward behaviour, per-step slots, running statistics and serialization of the layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bn_helpers import LOSS, task, tiny_net
from keras_meta.core import functional
from keras_meta.core.inner_loop import adapt_params
from keras_meta.core.losses import scalar_loss
from keras_meta.layers import MetaBatchNormalization
from keras_meta.core.step_context import inner_step


def _x(shape=(6, 4, 4, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("axis", [-1, 1])
def test_transductive_forward_matches_keras_batch_norm_in_training(axis):
    x = _x()
    ours = MetaBatchNormalization(axis=axis, dtype="float64")
    theirs = keras.layers.BatchNormalization(axis=axis, dtype="float64")
    ours.build(x.shape)
    theirs.build(x.shape)
    rng = np.random.default_rng(3)
    for a, b in ((ours.gamma, theirs.gamma), (ours.beta, theirs.beta)):
        value = rng.standard_normal(a.shape)
        a.assign(value)
        b.assign(value)
    np.testing.assert_allclose(ours(x).numpy(), theirs(x, training=True).numpy(), atol=1e-12)


def test_transductive_uses_batch_statistics_even_when_not_training():
    x = _x()
    bn = MetaBatchNormalization(dtype="float64")
    np.testing.assert_allclose(bn(x, training=False).numpy(), bn(x, training=True).numpy())
    assert bn.non_trainable_weights == []
    # The first item's output depends on the rest of the batch.
    assert not np.allclose(bn(x[:2]).numpy()[0], bn(x).numpy()[0])


def _per_step_layer(num_steps=2):
    x = _x()
    bn = MetaBatchNormalization(mode="per_step", num_steps=num_steps, dtype="float64")
    bn.build(x.shape)
    rng = np.random.default_rng(1)
    bn.gamma.assign(1.0 + rng.standard_normal(bn.gamma.shape))
    bn.beta.assign(rng.standard_normal(bn.beta.shape))
    bn.moving_mean.assign(rng.standard_normal(bn.moving_mean.shape))
    bn.moving_variance.assign(1.0 + rng.random(bn.moving_variance.shape))
    return bn, x


def test_per_step_slots_follow_the_inner_step():
    bn, x = _per_step_layer(num_steps=2)
    assert bn.gamma.shape == (3, 3) and bn.moving_mean.shape == (3, 3)
    outputs = {}
    # The query pass after k steps: slot min(k, 2), the query slot once both trained steps
    # are taken; outside any step (None), the query slot too.
    for step in (0, 1, 2, 7, None):
        with inner_step(step, query=True):
            outputs[step] = bn(x, training=False).numpy()
            assert bn.current_slot() == (2 if step is None or step >= 2 else step)
    assert not np.allclose(outputs[0], outputs[1])
    assert not np.allclose(outputs[1], outputs[2])
    np.testing.assert_array_equal(outputs[None], outputs[2])
    np.testing.assert_array_equal(outputs[7], outputs[2])
    # Slot 1 by hand: running statistics, gamma and beta of row 1.
    mean, var = bn.moving_mean.numpy()[1], bn.moving_variance.numpy()[1]
    expected = (x - mean) / np.sqrt(var + bn.epsilon) * bn.gamma.numpy()[1] + bn.beta.numpy()[1]
    np.testing.assert_allclose(outputs[1], expected, atol=1e-12)


def test_adaptation_steps_past_the_trained_ones_reuse_the_last_trained_slot():
    # MAML++: slots exist for the trained steps (num_steps) plus the query slot. Adapting
    # with more steps reuses the last trained step's slot (1 here), never the query slot (2),
    # whose statistics are those of the query pass.
    bn, x = _per_step_layer(num_steps=2)
    for step, slot in ((0, 0), (1, 1), (2, 1), (3, 1), (9, 1)):
        with inner_step(step):
            assert bn.current_slot() == slot, step
            before = bn.moving_mean.numpy()
            out = bn(x, training=True).numpy()
            moved = np.flatnonzero(np.any(bn.moving_mean.numpy() != before, axis=1))
            assert list(moved) == [slot], step
        with inner_step(slot):  # gamma and beta of that slot too
            np.testing.assert_array_equal(out, bn(x, training=True).numpy())
    # Without trained steps there is only the query slot, for everything.
    bn0, _ = _per_step_layer(num_steps=0)
    for step, query in ((0, False), (4, False), (0, True), (4, True)):
        with inner_step(step, query=query):
            assert bn0.current_slot() == 0


def test_per_step_inference_does_not_depend_on_the_batch():
    bn, x = _per_step_layer()
    np.testing.assert_allclose(bn(x[:1], training=False).numpy()[0],
                               bn(x, training=False).numpy()[0], atol=1e-12)
    # Training mode uses batch statistics, so there it does depend on the batch.
    assert not np.allclose(bn(x[:2], training=True).numpy()[0],
                           bn(x, training=True).numpy()[0])


def test_per_step_running_statistics_update_only_the_current_slot():
    bn, x = _per_step_layer(num_steps=2)
    before_mean, before_var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    with inner_step(1):
        bn(x, training=True)
    after_mean, after_var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    np.testing.assert_array_equal(after_mean[[0, 2]], before_mean[[0, 2]])
    np.testing.assert_array_equal(after_var[[0, 2]], before_var[[0, 2]])
    m = bn.momentum
    np.testing.assert_allclose(after_mean[1], m * before_mean[1] + (1 - m) * x.mean((0, 1, 2)))
    np.testing.assert_allclose(after_var[1], m * before_var[1] + (1 - m) * x.var((0, 1, 2)))
    bn(x, training=False)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), after_mean)


def test_per_step_stateless_call_returns_new_state_without_assigning():
    model = tiny_net("per_step", num_steps=1)
    x = task()[0]
    before = [v.numpy() for v in model.non_trainable_variables]
    with inner_step(0):
        _, state = functional.functional_call(
            model, functional.get_params(model), x, training=True, return_state=True)
    for v, b in zip(model.non_trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    new_mean = state[0].numpy()
    assert not np.allclose(new_mean[0], before[0][0])
    np.testing.assert_array_equal(new_mean[1], before[0][1])


def test_per_step_gradients_reach_the_step_and_query_slots():
    # One adaptation step traced at slot 0, then the query pass at slot 1 (inner_step(1,
    # query=True), as after one step), so both rows of gamma and beta take part in the
    # meta-objective.
    model = tiny_net("per_step", num_steps=2)
    sx, sy, qx, qy = task()
    index = {v.path.split("/")[-1]: i for i, v in enumerate(model.trainable_variables)
             if v.path.startswith("bn/")}
    with tf.GradientTape() as tape:
        params = functional.get_params(model)
        adapted = adapt_params(model, params, sx, sy, loss_fn=LOSS, inner_lr=0.5, inner_steps=1)
        with inner_step(1, query=True):
            loss = scalar_loss(LOSS, qy, functional.functional_call(model, adapted, qx,
                                                                    training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    for name in ("gamma", "beta"):
        g = grads[index[name]].numpy()
        assert np.all(np.abs(g[0]) > 1e-8), (name, g)
        assert np.all(np.abs(g[1]) > 1e-8), (name, g)
        np.testing.assert_array_equal(g[2], 0.0)  # slot 2 is never traced here
        assert not np.allclose(g[0], g[1])


@pytest.mark.parametrize("norm,num_steps", [("transductive", None), ("per_step", 1)])
@pytest.mark.parametrize("training", [True, False])
def test_functional_call_with_own_weights_equals_model_call(norm, num_steps, training):
    model = tiny_net(norm, num_steps=num_steps)
    if norm == "per_step":
        model.non_trainable_variables[1].assign(
            1.0 + np.random.default_rng(0).random(model.non_trainable_variables[1].shape))
    x = task()[0]
    expected = functional.functional_call(model, functional.get_params(model), x,
                                          training=training).numpy()
    np.testing.assert_allclose(model(x, training=training).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("mode,num_steps", [("transductive", None), ("per_step", 3)])
def test_config_round_trip(mode, num_steps):
    bn = MetaBatchNormalization(mode=mode, num_steps=num_steps, axis=1, momentum=0.9,
                                epsilon=1e-4, center=False, gamma_initializer="random_normal",
                                dtype="float64", name="bn_rt")
    x = _x()
    y = bn(x, training=True).numpy()
    config = bn.get_config()
    assert config["mode"] == mode and config["num_steps"] == num_steps
    assert config["axis"] == 1 and config["momentum"] == 0.9 and config["center"] is False
    clone = MetaBatchNormalization.from_config(config)
    assert clone.get_config() == config
    clone.build(x.shape)
    clone.set_weights(bn.get_weights())
    assert clone.beta is None
    np.testing.assert_allclose(clone(x, training=True).numpy(), y)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(bn))
    assert isinstance(revived, MetaBatchNormalization)
    assert revived.get_config() == config


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="none"), "mode"),
    (dict(mode="per_step"), "num_steps"),
    (dict(mode="per_step", num_steps=-1), "num_steps"),
    (dict(mode="per_step", num_steps=1.0), "num_steps"),
    (dict(mode="transductive", num_steps=2), "num_steps"),
    (dict(axis=(1, 2)), "axis"),
    (dict(momentum=1.5), "momentum"),
    (dict(epsilon=0.0), "epsilon"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetaBatchNormalization(**kwargs)


def test_bad_input_shapes_are_rejected():
    with pytest.raises(ValueError, match="rank"):
        MetaBatchNormalization().build((4,))
    with pytest.raises(ValueError, match="axis"):
        MetaBatchNormalization(axis=0).build((4, 3))
    with pytest.raises(ValueError, match="known"):
        MetaBatchNormalization().build((4, None))
