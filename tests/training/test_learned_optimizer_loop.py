"""The meta-training script end to end with tiny settings."""

import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from keras_meta.cli import train_learned_optimizer as script
from keras_meta.training import learned_optimizer_loop

TINY = dict(optimizee="quadratic", num_steps=4, unroll_length=2, hidden_size=4, num_layers=1,
            num_functions=2, log_every=1, checkpoint_every=2)


def test_train_checkpoints_resumes_and_writes_summaries(tmp_path):
    model_dir = str(tmp_path)
    first = learned_optimizer_loop.train_learned_optimizer(script.LearnedOptimizerTrainConfig(num_meta_iterations=3, **TINY), model_dir)
    assert first["iteration"] == 3 and len(first["losses"]) == 3
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-3")
    assert os.listdir(os.path.join(model_dir, "logs"))
    phi = [v.numpy() for v in first["lstm_optimizer"].weights]

    resumed = learned_optimizer_loop.train_learned_optimizer(script.LearnedOptimizerTrainConfig(num_meta_iterations=5, **TINY), model_dir)
    assert resumed["iteration"] == 5 and len(resumed["losses"]) == 2
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-5")

    saved = [v.numpy() for v in resumed["lstm_optimizer"].weights]  # phi at ckpt-5
    assert any(not np.array_equal(a, b) for a, b in zip(phi, saved))  # iterations 4-5 moved phi

    # A run asked to stop at an iteration the checkpoint already passed restores phi (ckpt-5,
    # bit for bit) and trains nothing.
    config = script.LearnedOptimizerTrainConfig(num_meta_iterations=3, **TINY)
    again = learned_optimizer_loop.train_learned_optimizer(config, model_dir)
    assert again["losses"] == [] and again["iteration"] == 5
    latest = [v.numpy() for v in again["lstm_optimizer"].weights]
    assert [v.name for v in again["lstm_optimizer"].weights] == [
        v.name for v in resumed["lstm_optimizer"].weights]
    assert len(latest) == len(saved) > 0
    for a, b in zip(saved, latest):
        np.testing.assert_array_equal(b, a)
    # ... and what it returns is not the seeded initialisation a fresh run would start from.
    _, fresh, _ = learned_optimizer_loop.build_learned_optimizer(config)
    initial = [v.numpy() for v in fresh.weights]
    assert len(initial) == len(latest)
    assert any(not np.array_equal(a, b) for a, b in zip(initial, latest))


def test_non_finite_meta_loss_stops_without_overwriting_the_checkpoint(tmp_path):
    model_dir = str(tmp_path)
    learned_optimizer_loop.train_learned_optimizer(script.LearnedOptimizerTrainConfig(num_meta_iterations=2, **TINY), model_dir)
    checkpoints = os.path.join(model_dir, "checkpoints")
    good = tf.train.latest_checkpoint(checkpoints)
    files_before = sorted(os.listdir(checkpoints))
    # A new meta_lr is applied on resume: 1e300 (inf in float32) makes phi explode at once.
    exploding = script.LearnedOptimizerTrainConfig(num_meta_iterations=6, meta_lr=1e300, **TINY)
    with pytest.raises(FloatingPointError, match=r"meta-loss became (nan|inf) at meta-iteration 3"):
        learned_optimizer_loop.train_learned_optimizer(exploding, model_dir)
    assert tf.train.latest_checkpoint(checkpoints) == good
    assert sorted(os.listdir(checkpoints)) == files_before


@pytest.mark.parametrize("field, value, allowed", [
    ("optimizee", "cifar", "quadratic, mlp_digits"),
    ("unroll_length", 3, "divisors of --num_steps=100"),
    ("meta_lr", 0.0, "floats > 0"),
    ("hidden_size", -2, "integers >= 1"),
])
def test_bad_flags_name_flag_value_and_allowed_values(field, value, allowed):
    with pytest.raises(ValueError) as error:
        script.LearnedOptimizerTrainConfig(**{field: value})
    message = str(error.value)
    assert f"--{field}" in message and (repr(value) in message or str(value) in message)
    assert allowed in message


def test_main_parses_flags_and_trains(tmp_path):
    script.define_flags()
    script.define_flags()  # idempotent
    argv = ["train_learned_optimizer", f"--model_dir={tmp_path}", "--num_meta_iterations=2"]
    argv += [f"--{k}={v}" for k, v in TINY.items()]
    flags.FLAGS(argv)
    try:
        script.main([])
    finally:
        flags.FLAGS.unparse_flags()
    assert tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints")).endswith("ckpt-2")


MLP_TINY = dict(optimizee="mlp_digits", rule="mlp", num_steps=4, unroll_length=2,
                mlp_hidden_sizes=(4,), hidden_units=(6,), log_every=1, checkpoint_every=2)


