"""`task_family="images"` end to end, tiny: a folder of JPEGs and a TFDS dataset (generated
examples) meta-train, export without the data, and serve encoded images."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_meta.data.data_error import DataError
from keras_meta.export import export_from_model_dir
from keras_meta.training import train
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.presets import PRESETS
from tests.data.test_image_classes import _write_folder
from tests.data.test_tfds_images import generated

pytestmark = pytest.mark.slow

# No validation during training: it costs traces and a best checkpoint, and what is tested
# here (data, preprocessing, export, serving) is the same from the latest checkpoint.
_TINY = dict(task_family="images", image_size=16, conv4_filters=4, num_ways=3, num_shots=1,
             num_queries=2, eval_num_shots=1, eval_num_queries=2, meta_batch_size=2,
             num_iterations=4, eval_every=0, num_val_tasks=2, num_eval_tasks=2,
             checkpoint_every=2, log_every=2, inner_steps=1, eval_inner_steps=(2,))


def _serve_bytes_equals_serve_pixels(export_dir, support_files, labels, query_files, size):
    loaded = tf.saved_model.load(export_dir)
    read = lambda files: tf.constant([open(f, "rb").read() for f in files])  # noqa: E731
    by_bytes = loaded.signatures["serving_bytes"](
        support_images=read(support_files), support_labels=tf.constant(labels, tf.int32),
        query_images=read(query_files))
    # The same images decoded and resized here, sent as pixels at the model's size.
    def pixels(files):
        out = [tf.image.resize(tf.cast(tf.io.decode_image(open(f, "rb").read(), channels=3,
                                                          expand_animations=False),
                                       tf.float32)[None] / 255.0, size, method="area",
                               antialias=True)[0] for f in files]
        return tf.stack(out)

    by_pixels = loaded.signatures["serving_float"](
        support_images=pixels(support_files), support_labels=tf.constant(labels, tf.int32),
        query_images=pixels(query_files)) if "serving_float" in loaded.signatures else None
    assert by_bytes["probabilities"].shape == (len(query_files), 3)
    if by_pixels is not None:
        np.testing.assert_allclose(by_bytes["probabilities"].numpy(),
                                   by_pixels["probabilities"].numpy(), atol=1e-4)
    return by_bytes


def test_a_folder_of_jpegs_trains_exports_without_it_and_serves_bytes(tmp_path):
    root = _write_folder(tmp_path / "photos", [f"kind{k}/sort{c}" for k in range(4)
                                               for c in range(5)])
    config = MAMLTrainConfig(dataset=f"folder:{root}", cache_dir=str(tmp_path / "cache"),
                             augmentation="crop_flip", **_TINY)
    model_dir = str(tmp_path / "run")
    train(config, model_dir)
    with open(os.path.join(model_dir, "eval_results.json")) as f:
        results = json.load(f)
    assert results["task_family"] == "images"
    assert results["data"]["dataset"] == f"folder:{root}" and results["data"]["splits"] == {
        "train": 13, "validation": 3, "test": 4}
    assert results["data"]["corrupt_files"] == [] and results["data"]["cache_bytes"] > 0
    assert 0 <= results["results"]["2"]["accuracy"]["mean"] <= 1
    saved = MAMLTrainConfig.from_dict(json.load(open(os.path.join(model_dir, "config.json"))))
    assert saved.image_preprocessing == {"image_size": [16, 16], "channels": 3,
                                         "invert": False} or saved.image_preprocessing == {
        "image_size": (16, 16), "channels": 3, "invert": False}
    # The export needs no dataset: the folder and its cache are gone.
    shutil.rmtree(root)
    shutil.rmtree(tmp_path / "cache")
    path = export_from_model_dir(model_dir, base_dir=str(tmp_path / "serving"))
    files = sorted(str(p) for p in (tmp_path / "photos").rglob("*.jpg"))
    assert not files
    # Fresh JPEGs of other sizes stand in for a client's photos.
    client = _write_folder(tmp_path / "client", ["a", "b", "c"], per_class=2, seed=9,
                           size_range=(30, 90))
    support = [str(client / c / "000.jpg") for c in "abc"]
    query = [str(client / c / "001.jpg") for c in "abc"]
    _serve_bytes_equals_serve_pixels(str(path), support, [0, 1, 2], query, (16, 16))


@pytest.mark.parametrize("preset,classes,sizes", [
    ("cifar_fs_5way_1shot", 100, ((32, 32),)),
    ("cub_5way_1shot", 200, ((50, 37), (29, 61))),  # CUB's photos come in many sizes
])
def test_a_tfds_dataset_with_a_standard_split_trains_and_exports(tmp_path, preset, classes,
                                                                  sizes):
    config = PRESETS[preset].replace(
        **{**_TINY, "num_ways": 3}, cache_dir=str(tmp_path / "cache"), tfds_download=True)
    model_dir = str(tmp_path / "run")
    with tfds.testing.mock_data(as_dataset_fn=generated(classes, 3, sizes=sizes)):
        train(config, model_dir)
    with open(os.path.join(model_dir, "eval_results.json")) as f:
        data = json.load(f)["data"]
    expected = {"cifar_fs_5way_1shot": {"train": 64, "validation": 16, "test": 20},
                "cub_5way_1shot": {"train": 100, "validation": 50, "test": 50}}[preset]
    assert data["splits"] == expected
    history = [json.loads(line) for line in open(os.path.join(model_dir, "history.jsonl"))]
    assert history[0]["event"] == "start"
    path = export_from_model_dir(model_dir, base_dir=str(tmp_path / "serving"))
    loaded = tf.saved_model.load(str(path))
    spec = loaded.signatures["serving_default"].structured_input_signature[1]
    assert spec["support_images"].shape.as_list() == [None, 16, 16, 3]
    png = tf.io.encode_png(np.full((40, 20, 3), 200, np.uint8)).numpy()
    out = loaded.signatures["serving_bytes"](
        support_images=tf.constant([png] * 3), support_labels=tf.constant([0, 1, 2]),
        query_images=tf.constant([png]))
    assert out["classes"].shape == (1,)


def test_too_small_a_split_or_no_dataset_is_refused_before_training(tmp_path):
    root = _write_folder(tmp_path / "few", ["a", "b", "c", "d", "e"], per_class=3)
    config = MAMLTrainConfig(dataset=f"folder:{root}", cache_dir=str(tmp_path / "cache"),
                             **_TINY)
    with pytest.raises(DataError, match="Invalid num_ways=3: the validation split .* has 1 "
                                        "class"):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    more = _write_folder(tmp_path / "more", [f"k{i}" for i in range(10)], per_class=3)
    with pytest.raises(DataError, match="Invalid num_queries=2: train episodes take 2 support "
                                        "\\+ 2 query = 4 distinct images per class"):
        train(config.replace(dataset=f"folder:{more}", num_ways=2, num_shots=2),
              str(tmp_path / "run"))
    with pytest.raises(ValueError, match="Invalid dataset=None"):
        MAMLTrainConfig(**_TINY).validate_episode_sizes()


def test_a_resume_on_a_folder_whose_classes_changed_is_refused(tmp_path):
    names = [f"kind{k}/sort{c}" for k in range(4) for c in range(5)]
    root = _write_folder(tmp_path / "photos", names, per_class=4)
    config = MAMLTrainConfig(dataset=f"folder:{root}", cache_dir=str(tmp_path / "cache"),
                             **{**_TINY, "num_iterations": 2})
    model_dir = tmp_path / "run"
    train(config, str(model_dir))
    saved = json.loads((model_dir / "classes.json").read_text())
    assert sorted(sum(saved.values(), [])) == sorted(names)
    # Two more classes re-split the folder (the split is a seeded shuffle of all classes):
    # resuming would test on classes the first iterations trained on.
    _write_folder(root, ["kind9/new0", "kind9/new1"], per_class=4, seed=3)
    before = sorted(os.listdir(model_dir / "checkpoints"))
    with pytest.raises(DataError, match="meta-splits changed since this run started"):
        train(config.replace(num_iterations=4), str(model_dir))
    assert sorted(os.listdir(model_dir / "checkpoints")) == before
    shutil.rmtree(root / "kind9")
    train(config.replace(num_iterations=4), str(model_dir))
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-4")
