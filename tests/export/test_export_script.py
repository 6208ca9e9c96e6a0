"""`python -m export.export_saved_model` from a trainer's model_dir, end to end."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.export import from_run as export_saved_model
from keras_meta import training
from keras_meta.training import loop, task_families
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.export import predict_local, read_serving_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_SINUSOID = MAMLTrainConfig(num_iterations=2, meta_batch_size=2, num_shots=5, num_queries=5,
                                eval_every=2, num_val_tasks=2, num_eval_tasks=2,
                                checkpoint_every=2, log_every=2, eval_inner_steps=(2,))


def _run_script(*args):
    return subprocess.run([sys.executable, "-m", "export.export_saved_model", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("sinusoid_run"))
    training.train(TINY_SINUSOID, model_dir, verbose=False)
    return model_dir


@pytest.mark.slow
def test_script_exports_a_trained_sinusoid_run(sinusoid_run, tmp_path):
    base = str(tmp_path / "serving")
    result = _run_script(f"--model_dir={sinusoid_run}", f"--base_dir={base}", "--jit_compile")
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(base, "sinusoid_few_shot", "1")
    assert f"Exported few_shot model to {path}" in result.stdout
    config = read_serving_config(path)
    assert (config.problem, config.inner_steps, config.task_family) == ("regression", 2, "sinusoid")
    with open(os.path.join(path, "assets.extra", "train_config.json")) as f:
        assert json.load(f)["num_iterations"] == 2

    maml, _, checkpoint = export_saved_model.restore_maml(sinusoid_run)
    assert "best" in checkpoint
    rng = np.random.default_rng(0)
    sx = rng.uniform(-5, 5, (5, 1)).astype(np.float32)
    sy = np.sin(sx).astype(np.float32)
    qx = rng.uniform(-5, 5, (7, 1)).astype(np.float32)
    expected = maml.adapt_and_predict(sx, sy, qx).numpy()
    for signature in ("serving_default", "serving_xla"):
        out = predict_local(path, sx, sy, qx, signature_name=signature)
        np.testing.assert_allclose(out["predictions"], expected, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"support_y: expected as many rows as support_x"):
        predict_local(path, sx, sy[:3], qx)

    # The adapted shape from a support set in an .npz, through the importable function.
    npz = tmp_path / "support.npz"
    np.savez(npz, support_x=sx, support_y=sy)
    adapted_path = export_saved_model.export_from_model_dir(
        sinusoid_run, kind="adapted", base_dir=base, model_name="sine", support_npz=str(npz))
    out = predict_local(adapted_path, inputs={"inputs": qx})
    adapted = maml.adapt(sx, sy)
    np.testing.assert_allclose(out["predictions"], adapted(qx).numpy(), atol=1e-5)


def test_exports_an_image_run_from_its_config_alone(tmp_path, monkeypatch):
    # Exporting rebuilds the model from config.json and takes the serving preprocessing from
    # it: no Omniglot data exists anywhere this test can see, and none is needed.
    monkeypatch.setenv("KERAS_META_OMNIGLOT_DIR", str(tmp_path / "no_such_folder"))
    prep = ImagePreprocessing((8, 8), 1, invert=True)
    config = MAMLTrainConfig(task_family="omniglot", num_ways=3, image_size=8, inner_lr=0.4,
                             inner_steps=1, eval_inner_steps=(2,), batch_norm="transductive",
                             data_dir=str(tmp_path / "no_tfds"),
                             image_preprocessing=prep.get_config(),
                             client_image_shape=(105, 105, 3))
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, loop.CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    with pytest.raises(FileNotFoundError, match="No intact checkpoint in"):
        export_saved_model.export_from_model_dir(model_dir, base_dir=str(tmp_path))
    keras.utils.set_random_seed(5)
    maml = task_families.build_maml(config, *task_families.build_model(config))
    step = tf.Variable(3, dtype=tf.int64)
    tf.train.Checkpoint(model=maml, optimizer=maml.optimizer, step=step).save(
        os.path.join(model_dir, "checkpoints", "ckpt"))

    path = export_saved_model.export_from_model_dir(model_dir, base_dir=str(tmp_path / "srv"),
                                                    model_name="omni")
    assert not os.path.exists(tmp_path / "no_tfds")
    served = read_serving_config(path)
    assert served.client_input_shape == (105, 105, 3)
    assert served.preprocessing == prep.get_config() | {"image_size": [8, 8]}
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2], np.int32)
    support = rng.integers(0, 256, (3, 105, 105, 3), dtype=np.uint8)
    query = rng.integers(0, 256, (4, 105, 105, 3), dtype=np.uint8)
    expected = maml.adapt_and_predict(prep(support), labels, prep(query), steps=2).numpy()
    out = predict_local(path, support, labels, query)
    # Graph and eager round differently in float32 (area resize of 105x105 noise, then two
    # inner steps at lr 0.4 on one shot); the gap stays ~1e-4 on logits of order 1.
    np.testing.assert_allclose(out["logits"], expected, atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(out["classes"], expected.argmax(-1))


def test_a_run_config_with_another_preprocessing_is_exported_with_it(tmp_path):
    # The preprocessing saved with the run wins over the task family's default (here: no
    # inversion), so the served model sees images exactly as that run's training did.
    prep = ImagePreprocessing((8, 8), 1, invert=False)
    config = MAMLTrainConfig(task_family="omniglot", num_ways=2, image_size=8, inner_steps=1,
                             eval_inner_steps=(1,), image_preprocessing=prep.get_config(),
                             client_image_shape=(16, 16, 1))
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, loop.CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    maml = task_families.build_maml(config, *task_families.build_model(config))
    tf.train.Checkpoint(model=maml).save(os.path.join(model_dir, "checkpoints", "ckpt"))
    path = export_saved_model.export_from_model_dir(model_dir, base_dir=str(tmp_path / "srv"))
    served = read_serving_config(path)
    assert served.preprocessing["invert"] is False
    assert served.client_input_shape == (16, 16, 1)


def test_script_rejects_bad_flags(tmp_path, refusal_of_main):
    from keras_meta.cli import export as export_cli

    # One refusal through the process (exit status, message on stderr); the others through the
    # same `main` in this process, which saves a TensorFlow import per flag checked.
    result = _run_script("--kind=bogus")
    assert result.returncode != 0
    assert "--kind='bogus': expected one of ('few_shot', 'adapted')" in result.stderr
    assert "--kind=adapted needs --support_npz" in refusal_of_main(
        export_cli, "--kind=adapted", f"--model_dir={tmp_path}")
    assert "is not a directory" in refusal_of_main(export_cli,
                                                   f"--model_dir={tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="No config.json"):
        export_saved_model.export_from_model_dir(str(tmp_path), base_dir=str(tmp_path))
