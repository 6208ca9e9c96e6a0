"""Second-order MAML meta-gradients through batch norm against central finite differences.

All in float64 on a tiny conv net (see conftest.py). Measured on this net: our layer agrees with
finite differences to ~1e-7 or better; Keras' BatchNormalization is off by 5e-4 to 7e-2 along
random directions (1 and 2 inner steps), and first-order MAML by 3e-2 to 5.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bn_helpers import directional_errors, meta_gradient, meta_loss, task, tiny_net
from keras_meta.backbones import conv4

EXACT = 1e-6


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_transductive_meta_gradient_matches_finite_differences(inner_steps):
    model = tiny_net("transductive")
    errors = directional_errors(model, task(), inner_steps)
    assert max(errors) < EXACT, errors


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_per_step_meta_gradient_matches_finite_differences(inner_steps):
    model = tiny_net("per_step", num_steps=inner_steps)
    errors = directional_errors(model, task(seed=1), inner_steps)
    assert max(errors) < EXACT, errors


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_keras_batch_norm_meta_gradient_is_not_exact(inner_steps):
    # Keras' variance stops the gradient through the batch mean; the Hessian loses that term,
    # and so does the meta-gradient. The error is orders of magnitude above FD noise.
    model = tiny_net("keras")
    errors = directional_errors(model, task(), inner_steps)
    print(f"keras BN, {inner_steps} step(s): relative FD errors {errors}")
    assert max(errors) > 1e3 * EXACT, errors


def _same_weights_pair():
    ours, theirs = tiny_net("transductive"), tiny_net("keras")
    # Same architecture and variable order (Keras adds two moving statistics we do not have).
    for a, b in zip(ours.trainable_variables, theirs.trainable_variables):
        b.assign(a.numpy())
    return ours, theirs


def test_keras_batch_norm_differs_only_in_second_order_terms():
    ours, theirs = _same_weights_pair()
    data = task()
    first = [meta_gradient(m, data, 1, first_order=True) for m in (ours, theirs)]
    for a, b in zip(*first):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    second = [np.concatenate([g.ravel() for g in meta_gradient(m, data, 1)])
              for m in (ours, theirs)]
    relative = np.linalg.norm(second[0] - second[1]) / np.linalg.norm(second[0])
    print(f"second-order meta-gradient, Keras BN vs ours: relative difference {relative:.3e}")
    assert relative > 1e-3


@pytest.mark.parametrize("norm,num_steps", [("transductive", None), ("per_step", 2)])
def test_first_order_maml_differs_from_finite_differences(norm, num_steps):
    model = tiny_net(norm, num_steps=num_steps)
    errors = directional_errors(model, task(), 2, first_order=True)
    assert max(errors) > 1e-2, errors


def test_meta_gradient_is_the_same_inside_tf_function():
    # The benchmarks and MAML.fit trace the inner loop into a graph; the gradient must not
    # depend on eager vs graph execution.
    model = tiny_net("per_step", num_steps=1)
    data = task()

    @tf.function
    def graph_gradient():
        with tf.GradientTape() as tape:
            loss = meta_loss(model, data, 1)
        return tape.gradient(loss, model.trainable_variables)

    for a, b in zip(meta_gradient(model, data, 1), graph_gradient()):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("batch_norm,num_steps", [("transductive", None), ("per_step", 1)])
def test_conv4_meta_gradient_matches_finite_differences(batch_norm, num_steps):
    keras.utils.set_random_seed(0)
    model = conv4(3, input_shape=(8, 8, 1), filters=4, batch_norm=batch_norm,
                  num_inner_steps=num_steps, dtype="float64")
    # ReLU kinks could in principle sit within eps of a pre-activation; with standardized
    # pre-activations and eps = 1e-6 that is very unlikely, and the data is fixed.
    errors = directional_errors(model, task(seed=2, image=(8, 8, 1)), 1, lr=0.4, eps=1e-6)
    assert max(errors) < EXACT, errors
