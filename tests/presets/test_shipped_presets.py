"""Every preset shipped in the package is intact, documented, and as good as it says."""

import json
import os

import numpy as np

import pytest

from keras_meta import MAML
from keras_meta.presets import PRESETS_DIR, Preset, list_presets
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.presets import PRESETS
from keras_meta.training.pretrained import test_tasks_metrics

SHIPPED = list_presets()


def test_the_omniglot_5way_1shot_preset_ships():
    assert "omniglot_5way_1shot" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_is_intact_small_and_documented(name):
    preset = Preset.load(name)  # checks every sha256
    size = sum(os.path.getsize(os.path.join(preset.directory, f)) for f in preset.sha256)
    assert size < 1 << 20
    config = MAMLTrainConfig.from_dict(preset.train_config)
    # Trained with the training preset of the same name, at most with other run lengths and
    # schedules (the command says which).
    expected = PRESETS[name]
    for field in ("task_family", "num_ways", "num_shots", "num_queries", "inner_lr",
                  "inner_steps", "eval_inner_steps", "batch_norm", "first_order"):
        assert getattr(config, field) == getattr(expected, field), field
    assert f"--preset={name}" in preset.command
    assert len(preset.commit) >= 7
    result = preset.result
    assert result["num_tasks"] == 600 and result["split"] == "test"
    assert 0 < result["ci95"] < 0.02 and 0.2 < result["mean"] <= 1.0
    assert result["num_queries"] == config.queries_at_eval
    with open(os.path.join(PRESETS_DIR, name, "README.md")) as f:
        card = f.read()
    assert preset.commit in card and f"{100 * result['mean']:.2f}" in card


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_scores_what_it_states_on_held_out_tasks(name, omniglot_data_dir,
                                                                omniglot_source_dir):
    maml = MAML.from_preset(name)
    preset = Preset.load(name)
    config = MAMLTrainConfig.from_dict(preset.train_config)
    summary, _ = test_tasks_metrics(maml, config, 100, data_dir=str(omniglot_data_dir),
                                    omniglot_source_dir=str(omniglot_source_dir))
    accuracy = summary[config.eval_inner_steps[0]]["accuracy"]
    assert accuracy["num_tasks"] == 100
    # The test tasks are named by seeds, so these 100 are the first 100 of the 600 the preset
    # was scored on: their accuracy must be exactly what its per-task record says, not just
    # within a confidence interval (a loose bound once failed by chance on a subset).
    with open(os.path.join(preset.directory, "per_task.json")) as f:
        recorded = json.load(f)[str(config.eval_inner_steps[0])]["accuracy"]
    assert len(recorded) == preset.result["num_tasks"]
    assert np.mean(recorded) == pytest.approx(preset.result["mean"], abs=1e-9)
    assert accuracy["mean"] == pytest.approx(np.mean(recorded[:100]), abs=1e-6), (
        accuracy, preset.result)
