"""MAML++'s training pieces in the trainer: derivative-order annealing and the cosine outer
learning rate, checked on tiny real runs."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.export.from_run import restore_maml
from keras_meta.training import MAMLTrainConfig, train
from keras_meta.training.presets import PRESETS

# One evaluation step count: these tests read the weights, not the test figures, and each of
# the default three would be traced again by every run.
TINY = MAMLTrainConfig(num_iterations=2, meta_batch_size=2, num_shots=5, num_queries=5,
                       eval_every=0, num_eval_tasks=2, checkpoint_every=1, log_every=1,
                       inner_steps=2, eval_inner_steps=(1,), seed=4)


def _weights(config, model_dir):
    train(config, model_dir, verbose=False)
    maml, _, _ = restore_maml(model_dir, "latest")
    return [v.numpy() for v in maml.model.trainable_variables]


def test_first_order_iterations_run_first_order_then_second_order(tmp_path):
    first = _weights(TINY.replace(first_order=True), str(tmp_path / "first"))
    annealed = _weights(TINY.replace(first_order_iterations=2), str(tmp_path / "annealed"))
    second = _weights(TINY, str(tmp_path / "second"))
    # The first two iterations are first order...
    for a, b in zip(annealed, first):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(first, second))
    # ...and from then on second order: resumed to 4 iterations, the run departs from the
    # all-first-order run of the same length.
    longer_first = _weights(TINY.replace(first_order=True, num_iterations=4),
                            str(tmp_path / "first"))
    longer_annealed = _weights(TINY.replace(first_order_iterations=2, num_iterations=4),
                               str(tmp_path / "annealed"))
    assert any(not np.allclose(a, b, rtol=1e-6, atol=1e-7)
               for a, b in zip(longer_annealed, longer_first))


def test_cosine_meta_lr_follows_the_schedule(tmp_path):
    config = TINY.replace(num_iterations=4, meta_lr_schedule="cosine", meta_lr=1e-3,
                          meta_lr_min=1e-5)
    train(config, str(tmp_path / "run"), verbose=False)
    maml, _, _ = restore_maml(str(tmp_path / "run"), "latest")
    schedule = maml.optimizer.learning_rate if callable(maml.optimizer.learning_rate) else None
    # The restored model is compiled from the same config: its schedule, read at step t.
    from keras_meta.training.task_families import meta_learning_rate
    rate = meta_learning_rate(config)
    for t in (0, 2, 4):
        expected = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * t / 4))
        np.testing.assert_allclose(float(rate(t)), expected, rtol=1e-5)
    assert schedule is None or float(schedule(4)) == pytest.approx(1e-5, rel=1e-4)


@pytest.mark.parametrize("changes, message", [
    (dict(multi_step_loss_anneal_iterations=5), "0 unless multi_step_loss is on"),
    (dict(first_order=True, first_order_iterations=5), "0 with first_order=True"),
    (dict(first_order_iterations=5, steps_per_execution=2), "a multiple of steps_per_execution"),
    (dict(meta_lr_schedule="linear"), "one of ('constant', 'cosine')"),
    (dict(meta_lr_min=0.1), "a finite number in [0, meta_lr=0.001]"),
    (dict(first_order_iterations=-1), "an integer >= 0"),
])
def test_bad_maml_plus_plus_settings_are_refused(changes, message):
    with pytest.raises(ValueError) as error:
        TINY.replace(**changes)
    assert str(error.value).startswith("Invalid ") and message in str(error.value)


def test_maml_plus_plus_presets_carry_every_piece():
    for name in ("maml_plus_plus_omniglot_5way_1shot", "maml_plus_plus_omniglot_20way_1shot"):
        config = PRESETS[name]
        assert (config.batch_norm, config.learn_inner_lr, config.multi_step_loss,
                config.meta_lr_schedule) == ("per_step", "per_step", True, "cosine")
        assert config.inner_steps == 5 and config.eval_inner_steps == (5,)
        assert config.multi_step_loss_anneal_iterations == 10000 and config.num_queries == 1


# Heavy: the pieces are tested one by one here and in tests/maml, and the trainer's resume in
# test_kill_and_resume.py; this runs them all together.
@pytest.mark.slow
@pytest.mark.heavy
def test_a_maml_plus_plus_run_trains_and_resumes(omniglot_data_dir, omniglot_source_dir, tmp_path):
    # Every MAML++ piece of the preset, on a smaller network: 8 filters instead of 64, and 3
    # inner steps instead of 5 (still a first, a middle and a last step for the per-step batch
    # norm, rates and loss weights), as the second-order trace grows with the steps. The
    # preset's own values are checked above. The data is the test session's prepared copy
    # (not ~/tensorflow_datasets, which a fresh CI machine would prepare a second time), and
    # the images stay 28x28, the size the other Omniglot tests decode and cache there.
    config = PRESETS["maml_plus_plus_omniglot_5way_1shot"].replace(
        num_iterations=3, meta_batch_size=2, eval_every=0, num_eval_tasks=2,
        checkpoint_every=1, log_every=1, multi_step_loss_anneal_iterations=2,
        conv4_filters=8, inner_steps=3, eval_inner_steps=(3,), data_dir=str(omniglot_data_dir),
        omniglot_source_dir=str(omniglot_source_dir))
    results = train(config, str(tmp_path / "run"), verbose=False)
    assert results["iterations"] == 3
    assert np.isfinite(results["results"]["3"]["accuracy"]["mean"])
    again = train(config.replace(num_iterations=4), str(tmp_path / "run"), verbose=False)
    assert again["iterations"] == 4


def test_explicit_multi_step_loss_weights_reach_the_model_and_are_checked():
    from keras_meta.training.task_families import build_maml, build_model

    config = TINY.replace(inner_steps=5, multi_step_loss=True,
                          multi_step_loss_weights=(0.5, 0, 0, 0, 0.5))
    maml = build_maml(config, *build_model(config), compile=False)
    assert maml.multi_step_loss_weights == [0.5, 0.0, 0.0, 0.0, 0.5]
    assert MAMLTrainConfig.from_dict(config.to_dict()) == config
    for changes, message in (
            (dict(multi_step_loss=False), "None unless multi_step_loss is on"),
            (dict(multi_step_loss_weights=(0.5, 0.5)), "5 finite weights >= 0"),
            (dict(multi_step_loss_weights=(0, 0, 0, 0, 0)), "not all 0"),
            (dict(multi_step_loss_anneal_iterations=10), "None with multi_step_loss_anneal")):
        with pytest.raises(ValueError) as error:
            config.replace(**changes)
        assert message in str(error.value), str(error.value)
