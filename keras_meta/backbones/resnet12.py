"""`resnet12`: the 12-layer residual backbone of MetaOptNet, TADAM and later MAML variants."""

import keras

from keras_meta._checks import check_int, is_finite_number
from keras_meta.layers import MetaBatchNormalization, check_batch_norm_mode

_NUM_BLOCKS = 4
_CONVS_PER_BLOCK = 3


def resnet12(
    num_ways,
    input_shape=(84, 84, 3),
    widths=(64, 160, 320, 640),
    batch_norm="transductive",
    num_inner_steps=None,
    leaky_relu_alpha=0.1,
    dtype=None,
    name="resnet12",
):
    """The ResNet-12 of MetaOptNet (Lee et al. 2019) and TADAM (Oreshkin et al. 2018), as logits.

    Four residual blocks, one per entry of `widths`. Each block is three 3x3 "same"
    convolutions, each followed by batch normalization; the first two are followed by a leaky
    ReLU, the third is added to a shortcut (a 1x1 convolution and batch normalization, which
    matches the block's width) before its leaky ReLU; a 2x2 max-pool then halves the height
    and width. A global average pooling gives one feature vector per image and a dense layer
    the `num_ways` logits (no softmax). DropBlock, which MetaOptNet uses as a regularizer, is
    left out: inner-loop randomness would make the meta-gradient a random variable.

    The convolutions have no bias when batch norm follows them: the batch mean cancels a bias
    exactly, so it would only add parameters with zero gradient. With `batch_norm="none"`
    there is no normalization and every convolution has a bias.

    It is a branching (residual) network: `MAML` runs its tasks with the per-task loop of
    fast-weights calls (`task_batching="auto"` chooses it), with exact second derivatives
    through `MetaBatchNormalization`.

    Args:
        num_ways: number of classes N of the N-way tasks.
        input_shape: image shape, channels last; height and width at least 16 (four 2x2
            max-pools).
        widths: the four blocks' numbers of filters (ints >= 1); default (64, 160, 320, 640),
            MetaOptNet's.
        batch_norm: `"transductive"`, `"per_step"` (MAML++) or `"none"`; see
            `MetaBatchNormalization`.
        num_inner_steps: inner steps of adaptation, required for `"per_step"`.
        leaky_relu_alpha: slope of the leaky ReLUs for negative inputs (a finite number >= 0;
            0 is a plain ReLU).
        dtype: layer dtype policy (e.g. `"float64"` for gradient checks); default from Keras.
        name: model name.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = resnet12(5)              # mini-ImageNet 5-way, 84x84x3
    >>> model(keras.ops.zeros((2, 84, 84, 3))).shape
    (2, 5)
    >>> model.get_layer("logits").kernel.shape
    (640, 5)
    >>> tiny = resnet12(3, (16, 16, 3), widths=(2, 2, 3, 3), dtype="float64")
    """
    check_int("num_ways", num_ways)
    num_inner_steps = check_batch_norm_mode(batch_norm, num_inner_steps)
    widths = _check_widths(widths)
    if not (is_finite_number(leaky_relu_alpha) and leaky_relu_alpha >= 0):
        raise ValueError(
            f"leaky_relu_alpha must be a finite number >= 0; got {leaky_relu_alpha!r}.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels); got {input_shape}.")
    if min(input_shape[:2]) < 2 ** _NUM_BLOCKS:
        # Four unpadded 2x2 pools halve (rounding down) to an empty feature map below 16.
        raise ValueError(
            f"input_shape {input_shape} is too small for resnet12's four 2x2 max-pools "
            f"(height and width must be at least {2 ** _NUM_BLOCKS}).")

    use_bn = batch_norm != "none"

    def conv(x, filters, size, layer_name):
        return keras.layers.Conv2D(filters, size, padding="same", use_bias=not use_bn,
                                   dtype=dtype, name=layer_name)(x)

    def norm(x, layer_name):
        if not use_bn:
            return x
        return MetaBatchNormalization(mode=batch_norm, num_steps=num_inner_steps,
                                      dtype=dtype, name=layer_name)(x)

    def leaky_relu(x, layer_name):
        return keras.layers.LeakyReLU(negative_slope=leaky_relu_alpha, dtype=dtype,
                                      name=layer_name)(x)

    inputs = keras.Input(input_shape, dtype=dtype, name="images")
    x = inputs
    for block, width in enumerate(widths):
        prefix = f"block{block}"
        shortcut = norm(conv(x, width, 1, f"{prefix}_shortcut_conv"), f"{prefix}_shortcut_bn")
        for i in range(_CONVS_PER_BLOCK):
            x = norm(conv(x, width, 3, f"{prefix}_conv{i}"), f"{prefix}_bn{i}")
            if i < _CONVS_PER_BLOCK - 1:
                x = leaky_relu(x, f"{prefix}_relu{i}")
        x = keras.layers.Add(dtype=dtype, name=f"{prefix}_add")([x, shortcut])
        x = leaky_relu(x, f"{prefix}_relu")
        x = keras.layers.MaxPooling2D(2, dtype=dtype, name=f"{prefix}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="global_pool")(x)
    logits = keras.layers.Dense(num_ways, dtype=dtype, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def _check_widths(widths):
    try:
        widths = tuple(widths)
    except TypeError:
        raise ValueError(
            f"widths must be {_NUM_BLOCKS} ints >= 1, one per block; got {widths!r}.") from None
    if len(widths) != _NUM_BLOCKS:
        raise ValueError(
            f"widths must be {_NUM_BLOCKS} ints >= 1, one per block; got {len(widths)} "
            f"values: {widths!r}.")
    for block, width in enumerate(widths):
        check_int(f"widths[{block}]", width)
    return widths
