"""Shared fixtures. Kept minimal: several parts of the project add tests here."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# In CI the repository is cloned with a copy of shared/ beside it: <repo>/../shared.
OMNIGLOT_SOURCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


@pytest.fixture(scope="session")
def omniglot_source_dir():
    """The local copy of the Omniglot zips; skips when it is absent."""
    if not (OMNIGLOT_SOURCE_DIR / "tfds_checksums.tsv").is_file():
        pytest.skip(f"no Omniglot source copy at {OMNIGLOT_SOURCE_DIR}")
    return OMNIGLOT_SOURCE_DIR


@pytest.fixture(scope="session")
def omniglot_data_dir(omniglot_source_dir, tmp_path_factory):
    """A TFDS data dir with `omniglot` 3.0.0 prepared offline, once per session (~1-2 min)."""
    from keras_meta.data.omniglot import prepare_omniglot

    return prepare_omniglot(omniglot_source_dir, tmp_path_factory.mktemp("tfds"))
