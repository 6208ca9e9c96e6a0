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
    """A TFDS data dir with `omniglot` 3.0.0 prepared offline, once per test run (~1-2 min).

    Under pytest-xdist the worker processes share one folder beside their own temporary
    folders: `prepare_omniglot` locks it, so one worker prepares and the others wait and
    find it ready, instead of every worker paying the preparation again.
    """
    from keras_meta.data.omniglot import prepare_omniglot

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # getbasetemp() is this worker's own folder (.../pytest-N/popen-gwK); its parent is
        # the run's, shared by all the workers of this run and by no other run.
        data_dir = tmp_path_factory.getbasetemp().parent / "shared_tfds"
    else:
        data_dir = tmp_path_factory.mktemp("tfds")
    return prepare_omniglot(omniglot_source_dir, data_dir)


@pytest.fixture
def grouped_gradients():
    """`require(dtype="float32")`: skips the test unless this process's kernels differentiate
    a grouped convolution of `dtype`.

    On CPU only oneDNN's kernels do, and TensorFlow turns oneDNN on by default only on some
    CPUs (not on AVX2-only ones). Where these tests skip, tests/core/test_grouped_fallback.py
    runs them again in a process with oneDNN on, so they still run on every x86 machine.
    """
    def require(dtype="float32"):
        import tensorflow as tf

        from keras_meta.core.batching import grouped_convolution_available

        if not grouped_convolution_available(tf.as_dtype(dtype)):
            pytest.skip(f"this process's CPU kernels have no grouped-convolution gradients in "
                        f"{dtype} (oneDNN is off here: TF_ENABLE_ONEDNN_OPTS="
                        f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})")

    return require


@pytest.fixture
def refusal_of_main(monkeypatch):
    """`refuse(module, *args)`: a flag script's `main` run in this process on a fresh set of its
    flags (the module's `define_flags`, `FLAGS` and `main`); returns the `app.UsageError`
    message it refuses with. A subprocess per refused flag would cost a TensorFlow import."""
    from absl import app, flags

    def refuse(module, *args):
        flag_values = flags.FlagValues()
        module.define_flags(flag_values)
        flag_values([module.__name__, *args])
        monkeypatch.setattr(module, "FLAGS", flag_values)
        with pytest.raises(app.UsageError) as refused:
            module.main([module.__name__])
        return str(refused.value)

    return refuse


def pytest_collection_modifyitems(config, items):
    """Runs the files with slow tests first, each file's tests together and in their order.

    pytest-xdist (`make test`) hands whole files to its workers in this order; starting with
    the long ones leaves the short ones to even out the end, where a long file started last
    would leave the other worker idle for minutes.
    """
    def has_slow(path):
        return any(item.get_closest_marker("slow") for item in by_file[path])

    by_file = {}
    for item in items:
        by_file.setdefault(item.path, []).append(item)
    order = sorted(by_file, key=lambda path: not has_slow(path))  # stable: otherwise unchanged
    items[:] = [item for path in order for item in by_file[path]]
