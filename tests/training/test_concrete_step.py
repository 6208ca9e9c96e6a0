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
