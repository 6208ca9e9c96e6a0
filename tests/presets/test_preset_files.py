"""Pretrained presets: writing one from a run, verifying its files, loading and exporting it.

A tiny real sinusoid run stands in for a long one: the file format, the checks and the
round trip are the same for every preset.
"""

import json
import os
import shutil

import numpy as np
import pytest

from keras_meta import MAML
from keras_meta.export import export_from_preset, predict_local, restore_maml, write_preset
from keras_meta.presets import PRESETS_DIR, Preset, PresetError, list_presets
from keras_meta.training import MAMLTrainConfig, train

TINY = MAMLTrainConfig(num_iterations=3, meta_batch_size=2, eval_every=0, num_eval_tasks=4,
                       log_every=1, checkpoint_every=1)


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    model_dir = str(root / "run")
    train(TINY, model_dir)
    preset = write_preset(model_dir, str(root / "out"), "tiny_sinusoid", "a test preset",
                          command="python -m trainers.train_maml --num_iterations=3",
                          commit="0123abc", num_eval_tasks=6)
    return preset, model_dir


def _copy(preset, tmp_path):
    target = tmp_path / preset.name
    shutil.copytree(preset.directory, target)
    return str(target)


def test_written_preset_records_what_produced_it(tiny_preset):
    preset, _ = tiny_preset
    assert preset.name == "tiny_sinusoid" and preset.commit == "0123abc"
    assert preset.command.startswith("python -m trainers.train_maml")
    assert preset.iteration == 3
    assert MAMLTrainConfig.from_dict(preset.train_config).num_iterations == 3
    # The data's location on the machine that wrote it is not part of a preset.
    assert preset.train_config["omniglot_source_dir"] is None
    assert preset.result["metric"] == "loss" and preset.result["num_tasks"] == 6
    assert np.isfinite(preset.result["mean"]) and preset.result["ci95"] > 0
    assert set(preset.result["all_steps"]) == {"1", "5", "10"}
    assert sorted(preset.sha256) == ["model.json", "weights.data-00000-of-00001",
                                     "weights.index"]
    with open(os.path.join(preset.directory, "per_task.json")) as f:
        assert len(json.load(f)["1"]["loss"]) == 6


def test_from_preset_predicts_as_the_run(tiny_preset):
    preset, model_dir = tiny_preset
    run_maml, _, _ = restore_maml(model_dir)
    loaded = MAML.from_preset(preset.directory)
    x = np.linspace(-5, 5, 10, dtype=np.float32)[:, None]
    y = np.sin(x)
    np.testing.assert_allclose(loaded.adapt_and_predict(x[:5], y[:5], x[5:], steps=2),
                               run_maml.adapt_and_predict(x[:5], y[:5], x[5:], steps=2),
                               rtol=1e-6, atol=1e-6)
    for a, b in zip(loaded.model.weights, run_maml.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_changed_weights_file_is_refused_by_name(tiny_preset, tmp_path):
    preset, _ = tiny_preset
    directory = _copy(preset, tmp_path)
    path = os.path.join(directory, "weights.data-00000-of-00001")
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(PresetError, match=r"weights.data-00000-of-00001 has sha256 [0-9a-f]{64}"
                                          r", but preset.json says " + preset.sha256[
                                              "weights.data-00000-of-00001"]):
        MAML.from_preset(directory)


def test_a_changed_model_config_is_refused(tiny_preset, tmp_path):
    preset, _ = tiny_preset
    directory = _copy(preset, tmp_path)
    path = os.path.join(directory, "model.json")
    with open(path) as f:
        config = json.load(f)
    config["inner_lr"] = 0.5
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(PresetError, match=r"model.json has sha256"):
        Preset.load(directory)


def test_missing_and_unlisted_files_are_refused(tiny_preset, tmp_path):
    preset, _ = tiny_preset
    directory = _copy(preset, tmp_path)
    os.remove(os.path.join(directory, "weights.index"))
    with pytest.raises(PresetError, match=r"weights.index is missing"):
        Preset.load(directory)
    directory = _copy(preset, tmp_path / "second")
    with open(os.path.join(directory, "weights.data-00001-of-00002"), "wb") as f:
        f.write(b"x")
    with pytest.raises(PresetError, match=r"does not vouch for: \['weights.data-00001-of-00002'"):
        Preset.load(directory)
    os.remove(os.path.join(directory, "preset.json"))
    with pytest.raises(PresetError, match=r"not a complete preset: .*preset.json is missing"):
        Preset.load(directory)


def test_an_unknown_preset_name_lists_the_shipped_ones():
    with pytest.raises(PresetError, match=r"Unknown preset 'omniglot_5way_2shot': expected one "
                                          r"of \[.*\] or a preset directory"):
        MAML.from_preset("omniglot_5way_2shot")
    assert all(os.path.isdir(os.path.join(PRESETS_DIR, name)) for name in list_presets())


def test_a_preset_of_another_model_is_refused(tiny_preset, tmp_path):
    # The weights of one model under the config of another: caught when reading, not later.
    preset, _ = tiny_preset
    directory = _copy(preset, tmp_path)
    path = os.path.join(directory, "model.json")
    with open(path) as f:
        config = json.load(f)
    config["learn_inner_lr"] = "per_variable"  # one more variable per weight
    with open(path, "w") as f:
        json.dump(config, f)
    info_path = os.path.join(directory, "preset.json")
    with open(info_path) as f:
        info = json.load(f)
    from keras_meta.presets import sha256_of
    info["sha256"]["model.json"] = sha256_of(path)
    with open(info_path, "w") as f:
        json.dump(info, f)
    with pytest.raises(PresetError, match=r"weights do not fit the model"):
        MAML.from_preset(directory)


def test_export_from_preset_serves_the_preset(tiny_preset, tmp_path):
    preset, _ = tiny_preset
    path = export_from_preset(preset.directory, base_dir=str(tmp_path / "serving"))
    assert path == str(tmp_path / "serving" / "tiny_sinusoid" / "1")
    x = np.linspace(-5, 5, 10, dtype=np.float32)[:, None]
    y = np.sin(x)
    served = predict_local(path, x[:5], y[:5], x[5:])
    expected = MAML.from_preset(preset.directory).adapt_and_predict(x[:5], y[:5], x[5:],
                                                                    steps=1)
    np.testing.assert_allclose(np.asarray(served["predictions"]).reshape(-1),
                               np.asarray(expected).reshape(-1), rtol=1e-5, atol=1e-5)


def _script(module, *args):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=300, cwd=repo)


@pytest.mark.slow
def test_export_script_takes_a_preset_and_refuses_run_flags_beside_it(tiny_preset, tmp_path):
    preset, _ = tiny_preset
    base = str(tmp_path / "serving")
    done = _script("export.export_saved_model", f"--preset={preset.directory}",
                   f"--base_dir={base}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Exported few_shot model to {os.path.join(base, 'tiny_sinusoid', '1')}" in done.stdout
    refused = _script("export.export_saved_model", f"--preset={preset.directory}",
                      "--model_dir=runs/x")
    assert refused.returncode != 0
    assert "--model_dir applies to a training run, not to --preset" in refused.stderr
    unknown = _script("export.export_saved_model", "--preset=omniglot_9way_1shot")
    assert unknown.returncode != 0 and "Unknown preset 'omniglot_9way_1shot'" in unknown.stderr


def test_make_preset_requires_what_a_preset_records():
    done = _script("export.make_preset", "--model_dir=runs/x", "--name=x", "--commit=abc")
    assert done.returncode != 0
    assert "--command is required: a preset records what produced it" in done.stderr
