"""What an exported model's signatures take and give: inputs derived from the run's config,
dtypes, label handling and the outputs of a classifier. Shared by both kinds of export."""

import keras
import numpy as np
import tensorflow as tf

from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.maml import MAML
from keras_meta.training import task_families
from keras_meta.training.config import MAMLTrainConfig


DTYPE_NAMES = {tf.uint8: "uint8", tf.float32: "float32", tf.int32: "int32", tf.string: "string"}


def io_spec(config_or_preprocessing, model, client_input_shape):
    """(problem, preprocessing, client shape, task family) from what the caller gave."""
    model_shape = tuple(model.input_shape[1:])
    task_family = None
    prep = config_or_preprocessing
    if isinstance(prep, MAMLTrainConfig):
        # The run's config carries its serving inputs: no dataset is needed to export it.
        run_config = prep
        task_family = run_config.task_family
        prep = task_families.image_preprocessing(run_config)
        if prep is not None and client_input_shape is None:
            client_input_shape = task_families.client_image_shape(run_config)
    elif isinstance(prep, dict):
        prep = ImagePreprocessing.from_config(prep)
    elif prep is not None and not isinstance(prep, ImagePreprocessing):
        raise TypeError(
            "config_or_preprocessing must be a MAMLTrainConfig, an ImagePreprocessing (or its "
            f"config dict), or None for regression; got {type(prep).__name__}.")
    if prep is None:
        if client_input_shape is not None and tuple(client_input_shape) != model_shape:
            raise ValueError(f"A regression export takes the model's inputs {model_shape}; got "
                             f"client_input_shape={tuple(client_input_shape)}.")
        return "regression", None, model_shape, task_family
    prepared = tuple(prep.image_size) + (prep.channels,)
    if prepared != model_shape:
        raise ValueError(f"The preprocessing produces images of shape {prepared} but the model "
                         f"takes {model_shape}.")
    client = tuple(client_input_shape) if client_input_shape is not None else prepared
    if len(client) != 3 or client[-1] not in (1, 3) or min(client) < 1:
        raise ValueError("client_input_shape must be (height, width, channels) with 1 or 3 "
                         f"channels; got {client}.")
    return "classification", prep, client, task_family


def labels_for_loss(maml, labels, num_ways):
    """Sparse labels, or one-hot ones for a categorical (dense-label) loss."""
    loss = maml.loss_fn
    name = getattr(loss, "name", None) or getattr(loss, "__name__", "")
    if isinstance(loss, keras.losses.CategoricalCrossentropy) or name == "categorical_crossentropy":
        return tf.one_hot(labels, num_ways)
    return labels


def classification_outputs(logits):
    logits = tf.cast(logits, tf.float32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1)}


def input_spec(dtype, name, example_shape=()):
    """`[None, *example_shape]`: the shape `saved_model_cli` and TF Serving's metadata show.

    A Python caller of the loaded signature cannot pass another shape; TF Serving does not
    compare a request with it, so the in-graph checks (`validation`) still read the shape the
    request really has.
    """
    return tf.TensorSpec(shape=(None,) + tuple(example_shape), dtype=dtype, name=name)


def check_maml(maml):
    if not isinstance(maml, MAML):
        raise TypeError(f"Expected a keras_meta.MAML; got {type(maml).__name__}.")
    if maml.loss_fn is None:
        raise ValueError("The MAML model has no task loss; the in-graph inner loop needs one.")


def image_dtypes(float_signature):
    return [("serving_default", tf.uint8)] + (
        [("serving_float", tf.float32)] if float_signature else [])


def signature_summary(fn):
    """`{"inputs": {name: dtype}, "outputs": {name: dtype}, "input_shapes": {name: shape}}`.

    Shapes are lists with `None` for a dynamic dimension (the batch, or the number of encoded
    images), as the signature declares them.
    """
    concrete = fn.get_concrete_function()
    specs = concrete.structured_input_signature[0]
    inputs = {spec.name: spec.dtype.name for spec in specs}
    shapes = {spec.name: spec.shape.as_list() for spec in specs}
    outputs = {k: v.dtype.name for k, v in concrete.structured_outputs.items()}
    return {"inputs": inputs, "outputs": outputs, "input_shapes": shapes}


def check_support_labels(labels, num_support, num_ways):
    if labels.ndim != 1 or len(labels) != num_support:
        raise ValueError(f"support_labels must have shape [{num_support}] (one per support "
                         f"image); got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"support_labels must be integer class indices; got {labels.dtype}.")
    if labels.min() < 0 or labels.max() >= num_ways:
        raise ValueError(f"support_labels must lie in 0..{num_ways - 1}; got {labels.tolist()}.")
    missing = sorted(set(range(num_ways)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"The support set has no example of class(es) {missing}; every class "
                         f"0..{num_ways - 1} needs at least one.")
