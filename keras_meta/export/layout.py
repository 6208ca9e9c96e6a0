"""The TF Serving directory layout: `<base>/<model_name>/<version>/`, models.config, warmup.

TF Serving watches `<base>/<model_name>` and loads the highest integer version it finds, so a
version directory must appear complete: exports are written under a hidden temporary name and
renamed into place (a rename within one file system is atomic).
"""

import contextlib
import os
import re
import shutil
import uuid

from keras_meta._checks import is_int

MODELS_CONFIG = "models.config"


def versions(model_base):
    """The integer versions present under `model_base` (sorted)."""
    if not os.path.isdir(model_base):
        return []
    return sorted(int(d) for d in os.listdir(model_base)
                  if d.isdigit() and os.path.isdir(os.path.join(model_base, d)))


def next_version(model_base):
    """One more than the highest version under `model_base`, or 1."""
    found = versions(model_base)
    return found[-1] + 1 if found else 1


def check_model_name(model_name):
    if not isinstance(model_name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*",
                                                           model_name):
        raise ValueError(
            f"model_name must be a non-empty name of letters, digits, '_', '.', '-' (it becomes "
            f"a directory and the TF Serving model name); got {model_name!r}.")


def resolve_version(model_base, version):
    """`version` checked (a positive int not yet used), or the next free one when `None`."""
    if version is None:
        return next_version(model_base)
    if not is_int(version) or version < 1:
        raise ValueError(f"version must be a positive int (TF Serving versions are integers); "
                         f"got {version!r}.")
    if os.path.exists(os.path.join(model_base, str(version))):
        raise FileExistsError(
            f"Version {version} already exists in {model_base}; pick another version or leave "
            f"it out to use the next free one ({next_version(model_base)}).")
    return version


@contextlib.contextmanager
def staged_version(model_base, version):
    """Yields a temporary directory that becomes `<model_base>/<version>` if the block succeeds."""
    final = os.path.join(model_base, str(version))
    path = os.path.join(model_base, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    os.makedirs(model_base, exist_ok=True)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    os.rename(path, final)


def write_models_config(base_dir, model_name):
    """Adds (or updates) `model_name` in `<base_dir>/models.config` and returns its path.

    The file is TF Serving's `--model_config_file` (a text `ModelServerConfig`); other models
    already listed are kept.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.path.join(base_dir, MODELS_CONFIG)
    config = model_server_config_pb2.ModelServerConfig()
    if os.path.exists(path):
        with open(path) as f:
            text_format.Parse(f.read(), config)
    entries = config.model_config_list.config
    entry = next((c for c in entries if c.name == model_name), None)
    if entry is None:
        entry = entries.add()
    entry.name = model_name
    entry.base_path = os.path.abspath(os.path.join(base_dir, model_name))
    entry.model_platform = "tensorflow"
    with open(path, "w") as f:
        f.write(text_format.MessageToString(config))
    return path
