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
