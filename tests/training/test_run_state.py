"""What a run directory remembers after a failure, a changed resume or a corrupt file.

Each test here reproduces a probe that once gave a silent wrong answer: the export after a
failed resume, a learning rate ignored on resume, a corrupt checkpoint, leftovers of a kill.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.export import from_run
from keras_meta.export.local import predict_local
from keras_meta.training import run_state, train, train_learned_optimizer
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig

TINY = MAMLTrainConfig(num_iterations=4, meta_batch_size=2, num_shots=5, num_queries=5,
                       eval_every=0, num_val_tasks=2, num_eval_tasks=2, checkpoint_every=2,
                       log_every=2, eval_inner_steps=(1,))
REQUEST = {"support_x": np.linspace(-4, 4, 5, dtype=np.float32)[:, None],
           "support_y": np.sin(np.linspace(-4, 4, 5, dtype=np.float32))[:, None],
           "query_x": np.linspace(-3, 3, 7, dtype=np.float32)[:, None]}


def _export_and_answer(model_dir, base_dir):
    path = from_run.export_from_model_dir(model_dir, base_dir=str(base_dir), model_name="sin")
    return predict_local(path, inputs=REQUEST)["predictions"]


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """One finished TINY run and what its export answers; each test resumes, corrupts or
    edits its own copy (a run directory holds only relative checkpoint paths)."""
    model_dir = tmp_path_factory.mktemp("tiny") / "run"
    train(TINY, str(model_dir), verbose=False)
    return model_dir, _export_and_answer(str(model_dir), model_dir.parent / "serving")


def _copy_of(trained, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(trained[0], model_dir)
    return str(model_dir)


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, names in os.walk(folder) for f in names)


def test_a_failed_resume_does_not_change_what_is_exported(tmp_path, trained_tiny):
    model_dir = _copy_of(trained_tiny, tmp_path)
    before = trained_tiny[1]
    with open(os.path.join(model_dir, "config.json")) as f:
        config_before = f.read()

    # A changed inner loop is refused before anything is built or written.
    files = _files(model_dir)
    with pytest.raises(ValueError, match=r"\['inner_lr'\].*inner_lr: saved 0.01, now 1000000.0"):
        train(TINY.replace(inner_lr=1e6, num_iterations=8), model_dir, verbose=False)
    assert _files(model_dir) == files

    # A resume whose new learning rate diverges keeps the good checkpoint and its config.
    with pytest.raises(FloatingPointError):
        train(TINY.replace(meta_lr=1e30, num_iterations=8), model_dir, verbose=False)
    with open(os.path.join(model_dir, "config.json")) as f:
        assert f.read() == config_before
    after = _export_and_answer(model_dir, tmp_path / "serving_b")
    np.testing.assert_array_equal(after, before)
    assert np.all(np.abs(after) < 10)
    events = [e["event"] for e in run_state.read_history(model_dir)]
    assert events == ["start", "resume", "diverged"]


def test_the_exporter_uses_the_config_inside_the_checkpoint(tmp_path, trained_tiny):
    # Even a config.json overwritten by hand (or by an older trainer at a failed start) cannot
    # change the exported graph: the checkpoint carries the settings of its weights.
    model_dir = _copy_of(trained_tiny, tmp_path)
    before = trained_tiny[1]
    poisoned = TINY.replace(inner_lr=1e6)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        f.write(poisoned.to_json())
    _, config, checkpoint = from_run.restore_maml(model_dir)
    assert config.inner_lr == TINY.inner_lr
    assert run_state.config_of_checkpoint(checkpoint) == TINY
    np.testing.assert_array_equal(_export_and_answer(model_dir, tmp_path / "b"), before)


def test_a_new_learning_rate_on_resume_is_applied_and_recorded(tmp_path, trained_tiny):
    model_dir = _copy_of(trained_tiny, tmp_path)
    results = train(TINY.replace(meta_lr=0.25, num_iterations=6), model_dir, verbose=False)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    names = [n for n, _ in tf.train.list_variables(latest) if "learning_rate" in n]
    assert names, tf.train.list_variables(latest)
    assert tf.train.load_variable(latest, names[0]) == pytest.approx(0.25)
    assert run_state.config_of_checkpoint(latest).meta_lr == 0.25
    assert results["config"]["meta_lr"] == 0.25
    resume = [e for e in results["history"] if e["event"] == "resume"]
    assert resume[0]["iteration"] == 4
    assert resume[0]["changes"] == {"meta_lr": [0.001, 0.25], "num_iterations": [4, 6]}


def test_a_corrupt_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys,
                                                                  trained_tiny):
    model_dir = _copy_of(trained_tiny, tmp_path)
    folder = os.path.join(model_dir, "checkpoints")
    newest = tf.train.latest_checkpoint(folder)
    assert newest.endswith("ckpt-4")
    data = newest + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    capsys.readouterr()
    # The exporter skips it (read-only: the file stays), naming it.
    _, _, exported = from_run.restore_maml(model_dir, "latest")
    assert exported.endswith("ckpt-2")
    assert f"checkpoint {newest} is corrupt" in capsys.readouterr().out
    # The trainer moves it aside, resumes from iteration 2 and finishes.
    results = train(TINY, model_dir)
    out = capsys.readouterr().out
    assert f"checkpoint {newest} is corrupt" in out and "resumed from" in out
    assert "ckpt-2 at iteration 2" in out
    assert os.path.exists(os.path.join(folder, "corrupt", os.path.basename(data)))
    assert results["iterations"] == 4
    assert run_state.is_intact(tf.train.latest_checkpoint(folder))


def test_a_malformed_config_file_is_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"task_family": "sinusoid", "inner_lr": ')
    with pytest.raises(ValueError, match=f"{path} is not a valid run config"):
        run_state.read_config_file(str(path))


def test_leftovers_of_an_interrupted_write_are_removed(tmp_path, trained_tiny):
    model_dir = _copy_of(trained_tiny, tmp_path)
    folder = Path(model_dir) / "checkpoints"
    (folder / "checkpoint.tmp1f2e3d").write_text("half")
    (folder / "ckpt-5_temp").mkdir()
    (folder / "ckpt-5_temp" / "part").write_text("half")
    train(TINY.replace(num_iterations=6), model_dir, verbose=False)
    assert not list(folder.glob("*tmp*")) and not list(folder.glob("*_temp*"))


def test_a_run_refused_for_missing_data_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_META_OMNIGLOT_DIR", raising=False)
    model_dir = tmp_path / "run"
    config = MAMLTrainConfig(task_family="omniglot", num_ways=5, eval_num_shots=None,
                             eval_num_queries=None,
                             omniglot_source_dir=str(tmp_path / "missing_zips"),
                             data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="missing_zips"):
        train(config, str(model_dir), verbose=False)
    assert not model_dir.exists()


def test_the_learned_optimizer_never_saves_non_finite_phi(tmp_path):
    tiny = dict(optimizee="quadratic", num_steps=4, unroll_length=2, hidden_size=4,
                num_layers=1, num_functions=2, log_every=1, checkpoint_every=1)
    model_dir = str(tmp_path)
    train_learned_optimizer(LearnedOptimizerTrainConfig(num_meta_iterations=1, **tiny),
                            model_dir, verbose=False)
    folder = os.path.join(model_dir, "checkpoints")
    good = tf.train.latest_checkpoint(folder)
    # Adam's step is about meta_lr: 1e300 (inf in float32) makes phi non-finite right after a
    # meta-iteration whose loss, computed before the update, was finite.
    exploding = LearnedOptimizerTrainConfig(num_meta_iterations=3, meta_lr=1e300, **tiny)
    with pytest.raises(FloatingPointError, match="not finite|became (nan|inf)"):
        train_learned_optimizer(exploding, model_dir, verbose=False)
    assert tf.train.latest_checkpoint(folder) == good
    reader = tf.train.load_checkpoint(good)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name
    with open(os.path.join(model_dir, "config.json")) as f:
        assert json.load(f)["meta_lr"] == LearnedOptimizerTrainConfig().meta_lr


def test_a_relative_model_dir_resumes_and_exports(tmp_path, monkeypatch):
    # `make demo` passes --model_dir=runs/demo: checkpoint paths must work relative to the cwd.
    monkeypatch.chdir(tmp_path)
    train(TINY.replace(num_iterations=2), "runs/rel", verbose=False)
    results = train(TINY, "runs/rel", verbose=False)
    assert [e["event"] for e in results["history"]] == ["start", "resume"]
    assert results["history"][1]["iteration"] == 2
    answers = _export_and_answer("runs/rel", "serving")
    assert answers.shape == (7, 1)


def test_an_unchanged_image_run_resumes_without_changes():
    # A config read back from JSON has lists where a fresh one has tuples: not a change.
    from keras_meta.training.task_families import complete_config

    config = complete_config(MAMLTrainConfig(task_family="omniglot", num_ways=5,
                                             eval_num_shots=None, eval_num_queries=None))
    assert isinstance(config.image_preprocessing["image_size"], tuple)
    saved = MAMLTrainConfig.from_dict(json.loads(config.to_json()))
    assert run_state.resume_changes(saved, config) == {}
    changed = run_state.resume_changes(saved, config.replace(meta_lr=0.5))
    assert changed == {"meta_lr": (0.001, 0.5)}
    with pytest.raises(ValueError, match="image_preprocessing"):
        run_state.resume_changes(saved, config.replace(
            image_preprocessing=dict(config.image_preprocessing, invert=False)))
