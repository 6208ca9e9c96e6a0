"""The MAML trainer end to end on tiny configs: results, checkpoints, resume, NaN, flags."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.presets import get_preset
from keras_meta.training import train
from trainers import train_maml

TINY = MAMLTrainConfig(num_iterations=6, meta_batch_size=2, num_shots=5, num_queries=5,
                       eval_every=3, num_val_tasks=4, num_eval_tasks=6, checkpoint_every=2,
                       log_every=2, eval_inner_steps=(1, 2))
# For runs judged by their training alone: each evaluation and each count of test steps
# costs a trace, more than the iterations themselves.
QUICK = TINY.replace(eval_every=0, eval_inner_steps=(1,))


def test_train_writes_results_checkpoints_and_resumes(tmp_path, capsys):
    model_dir = str(tmp_path)
    results = train(TINY, model_dir)
    assert results["iterations"] == 6
    with open(os.path.join(model_dir, "eval_results.json")) as f:
        saved = json.load(f)
    assert set(saved["results"]) == {"1", "2"}
    stats = saved["results"]["1"]["loss"]
    assert stats["num_tasks"] == 6 and stats["mean"] > 0 and stats["ci95"] > 0
    # The whole run's time, not the time stored in the best checkpoint restored for testing.
    assert saved["train_seconds"] >= saved["seconds_per_iteration"] * (saved["iterations"] - 1)
    # Timed from after the first call: 5 iterations, with 2 validations and 3 checkpoints
    # (best ones included) inside that window; the parts add up to it.
    timing = saved["time_breakdown"]
    assert timing["iterations"] == 5
    assert timing["seconds_per_iteration"] == pytest.approx(timing["window_seconds"] / 5)
    assert saved["seconds_per_iteration"] == timing["seconds_per_iteration"]
    assert timing["validation_seconds"] > 0 and timing["checkpoints_seconds"] > 0
    assert timing["steps_seconds"] > 0 and timing["other_seconds"] >= 0
    assert sum(timing[f"{part}_seconds"] for part in
               ("steps", "checkpoints", "validation", "other")) == pytest.approx(
        timing["window_seconds"])
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-6")
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "best")) is not None
    assert os.listdir(os.path.join(model_dir, "logs"))

    capsys.readouterr()
    results = train(TINY.replace(num_iterations=10), model_dir)
    out = capsys.readouterr().out
    assert "resumed from" in out and "at iteration 6" in out
    assert "iter 8/10" in out and "iter 2/10" not in out
    assert re.search(r"\[train\] 3 iterations after the first call in [0-9.]+ s \(", out)
    assert results["iterations"] == 10


def test_resume_continues_the_same_episode_stream(tmp_path):
    straight = train(QUICK, str(tmp_path / "a"), verbose=False)
    train(QUICK.replace(num_iterations=4), str(tmp_path / "b"), verbose=False)
    resumed = train(QUICK, str(tmp_path / "b"), verbose=False)
    a, b = straight["results"]["1"]["loss"]["mean"], resumed["results"]["1"]["loss"]["mean"]
    assert a == pytest.approx(b, rel=1e-4)


def test_nan_stops_training_and_keeps_the_good_checkpoint(tmp_path):
    model_dir = str(tmp_path)
    train(QUICK.replace(num_iterations=4), model_dir, verbose=False)
    good = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    with pytest.raises(FloatingPointError, match="meta-loss is (nan|inf)"):
        # meta_lr may change on resume, and is applied: the first step diverges.
        train(QUICK.replace(num_iterations=8, meta_lr=1e30), model_dir,
              verbose=False)
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")) == good
    reader = tf.train.load_checkpoint(good)
    for name, _ in tf.train.list_variables(good):
        if name.endswith("VARIABLE_VALUE") and not name.startswith(("best_metric", "run_config")):
            assert np.all(np.isfinite(reader.get_tensor(name)))


def test_the_runs_record_says_which_thread_pools_and_kernels_ran_each_start(tmp_path):
    from keras_meta.maml.task_batching_autotune import machine_description
    from keras_meta.training import run_state

    train(QUICK.replace(num_iterations=2), str(tmp_path), verbose=False)
    train(QUICK.replace(num_iterations=3), str(tmp_path), verbose=False)
    starts = [e for e in run_state.read_history(str(tmp_path))
              if e["event"] in ("start", "resume")]
    assert [e["event"] for e in starts] == ["start", "resume"]
    machine = machine_description()
    for record in starts:
        assert record["intra_op_threads"] == machine["intra_op_threads"], record
        assert record["inter_op_threads"] == machine["inter_op_threads"], record
        assert record["onednn"] is machine["onednn"] and isinstance(record["onednn"], bool)


def test_resume_with_another_architecture_is_refused(tmp_path):
    train(QUICK.replace(num_iterations=2), str(tmp_path), verbose=False)
    with pytest.raises(ValueError, match="inner_steps: saved 1, now 2"):
        train(QUICK.replace(inner_steps=2), str(tmp_path), verbose=False)


def _parse(argv):
    fv = flags.FlagValues()
    train_maml.define_flags(fv)
    fv(["train_maml"] + argv)
    return train_maml.config_from_flags(fv)


def test_flags_start_from_the_preset_and_override():
    config = _parse(["--preset=omniglot_20way_1shot", "--meta_batch_size=4",
                     "--eval_inner_steps=1,3"])
    expected = get_preset("omniglot_20way_1shot")
    assert config.num_ways == 20 and config.inner_steps == expected.inner_steps
    assert config.meta_batch_size == 4 and config.eval_inner_steps == (1, 3)
    assert _parse([]) == get_preset("sinusoid")
    assert _parse(["--task_family=omniglot"]) == get_preset("omniglot_5way_1shot")
    assert _parse(["--ways=20", "--task_family=omniglot"]).num_ways == 20


def test_image_flags_reach_the_config():
    config = _parse(["--task=images", "--dataset=folder:/photos", "--image_size=84",
                     "--backbone=resnet12", "--resnet12_widths=8,16,32,64",
                     "--augmentation=crop_flip", "--class_split=mini_imagenet"])
    assert config.task_family == "images" and config.dataset == "folder:/photos"
    assert config.backbone == "resnet12" and config.resnet12_widths == (8, 16, 32, 64)
    assert config.augmentation == "crop_flip" and config.class_split == "mini_imagenet"
    preset = _parse(["--preset=cifar_fs_5way_5shot"])
    assert preset == get_preset("cifar_fs_5way_5shot")
    assert (preset.dataset, preset.class_split, preset.image_size) == ("tfds:cifar100",
                                                                       "cifar_fs", 32)
    assert _parse(["--task=omniglot", "--pooling=flatten"]).pooling == "flatten"
    assert _parse(["--task=omniglot", "--pooling=default"]).pooling is None


@pytest.mark.parametrize("argv,message", [
    (["--task_family=imagenet"], "--task_family='imagenet' is not a known task family"),
    (["--inner_steps=-1"], "Invalid --inner_steps=-1: expected an integer >= 0"),
    (["--meta_batch_size=0"], "Invalid --meta_batch_size=0: expected an integer >= 1"),
    (["--preset=fast"], "--preset='fast' is not a known preset"),
    (["--batch_norm=group"], "Invalid --batch_norm='group'"),
    (["--eval_inner_steps=a"], "--eval_inner_steps='a'"),
    (["--task_family=omniglot", "--ways=1"], "Invalid --ways=1"),
    (["--task_batching=vmap"], "Invalid --task_batching='vmap': expected one of"),
    (["--steps_per_execution=0"], "Invalid --steps_per_execution=0: expected an integer >= 1"),
    (["--steps_per_execution=2", "--strategy=mirrored"], "Invalid --steps_per_execution=2"),
    # Impossible sizes, non-finite rates, flags the task family ignores: refused at parse time.
    (["--shots=1000000000"], "Invalid --shots=1000000000: too large for this machine's memory. "
                             "A sinusoid run with --meta_batch_size=25, --shots=1000000000, "
                             "--queries=10 needs at least"),
    (["--meta_batch_size=100000000"], "Invalid --meta_batch_size=100000000: too large"),
    (["--meta_lr=inf"], "Invalid --meta_lr=inf: expected a finite number > 0"),
    (["--inner_lr=nan"], "Invalid --inner_lr=nan: expected a finite number >= 0"),
    (["--ways=5"], "Invalid --ways=5: applies only to --task_family=omniglot or "
                   "--task_family=images; this run's task family is 'sinusoid'"),
    (["--batch_norm=none"], "Invalid --batch_norm='none': applies only to --task_family=omniglot"),
    (["--task=omniglot", "--dataset=tfds:cifar100"],
     "Invalid --dataset='tfds:cifar100': applies only to --task_family=images; this run's task "
     "family is 'omniglot'"),
    (["--task=omniglot", "--backbone=resnet12"], "Invalid --backbone='resnet12': applies only"),
    (["--task=images", "--dataset=cifar100"], "Invalid --dataset='cifar100': expected "
                                              "'tfds:NAME[:CONFIG]'"),
    (["--task=images"], "Invalid --dataset=None: expected 'tfds:NAME[:CONFIG]'"),
    (["--task=images", "--dataset=folder:/x", "--class_split=cifar_fss"],
     "Invalid --class_split='cifar_fss': Unknown class split 'cifar_fss'"),
    (["--task=images", "--dataset=folder:/x", "--backbone=resnet"], "Invalid --backbone='resnet'"),
    (["--task=images", "--dataset=folder:/x", "--pooling=max"], "Invalid --pooling='max'"),
    (["--task=images", "--dataset=folder:/x", "--augmentation=mixup"],
     "Invalid --augmentation='mixup'"),
    (["--task=images", "--dataset=folder:/x", "--image_channels=2"],
     "Invalid --image_channels=2: expected 1 or 3"),
    (["--task=images", "--dataset=folder:/x", "--resnet12_widths=1,2"],
     "Invalid --resnet12_widths=(1, 2): expected four integers >= 1"),
    (["--task=images", "--dataset=folder:/x", "--backbone=resnet12", "--image_size=8"],
     "Invalid --image_size=8: expected at least 16 for --backbone='resnet12'"),
    (["--omniglot_protocol=maml"], "Invalid --omniglot_protocol='maml': applies only to"),
    (["--omniglot_source_dir=/data"], "Invalid --omniglot_source_dir='/data': applies only to"),
    (["--data_dir=/data"], "Invalid --data_dir='/data': applies only to --task_family=omniglot"),
    (["--pooling=mean"], "Invalid --pooling='mean': applies only to --task_family=omniglot"),
    (["--task_family=omniglot", "--ways=500"],
     "Invalid --ways=500: expected at most 400 for --task_family='omniglot': the validation "
     "split of --omniglot_protocol='maml' has 400 classes"),
    (["--task_family=omniglot", "--omniglot_protocol=background_evaluation", "--ways=2700"],
     "Invalid --ways=2700: expected at most 2636"),
    (["--task_family=omniglot", "--shots=5", "--queries=16"],
     "Invalid --queries=16: expected at most 20 images per class in all for "
     "--task_family='omniglot' (each character has 20 images, and an episode takes distinct "
     "ones: --shots=5 + --queries=16 = 21)"),
    (["--preset=omniglot_5way_1shot", "--eval_queries=30"],
     "Invalid --eval_queries=30: expected at most 20 images per class"),
])
def test_bad_flags_fail_with_a_clear_message(argv, message):
    with pytest.raises(Exception, match=re.escape(message)):
        _parse(argv)


def test_steps_per_execution_trains_the_same_model_and_checkpoints_on_time(tmp_path, capsys):
    config = QUICK.replace(num_iterations=7, checkpoint_every=2, log_every=3)
    one = train(config, str(tmp_path / "one"), verbose=False)
    capsys.readouterr()
    # 7 iterations in calls of 3: two stacked calls, then one single step.
    three = train(config.replace(steps_per_execution=3, task_batching="batched"),
                  str(tmp_path / "three"))
    out = capsys.readouterr().out
    assert "iter 3/7" in out and "iter 6/7" in out and "iter 7/7" in out
    assert three["iterations"] == 7
    assert three["results"]["1"]["loss"]["mean"] == pytest.approx(
        one["results"]["1"]["loss"]["mean"], rel=1e-4)
    saved = [int(p.split("-")[-1].split(".")[0])
             for p in os.listdir(tmp_path / "three" / "checkpoints") if p.endswith(".index")]
    # Calls end at 3, 6 and 7: each passed a multiple of 2 (or is the last), so each saved.
    assert sorted(saved) == [3, 6, 7]


def test_recompute_and_loop_trainers_agree_with_the_default(tmp_path):
    config = QUICK.replace(num_iterations=3, inner_steps=2)
    base = train(config, str(tmp_path / "a"), verbose=False)["results"]["1"]["loss"]["mean"]
    for name, changes in (("b", dict(recompute_inner_steps=1)),
                          ("c", dict(task_batching="loop"))):
        other = train(config.replace(**changes), str(tmp_path / name), verbose=False)
        assert other["results"]["1"]["loss"]["mean"] == pytest.approx(base, rel=1e-4)


def test_per_step_rates_with_more_evaluation_steps_than_trained_complete_the_run(tmp_path):
    # The default eval_inner_steps (1, 5, 10) exceed inner_steps=1: the final test adapts
    # with 5 and 10 steps, reusing the last trained per-step rate past step 1 (MAML++).
    config = MAMLTrainConfig(num_iterations=2, meta_batch_size=2, num_shots=5, num_queries=5,
                             eval_every=0, num_val_tasks=2, num_eval_tasks=2,
                             checkpoint_every=1, log_every=1, learn_inner_lr="per_step")
    assert config.eval_inner_steps == (1, 5, 10) and config.inner_steps == 1
    results = train(config, str(tmp_path), verbose=False)
    assert set(results["results"]) == {"1", "5", "10"}
    assert all(np.isfinite(r["loss"]["mean"]) for r in results["results"].values())


def test_per_step_batch_norm_has_slots_for_the_trained_steps_only():
    from keras_meta.export.freeze import batch_norm_layers
    from keras_meta.training.task_families import build_model
    config = get_preset("omniglot_5way_1shot").replace(batch_norm="per_step")
    assert (config.inner_steps, config.eval_inner_steps) == (1, (3,))
    model, _ = build_model(config)
    layers = batch_norm_layers(model)
    assert layers and all(layer.num_steps == 1 for layer in layers)
    assert all(layer.moving_mean.shape[0] == 2 for layer in layers)  # step 0 + query slot


def test_per_step_rates_without_trained_inner_steps_are_refused_at_the_start():
    with pytest.raises(ValueError, match=r"learn_inner_lr='per_step'.*inner_steps=0"):
        TINY.replace(inner_steps=0, learn_inner_lr="per_step")


def test_inner_steps_on_the_sinusoid_preset_refit_its_step_weights(capsys):
    assert get_preset("sinusoid").multi_step_loss_weights == (0.5, 0.0, 0.0, 0.0, 0.5)
    assert _parse(["--inner_steps=1"]).multi_step_loss_weights == (1.0,)
    assert _parse(["--inner_steps=3"]).multi_step_loss_weights == (0.5, 0.0, 0.5)
    assert "--inner_steps=3: the sinusoid preset's multi-step loss weights" in capsys.readouterr().out
    off = _parse(["--nomulti_step_loss"])
    assert (off.multi_step_loss, off.multi_step_loss_weights) == (False, None)
    assert _parse(["--inner_steps=2", "--multi_step_loss_weights=0,1"]
                  ).multi_step_loss_weights == (0.0, 1.0)
    annealed = _parse(["--multi_step_loss_anneal_iterations=100"])
    assert annealed.multi_step_loss_weights is None
    assert _parse(["--inner_steps=0"]).inner_steps == 0


def test_configs_saved_before_pooling_existed_load_as_the_flattening_network():
    from keras_meta.training.task_families import build_model

    saved = get_preset("omniglot_5way_1shot").to_dict()
    del saved["pooling"]  # as every run and preset written before conv4 could pool
    legacy = MAMLTrainConfig.from_dict(saved)
    assert legacy.pooling == "flatten"
    assert build_model(legacy)[0].get_layer("logits").kernel.shape == (256, 5)
    # New runs get the paper's network: the spatial mean of the last feature map.
    fresh = get_preset("omniglot_5way_1shot")
    assert fresh.pooling is None
    assert build_model(fresh)[0].get_layer("logits").kernel.shape == (64, 5)
    assert "pooling" in MAMLTrainConfig.from_dict(fresh.to_dict()).to_dict()
    # A resume that changes the pooling changes the weights' shapes: refused as architecture.
    from keras_meta.training.config import ARCHITECTURE_FIELDS

    assert "pooling" in ARCHITECTURE_FIELDS and "backbone" in ARCHITECTURE_FIELDS
