"""conv4 and mlp: shapes, exact parameter counts, pooling, serialization round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.backbones import conv4, mlp
from keras_meta.core import batching, functional
from keras_meta.layers import MetaBatchNormalization

# 5-way 28x28x1, 64 filters, stride 2, bias-free convolutions before BN:
#   conv0 3*3*1*64 = 576, conv1..3 3*3*64*64 = 36864 each, BN 4 * (64 gamma + 64 beta) = 512,
#   28 -> 14 -> 7 -> 4 -> 2; the default (mean) pooling gives 64 features, head 64*5 + 5 = 325;
#   pooling="flatten" gives 2*2*64 = 256, head 256*5 + 5 = 1285.
OMNIGLOT_TRAINABLE = 576 + 3 * 36864 + 512 + 325
OMNIGLOT_FLATTEN_TRAINABLE = 576 + 3 * 36864 + 512 + 1285


def _images(shape, n=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def test_conv4_stride_shapes_and_parameter_count():
    model = conv4(5)
    assert OMNIGLOT_TRAINABLE == 112005
    assert model.count_params() == OMNIGLOT_TRAINABLE
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == OMNIGLOT_TRAINABLE
    assert model.non_trainable_variables == []
    assert model.get_layer("bn3").output.shape == (None, 2, 2, 64)
    assert model(_images((28, 28, 1))).shape == (4, 5)
    assert sum(isinstance(layer, MetaBatchNormalization) for layer in model.layers) == 4


def test_conv4_stride_pools_the_mean_by_default_and_flattens_on_request():
    # The MAML paper's Omniglot network averages its last 2x2x64 feature map.
    mean = conv4(5)
    assert isinstance(mean.get_layer("global_pool"), keras.layers.GlobalAveragePooling2D)
    assert tuple(mean.get_layer("logits").kernel.shape) == (64, 5)
    assert tuple(conv4(5, pooling="mean").get_layer("logits").kernel.shape) == (64, 5)
    x = _images((28, 28, 1))
    features = keras.Model(mean.input, mean.get_layer("relu3").output)(x).numpy()
    pooled = keras.Model(mean.input, mean.get_layer("global_pool").output)(x).numpy()
    np.testing.assert_allclose(pooled, features.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    flat = conv4(5, pooling="flatten")
    assert isinstance(flat.get_layer("flatten"), keras.layers.Flatten)
    assert tuple(flat.get_layer("logits").kernel.shape) == (256, 5)
    assert flat.count_params() == OMNIGLOT_FLATTEN_TRAINABLE == 112965
    assert flat(x).shape == (4, 5)


def test_conv4_maxpool_flattens_by_default_and_pools_the_mean_on_request():
    flat = conv4(5, input_shape=(84, 84, 3), downsample="maxpool")
    assert tuple(flat.get_layer("logits").kernel.shape) == (5 * 5 * 32, 5)
    mean = conv4(5, input_shape=(84, 84, 3), downsample="maxpool", pooling="mean")
    assert tuple(mean.get_layer("logits").kernel.shape) == (32, 5)
    assert mean.count_params() == flat.count_params() - (800 - 32) * 5


@pytest.mark.parametrize("dtype,conv,tol", [("float64", "patches", 1e-12),
                                            ("float32", "grouped", 2e-5)])
def test_conv4_mean_pooling_runs_task_batched_exactly(dtype, conv, tol):
    # 20 -> 10 -> 5 -> 3 -> 2: the mean is over a 2x2 map, so it differs from a flatten.
    keras.utils.set_random_seed(0)
    model = conv4(3, (20, 20, 1), filters=3, dtype=dtype)
    keepdims = keras.Sequential([
        keras.Input((6, 6, 2), dtype=dtype), keras.layers.Conv2D(3, 3, dtype=dtype),
        keras.layers.GlobalAveragePooling2D(keepdims=True, dtype=dtype),
        keras.layers.Flatten(dtype=dtype), keras.layers.Dense(2, dtype=dtype)])
    rng = np.random.default_rng(1)
    for net in (model, keepdims):
        assert batching.unsupported_layers(net) == []
        params = [tf.constant(v.numpy() + 0.1 * rng.standard_normal((2,) + tuple(v.shape)),
                              dtype) for v in net.trainable_variables]
        x = tf.constant(rng.standard_normal((2, 4) + tuple(net.input_shape[1:])), dtype)
        batched = batching.batched_functional_call(net, params, x, conv=conv)
        for t in range(2):
            single = functional.functional_call(net, [p[t] for p in params], x[t],
                                                training=True)
            np.testing.assert_allclose(batched[t].numpy(), single.numpy(), rtol=tol, atol=tol)


def test_conv4_per_step_and_no_norm_parameter_counts():
    per_step = conv4(5, batch_norm="per_step", num_inner_steps=1)
    trainable = sum(int(np.prod(v.shape)) for v in per_step.trainable_variables)
    assert trainable == OMNIGLOT_TRAINABLE + 512  # a second slot of gamma and beta
    assert sum(int(np.prod(v.shape)) for v in per_step.non_trainable_variables) == 4 * 2 * 128
    plain = conv4(5, batch_norm="none")
    # No BN: the convolutions get their biases back.
    assert plain.count_params() == OMNIGLOT_TRAINABLE - 512 + 64 * 4


def test_conv4_maxpool_mini_imagenet():
    model = conv4(5, input_shape=(84, 84, 3), downsample="maxpool")
    # 32 filters; 84 -> 42 -> 21 -> 10 -> 5, flatten 5*5*32 = 800.
    expected = 3 * 3 * 3 * 32 + 3 * (3 * 3 * 32 * 32) + 4 * 64 + 800 * 5 + 5
    assert model.count_params() == expected == 32773
    assert model.get_layer("pool3").output.shape == (None, 5, 5, 32)
    assert model(_images((84, 84, 3), n=2)).shape == (2, 5)


def test_conv4_mean_pooling_meta_gradients_are_the_same_batched_and_looped():
    # Second order, float64, with a 2x2 map to average: the batched kernels (grouped layout,
    # patches in float64) against the per-task loop of fast-weights calls, which the
    # finite-difference tests check (tests/layers, tests/core).
    keras.utils.set_random_seed(0)
    base = conv4(3, (20, 20, 1), filters=3, dtype="float64")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    loop, batched = [km.MAML(base, inner_lr=0.4, inner_steps=2, loss=loss, dtype="float64",
                             task_batching=mode) for mode in ("loop", "batched")]
    rng = np.random.default_rng(3)
    labels = lambda k: np.tile(np.repeat(np.arange(3), k), (3, 1))  # noqa: E731
    episode = km.Episode(tf.constant(rng.standard_normal((3, 3, 20, 20, 1))),
                         tf.constant(labels(1), tf.int32),
                         tf.constant(rng.standard_normal((3, 6, 20, 20, 1))),
                         tf.constant(labels(2), tf.int32))
    _, grads_loop, _ = loop.meta_gradients(episode)
    _, grads_batched, _ = batched.meta_gradients(episode)
    for a, b in zip(grads_loop, grads_batched):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs", [
    dict(batch_norm="transductive"),
    dict(batch_norm="per_step", num_inner_steps=2),
    dict(batch_norm="none", downsample="maxpool"),
    dict(pooling="flatten"),
    dict(downsample="maxpool", pooling="mean", input_shape=(16, 16, 1)),
])
def test_conv4_config_round_trips_give_identical_outputs(kwargs):
    model = conv4(5, **kwargs)
    x = _images(model.input_shape[1:])
    expected = model(x, training=False).numpy()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    revived = keras.models.model_from_json(model.to_json())
    revived.set_weights(model.get_weights())
    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    for other in (clone, revived, rebuilt):
        np.testing.assert_allclose(other(x, training=False).numpy(), expected, atol=1e-6)
        assert [layer.get_config() for layer in other.layers] == [
            layer.get_config() for layer in model.layers]


def test_conv4_float64():
    model = conv4(3, input_shape=(8, 8, 1), filters=4, dtype="float64")
    assert all(v.dtype == "float64" for v in model.weights)
    assert model(_images((8, 8, 1)).astype("float64")).dtype == "float64"


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_ways=0), "num_ways"),
    (dict(num_ways=5, downsample="avgpool"), "downsample"),
    (dict(num_ways=5, pooling="max"), r"pooling must be one of \('mean', 'flatten'\); got 'max'"),
    (dict(num_ways=5, downsample="maxpool", pooling="avg"), "pooling"),
    (dict(num_ways=5, batch_norm="keras"), "batch_norm"),
    (dict(num_ways=5, batch_norm="per_step"), "num_inner_steps"),
    (dict(num_ways=5, filters=0), "filters"),
    (dict(num_ways=5, input_shape=(28, 28)), "input_shape"),
    (dict(num_ways=5, input_shape=(8, 8, 1), downsample="maxpool"), "too small"),
])
def test_conv4_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv4(**kwargs)


def test_mlp_sinusoid_shapes_and_round_trip():
    model = mlp()
    assert model.count_params() == (1 * 40 + 40) + (40 * 40 + 40) + (40 + 1) == 1761
    x = np.linspace(-5, 5, 7, dtype="float32")[:, None]
    y = model(x).numpy()
    assert y.shape == (7, 1)
    revived = keras.models.model_from_json(model.to_json())
    revived.set_weights(model.get_weights())
    np.testing.assert_allclose(revived(x).numpy(), y, atol=1e-6)
    assert mlp(hidden=(8,), input_dim=2, output_dim=3).count_params() == 2 * 8 + 8 + 8 * 3 + 3
    with pytest.raises(ValueError, match="hidden"):
        mlp(hidden=(40, 0))
