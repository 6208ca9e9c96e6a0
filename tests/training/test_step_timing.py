"""`time_training_step`: the trainer's own call, timed on a tiny real run."""

import math

import pytest

from keras_meta.training.presets import get_preset
from keras_meta.training.step_timing import time_training_step

TINY = get_preset("sinusoid_one_step").replace(meta_batch_size=2, task_batching="batched")


def test_the_trainers_call_is_timed_per_meta_iteration():
    one = time_training_step(TINY, min_seconds=0.0, warmup=0, max_calls=3)
    assert math.isfinite(one) and 0 < one < 10_000
    # Several iterations per call: still per meta-iteration, and computed in the call.
    several = time_training_step(TINY.replace(steps_per_execution=4), min_seconds=0.0,
                                 warmup=0, max_calls=2)
    assert math.isfinite(several) and 0 < several < 10_000


@pytest.mark.parametrize("changes,kwargs,message", [
    ({"strategy": "mirrored"}, {}, "strategy='mirrored', expected 'default'"),
    ({}, {"warmup": -1}, "warmup must be an int >= 0; got -1"),
    ({}, {"max_calls": 0}, "max_calls must be an int >= 1; got 0"),
])
def test_bad_requests_are_refused_before_any_work(changes, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        time_training_step(TINY.replace(**changes), **kwargs)


def test_the_learned_optimizers_meta_iteration_is_timed():
    from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig
    from keras_meta.training.step_timing import time_learned_optimizer_iteration

    config = LearnedOptimizerTrainConfig(optimizee="quadratic", num_steps=4, unroll_length=2,
                                         hidden_size=4, num_layers=1, num_functions=2)
    ms = time_learned_optimizer_iteration(config, min_seconds=0.0, warmup=0, max_calls=2)
    assert math.isfinite(ms) and 0 < ms < 60_000
    with pytest.raises(ValueError, match="warmup must be an int >= 0; got True"):
        time_learned_optimizer_iteration(config, warmup=True)


def test_auto_is_timed_in_the_form_its_run_would_measure_and_take(monkeypatch, tmp_path):
    # The thread tuner compares settings (oneDNN, the pools) under which a different way to
    # run the meta-batch can win; each is timed in its own measured choice, left in the cache
    # for the run under the chosen setting.
    import json

    from keras_meta.maml import task_batching_autotune as autotune
    from keras_meta.training.task_families import build_maml, build_task_family

    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "1")
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path))
    config = TINY.replace(task_batching="auto")
    ms = time_training_step(config, min_seconds=0.0, warmup=0, max_calls=2)
    assert math.isfinite(ms) and 0 < ms < 10_000
    ((key, entry),) = json.loads((tmp_path / autotune.CACHE_FILE).read_text()).items()
    assert entry["machine"] == autotune.machine_description()
    assert len(entry["timings"]) >= 2, entry  # measured, not the one-candidate shortcut
    # The run's own measurement (train(): its first meta-batch) finds it: same key, no timing.
    task = build_task_family(config)
    maml = build_maml(config, task.model, task.loss_fn)
    lines = []
    choice, report = maml.autotune(next(iter(task.train_dataset(0).take(1))),
                                   log=lambda line, **_: lines.append(line),
                                   run_iterations=config.num_iterations)
    assert report["cached"] and report["key"] == key, (report, lines)
    assert choice.to_dict() == entry["choice"]

    # Measuring off: the unmeasured rule, nothing written.
    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "0")
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path / "off"))
    time_training_step(config, min_seconds=0.0, warmup=0, max_calls=2)
    assert not (tmp_path / "off").exists()
