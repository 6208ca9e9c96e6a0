import shutil
import time

import numpy as np
import pytest

from keras_meta.data import omniglot
from keras_meta.data.class_image_source import ClassImageSource
from keras_meta.data.episode_sampler import EpisodeConfig, EpisodeSampler


def test_class_splits_are_disjoint_seeded_and_complete():
    maml = omniglot.omniglot_class_splits("maml", seed=1)
    assert {k: len(v) for k, v in maml.items()} == {"train": 1100, "validation": 100, "test": 423}
    everything = np.concatenate(list(maml.values()))
    np.testing.assert_array_equal(np.sort(everything), np.arange(1623))
    again = omniglot.omniglot_class_splits("maml", seed=1)
    other = omniglot.omniglot_class_splits("maml", seed=2)
    np.testing.assert_array_equal(again["test"], maml["test"])
    assert not np.array_equal(other["test"], maml["test"])
    lake = omniglot.omniglot_class_splits("background_evaluation")
    assert set(lake) == {"train", "test"}
    np.testing.assert_array_equal(lake["train"], np.arange(964))
    np.testing.assert_array_equal(lake["test"], np.arange(964, 1623))
    with pytest.raises(ValueError, match="Unknown Omniglot protocol 'vinyals'"):
        omniglot.omniglot_class_splits("vinyals")


def test_default_dirs_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(omniglot.SOURCE_DIR_ENV, str(tmp_path))
    assert omniglot.default_omniglot_source_dir() == tmp_path
    monkeypatch.setenv(omniglot.DATA_DIR_ENV, str(tmp_path / "tfds"))
    assert omniglot.default_data_dir() == tmp_path / "tfds"
    monkeypatch.delenv(omniglot.DATA_DIR_ENV)
    assert omniglot.default_data_dir().name == "tensorflow_datasets"


def test_the_library_never_guesses_a_source_dir(monkeypatch, tmp_path):
    # Unset: no local copy (TFDS downloads), even though one lies beside this checkout.
    monkeypatch.delenv(omniglot.SOURCE_DIR_ENV, raising=False)
    assert omniglot.default_omniglot_source_dir() is None
    # Set to a folder that is not there: refused, naming the variable, not a silent download.
    monkeypatch.setenv(omniglot.SOURCE_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="KERAS_META_OMNIGLOT_DIR=.*is not a directory"):
        omniglot.default_omniglot_source_dir()


def test_corrupted_zip_is_refused(omniglot_source_dir, tmp_path):
    copy = tmp_path / "omniglot"
    shutil.copytree(omniglot_source_dir, copy)
    zip_path = copy / "images_evaluation.zip"
    data = bytearray(zip_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    expected = "d37e01ffc59c5f250ed493d93275bbad6b34afb1ec80147cd9f04e8918f7c916"
    with pytest.raises(ValueError, match=rf"images_evaluation\.zip is corrupted.*expected "
                                         rf"sha256 {expected}, got [0-9a-f]{{64}}"):
        omniglot.prepare_omniglot(copy, tmp_path / "tfds")
    assert not (tmp_path / "tfds" / "omniglot").exists()
    zip_path.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match=r"images_evaluation\.zip .*expected 5617360 bytes, got "
                                         r"5617350 bytes"):
        omniglot.prepare_omniglot(copy, tmp_path / "tfds")
    zip_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"images_evaluation\.zip is listed"):
        omniglot.prepare_omniglot(copy, tmp_path / "tfds")


@pytest.mark.slow
def test_offline_preparation_gives_all_images(omniglot_data_dir, omniglot_source_dir):
    import tensorflow_datasets as tfds

    builder = tfds.builder("omniglot", data_dir=str(omniglot_data_dir))
    assert str(builder.version) == "3.0.0"
    splits = builder.info.splits
    assert splits["train"].num_examples == 19280
    assert splits["test"].num_examples == 13180
    assert not list(omniglot_data_dir.glob("omniglot-downloads-*")), \
        "preparation left scratch files behind"
    start = time.perf_counter()
    omniglot.prepare_omniglot(omniglot_source_dir, omniglot_data_dir)
    assert time.perf_counter() - start < 1.0, "a second preparation should be a no-op"


@pytest.mark.slow
def test_omniglot_splits_maml_protocol(omniglot_data_dir, omniglot_source_dir):
    start = time.perf_counter()
    splits = omniglot.omniglot_splits(omniglot_data_dir, omniglot_source_dir)
    first = time.perf_counter() - start
    assert {k: v.num_classes for k, v in splits.items()} == {
        "train": 4400, "validation": 400, "test": 1692}
    everything = omniglot.load_omniglot_classes(omniglot_data_dir, omniglot_source_dir)
    assert everything.images.shape == (1623, 20, 28, 28, 1)
    np.testing.assert_array_equal(everything.class_ids, np.arange(1623))
    assert everything.num_images == 19280 + 13180
    start = time.perf_counter()
    omniglot.omniglot_splits(omniglot_data_dir, omniglot_source_dir)
    assert time.perf_counter() - start < max(2.0, first / 3), "the decoded cache was not used"

    sampler = EpisodeSampler(splits["test"], EpisodeConfig(5, 1, 15, meta_batch_size=2))
    batch = next(iter(sampler.dataset(seed=0)))
    assert batch.support_x.shape == (2, 5, 28, 28, 1) and batch.query_x.shape == (2, 75, 28, 28, 1)
    x = batch.query_x.numpy()
    # Inverted: background 0, strokes 1, and strokes cover a small part of the image.
    assert x.min() == 0.0 and x.max() == 1.0 and x.mean() < 0.3


