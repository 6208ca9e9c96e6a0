"""Second-order MAML meta-gradients through batch norm against central finite differences.

All in float64 on a tiny conv net (see conftest.py). Measured on this net: our layer agrees with
finite differences to ~1e-7 or better; Keras' BatchNormalization is off by up to a few 1e-2,
and first-order MAML by 1e-1 or more.
"""

import numpy as np
import pytest

from conftest import directional_errors, meta_gradient, task, tiny_net

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
