"""`ConcreteStep` calls the same computation as its tf.function, once traced per signature."""

import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.training.concrete_step import ConcreteStep


def test_concrete_calls_match_the_function_and_trace_once_per_signature():
    traces = []

    @tf.function
    def step(episode):
        traces.append(episode.support_x.shape)
        return tf.reduce_sum(episode.support_x) * 2.0 + tf.reduce_sum(episode.query_y)

    call = ConcreteStep(step)
    make = lambda n: km.Episode(*(tf.fill([n, 3], float(i)) for i in range(4)))
    for _ in range(3):
        assert float(call(make(2))) == pytest.approx(float(step(make(2))))
    assert float(call(make(5))) == pytest.approx(5 * 3 * (0 * 2 + 3))
    assert len(traces) == 2 and len(call._concrete) == 2


def test_a_new_dtype_or_rank_is_a_new_signature():
    traces = []

    @tf.function
    def double(x):
        traces.append((x.dtype, x.shape))
        return x * 2

    call = ConcreteStep(double)
    assert call(tf.constant([1.0, 2.0])).dtype == tf.float32
    assert call(tf.constant([1, 2])).numpy().tolist() == [2, 4]
    assert call(tf.constant([[1.0, 2.0]])).shape == (1, 2)
    assert call(tf.constant([3.0, 4.0])).numpy().tolist() == [6.0, 8.0]
    assert traces == [(tf.float32, (2,)), (tf.int32, (2,)), (tf.float32, (1, 2))]


def test_variables_change_between_concrete_calls():
    v = tf.Variable(1.0)
    call = ConcreteStep(tf.function(lambda x: v.assign_add(x)))
    for _ in range(3):
        call(tf.constant(2.0))
    np.testing.assert_allclose(v.numpy(), 7.0)


def test_only_tensors_are_passed():
    call = ConcreteStep(tf.function(lambda x, k: x * k))
    with pytest.raises(TypeError, match="only tensors"):
        call(tf.constant(1.0), 3)
    with pytest.raises(TypeError, match="needs a tf.function"):
        ConcreteStep(lambda x: x)


def test_plain_tensors_take_the_flat_call_and_give_the_same_answer():
    # Fields of distinct values and shapes: a call that fed the graph its inputs in another
    # order would give another sum, or fail.
    @tf.function
    def step(episode):
        return (tf.reduce_sum(episode.support_x) + 10.0 * tf.reduce_sum(episode.support_y)
                + 100.0 * tf.reduce_sum(episode.query_x) + 1000.0 * tf.reduce_sum(episode.query_y))

    call = ConcreteStep(step)
    episode = km.Episode(*(tf.fill([i + 1, 2], float(i + 1)) for i in range(4)))
    want = 1 * 2 + 10 * 2 * 2 * 2 + 100 * 3 * 2 * 3 + 1000 * 4 * 2 * 4
    assert float(call(episode)) == want == float(step(episode))
    assert list(call._flat.values()) == [True]


def test_gradients_flow_through_the_flat_call():
    v = tf.Variable(3.0)
    call = ConcreteStep(tf.function(lambda x: v * x * x))
    x = tf.constant(2.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = call(x)
    assert list(call._flat.values()) == [True]
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), 2 * 3.0 * 2.0)
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), 4.0)


def test_composite_arguments_take_the_ordinary_call():
    call = ConcreteStep(tf.function(lambda r: tf.reduce_sum(r.flat_values) * 2.0))
    ragged = tf.ragged.constant([[1.0, 2.0], [3.0]])
    assert float(call(ragged)) == 12.0
    assert list(call._flat.values()) == [False]


def test_unwatched_calls_execute_the_function_directly_with_the_same_answers():
    v = tf.Variable(1.0)

    @tf.function
    def step(episode):
        v.assign_add(1.0)
        return {"loss": tf.reduce_sum(episode.support_x) * v, "count": tf.size(episode.query_y)}

    call = ConcreteStep(step)
    episode = km.Episode(*(tf.fill([i + 1, 2], float(i + 1)) for i in range(4)))
    got = call(episode)
    assert list(call._direct.values())[0] is not None
    # The structured output, and the variable's update, as the tf.function gives them.
    assert set(got) == {"loss", "count"} and int(got["count"]) == 8
    assert float(got["loss"]) == 2.0 * 2.0 and float(v.numpy()) == 2.0
    want = step(episode)
    assert float(want["loss"]) == 2.0 * 3.0 and float(call(episode)["loss"]) == 2.0 * 4.0


def test_a_failing_direct_call_reports_the_op_as_the_function_does():
    @tf.function
    def step(x):
        return tf.debugging.check_numerics(tf.math.log(x), "log of the support loss")

    call = ConcreteStep(step)
    assert float(call(tf.constant(1.0))) == 0.0
    assert list(call._direct.values())[0] is not None
    with pytest.raises(tf.errors.InvalidArgumentError) as direct:
        call(tf.constant(-1.0))
    with pytest.raises(tf.errors.InvalidArgumentError) as ordinary:
        step(tf.constant(-1.0))
    for error in (direct, ordinary):
        assert "log of the support loss" in str(error.value)
        assert "Detected at node" in str(error.value)


def test_direct_false_keeps_the_flat_call():
    call = ConcreteStep(tf.function(lambda x: x * 2.0), direct=False)
    assert float(call(tf.constant(3.0))) == 6.0
    assert list(call._flat.values()) == [True] and list(call._direct.values()) == [None]
