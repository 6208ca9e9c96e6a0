"""Omniglot as a class-folder tree: the shipped split files name the same characters as the
dedicated path's split, and the folder path reads the same pixels TFDS does."""

import shutil

import numpy as np
import pytest

from keras_meta.data import load_omniglot_classes
from keras_meta.data.class_splits import class_split, write_split_file
from keras_meta.data.image_folder import list_image_folder
from keras_meta.data.image_classes import image_classes, image_meta_splits
from keras_meta.data.omniglot import omniglot_class_splits, write_omniglot_folder


@pytest.mark.parametrize("name,protocol", [("omniglot_maml", "maml"),
                                           ("omniglot_lake", "background_evaluation")])
def test_split_files_list_the_dedicated_paths_characters(name, protocol):
    split = class_split(name)
    expected = omniglot_class_splits(protocol)
    assert {k: [e.id for e in v] for k, v in split.sections.items()} == {
        k: v.tolist() for k, v in expected.items()}
    assert all(e.name.count("/") == 1 for v in split.sections.values() for e in v)


@pytest.mark.slow
def test_the_folder_path_reads_the_dedicated_paths_pixels(omniglot_source_dir, omniglot_data_dir,
                                                          tmp_path):
    tree = write_omniglot_folder(omniglot_source_dir, tmp_path / "omniglot")
    assert write_omniglot_folder(omniglot_source_dir, tmp_path / "omniglot") == tree  # kept
    listing = list_image_folder(tree)
    assert len(listing.class_names) == 1623 and len(listing.files) == 1623 * 20
    names = {e.id: e.name for v in class_split("omniglot_maml").sections.values() for e in v}
    assert set(names.values()) == set(listing.class_names)
    # Decoding all 32,460 files takes minutes here: four characters, copied apart, stand in.
    labels = (0, 5, 964, 1622)
    subset = tmp_path / "subset"
    for label in labels:
        shutil.copytree(tree / names[label], subset / names[label])
    folder = image_classes(f"folder:{subset}", image_size=28, channels=1, invert=True,
                           cache_dir=tmp_path / "cache", printer=lambda *a, **k: None)
    dedicated = load_omniglot_classes(omniglot_data_dir)
    # Same characters, same pixels: each class holds the same 20 images (in another order:
    # TFDS's, against the sorted file names).
    position = {c: i for i, c in enumerate(dedicated.class_ids.tolist())}
    for label in labels:
        row = folder.class_names.index(names[label])
        ours = sorted(x.tobytes() for x in folder.images[row])
        theirs = sorted(x.tobytes() for x in dedicated.images[position[label]])
        assert ours == theirs, f"character {label} ({names[label]}) differs"
    split = write_split_file(tmp_path / "four.txt", {"train": [names[0], names[5]],
                                                     "test": [names[964], names[1622]]})
    splits = image_meta_splits(folder, str(split), printer=lambda *a, **k: None)
    assert splits["test"].class_names == [names[964], names[1622]]
    np.testing.assert_array_equal(splits["test"].preprocessing(np.zeros([1, 28, 28, 1],
                                                                        np.uint8)), 1.0)