def test_mlp_rule_run_writes_a_rule_file_of_its_last_checkpoint_and_evaluates_shifts(tmp_path):
    from keras_meta.learned_optimizer import MLPOptimizer, load_rule, read_rule_metadata

    model_dir = str(tmp_path)
    config = script.LearnedOptimizerTrainConfig(num_meta_iterations=3, **MLP_TINY)
    first = learned_optimizer_loop.train_learned_optimizer(config, model_dir)
    assert isinstance(first["rule"], MLPOptimizer) and first["lstm_optimizer"] is first["rule"]
    rule_file = os.path.join(model_dir, "rule.keras")
    assert read_rule_metadata(rule_file)["iteration"] == 3
    assert read_rule_metadata(rule_file)["config"]["rule"] == "mlp"
    for a, b in zip(first["rule"].weights, load_rule(rule_file).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # A rule file older than the checkpoint (a kill between the two writes) is rewritten
    # from the restored weights on the next run.
    stale = learned_optimizer_loop.build_rule(config)
    learned_optimizer_loop.save_rule(stale, rule_file, metadata={"iteration": 1})
    evaluated = script.LearnedOptimizerTrainConfig(
        num_meta_iterations=3, eval_shifts=("base", "relu"), num_eval_functions=2, **MLP_TINY)
    again = learned_optimizer_loop.train_learned_optimizer(evaluated, model_dir)
    assert again["losses"] == [] and read_rule_metadata(rule_file)["iteration"] == 3
    for a, b in zip(first["rule"].weights, load_rule(rule_file).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    with open(os.path.join(model_dir, "eval_results.json")) as f:
        results = json.load(f)
    assert results["iteration"] == 3
    assert results["rule_file_sha256"] == hashlib.sha256(open(rule_file, "rb").read()).hexdigest()
    assert set(results["shifts"]) == {"base", "relu"}
    relu = results["shifts"]["relu"]
    assert relu["steps"] == 4 and relu["adam"]["learning_rate"] > 0
    assert 0.0 <= relu["learned_vs_adam"]["wins"] <= 1.0
    assert np.isfinite(relu["adam"]["median"])


def test_resume_reads_a_config_saved_before_the_new_fields(tmp_path):
    model_dir = str(tmp_path)
    config = script.LearnedOptimizerTrainConfig(num_meta_iterations=2, **TINY)
    learned_optimizer_loop.train_learned_optimizer(config, model_dir)
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    for field in ("rule", "mlp_hidden_sizes", "step_scale", "hidden_units", "activation",
                  "conv_filters", "random_scaling", "curriculum_iterations", "eval_shifts",
                  "num_eval_functions"):
        del saved[field]
    with open(path, "w") as f:
        json.dump(saved, f)
    resumed = learned_optimizer_loop.train_learned_optimizer(
        script.LearnedOptimizerTrainConfig(num_meta_iterations=3, **TINY), model_dir)
    assert resumed["iteration"] == 3
    with pytest.raises(ValueError, match="rule: saved 'lstm', now 'mlp'"):
        learned_optimizer_loop.train_learned_optimizer(script.LearnedOptimizerTrainConfig(
            num_meta_iterations=4, **dict(TINY, rule="mlp", hidden_size=4)), model_dir)


@pytest.mark.parametrize("argv, message", [
    (["--rule=mlp", "--hidden_size=8"], "--hidden_size would be ignored with --rule=mlp"),
    (["--optimizee=mlp_digits", "--num_functions=4"], "--num_functions would be ignored"),
    (["--optimizee=mlp_digits", "--conv_filters=4,4"], "--conv_filters would be ignored"),
    (["--optimizee=quadratic", "--activation=relu"], "--activation would be ignored"),
    (["--rule=lstm", "--step_scale=0.1"], "--step_scale would be ignored with --rule=lstm"),
    (["--optimizee=mlp_digits", "--hidden_units=20,x"], "--hidden_units got '20,x'"),
    (["--optimizee=conv_digits", "--conv_filters=4"], "--conv_filters got (4,)"),
    (["--optimizee=quadratic", "--eval_shifts=relu"], "--eval_shifts needs --optimizee=mlp_digits"),
    (["--optimizee=mlp_digits", "--eval_shifts=cifar"], "--eval_shifts got ['cifar']"),
    (["--random_scaling=-1"], "--random_scaling got -1.0"),
])
def test_flags_that_would_be_ignored_or_are_bad_are_refused(argv, message):
    from absl import app

    script.define_flags()
    flags.FLAGS(["train_learned_optimizer", *argv])
    try:
        with pytest.raises(app.UsageError) as error:
            script.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert message in str(error.value)


def test_flags_build_the_mlp_rule_on_a_shifted_family():
    script.define_flags()
    flags.FLAGS(["train_learned_optimizer", "--rule=mlp", "--optimizee=mlp_digits",
                 "--hidden_units=20,20", "--activation=relu", "--random_scaling=0.5",
                 "--curriculum_iterations=10", "--mlp_hidden_sizes=8", "--eval_shifts=conv"])
    try:
        config = script.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert config.hidden_units == (20, 20) and config.mlp_hidden_sizes == (8,)
    assert config.eval_shifts == ("conv",)
    optimizee, rule, trainer = learned_optimizer_loop.build_learned_optimizer(config)
    assert type(optimizee).__name__ == "RandomScaling" and optimizee.max_log_scale == 0.5
    base = optimizee.optimizee
    assert base.activation == "relu" and tuple(base.layer_units) == (20, 20)
    assert rule.hidden_sizes == (8,) and trainer.config.num_segments(0) == 1


def test_resume_ignores_settings_the_run_does_not_use_and_refuses_ones_it_does(tmp_path):
    model_dir = str(tmp_path)
    learned_optimizer_loop.train_learned_optimizer(
        script.LearnedOptimizerTrainConfig(num_meta_iterations=2, **TINY), model_dir)
    # The MLP rule's step scale and the digits network's width mean nothing to an LSTM on
    # quadratics: the run resumes.
    other = dict(TINY, step_scale=0.5, hidden_units=(7,), conv_filters=(3, 3))
    resumed = learned_optimizer_loop.train_learned_optimizer(
        script.LearnedOptimizerTrainConfig(num_meta_iterations=3, **other), model_dir)
    assert resumed["iteration"] == 3
    with pytest.raises(ValueError, match="output_scale: saved 0.1, now 0.2"):
        learned_optimizer_loop.train_learned_optimizer(script.LearnedOptimizerTrainConfig(
            num_meta_iterations=4, **dict(TINY, output_scale=0.2)), model_dir)
