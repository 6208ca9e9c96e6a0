"""Shared fixtures. Kept minimal: several parts of the project add tests here."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# "auto" task batching takes the batched pass without timing the candidates first: timing
# costs a trace of every candidate, and the paths are equal (tests/core/test_batching.py).
# tests/maml/test_task_batching_autotune.py turns it on where it is the subject.
os.environ.setdefault("KERAS_META_AUTOTUNE", "0")
# Nothing a test measures lands in the user's cache.
os.environ.setdefault("KERAS_META_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"keras_meta_test_cache_{os.getpid()}"))

# Where the local Omniglot copy is: the Makefile exports it (the shared copy beside the
# repository). The library itself never looks for it.
OMNIGLOT_DIR_ENV = "KERAS_META_OMNIGLOT_DIR"


@pytest.fixture(scope="session")
def omniglot_source_dir():
    """The local copy of the Omniglot zips.

    Outside CI a missing copy skips the Omniglot tests; in CI (`CI` set) it fails them, naming
    the folder and the variable, so that they can never pass by not running.
    """
    folder = os.environ.get(OMNIGLOT_DIR_ENV)
    if folder and (Path(folder) / "tfds_checksums.tsv").is_file():
        return Path(folder)
    message = (f"no Omniglot source copy: ${OMNIGLOT_DIR_ENV}={folder!r} does not name a folder "
               "with the Omniglot zips and tfds_checksums.tsv (make test sets it to "
               "../shared/data/omniglot)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def omniglot_data_dir(omniglot_source_dir, tmp_path_factory):
    """A TFDS data dir with `omniglot` 3.0.0 prepared offline, once per session (~1-2 min)."""
    from keras_meta.data.omniglot import prepare_omniglot

    return prepare_omniglot(omniglot_source_dir, tmp_path_factory.mktemp("tfds"))
