"""Shared float64 helpers for the layer tests: a tiny conv net and meta-gradient checks."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_meta.layers import MetaBatchNormalization  # noqa: E402
from keras_meta.maml import maml_loss  # noqa: E402

# Keras loss objects compute in floatx (float32) unless told otherwise, which would swamp the
# finite differences with rounding error.
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
WAYS = 3


def tiny_net(norm="transductive", num_steps=None, seed=0):
    """Conv(3x3, 3) -> BN -> tanh -> dense 3-way, float64.

    tanh rather than ReLU keeps the loss smooth, so central differences are accurate to
    O(eps^2) and a disagreement can only come from the analytic gradient.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 1), dtype="float64")
    x = keras.layers.Conv2D(3, 3, dtype="float64", name="conv")(inputs)
    if norm == "keras":
        x = keras.layers.BatchNormalization(dtype="float64", name="bn")(x)
    else:
        x = MetaBatchNormalization(mode=norm, num_steps=num_steps, dtype="float64", name="bn")(x)
    x = keras.layers.Activation("tanh", dtype="float64")(x)
    x = keras.layers.Flatten(dtype="float64")(x)
    outputs = keras.layers.Dense(WAYS, dtype="float64", name="head")(x)
    model = keras.Model(inputs, outputs)
    # Non-trivial gamma/beta so that the normalization's own parameters matter.
    rng = np.random.default_rng(seed + 1)
    for v in model.trainable_variables:
        if "gamma" in v.path or "beta" in v.path:
            v.assign(v.numpy() + 0.3 * rng.standard_normal(v.shape))
    return model


def task(seed=0, shots=2, queries=2, image=(4, 4, 1)):
    rng = np.random.default_rng(seed)
    labels = lambda k: np.repeat(np.arange(WAYS), k).astype("int32")  # noqa: E731
    sx = rng.standard_normal((WAYS * shots, *image))
    qx = rng.standard_normal((WAYS * queries, *image))
    return (tf.constant(sx), tf.constant(labels(shots)), tf.constant(qx),
            tf.constant(labels(queries)))


def meta_loss(model, data, inner_steps, lr=0.5, first_order=False):
    return maml_loss(model, *data, loss_fn=LOSS, inner_lr=lr, inner_steps=inner_steps,
                     first_order=first_order)


def meta_gradient(model, data, inner_steps, lr=0.5, first_order=False):
    with tf.GradientTape() as tape:
        loss = meta_loss(model, data, inner_steps, lr, first_order)
    grads = tape.gradient(loss, model.trainable_variables,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [g.numpy() for g in grads]


def directional_errors(model, data, inner_steps, lr=0.5, first_order=False, num_dirs=3,
                       eps=1e-5, seed=0):
    """Relative errors |<g, v> - FD_v| / |FD_v| of the meta-gradient along random directions."""
    grads = meta_gradient(model, data, inner_steps, lr, first_order)
    base = [v.numpy() for v in model.trainable_variables]
    rng = np.random.default_rng(seed)
    errors = []
    try:
        for _ in range(num_dirs):
            dirs = [rng.standard_normal(b.shape) for b in base]

            def at(t):
                for v, b, d in zip(model.trainable_variables, base, dirs):
                    v.assign(b + t * d)
                return float(meta_loss(model, data, inner_steps, lr))

            fd = (at(eps) - at(-eps)) / (2 * eps)
            analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, dirs))
            errors.append(abs(analytic - fd) / max(abs(fd), 1e-12))
    finally:
        for v, b in zip(model.trainable_variables, base):
            v.assign(b)
    return errors


# -- references for the closed-form derivatives (test_closed_form_batch_norm, test_fused_...) --

def plain_batch_norm(x, scale, offset, epsilon):
    """Channels-last batch norm in plain ops (statistics over N, H, W): the taped reference."""
    centred = x - tf.reduce_mean(x, [0, 1, 2])
    inv = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), [0, 1, 2]) + epsilon)
    return centred * inv * scale + offset


def plain_backward(dy, x, scale, epsilon):
    """`(dx, dscale, doffset)` of `plain_batch_norm`, by a tape: the reference first derivative."""
    offset = tf.zeros_like(scale)
    with tf.GradientTape() as tape:
        tape.watch([x, scale, offset])
        y = plain_batch_norm(x, scale, offset, epsilon)
    return tape.gradient(y, [x, scale, offset], output_gradients=dy)


def batch_norm_inputs(seed, dtype, shape):
    """`x`, an output gradient `dy`, `scale`, and upstream gradients `a, b, c` of the backward
    pass's `(dx, dscale, doffset)`, for channels-last `shape`."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    # A mean well away from zero and a spread per channel, as conv outputs have.
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, channels) + rng.normal(size=channels) * 4
    values = dict(
        x=x, dy=rng.normal(size=shape), scale=rng.normal(size=channels) + 1.0,
        a=rng.normal(size=shape), b=rng.normal(size=channels), c=rng.normal(size=channels))
    return {k: tf.constant(v, dtype) for k, v in values.items()}
