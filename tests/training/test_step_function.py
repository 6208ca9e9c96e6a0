"""The trainer's compiled call: it gets its episodes (inside its graph, or from an
`EpisodePool` for a single-iteration call) and counts its steps."""

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.training import loop
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.task_families import build_maml, build_task_family


def _weights(config, iterations, drawn, in_graph=True):
    """The weights after `iterations` meta-iterations: the trainer's calls (episodes computed
    in its graph, or read from tf.data there), or plain calls of `MAML.meta_train_step(s)` fed
    from the same stream in Python."""
    task = build_task_family(config)
    maml = build_maml(config, task.model, task.loss_fn)
    step = tf.Variable(0, dtype=tf.int64)
    chunks = list(loop._local_chunks(task, config, 0, in_graph=in_graph))
    # The sinusoid computes its episodes from their index; tf.data is the other source.
    assert all(hasattr(source, "get_next") != in_graph for _, source in chunks)
    per_call = config.steps_per_execution
    full = iterations // per_call if per_call > 1 else 0
    assert [size for size, _ in chunks] == [per_call] * full + [1] * (iterations - full * per_call)
    if drawn:
        functions = {}
        done = 0
        for size, iterator in chunks:
            if size not in functions:
                functions[size] = loop._step_function(maml, config, None, False, size,
                                                      iterator, step)
            functions[size](done)
            done += size
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


@pytest.mark.parametrize("jit_compile,per_call,in_graph", [
    (False, 1, True), (False, 3, True), (True, 3, True), (True, 1, True), (False, 1, False),
    (False, 3, False)])
def test_the_trainers_call_trains_as_steps_fed_the_same_stream(jit_compile, per_call, in_graph):
    # 7 iterations: with 3 per call, two calls of 3 and a single one (the remainder).
    config = MAMLTrainConfig(meta_batch_size=4, num_iterations=7, jit_compile=jit_compile,
                             steps_per_execution=per_call)
    drawn = _weights(config, 7, drawn=True, in_graph=in_graph)
    fed = _weights(config, 7, drawn=False)
    start = [v.numpy() for v in build_task_family(config).model.trainable_variables]
    for a, b, before in zip(drawn, fed, start):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert not np.allclose(a, before)


@pytest.mark.parametrize("seed,first,count", [(0, 0, 4), (3, 12, 8), (7, 40, 12), (11, 5, 3)])
def test_episodes_computed_in_the_graph_are_the_datasets(seed, first, count):
    # The trainer samples sinusoid episodes from their index inside its call; they must be
    # the tf.data stream's, bit for bit, wherever a run (or a resume) starts.
    config = MAMLTrainConfig(meta_batch_size=4, seed=seed)
    task = build_task_family(config)
    computed = tf.function(lambda i: task.train_episodes_at(i, count))(
        tf.constant(first, tf.int64))
    assert computed.support_x.shape == (count, config.num_shots, 1)
    streamed = task.train_dataset(first).unbatch().batch(count).take(1).get_single_element()
    for got, want in zip(computed, streamed):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_stream_1_run_reads_its_episodes_from_tf_data():
    # Stream 1 (older runs) samples one small graph per episode: no in-graph form.
    task = build_task_family(MAMLTrainConfig(sinusoid_stream=1))
    assert task.train_episodes_at is None
    assert all(hasattr(source, "get_next") for _, source in loop._local_chunks(
        task, MAMLTrainConfig(sinusoid_stream=1, num_iterations=2), 0))


@pytest.mark.parametrize("jit_compile,per_call", [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_step_functions_taking_turns_each_run_their_own_iterations(jit_compile, per_call):
    # Two step functions taking turns (as the remainder or MAML++'s phases do) each find
    # the episodes they hold (drawn ahead, or their pool's window) meant for an iteration the
    # other one ran: each must still run the stream's meta-batches for the iterations it is
    # given, so the run sees the stream in order.
    config = MAMLTrainConfig(meta_batch_size=4, num_iterations=6, jit_compile=jit_compile,
                             steps_per_execution=per_call)
    task = build_task_family(config)
    maml = build_maml(config, task.model, task.loss_fn)
    step = tf.Variable(0, dtype=tf.int64)
    _, source = next(loop._local_chunks(task, config, 0))
    turns = [loop._step_function(maml, config, None, False, per_call, source, step)
             for _ in range(2)]
    calls = 6 // per_call
    losses = []
    for i in range(calls):
        losses.append(float(turns[i % 2](i * per_call)))
        assert int(step) == (i + 1) * per_call
    fed = build_maml(config, build_task_family(config).model, task.loss_fn)
    if per_call == 1:
        want = [float(fed.meta_train_step(episodes)[0])
                for episodes in task.train_dataset(0).take(6)]
    else:
        want = [float(fed.meta_train_steps(episodes))
                for episodes in task.train_dataset(0).batch(per_call).take(calls)]
    np.testing.assert_allclose(losses, want, rtol=1e-5)
    for a, b in zip(maml.trainable_variables, fed.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
