"""resnet12: shapes, parameter counts, argument checks, and exact second-order MAML through it.

The meta-gradient checks run in float64 on a tiny ResNet-12 (widths 2-2-3-3, 16x16x3 images,
3-way 1-shot): MAML's analytic meta-gradient against central finite differences of the
post-adaptation query loss along random directions in parameter space.

The step of those differences is small (1e-8) for a reason. The meta-loss of a network with
(leaky) ReLUs and max-pools is only piecewise smooth, and worse than the network itself: where
a unit of the *support* pass crosses its kink (or a max-pool's winner changes), the inner
gradient jumps, so the adapted parameters and the query loss jump too. Along a random
direction those jumps were measured about 1e-7 apart after two inner steps of 0.4 (the Hessian
amplifies how fast the adapted network's units move), so central differences with a step of
1e-6 straddle one in most directions (relative errors of about 1), at 1e-7 in some, and at
1e-8 in none of the directions used; float64 rounding still leaves them accurate to ~1e-8
relative there.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.backbones import resnet12
from keras_meta.core import batching
from keras_meta.layers import MetaBatchNormalization

WAYS = 3
TINY = dict(input_shape=(16, 16, 3), widths=(2, 2, 3, 3))
# The analytic meta-gradient agrees with central differences to 3e-8 relative or better here
# (measured: 1 and 2 inner steps, 5 directions each); first-order MAML, which drops the
# second-order terms, is off by about 1 (the Hessian terms dominate at this rate).
EXACT = 1e-6
FD_STEP = 1e-8  # see the module docstring


def _block_params(channels_in, width, batch_norm=True):
    """Trainable parameters of one residual block (see `resnet12`)."""
    convs = 9 * channels_in * width + 2 * 9 * width * width + channels_in * width
    if batch_norm:
        return convs + 4 * 2 * width  # gamma and beta of the three convs' BN and the shortcut's
    return convs + 4 * width  # a bias on each of the four convolutions


def _expected_params(widths, channels, ways, batch_norm=True):
    total, previous = 0, channels
    for width in widths:
        total += _block_params(previous, width, batch_norm)
        previous = width
    return total + previous * ways + ways


def test_default_shapes_and_parameter_count():
    model = resnet12(5)
    # MetaOptNet's ResNet-12 without DropBlock: about 12.4 M parameters.
    assert model.count_params() == _expected_params((64, 160, 320, 640), 3, 5) == 12427525
    assert model.non_trainable_variables == []
    # 84 -> 42 -> 21 -> 10 -> 5, then the mean over the 5x5 map: 640 features.
    assert model.get_layer("block3_pool").output.shape == (None, 5, 5, 640)
    assert tuple(model.get_layer("logits").kernel.shape) == (640, 5)
    assert sum(isinstance(layer, MetaBatchNormalization) for layer in model.layers) == 16
    assert all(not layer.use_bias for layer in model.layers
               if isinstance(layer, keras.layers.Conv2D))


def test_tiny_network_runs_and_counts():
    model = resnet12(WAYS, **TINY)
    assert model.count_params() == _expected_params((2, 2, 3, 3), 3, WAYS)
    x = np.random.default_rng(0).standard_normal((4, 16, 16, 3)).astype("float32")
    assert model(x).shape == (4, WAYS)
    assert model.get_layer("block3_pool").output.shape == (None, 1, 1, 3)


def test_batch_norm_modes_and_leaky_relu():
    per_step = resnet12(WAYS, batch_norm="per_step", num_inner_steps=2, **TINY)
    plain = resnet12(WAYS, **TINY)
    trainable = lambda m: sum(int(np.prod(v.shape)) for v in m.trainable_variables)  # noqa: E731
    # Per-step BN: num_inner_steps + 1 slots of gamma and beta, and as many running moments.
    bn_params = 2 * 4 * (2 + 2 + 3 + 3)
    assert trainable(per_step) == trainable(plain) + 2 * bn_params
    assert sum(int(np.prod(v.shape)) for v in per_step.non_trainable_variables) == 3 * bn_params
    none = resnet12(WAYS, batch_norm="none", **TINY)
    assert none.count_params() == _expected_params((2, 2, 3, 3), 3, WAYS, batch_norm=False)
    assert not any(isinstance(layer, MetaBatchNormalization) for layer in none.layers)
    assert all(layer.use_bias for layer in none.layers if isinstance(layer, keras.layers.Conv2D))
    # num_inner_steps is accepted (and unused) without per-step BN, as conv4 does.
    resnet12(WAYS, num_inner_steps=5, **TINY)
    relu = resnet12(WAYS, leaky_relu_alpha=0.2, **TINY).get_layer("block0_relu")
    assert relu.negative_slope == pytest.approx(0.2)


def test_float64_and_config_round_trip():
    model = resnet12(WAYS, dtype="float64", **TINY)
    assert all(v.dtype == "float64" for v in model.weights)
    x = np.random.default_rng(1).standard_normal((4, 16, 16, 3))
    expected = model(x).numpy()
    revived = keras.models.model_from_json(model.to_json())
    revived.set_weights(model.get_weights())
    np.testing.assert_allclose(revived(x).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_ways=0), "num_ways"),
    (dict(num_ways=5, batch_norm="keras"), "batch_norm"),
    (dict(num_ways=5, batch_norm="per_step"), "num_inner_steps"),
    (dict(num_ways=5, widths=(64, 160, 320)), r"widths must be 4 ints >= 1.*got 3 values"),
    (dict(num_ways=5, widths=64), r"widths must be 4 ints"),
    (dict(num_ways=5, widths=(64, 0, 320, 640)), r"widths\[1\] must be an int >= 1; got 0"),
    (dict(num_ways=5, widths=(64, 160, 320.0, 640)), r"widths\[2\]"),
    (dict(num_ways=5, leaky_relu_alpha=-0.1), "leaky_relu_alpha"),
    (dict(num_ways=5, leaky_relu_alpha=float("nan")), "leaky_relu_alpha"),
    (dict(num_ways=5, input_shape=(84, 84)), "input_shape"),
    (dict(num_ways=5, input_shape=(15, 84, 3)), "too small.*at least 16"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet12(**kwargs)


def test_maml_runs_resnet12_with_the_per_task_loop():
    # The residual adds are branches, which the task-batched pass does not cover: "auto"
    # takes the loop, and asking for the batched pass says why it cannot.
    model = resnet12(WAYS, **TINY)
    assert any("single chain" in p for p in batching.unsupported_layers(model))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert not km.MAML(model, loss=loss).uses_task_batching
    with pytest.raises(ValueError, match="task_batching='batched' is not possible"):
        km.MAML(model, loss=loss, task_batching="batched")


# -- exact second-order MAML through resnet12 ---------------------------------------------------

def _episodes(num_tasks=2, shots=1, queries=2, seed=0):
    rng = np.random.default_rng(seed)
    labels = lambda k: np.tile(np.repeat(np.arange(WAYS), k), (num_tasks, 1))  # noqa: E731
    return km.Episode(
        tf.constant(rng.standard_normal((num_tasks, WAYS * shots, 16, 16, 3))),
        tf.constant(labels(shots), tf.int32),
        tf.constant(rng.standard_normal((num_tasks, WAYS * queries, 16, 16, 3))),
        tf.constant(labels(queries), tf.int32))


def _maml(base, **kwargs):
    # Keras loss objects compute in floatx (float32) unless told otherwise, which would swamp
    # the finite differences with rounding error.
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    return km.MAML(base, inner_lr=0.4, loss=loss, dtype="float64", **kwargs)


def _tiny_float64(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = resnet12(WAYS, dtype="float64", **TINY, **kwargs)
    # Non-trivial gamma and beta, so that the normalization's own parameters matter.
    rng = np.random.default_rng(seed + 1)
    for v in model.trainable_variables:
        if "gamma" in v.path or "beta" in v.path:
            v.assign(v.numpy() + 0.3 * rng.standard_normal(v.shape))
    return model


def _directional_errors(model, mamls, episodes, num_dirs=3, eps=FD_STEP, seed=0):
    """For each MAML in `mamls`: relative errors |<g, v> - FD_v| / |FD_v| along random v.

    FD_v is the central difference of the mean post-adaptation query loss (float64) along
    v; all the MAMLs wrap `model`, and the finite differences are those of the first.
    """
    grads = [[g.numpy() for g in maml.meta_gradients(episodes)[1]] for maml in mamls]
    variables = model.trainable_variables
    assert len(grads[0]) == len(variables)  # fixed inner rate: only the base model's
    loss = tf.function(lambda: tf.reduce_mean(mamls[0].meta_batch_losses(episodes)[0]))
    base = [v.numpy() for v in variables]
    rng = np.random.default_rng(seed)
    errors = [[] for _ in mamls]
    try:
        for _ in range(num_dirs):
            dirs = [rng.standard_normal(b.shape) for b in base]

            def at(t):
                for v, b, d in zip(variables, base, dirs):
                    v.assign(b + t * d)
                return float(loss())

            fd = (at(eps) - at(-eps)) / (2 * eps)
            for g, out in zip(grads, errors):
                analytic = sum(float(np.sum(a * d)) for a, d in zip(g, dirs))
                out.append(abs(analytic - fd) / max(abs(fd), 1e-12))
    finally:
        for v, b in zip(variables, base):
            v.assign(b)
    return errors


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences_and_first_order_does_not(
        inner_steps):
    model = _tiny_float64()
    exact = _maml(model, inner_steps=inner_steps)
    first = _maml(model, inner_steps=inner_steps, first_order=True)
    assert not exact.uses_task_batching  # the per-task loop of fast-weights calls
    errors, first_errors = _directional_errors(model, [exact, first], _episodes())
    print(f"{inner_steps} step(s): second order {errors}, first order {first_errors}")
    assert max(errors) < EXACT, errors
    # The same check must be able to fail: first-order MAML drops the Hessian terms and lands
    # orders of magnitude outside the tolerance.
    assert min(first_errors) > 1e3 * EXACT, first_errors


def test_per_step_batch_norm_meta_gradient_matches_finite_differences():
    model = _tiny_float64(seed=1, batch_norm="per_step", num_inner_steps=1)
    (errors,) = _directional_errors(model, [_maml(model, inner_steps=1)],
                                    _episodes(seed=1), num_dirs=2)
    assert max(errors) < EXACT, errors


def test_maml_config_round_trip_gives_the_same_meta_gradient():
    model = _tiny_float64(seed=2)
    maml = _maml(model, inner_steps=1)
    clone = km.MAML.from_config(maml.get_config())
    assert clone.model is not model
    assert [layer.get_config() for layer in clone.model.layers] == [
        layer.get_config() for layer in model.layers]
    for key in ("inner_lr", "inner_steps", "first_order", "task_batching"):
        assert getattr(clone, key) == getattr(maml, key), key
    clone.model.set_weights(model.get_weights())
    # Keras' loss configs leave out the loss's dtype, so the revived loss computes in float32;
    # the float64 one is given back to compare the two to float64 rounding.
    assert clone.loss_fn.get_config() == maml.loss_fn.get_config()
    clone.compile(loss=maml.loss_fn)
    episodes = _episodes(seed=2)
    loss_a, grads_a, _ = maml.meta_gradients(episodes)
    loss_b, grads_b, _ = clone.meta_gradients(episodes)
    np.testing.assert_allclose(loss_b.numpy(), loss_a.numpy(), rtol=1e-12)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-14)
