"""The README's main job (`make demo`) end to end on a tiny budget."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_meta.cli import demo as demo_module
from keras_meta.data.omniglot import omniglot_class_splits
from keras_meta.export import predict_local
from keras_meta.export.from_run import restore_maml
from keras_meta.training.presets import get_preset
from keras_meta.training.task_families import image_preprocessing
from trainers import demo

WAYS, QUERIES = 5, 3
# What the demo changes in the 5-way 1-shot preset: the run's length and schedule, its data.
SHORTENED = dict(num_iterations=3, meta_batch_size=2, num_eval_tasks=25, seed=0,
                 eval_every=100, num_val_tasks=50, checkpoint_every=100, log_every=25)


def _character_images(data_dir, characters):
    """{TFDS label: [raw PNG-decoded images]} of the given characters, from train+test."""
    ds = tfds.load("omniglot", split="train+test", data_dir=data_dir, download=False,
                   decoders={"image": tfds.decode.SkipDecoding()})
    wanted = tf.constant(characters, tf.int64)
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["label"], wanted)))
    found = {int(c): [] for c in characters}
    for ex in ds.as_numpy_iterator():
        found[int(ex["label"])].append(tf.io.decode_png(ex["image"], channels=3).numpy())
    return found


def _index_of(image, images):
    matches = [i for i, candidate in enumerate(images) if np.array_equal(image, candidate)]
    assert len(matches) == 1, f"image found {len(matches)} times among its character's drawings"
    return matches[0]


@pytest.mark.slow
def test_demo_trains_evaluates_exports_and_serves(omniglot_data_dir, omniglot_source_dir,
                                                  tmp_path, capsys, monkeypatch):
    data_dir = str(omniglot_data_dir)
    config = demo.demo_config(num_iterations=3, meta_batch_size=2, num_eval_tasks=25,
                              data_dir=data_dir, omniglot_source_dir=str(omniglot_source_dir))
    # The 5-way 1-shot preset (alpha 0.4, 3 steps at test), only shortened.
    preset = get_preset("omniglot_5way_1shot")
    expected = dict(SHORTENED, data_dir=data_dir, omniglot_source_dir=str(omniglot_source_dir))
    for field in dataclasses.fields(config):
        assert getattr(config, field.name) == expected.get(field.name,
                                                           getattr(preset, field.name)), field.name
    assert (config.num_ways, config.num_shots, config.inner_lr, config.eval_inner_steps) == (
        WAYS, 1, 0.4, (3,))

    # The request the demo builds and sends, recorded on its way (the real function runs).
    requests = []
    real_request = demo_module.held_out_request

    def recording_request(*args, **kwargs):
        requests.append(((args, kwargs), real_request(*args, **kwargs)))
        return requests[-1][1]

    monkeypatch.setattr(demo_module, "held_out_request", recording_request)
    model_dir = str(tmp_path / "run")
    result = demo.run(model_dir, config)
    out = capsys.readouterr().out
    for stage in ("1/4", "2/4", "3/4", "4/4"):
        assert f"== {stage}" in out
    assert os.path.isfile(os.path.join(result["export_path"], "saved_model.pb"))
    assert os.path.isfile(os.path.join(model_dir, "serving", "models.config"))
    accuracy = result["test_accuracy"]
    assert accuracy["num_tasks"] == 25
    assert f"accuracy {100 * accuracy['mean']:.1f}% +/- {100 * accuracy['ci95']:.1f}%" in out
    # Well above chance (20%). Measured at this size: 37.7% +/- 4.1% (seed 0); seeds 1-3 gave
    # 40.7 +/- 2.7, 40.1 +/- 4.5, 39.8 +/- 3.7: the 95% CI's lower end stays above 33%.
    assert accuracy["mean"] - accuracy["ci95"] > 0.25

    # The request: held-out test characters, one support image each, raw 105x105 RGB uint8 as
    # a client has them.
    assert [call for call, _ in requests] == [((data_dir,), {"num_ways": WAYS,
                                                             "seed": config.seed})]
    support, support_labels, query, query_labels, characters = requests[0][1]
    assert len(set(characters.tolist())) == WAYS
    assert set(characters.tolist()) <= set(omniglot_class_splits("maml")["test"].tolist())
    assert support.shape == (WAYS, 105, 105, 3) and support.dtype == np.uint8
    assert query.shape == (WAYS * QUERIES, 105, 105, 3) and query.dtype == np.uint8
    assert support_labels.dtype == query_labels.dtype == np.int32
    np.testing.assert_array_equal(support_labels, np.arange(WAYS))
    np.testing.assert_array_equal(np.sort(query_labels), np.repeat(np.arange(WAYS), QUERIES))
    np.testing.assert_array_equal(result["true"], query_labels)
    # Every image is a distinct drawing of the character its label names.
    drawings = _character_images(data_dir, characters)
    for label, character in enumerate(characters.tolist()):
        used = [_index_of(support[label], drawings[character])]
        used += [_index_of(image, drawings[character]) for image in query[query_labels == label]]
        assert len(set(used)) == 1 + QUERIES

    # The answer: the exported model agrees with the library's own adapt_and_predict, and the
    # reported accuracy is the fraction answered right.
    maml, run_config, _ = restore_maml(model_dir)
    prep = image_preprocessing(run_config)
    expected_logits = maml.adapt_and_predict(prep(support), tf.constant(support_labels),
                                             prep(query), steps=3).numpy()
    served = predict_local(result["export_path"], support, support_labels, query)
    np.testing.assert_allclose(served["logits"], expected_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(result["predicted"], expected_logits.argmax(-1))
    correct = int(np.sum(result["predicted"] == query_labels))
    assert result["request_accuracy"] == correct / len(query_labels)
    assert f"{correct}/{len(query_labels)} correct" in out


@pytest.mark.slow
def test_demo_from_the_preset_tests_exports_and_serves_it(omniglot_data_dir, omniglot_source_dir,
                                                          tmp_path, capsys):
    from keras_meta import MAML
    from keras_meta.presets import Preset

    info = Preset.load("omniglot_5way_1shot")
    model_dir = str(tmp_path / "demo")
    result = demo_module.run_preset(model_dir, num_eval_tasks=100,
                                    data_dir=str(omniglot_data_dir),
                                    omniglot_source_dir=str(omniglot_source_dir))
    out = capsys.readouterr().out
    for stage in ("1/4", "2/4", "3/4", "4/4"):
        assert f"== {stage}" in out
    assert f"meta-trained {info.iteration} iterations at commit {info.commit}" in out
    # The preset is as good as it says, on 100 of its held-out tasks.
    accuracy = result["test_accuracy"]
    assert accuracy["num_tasks"] == 100
    assert accuracy["mean"] >= info.result["mean"] - 2 * info.result["ci95"] - 0.01
    assert result["export_path"] == os.path.join(model_dir, "serving", "omniglot_5way_1shot",
                                                 "1")
    # What was served is the preset's model.
    support, support_labels, query, _, _ = demo_module.held_out_request(str(omniglot_data_dir))
    maml = MAML.from_preset("omniglot_5way_1shot")
    from keras_meta.training.config import MAMLTrainConfig
    prep = image_preprocessing(MAMLTrainConfig.from_dict(info.train_config))
    expected = maml.adapt_and_predict(prep(support), tf.constant(support_labels), prep(query),
                                      steps=3).numpy()
    served = predict_local(result["export_path"], support, support_labels, query)
    np.testing.assert_allclose(served["logits"], expected, atol=1e-4, rtol=1e-4)


def test_demo_flags_that_do_not_apply_are_refused(refusal_of_main):
    import subprocess
    import sys

    # One refusal through `python -m trainers.demo` (exit status, message on stderr); the others
    # through the same `main` in this process, on a fresh set of the demo's flags.
    proc = subprocess.run([sys.executable, "-m", "trainers.demo", "--num_iterations=5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "--num_iterations applies to --train only" in proc.stderr, proc.stderr[-2000:]
    for args, message in ((["--train", "--preset=omniglot_5way_1shot"],
                           "--preset and --train exclude each other"),
                          (["--preset=nope"], "--preset='nope': Unknown preset 'nope'")):
        assert message in refusal_of_main(demo_module, *args), args