@pytest.mark.slow
def test_omniglot_background_evaluation_protocol(omniglot_data_dir, omniglot_source_dir):
    splits = omniglot.omniglot_splits(omniglot_data_dir, omniglot_source_dir,
                                      protocol="background_evaluation", rotations=False)
    assert list(splits) == ["train", "test"]
    assert splits["train"].num_classes == 964 and splits["test"].num_classes == 659
    assert splits["test"].class_ids.min() == 964


@pytest.mark.slow
def test_unknown_tfds_split_is_refused(omniglot_data_dir):
    with pytest.raises(ValueError, match=r"Unknown split\(s\) \['validation'\] of TFDS "
                                         r"'omniglot'; expected some of \['small1', 'small2', "
                                         r"'test', 'train'\]"):
        ClassImageSource.from_tfds("omniglot", split="validation", data_dir=omniglot_data_dir)


def _dead_pid():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_scratch_left_by_a_killed_preparation_is_removed_by_the_next_one(tmp_path, capsys):
    import tempfile
    from pathlib import Path

    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    # What a preparation killed while it extracted the zips leaves behind: its scratch folder.
    dead = Path(tempfile.mkdtemp(prefix=omniglot._scratch_prefix(_dead_pid()), dir=data_dir))
    (dead / "extracted").mkdir()
    (dead / "extracted" / "image.png").write_bytes(b"x" * 1000)
    legacy = data_dir / "omniglot-downloads-k2j_h4x9"  # an older version's name, no owner
    legacy.mkdir()
    # Kept: a preparation still running (this process), another machine's, anything else.
    live = Path(tempfile.mkdtemp(prefix=omniglot._scratch_prefix(), dir=data_dir))
    elsewhere = data_dir / "omniglot-downloads-elsewhere.example-1-abc_123"
    assert omniglot._host() != "elsewhere.example"
    elsewhere.mkdir()
    unrelated = [data_dir / "omniglot-downloads-not-ours!", data_dir / "downloads"]
    for path in unrelated:
        path.mkdir()
    a_file = data_dir / "omniglot-downloads-abc"
    a_file.write_text("not a folder")

    # The next preparation removes them first, even when it then fails (no source copy here).
    with pytest.raises(FileNotFoundError):
        omniglot.prepare_omniglot(tmp_path / "missing-source", data_dir)
    out = capsys.readouterr().out
    assert not dead.exists() and not legacy.exists()
    assert f"removed {dead}" in out and f"removed {legacy}" in out
    assert "killed Omniglot preparation" in out
    assert live.is_dir() and elsewhere.is_dir() and a_file.is_file()
    assert all(path.is_dir() for path in unrelated)
    assert str(live) not in out

    # And so does a call that finds the data prepared and returns at once.
    stale = Path(tempfile.mkdtemp(prefix=omniglot._scratch_prefix(_dead_pid()), dir=data_dir))
    info = data_dir / omniglot.TFDS_NAME / omniglot.TFDS_VERSION / "dataset_info.json"
    info.parent.mkdir(parents=True)
    info.write_text("{}")
    assert omniglot.prepare_omniglot(tmp_path / "missing-source", data_dir) == data_dir
    assert not stale.exists() and f"removed {stale}" in capsys.readouterr().out
    assert omniglot.remove_stale_scratch(data_dir) == []
    assert omniglot.remove_stale_scratch(tmp_path / "no-such-dir") == []


def test_processes_sharing_a_data_dir_prepare_it_once(tmp_path, monkeypatch):
    """Workers of a local multi-worker run share one data directory: one prepares, the
    others wait for it and find the dataset ready, instead of preparing over each other."""
    import threading
    import time

    from keras_meta.data import omniglot

    prepared, inside, overlaps = [], [], []

    def slow_prepare(source_dir, data_dir):
        if inside:
            overlaps.append(True)
        inside.append(True)
        time.sleep(0.3)
        prepared.append(data_dir)
        inside.pop()

    monkeypatch.setattr(omniglot, "_prepare", slow_prepare)
    monkeypatch.setattr(omniglot, "is_prepared", lambda data_dir: bool(prepared))
    threads = [threading.Thread(target=omniglot.prepare_omniglot, args=(None, tmp_path))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not overlaps and len(prepared) == 1
