"""`conv4`: the 4-block convolutional backbone of the MAML paper."""

import keras

from keras_meta._checks import check_int, check_one_of
from keras_meta.layers import MetaBatchNormalization, check_batch_norm_mode

_DOWNSAMPLE = ("stride", "maxpool")
_POOLING = ("mean", "flatten")


def conv4(
    num_ways,
    input_shape=(28, 28, 1),
    filters=None,
    downsample="stride",
    pooling=None,
    batch_norm="transductive",
    num_inner_steps=None,
    dtype=None,
    name="conv4",
):
    """The 4-block convolutional backbone of MAML (Finn et al. 2017), returning logits.

    Each block is a 3x3 convolution, batch normalization (unless `batch_norm="none"`) and ReLU.
    `downsample="stride"` uses stride-2 "same" convolutions (the Omniglot network, 64 filters by
    default); `downsample="maxpool"` uses stride-1 convolutions followed by a 2x2 max-pool (the
    mini-ImageNet network, 32 filters by default). The last feature map is reduced to one
    feature vector per image (`pooling`), and a dense layer gives the `num_ways` logits (no
    softmax).

    `pooling="mean"` averages the last feature map over its height and width (a
    `GlobalAveragePooling2D` layer named "global_pool": `filters` features), as the MAML
    paper's Omniglot network does; `pooling="flatten"` keeps every position (a `Flatten` layer
    named "flatten": height x width x `filters` features, e.g. 2 x 2 x 64 = 256 for the
    strided network at 28x28), as its mini-ImageNet network does. The default follows the
    paper for each `downsample`: "mean" for "stride", "flatten" for "maxpool".

    The convolutions have no bias when batch norm follows them: the batch mean cancels a bias
    exactly, so it would only add parameters with zero gradient.

    Args:
        num_ways: number of classes N of the N-way tasks.
        input_shape: image shape, channels last.
        filters: filters per convolution (default 64 for "stride", 32 for "maxpool").
        downsample: `"stride"` or `"maxpool"`.
        pooling: `"mean"` (global average pooling), `"flatten"`, or `None`: `"mean"` for
            `downsample="stride"`, `"flatten"` for `downsample="maxpool"`.
        batch_norm: `"transductive"`, `"per_step"` (MAML++) or `"none"`; see
            `MetaBatchNormalization`.
        num_inner_steps: inner steps of adaptation, required for `"per_step"`.
        dtype: layer dtype policy (e.g. `"float64"` for gradient checks); default from Keras.
        name: model name.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = conv4(5)                 # Omniglot 5-way, mean of the last feature map
    >>> model(keras.ops.zeros((2, 28, 28, 1))).shape
    (2, 5)
    >>> model.get_layer("logits").kernel.shape
    (64, 5)
    >>> conv4(5, pooling="flatten").get_layer("logits").kernel.shape
    (256, 5)
    >>> conv4(5, (84, 84, 3), downsample="maxpool", batch_norm="per_step", num_inner_steps=5)
    """
    check_int("num_ways", num_ways)
    check_one_of("downsample", downsample, _DOWNSAMPLE)
    if pooling is None:
        # The MAML paper's two networks differ here: Omniglot (strided) averages the last
        # feature map, mini-ImageNet (max-pooled) flattens it.
        pooling = "mean" if downsample == "stride" else "flatten"
    check_one_of("pooling", pooling, _POOLING)
    num_inner_steps = check_batch_norm_mode(batch_norm, num_inner_steps)
    if filters is None:
        filters = 64 if downsample == "stride" else 32
    check_int("filters", filters)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels); got {input_shape}.")

    if downsample == "maxpool" and min(input_shape[:2]) < 16:
        # Four unpadded 2x2 pools halve (rounding down) to an empty feature map below 16.
        raise ValueError(
            f"input_shape {input_shape} is too small for four 2x2 max-pools (height and width "
            "must be at least 16)."
        )

    inputs = keras.Input(input_shape, dtype=dtype, name="images")
    x = inputs
    strides = 2 if downsample == "stride" else 1
    for block in range(4):
        x = keras.layers.Conv2D(
            filters, 3, strides=strides, padding="same", use_bias=batch_norm == "none",
            dtype=dtype, name=f"conv{block}",
        )(x)
        if batch_norm != "none":
            x = MetaBatchNormalization(
                mode=batch_norm, num_steps=num_inner_steps, dtype=dtype, name=f"bn{block}",
            )(x)
        x = keras.layers.ReLU(dtype=dtype, name=f"relu{block}")(x)
        if downsample == "maxpool":
            x = keras.layers.MaxPooling2D(2, dtype=dtype, name=f"pool{block}")(x)
    if pooling == "mean":
        x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="global_pool")(x)
    else:
        x = keras.layers.Flatten(dtype=dtype, name="flatten")(x)
    logits = keras.layers.Dense(num_ways, dtype=dtype, name="logits")(x)
    return keras.Model(inputs, logits, name=name)
