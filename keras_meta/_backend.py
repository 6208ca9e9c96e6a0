"""Pins Keras to the TensorFlow backend before `keras` is first imported.

keras-meta relies on `tf.GradientTape` nesting, `tf.function` and SavedModel export, which only
the TensorFlow backend has, so a different backend is refused rather than half working.
"""

import os

_REQUIRED = "tensorflow"


def ensure_tensorflow_backend():
    requested = os.environ.get("KERAS_BACKEND")
    if requested is None:
        os.environ["KERAS_BACKEND"] = _REQUIRED
    elif requested.strip().lower() != _REQUIRED:
        raise ImportError(
            f"keras_meta needs the TensorFlow backend of Keras, but KERAS_BACKEND={requested!r}. "
            f"Unset KERAS_BACKEND or set KERAS_BACKEND={_REQUIRED} before importing keras_meta."
        )
    import keras  # noqa: E402  (must come after the environment is set)

    active = keras.backend.backend()
    if active != _REQUIRED:
        # Keras was imported earlier with another backend (e.g. from ~/.keras/keras.json).
        raise ImportError(
            f"keras_meta needs the TensorFlow backend of Keras, but Keras is already running "
            f"with backend {active!r}. Set KERAS_BACKEND={_REQUIRED} before the first "
            f"`import keras`."
        )
