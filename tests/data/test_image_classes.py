"""Any folder of images or TFDS image dataset as episodes: listing, the decoded cache (in
memory and memory-mapped), class splits, and the errors a user sees for bad data."""

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.data import EpisodeConfig, EpisodeSampler
from keras_meta.data.class_splits import (SplitEntry, class_split, read_split_file,
                                          resolve_split, standard_splits, write_split_file)
from keras_meta.data.data_error import DataError
from keras_meta.data.image_classes import image_classes, image_meta_splits, parse_dataset_spec
from keras_meta.data.image_folder import list_image_folder


def _write_folder(root, classes, per_class=6, ext="jpg", seed=0, size_range=(20, 40)):
    """Class folders `root/<class>/<i>.<ext>` of random images of random sizes; each class has
    its own mean colour so that classes differ."""
    rng = np.random.default_rng(seed)
    encode = tf.io.encode_jpeg if ext == "jpg" else tf.io.encode_png
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True)
        base = rng.integers(0, 255, (1, 1, 3))
        for i in range(per_class):
            h, w = rng.integers(*size_range, size=2)
            image = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            (folder / f"{i:03d}.{ext}").write_bytes(encode(image).numpy())
    return root


def _quiet(*args, **kwargs):
    pass


@pytest.fixture
def messy_folder(tmp_path):
    """Nested class folders of JPEGs, with one corrupt JPEG and one text file among them."""
    root = _write_folder(tmp_path / "images", [f"alpha{a}/char{c}" for a in range(3)
                                               for c in range(5)])
    corrupt = root / "alpha0" / "char0" / "099.jpg"
    good = (root / "alpha0" / "char0" / "000.jpg").read_bytes()
    corrupt.write_bytes(good[:len(good) // 2])  # truncated
    (root / "alpha1" / "notes.txt").write_text("not an image")
    return root, corrupt


def test_dataset_specs_are_parsed_or_refused_with_the_forms_expected():
    assert parse_dataset_spec("tfds:cifar100") == ("tfds", "cifar100")
    assert parse_dataset_spec("tfds:omniglot:3.0.0") == ("tfds", "omniglot/3.0.0")
    assert parse_dataset_spec("folder:/data/x:y") == ("folder", "/data/x:y")
    for bad in ("cifar100", "tfds:", "hub:cifar", "folder:", "tfds:a:b:c"):
        with pytest.raises(ValueError, match="tfds:NAME"):
            parse_dataset_spec(bad)


def test_listing_nests_classes_and_skips_non_images(messy_folder):
    root, _ = messy_folder
    listing = list_image_folder(root)
    assert listing.class_names[:2] == ("alpha0/char0", "alpha0/char1")
    assert len(listing.class_names) == 15
    assert [p for p, _ in listing.skipped] == [str(root / "alpha1" / "notes.txt")]
    assert len(listing.files) == 15 * 6 + 1  # the corrupt file has an image's extension


def test_loose_images_and_empty_folders_are_refused(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        list_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="No image files"):
        list_image_folder(tmp_path / "empty")
    root = _write_folder(tmp_path / "loose", ["a", "b"])
    (root / "stray.png").write_bytes((root / "a" / "000.jpg").read_bytes())
    with pytest.raises(DataError, match="outside any class folder.*stray.png"):
        list_image_folder(root)


def test_a_corrupt_file_is_reported_by_path_and_skipped(messy_folder, tmp_path, capsys):
    root, corrupt = messy_folder
    source = image_classes(f"folder:{root}", image_size=16, cache_dir=tmp_path / "cache")
    out = capsys.readouterr().out
    assert f"[skipped] {corrupt}: could not be decoded" in out
    assert "notes.txt: not an image file" in out
    assert "Caching folder:" in out and "Cached 90 images" in out
    assert source.info["corrupt_files"] == [str(corrupt)]
    assert source.num_classes == 15 and source.counts.tolist() == [6] * 15
    assert source.image_shape == (16, 16, 3) and source.images.dtype == np.uint8
    # The same folder again: read from the cache, nothing decoded or reported.
    again = image_classes(f"folder:{root}", image_size=16, cache_dir=tmp_path / "cache")
    assert "Caching" not in capsys.readouterr().out
    np.testing.assert_array_equal(again.images, source.images)
    # A changed folder is a new cache, not stale images.
    _write_folder(root, ["alpha3/char0"], seed=5)
    bigger = image_classes(f"folder:{root}", image_size=16, cache_dir=tmp_path / "cache",
                           printer=_quiet)
    assert bigger.num_classes == 16


def test_cached_pixels_are_the_decoded_and_resized_files(tmp_path):
    root = _write_folder(tmp_path / "png", ["a", "b"], per_class=3, ext="png")
    source = image_classes(f"folder:{root}", image_size=(12, 10), cache_dir=tmp_path / "c",
                           printer=_quiet)
    first = tf.io.decode_png((root / "a" / "000.png").read_bytes(), channels=3)
    want = tf.image.resize(tf.cast(first, tf.float32)[None] / 255.0, (12, 10), method="area",
                           antialias=True)[0]
    np.testing.assert_array_equal(source.images[0, 0],
                                  np.round(np.clip(want.numpy(), 0, 1) * 255).astype(np.uint8))
    grey = image_classes(f"folder:{root}", image_size=8, channels=1, cache_dir=tmp_path / "c",
                         printer=_quiet)
    assert grey.image_shape == (8, 8, 1)


def test_memory_mapped_cache_gives_the_same_episodes(messy_folder, tmp_path):
    root, _ = messy_folder
    kwargs = dict(image_size=16, cache_dir=tmp_path / "cache", printer=_quiet)
    memory = image_meta_splits(image_classes(f"folder:{root}", in_memory=True, **kwargs),
                               printer=_quiet)
    mapped_source = image_classes(f"folder:{root}", in_memory=False, **kwargs)
    assert mapped_source.is_memory_mapped
    mapped = image_meta_splits(mapped_source, printer=_quiet)
    assert mapped["train"].is_memory_mapped and mapped["train"].rows is not None
    config = EpisodeConfig(num_ways=3, num_shots=1, num_queries=2, meta_batch_size=2)
    for split in ("train", "test"):
        for rotations in (1, 4):
            a, b = (s[split].with_rotations(rotations) if rotations > 1 else s[split]
                    for s in (memory, mapped))
            ea = next(iter(EpisodeSampler(a, config).dataset(seed=3, start=4)))
            eb = next(iter(EpisodeSampler(b, config).dataset(seed=3, start=4)))
            for x, y in zip(ea, eb):
                np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_random_split_is_seeded_disjoint_and_complete(messy_folder, tmp_path):
    root, _ = messy_folder
    source = image_classes(f"folder:{root}", image_size=8, cache_dir=tmp_path / "c",
                           printer=_quiet)
    splits = image_meta_splits(source, seed=1, printer=_quiet)
    sizes = {k: v.num_classes for k, v in splits.items()}
    assert sizes == {"train": 10, "validation": 2, "test": 3}
    ids = np.concatenate([splits[k].class_ids for k in splits])
    assert sorted(ids.tolist()) == list(range(15))
    again = image_meta_splits(source, seed=1, printer=_quiet)
    other = image_meta_splits(source, seed=2, printer=_quiet)
    assert again["test"].class_ids.tolist() == splits["test"].class_ids.tolist()
    assert other["test"].class_ids.tolist() != splits["test"].class_ids.tolist()


def test_split_folders_are_the_class_split(tmp_path):
    root = tmp_path / "tree"
    _write_folder(root, ["train/cat", "train/dog", "train/owl", "val/cow", "val/eel",
                         "test/fox", "test/yak"], per_class=3)
    source = image_classes(f"folder:{root}", image_size=8, cache_dir=tmp_path / "c",
                           printer=_quiet)
    splits = image_meta_splits(source, printer=_quiet)
    assert {k: v.class_names for k, v in splits.items()} == {
        "train": ["cat", "dog", "owl"], "validation": ["cow", "eel"], "test": ["fox", "yak"]}


def test_a_split_file_selects_folders_by_name_and_names_missing_ones(messy_folder, tmp_path):
    root, _ = messy_folder
    source = image_classes(f"folder:{root}", image_size=8, cache_dir=tmp_path / "c",
                           printer=_quiet)
    path = write_split_file(tmp_path / "split.txt", {
        "train": ["alpha0/char1", "alpha0/char2", "alpha1/char0"],
        "test": ["alpha2/char4", "alpha2/char3"]}, comments=["a test split"])
    splits = image_meta_splits(source, str(path), printer=_quiet)
    assert list(splits) == ["train", "test"]
    assert splits["test"].class_names == ["alpha2/char4", "alpha2/char3"]
    bad = write_split_file(tmp_path / "bad.txt", {"train": ["alpha0/char1", "beta/char9"],
                                                  "test": ["alpha2/char4"]})
    with pytest.raises(DataError, match=r"1 classes of the split are not in the dataset: "
                                        r"\['beta/char9'\]"):
        image_meta_splits(source, str(bad), printer=_quiet)


def test_split_files_are_refused_when_malformed_or_overlapping(tmp_path):
    def split_file(text):
        path = tmp_path / "s.txt"
        path.write_text(text)
        return path

    with pytest.raises(DataError, match=r"listed in both \[train\] and \[test\]"):
        read_split_file(split_file("[train]\n1 a\n2 b\n[test]\n2 b\n"))
    with pytest.raises(DataError, match="a section must be one of"):
        read_split_file(split_file("[training]\na\n"))
    with pytest.raises(DataError, match=r"missing section\(s\) \['test'\]"):
        read_split_file(split_file("[train]\na\n"))
    with pytest.raises(DataError, match="one class per line"):
        read_split_file(split_file("[train]\na b c\n[test]\nd\n"))
    with pytest.raises(DataError, match="header line or a \\[section\\]"):
        read_split_file(split_file("just a name\n[train]\na\n[test]\nb\n"))
    with pytest.raises(DataError, match="Unknown class split 'cifar_fss'.*cifar_fs"):
        class_split("cifar_fss")
    with pytest.raises(DataError, match="does not exist"):
        class_split(str(tmp_path / "nope.txt"))


def test_ids_select_and_names_are_checked():
    split = read_split_file(write_split_file("/tmp/_km_split_ids.txt", {
        "train": [SplitEntry(0, "apple"), SplitEntry(2, "baby")],
        "test": [SplitEntry(1, "aquarium_fish")]}))
    names = ["apple", "aquarium fish", "baby"]
    assert resolve_split(split, [0, 1, 2], names) == {"train": [0, 2], "test": [1]}
    # TFDS's stand-in names ("0", "1", ...) carry no names to check: the ids select.
    assert resolve_split(split, [0, 1, 2], ["0", "1", "2"]) == {"train": [0, 2], "test": [1]}
    with pytest.raises(DataError, match="names 1 classes differently.*'aquarium_fish'.*'bed'"):
        resolve_split(split, [0, 1, 2], ["apple", "bed", "baby"])
    with pytest.raises(DataError, match=r"not in the dataset: \['2 baby'\]"):
        resolve_split(split, [0, 1], ["apple", "aquarium_fish"])


def test_a_group_split_holds_every_class_of_its_groups():
    split = read_split_file(write_split_file("/tmp/_km_split_groups.txt", {
        "train": [SplitEntry(0, "fish")], "test": [SplitEntry(1, "trees")]},
        header={"group_key": "coarse_label"}))
    chosen = resolve_split(split, [10, 11, 12, 13], class_groups=[0, 1, 0, 1],
                           group_names=["fish", "trees"])
    assert chosen == {"train": [10, 12], "test": [11, 13]}
    with pytest.raises(DataError, match="loaded without them"):
        resolve_split(split, [10, 11])


def test_standard_splits_ship_with_the_package():
    names = standard_splits()
    for name in ("cifar_fs", "fc100", "mini_imagenet", "cub", "omniglot_maml", "omniglot_lake"):
        assert name in names
        split = class_split(name)
        counts = dict(part.split() for part in split.header["counts"].split(", "))
        assert split.counts == {k: int(v) for k, v in counts.items()}


def test_a_cache_larger_than_half_the_memory_is_mapped_not_loaded(messy_folder, tmp_path,
                                                                   monkeypatch, capsys):
    from keras_meta.data import image_cache

    root, _ = messy_folder
    kwargs = dict(image_size=16, cache_dir=tmp_path / "cache")
    assert not image_classes(f"folder:{root}", **kwargs).is_memory_mapped
    # On a machine with 100 kB, the same 69 kB cache must not be read into memory.
    monkeypatch.setattr(image_cache, "machine_memory_bytes", lambda: 100_000)
    capsys.readouterr()
    source = image_classes(f"folder:{root}", **kwargs)
    assert source.is_memory_mapped
    assert "memory-mapped, read per episode (more than half of this machine's memory)" in (
        capsys.readouterr().out)


def test_only_the_split_classes_of_a_large_folder_are_decoded(messy_folder, tmp_path):
    root, _ = messy_folder
    wanted = ["alpha2/char4", "alpha0/char1", "alpha1/char3", "not/there"]
    source = image_classes(f"folder:{root}", image_size=8, cache_dir=tmp_path / "c",
                           only_classes=wanted, printer=_quiet)
    assert source.class_names == ["alpha0/char1", "alpha1/char3", "alpha2/char4"]
    assert source.num_images == 18
    path = write_split_file(tmp_path / "s.txt", {"train": wanted[:2], "test": wanted[2:]})
    with pytest.raises(DataError, match=r"not in the dataset: \['not/there'\]"):
        image_meta_splits(source, str(path), printer=_quiet)
    with pytest.raises(DataError, match="None of the 1 classes asked for"):
        image_classes(f"folder:{root}", image_size=8, cache_dir=tmp_path / "c",
                      only_classes=["zzz"], printer=_quiet)
