"""The meta-training script end to end with tiny settings."""

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

    # A run asked to stop where the checkpoint already is restores phi and does nothing.
    again = learned_optimizer_loop.train_learned_optimizer(script.LearnedOptimizerTrainConfig(num_meta_iterations=3, **TINY), model_dir)
    assert again["losses"] == []
    latest = [v.numpy() for v in again["lstm_optimizer"].weights]
    assert any(not np.array_equal(a, b) for a, b in zip(phi, latest))


def test_non_finite_meta_loss_stops_without_overwriting_the_checkpoint(tmp_path):
    model_dir = str(tmp_path)
    learned_optimizer_loop.train_learned_optimizer(script.LearnedOptimizerTrainConfig(num_meta_iterations=2, **TINY), model_dir)
    checkpoints = os.path.join(model_dir, "checkpoints")
    good = tf.train.latest_checkpoint(checkpoints)
    files_before = sorted(os.listdir(checkpoints))
    exploding = script.LearnedOptimizerTrainConfig(num_meta_iterations=6, output_scale=1e38, **TINY)
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
