"""conv4 and mlp: shapes, exact parameter counts, serialization round trips."""

import keras
import numpy as np
import pytest

from keras_meta.layers import MetaBatchNormalization
from keras_meta.backbones import conv4, mlp

# 5-way 28x28x1, 64 filters, stride 2, bias-free convolutions before BN:
#   conv0 3*3*1*64 = 576, conv1..3 3*3*64*64 = 36864 each, BN 4 * (64 gamma + 64 beta) = 512,
#   28 -> 14 -> 7 -> 4 -> 2 so flatten is 2*2*64 = 256, head 256*5 + 5 = 1285.
OMNIGLOT_TRAINABLE = 576 + 3 * 36864 + 512 + 1285


def _images(shape, n=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def test_conv4_stride_shapes_and_parameter_count():
    model = conv4(5)
    assert OMNIGLOT_TRAINABLE == 112965
    assert model.count_params() == OMNIGLOT_TRAINABLE
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == OMNIGLOT_TRAINABLE
    assert model.non_trainable_variables == []
    assert model.get_layer("bn3").output.shape == (None, 2, 2, 64)
    assert model(_images((28, 28, 1))).shape == (4, 5)
    assert sum(isinstance(layer, MetaBatchNormalization) for layer in model.layers) == 4


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


@pytest.mark.parametrize("kwargs", [
    dict(batch_norm="transductive"),
    dict(batch_norm="per_step", num_inner_steps=2),
    dict(batch_norm="none", downsample="maxpool"),
])
def test_conv4_config_round_trips_give_identical_outputs(kwargs):
    model = conv4(5, **kwargs)
    x = _images((28, 28, 1))
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
