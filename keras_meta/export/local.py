"""Answer a serving request from a SavedModel directory in-process, without a model server."""

import os

import numpy as np
import tensorflow as tf

from keras_meta.export.image_bytes import as_bytes_array

_LOADED = {}
_FEW_SHOT_NAMES = (("support_images", "support_labels", "query_images"),
                   ("support_x", "support_y", "query_x"))


def load_saved_model(saved_model_dir):
    """`tf.saved_model.load`, cached per directory (loading costs seconds, a request ms)."""
    key = os.path.realpath(saved_model_dir)
    if not os.path.exists(os.path.join(key, "saved_model.pb")):
        raise FileNotFoundError(f"No SavedModel in {saved_model_dir!r} (no saved_model.pb); "
                                "pass a version directory such as <base>/<model_name>/1.")
    if key not in _LOADED:
        _LOADED[key] = tf.saved_model.load(key)
    return _LOADED[key]


def _shape_text(shape):
    return "[" + ", ".join("n" if d is None else str(d) for d in shape.as_list()) + "]"


def _as_input(value, spec):
    """`value` as the tensor `spec` takes, or an error naming the input before any call.

    The loaded signature itself refuses a wrong shape or dtype with a message about
    `TensorSpec`s; these errors say what the input is, what it should be and what was given.
    """
    if spec.dtype == tf.string:
        array = as_bytes_array(value, spec.name)
    else:
        array = np.asarray(value)
        # Integer labels often arrive as int64 (numpy, JSON); narrowing them is safe and
        # expected. Image dtypes are left alone so that a wrong dtype is reported, not
        # silently converted.
        if spec.dtype.is_integer and np.issubdtype(array.dtype, np.integer) and \
                array.dtype != spec.dtype.as_numpy_dtype:
            array = array.astype(spec.dtype.as_numpy_dtype)
        elif array.dtype != spec.dtype.as_numpy_dtype:
            hint = ("uint8 images go to serving_default, float32 ones in [0, 1] to "
                    "serving_float, encoded files (bytes) to serving_bytes" if
                    spec.dtype in (tf.uint8, tf.float32) else "")
            raise TypeError(f"{spec.name}: expected dtype {spec.dtype.name}; received "
                            f"{array.dtype}" + (f" ({hint})." if hint else "."))
    if not spec.shape.is_compatible_with(array.shape):
        what = "one encoded file per image" if spec.dtype == tf.string else spec.dtype.name
        raise ValueError(f"{spec.name}: expected shape {_shape_text(spec.shape)} ({what}); "
                         f"received shape {list(array.shape)}.")
    return tf.constant(array, dtype=spec.dtype)


def predict_local(saved_model_dir, support_images=None, support_labels=None, query_images=None,
                  *, inputs=None, signature_name="serving_default"):
    """Runs one request against an exported model, as TF Serving would, and returns numpy.

    Args:
        saved_model_dir: a version directory written by `export_few_shot` / `export_adapted`.
        support_images, support_labels, query_images: a few-shot request (for a regression
            export they fill `support_x`, `support_y`, `query_x`).
        inputs: instead, a dict from the signature's input names to arrays (e.g.
            `{"images": x}` for an adapted model).
        signature_name: `serving_default` (uint8 images), `serving_float`, `serving_xla`,
            `serving_bytes` (encoded files: lists of bytes, e.g. from
            `keras_meta.export.client.read_image_files`).

    Raises:
        TypeError, ValueError: an input of the wrong dtype or shape, named, before the call.
        tf.errors.InvalidArgumentError: a request the graph's checks refuse (labels out of
            range, a class missing, an undecodable image file, ...).

    Returns:
        A dict from output name (`probabilities`, `logits`, `classes` or `predictions`) to
        numpy arrays.

    Example:

    >>> out = predict_local("serving/omniglot/1", support_images, support_labels, query_images)
    >>> out["classes"]
    array([3, 0, 1, 4, 2])
    """
    loaded = load_saved_model(saved_model_dir)
    if signature_name not in loaded.signatures:
        raise ValueError(f"Signature {signature_name!r} is not in {saved_model_dir}; it has "
                         f"{sorted(loaded.signatures)}.")
    fn = loaded.signatures[signature_name]
    specs = fn.structured_input_signature[1]
    if inputs is None:
        names = next((n for n in _FEW_SHOT_NAMES if set(n) == set(specs)), None)
        if names is None:
            raise ValueError(f"Signature {signature_name!r} takes {sorted(specs)}; pass them as "
                             "inputs={name: array}.")
        inputs = dict(zip(names, (support_images, support_labels, query_images)))
    missing = sorted(set(specs) - set(inputs))
    extra = sorted(set(inputs) - set(specs))
    if missing or extra:
        raise ValueError(f"Signature {signature_name!r} takes inputs {sorted(specs)}; got "
                         f"{sorted(inputs)} (missing {missing}, unexpected {extra}).")
    tensors = {name: _as_input(value, specs[name]) for name, value in inputs.items()}
    return {name: value.numpy() for name, value in fn(**tensors).items()}
