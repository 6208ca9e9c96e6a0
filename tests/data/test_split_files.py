"""The standard class-split files shipped in keras_meta/data/splits/ hold the published splits.

Stand-alone on purpose (plain pytest, no TensorFlow): the files are parsed here by a small local
parser, so a broken file fails loudly even if the library's reader changes. The last test also
checks that the library's reader (keras_meta/data/class_splits.py, loaded by path so that the
package, and TensorFlow with it, is not imported) reads the same thing.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SPLITS_DIR = Path(__file__).resolve().parents[2] / "keras_meta" / "data" / "splits"
SECTIONS = ("train", "validation", "test")

# CIFAR-100's fine class names by fine label index (the order of the dataset's meta file, which
# TFDS cifar100 'label' uses). Source: https://github.com/knjcode/cifar2png, common/preprocess.py
# (CIFAR100_LABELS_LIST); the same list appears in many other CIFAR-100 loaders.
CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle "
    "bowl boy bridge bus butterfly camel can castle caterpillar cattle "
    "chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard "
    "lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain "
    "mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket "
    "rose sea seal shark shrew skunk skyscraper snail snake spider "
    "squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
    "train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()

# CIFAR-100's superclass names by coarse label index (TFDS cifar100 'coarse_label').
# Source: https://github.com/ServiceNow/TADAM, datasets/create_dataset_cifar100.py (comments).
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables "
    "household_electrical_devices household_furniture insects large_carnivores "
    "large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores "
    "medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 "
    "vehicles_2"
).split()

# Fine label index -> coarse label index. Source: https://github.com/ryanchankh/cifar100coarse,
# sparse2coarse.py (cross-checked there against its per-superclass fine-name lists).
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)

# file stem -> (published counts train/validation/test, number of ids (None: name-only), dataset)
EXPECTED = {
    "cifar_fs": ((64, 16, 20), 100, "tfds:cifar100"),
    "fc100": ((12, 4, 4), 20, "tfds:cifar100"),
    "mini_imagenet": ((64, 16, 20), None, "folder"),
    "cub": ((100, 50, 50), 200, "tfds:caltech_birds2011"),
}


def _parse(path):
    """(comment lines, header dict, section -> [(id or None, name or None)]) of a split file."""
    comments, header, sections, current = [], {}, {}, None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line)
        elif not line:
            continue
        elif re.fullmatch(r"\[\w+\]", line):
            current = line[1:-1]
            assert current in SECTIONS and current not in sections, f"{path}:{number}: {raw!r}"
            sections[current] = []
        elif current is None:
            key, sep, value = line.partition(":")
            assert sep and re.fullmatch(r"\w+", key.strip()), f"{path}:{number}: {raw!r}"
            header[key.strip()] = value.strip()
        else:
            parts = line.split()
            assert len(parts) in (1, 2), f"{path}:{number}: one class per line, got {raw!r}"
            if parts[0].isdigit():
                sections[current].append((int(parts[0]), parts[1] if len(parts) == 2 else None))
            else:
                assert len(parts) == 1, f"{path}:{number}: 'ID NAME' needs an integer ID: {raw!r}"
                sections[current].append((None, parts[0]))
    return comments, header, sections


def _load(stem):
    path = SPLITS_DIR / f"{stem}.txt"
    assert path.is_file(), f"missing standard split file {path}"
    return _parse(path)


def _counts(header):
    """'train 64, validation 16, test 20' -> {'train': 64, ...}."""
    pairs = [item.split() for item in header["counts"].split(",")]
    return {name: int(n) for name, n in pairs}


def test_reference_tables_are_consistent():
    assert len(CIFAR100_FINE) == len(set(CIFAR100_FINE)) == 100
    assert list(CIFAR100_FINE) == sorted(CIFAR100_FINE)  # CIFAR-100 orders fine names A-Z
    assert CIFAR100_FINE[:10] == ["apple", "aquarium_fish", "baby", "bear", "beaver", "bed",
                                  "bee", "beetle", "bicycle", "bottle"]
    assert len(CIFAR100_COARSE) == len(set(CIFAR100_COARSE)) == 20
    assert len(CIFAR100_FINE_TO_COARSE) == 100
    for coarse in range(20):  # 5 fine classes in every superclass
        assert CIFAR100_FINE_TO_COARSE.count(coarse) == 5, coarse
    fine = dict(zip(CIFAR100_FINE, CIFAR100_FINE_TO_COARSE))
    assert CIFAR100_COARSE[fine["whale"]] == "aquatic_mammals"
    assert CIFAR100_COARSE[fine["maple_tree"]] == "trees"
    assert CIFAR100_COARSE[fine["tractor"]] == "vehicles_2"


def test_there_is_a_file_for_each_standard_split():
    # Omniglot's two splits are written from the dedicated path's own (test_omniglot_folder).
    omniglot = {"omniglot_maml", "omniglot_lake"}
    assert sorted(p.stem for p in SPLITS_DIR.glob("*.txt")) == sorted(set(EXPECTED) | omniglot)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_cites_its_paper_and_source(stem):
    comments, _, _ = _load(stem)
    path = SPLITS_DIR / f"{stem}.txt"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and re.search(r"(ICLR|NeurIPS) 20\d\d", first), first
    sources = [c for c in comments if c.startswith("# Source")]
    assert sources and "https://github.com/" in sources[0], comments


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_counts_are_the_published_ones(stem):
    _, header, sections = _load(stem)
    published, _, _ = EXPECTED[stem]
    assert list(sections) == list(SECTIONS)
    assert tuple(len(sections[s]) for s in SECTIONS) == published
    assert _counts(header) == dict(zip(SECTIONS, published))


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_header_names_the_dataset(stem):
    _, header, _ = _load(stem)
    _, num_ids, dataset = EXPECTED[stem]
    assert header["dataset"] == dataset
    if dataset.startswith("tfds:"):
        assert header["label_key"] == "label"
    else:
        assert "label_key" not in header
    assert header.get("group_key") == ("coarse_label" if stem == "fc100" else None)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_splits_are_disjoint_with_distinct_ids_and_names(stem):
    _, _, sections = _load(stem)
    _, num_ids, _ = EXPECTED[stem]
    entries = [e for s in SECTIONS for e in sections[s]]
    ids = [i for i, _ in entries]
    names = [n for _, n in entries]
    if num_ids is None:
        assert all(i is None for i in ids)
    else:
        assert all(i is not None and 0 <= i < num_ids for i in ids), ids
        assert len(set(ids)) == len(ids)
    assert all(n is not None for n in names)
    assert len(set(names)) == len(names)
    for a in SECTIONS:
        for b in SECTIONS:
            if a < b:
                assert not set(sections[a]) & set(sections[b]), (a, b)


def test_cifar_fs_names_match_cifar100_fine_label_order():
    _, _, sections = _load("cifar_fs")
    entries = [e for s in SECTIONS for e in sections[s]]
    assert sorted(i for i, _ in entries) == list(range(100))  # all 100 classes, once
    for class_id, name in entries:
        assert name == CIFAR100_FINE[class_id], (class_id, name)


def test_fc100_superclasses_cover_60_20_20_fine_classes():
    _, _, sections = _load("fc100")
    for class_id, name in (e for s in SECTIONS for e in sections[s]):
        assert name == CIFAR100_COARSE[class_id], (class_id, name)
    fine = {s: [f for f, c in enumerate(CIFAR100_FINE_TO_COARSE)
                if c in {i for i, _ in sections[s]}] for s in SECTIONS}
    assert tuple(len(fine[s]) for s in SECTIONS) == (60, 20, 20)
    assert sorted(f for s in SECTIONS for f in fine[s]) == list(range(100))


def test_mini_imagenet_lists_wordnet_ids():
    _, _, sections = _load("mini_imagenet")
    names = [n for s in SECTIONS for _, n in sections[s]]
    assert all(re.fullmatch(r"n\d{8}", n) for n in names), names
    assert "n01532829" in {n for _, n in sections["train"]}  # house finch, the first train class


def test_cub_follows_the_closer_look_rule():
    _, _, sections = _load("cub")
    rule = {"train": [i for i in range(200) if i % 2 == 0],
            "validation": [i for i in range(200) if i % 4 == 1],
            "test": [i for i in range(200) if i % 4 == 3]}
    for s in SECTIONS:
        assert sorted(i for i, _ in sections[s]) == rule[s], s
    for class_id, name in (e for s in SECTIONS for e in sections[s]):
        # CUB folder names: '<class_id, 3 digits>.<Name>', class_id = TFDS label + 1.
        assert re.fullmatch(r"%03d\.[A-Z][A-Za-z_]+" % (class_id + 1), name), (class_id, name)
    names = dict(e for s in SECTIONS for e in sections[s])
    assert names[0] == "001.Black_footed_Albatross"
    assert names[199] == "200.Common_Yellowthroat"


def _library_reader():
    path = SPLITS_DIR.parent / "class_splits.py"
    if not path.is_file():
        pytest.skip(f"{path} is not there yet")
    spec = importlib.util.spec_from_file_location("_class_splits_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module.read_split_file


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_library_reader_agrees(stem):
    read_split_file = _library_reader()
    split = read_split_file(SPLITS_DIR / f"{stem}.txt")
    _, header, sections = _load(stem)
    assert dict(split.header) == header
    assert {s: [(e.id, e.name) for e in entries] for s, entries in split.sections.items()} \
        == sections
