"""Turn a model with `MetaBatchNormalization` into one whose outputs do not depend on the batch.

Transductive batch norm normalizes every call with the statistics of that call's batch, so a
server that groups requests into batches (TF Serving's batching) would change each answer with
its neighbours. Freezing replaces every such layer by a `FrozenBatchNormalization` holding

* transductive mode: the statistics the layer computed on the support set (after adaptation).
  The frozen model reproduces the transductive model exactly on the support set; on queries it
  normalizes with support statistics instead of query-batch statistics (the classic
  inductive/transductive difference, measured in `benchmarks/serving.py`);
* per-step mode: the running statistics and gamma/beta of one slot, which is what
  `training=False` uses anyway.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_meta.layers import FrozenBatchNormalization, MetaBatchNormalization
from keras_meta.layers.batch_norm_ops import moments


def batch_norm_layers(model):
    """The `MetaBatchNormalization` layers of `model`, in graph order."""
    return [layer for layer in model.layers if isinstance(layer, MetaBatchNormalization)]


def batch_norm_mode(model):
    """`"transductive"`, `"per_step"` or `"none"` for `model` (mixed modes are refused)."""
    modes = {layer.mode for layer in batch_norm_layers(model)}
    if len(modes) > 1:
        raise ValueError(f"Model {model.name!r} mixes batch-norm modes {sorted(modes)}; "
                         "export supports one mode per model.")
    return modes.pop() if modes else "none"


def support_statistics(model, support_x):
    """Per-layer (mean, variance) that each transductive layer computes on `support_x`.

    Returns a dict from layer name to a pair of float32 numpy vectors.
    """
    layers = [l for l in batch_norm_layers(model) if l.mode == "transductive"]
    if not layers:
        return {}
    try:
        probe = keras.Model(model.inputs, [layer.input for layer in layers])
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"Freezing transductive batch norm needs a functional or Sequential model whose "
            f"layers each run once; model {model.name!r} is not one ({error}).") from error
    # Dropout and friends off: the statistics are those of the deterministic forward pass.
    features = probe(tf.convert_to_tensor(support_x), training=False)
    if len(layers) == 1:
        features = [features]
    stats = {}
    for layer, x in zip(layers, features):
        x = tf.cast(x, tf.float32)
        axes = [i for i in range(x.shape.rank) if i != layer._axis]
        mean, variance, _ = moments(x, axes)
        stats[layer.name] = (tf.reshape(mean, [-1]).numpy(), tf.reshape(variance, [-1]).numpy())
    return stats


def freeze_batch_norm(model, support_x=None, slot=None):
    """A copy of `model` with every `MetaBatchNormalization` replaced by fixed statistics.

    Args:
        model: a built functional or Sequential Keras model (e.g. `MAML.adapt(...)`'s result).
        support_x: model-ready support inputs; required when the model has transductive layers.
        slot: per-step slot whose running statistics and gamma/beta are kept (default: the
            last slot, the one `training=False` uses).

    Returns:
        A new `keras.Model` with the same inputs and outputs; the other layers keep their
        weights. A model without batch norm is cloned unchanged.

    Example:

    >>> adapted = maml.adapt(support_x, support_y)
    >>> served = freeze_batch_norm(adapted, support_x)
    >>> np.allclose(served(support_x), adapted(support_x), atol=1e-5)   # same on the support set
    True
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"freeze_batch_norm needs a built keras.Model; got {model!r}.")
    mode = batch_norm_mode(model)
    if mode == "transductive" and support_x is None:
        raise ValueError(
            "The model uses transductive batch norm: pass the support set (support_x) whose "
            "statistics will be frozen into the serving model.")
    stats = support_statistics(model, support_x) if mode == "transductive" else {}

    def clone_layer(layer):
        if isinstance(layer, MetaBatchNormalization):
            return FrozenBatchNormalization(axis=layer.axis, epsilon=layer.epsilon,
                                            name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    frozen = keras.models.clone_model(model, clone_function=clone_layer)
    for layer in model.layers:
        target = frozen.get_layer(layer.name)
        if isinstance(layer, MetaBatchNormalization):
            target.set_weights(_frozen_values(layer, stats, slot))
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return frozen


def _frozen_values(layer, stats, slot):
    index = layer.num_steps if slot is None else min(int(slot), layer.num_steps or 0)

    def row(variable):
        value = np.asarray(variable.numpy(), np.float32)
        return value[index] if layer.mode == "per_step" else value

    if layer.mode == "transductive":
        mean, variance = stats[layer.name]
    else:
        mean, variance = row(layer.moving_mean), row(layer.moving_variance)
    gamma = row(layer.gamma) if layer.gamma is not None else np.ones_like(mean)
    beta = row(layer.beta) if layer.beta is not None else np.zeros_like(mean)
    return [mean, variance, gamma, beta]
