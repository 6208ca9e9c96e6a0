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
