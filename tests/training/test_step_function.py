"""The trainer's compiled call: it draws its episodes inside its graph and counts its steps."""

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.training import loop
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.task_families import build_maml, build_task_family


def _weights(config, iterations, drawn):
    """The weights after `iterations` meta-iterations: the trainer's calls, or plain calls of
    `MAML.meta_train_step(s)` fed from the same stream in Python."""
    task = build_task_family(config)
    maml = build_maml(config, task.model, task.loss_fn)
    step = tf.Variable(0, dtype=tf.int64)
    chunks = list(loop._local_chunks(task, config, 0))
    per_call = config.steps_per_execution
    full = iterations // per_call if per_call > 1 else 0
    assert [size for size, _ in chunks] == [per_call] * full + [1] * (iterations - full * per_call)
    if drawn:
        functions = {}
        for size, iterator in chunks:
            if size not in functions:
                functions[size] = loop._step_function(maml, config, None, False, size,
                                                      iterator, step)
            functions[size]()
        # Every call advances the run's step counter by the iterations it ran.
        assert int(step) == iterations
    else:
        per_call = config.steps_per_execution
        full = iterations // per_call if per_call > 1 else 0
        if full:
            for episodes in task.train_dataset(0).batch(per_call).take(full):
                maml.meta_train_steps(episodes)
        for episodes in task.train_dataset(full * per_call * config.meta_batch_size).take(
                iterations - full * per_call):
            maml.meta_train_step(episodes)
    return [v.numpy() for v in maml.trainable_variables]


@pytest.mark.parametrize("jit_compile,per_call", [(False, 1), (False, 3), (True, 3)])
def test_the_trainers_call_trains_as_steps_fed_the_same_stream(jit_compile, per_call):
    # 7 iterations: with 3 per call, two calls of 3 and a single one (the remainder).
    config = MAMLTrainConfig(meta_batch_size=4, num_iterations=7, jit_compile=jit_compile,
                             steps_per_execution=per_call)
    drawn = _weights(config, 7, drawn=True)
    fed = _weights(config, 7, drawn=False)
    start = [v.numpy() for v in build_task_family(config).model.trainable_variables]
    for a, b, before in zip(drawn, fed, start):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert not np.allclose(a, before)
