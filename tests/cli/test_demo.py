"""The README's main job (`make demo`) end to end on a tiny budget."""

import os

import numpy as np
import pytest

from trainers import demo


@pytest.mark.slow
def test_demo_trains_evaluates_exports_and_serves(omniglot_data_dir, omniglot_source_dir,
                                                  tmp_path, capsys):
    config = demo.demo_config(num_iterations=3, meta_batch_size=2, num_eval_tasks=25,
                              data_dir=str(omniglot_data_dir),
                              omniglot_source_dir=str(omniglot_source_dir))
    result = demo.run(str(tmp_path / "run"), config)
    out = capsys.readouterr().out
    for stage in ("1/4", "2/4", "3/4", "4/4"):
        assert f"== {stage}" in out
    assert os.path.isfile(os.path.join(result["export_path"], "saved_model.pb"))
    assert os.path.isfile(os.path.join(str(tmp_path), "run", "serving", "models.config"))
    assert result["predicted"].shape == result["true"].shape == (15,)
    assert set(np.unique(result["predicted"])) <= set(range(5))
    assert 0.0 <= result["test_accuracy"]["mean"] <= 1.0
