"""Pick the accelerator a session has (TPU, GPU or CPU) and the matching `tf.distribute` strategy."""

import glob
import os

import tensorflow as tf

# Signs that a TPU is attached. TPUClusterResolver() with no TPU can block on a metadata
# server lookup, so it is only tried when one of these is present.
_TPU_ENV_VARS = ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")


def _tpu_present():
    return any(os.environ.get(name) for name in _TPU_ENV_VARS) or bool(glob.glob("/dev/accel*"))


def connect_tpu(tpu=None):
    """Connects to a TPU and returns its `TPUStrategy`; the one place TPUs are initialised.

    Args:
        tpu: the TPU name, `"local"` or a `grpc://` address for `TPUClusterResolver`; `None`
            lets the resolver find it (Colab, TPU VMs).

    Raises:
        RuntimeError: no TPU could be found or initialised (the resolver's error included).
    """
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        # Connecting is needed for a remote TPU (TPU node); it is harmless on a TPU VM.
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # noqa: BLE001  (the resolver may raise URLError, ValueError, ...)
        raise RuntimeError(
            f"Could not find or initialise the TPU {tpu!r} (expected a TPU name, 'local' or a "
            f"grpc:// address reachable from here, or None on a TPU VM/Colab): {e}") from e
    return tf.distribute.TPUStrategy(resolver)


def _tpu_strategy_if_present():
    """A `TPUStrategy` when a TPU is attached and answers, else `None`."""
    if not _tpu_present():
        return None
    # Colab's classic TPU runtime names a remote worker; a TPU VM is "local".
    tpu = None if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME") else "local"
    try:
        return connect_tpu(tpu)
    except RuntimeError:
        return None


def detect_accelerator(verbose=True):
    """Returns `(name, strategy)` for the best accelerator found: TPU, then GPU, then CPU.

    `name` is `"TPU"`, `"GPU"` or `"CPU"`. The strategy is a `tf.distribute.TPUStrategy` for a
    TPU; otherwise the default strategy, under which TensorFlow places operations on the first
    GPU when there is one. Build models inside `strategy.scope()`.

    Args:
        verbose: print one line naming the accelerator and its devices.

    Example:

    >>> name, strategy = detect_accelerator()
    Accelerator: CPU (no GPU or TPU found)
    >>> with strategy.scope():
    ...     model = keras_meta.backbones.mlp()
    """
    strategy = _tpu_strategy_if_present()
    if strategy is not None:
        name = "TPU"
        detail = f"{strategy.num_replicas_in_sync} TPU cores"
    else:
        strategy = tf.distribute.get_strategy()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            name = "GPU"
            names = []
            for gpu in gpus:
                details = tf.config.experimental.get_device_details(gpu)
                names.append(details.get("device_name", gpu.name))
            detail = ", ".join(names) + ("" if len(gpus) == 1 else "; using the first")
        else:
            name = "CPU"
            detail = "no GPU or TPU found"
    if verbose:
        print(f"Accelerator: {name} ({detail})", flush=True)
    return name, strategy
