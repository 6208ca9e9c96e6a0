"""Exactness of the meta-gradient: finite differences and a closed form, in float64."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.core.losses import scalar_loss

MSE = keras.losses.MeanSquaredError(dtype="float64")


def smooth_mlp(seed=0, hidden=4):
    # tanh keeps the Hessian non-trivial everywhere (ReLU nets are piecewise linear).
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((2,), dtype="float64"),
        keras.layers.Dense(hidden, activation="tanh", dtype="float64"),
        keras.layers.Dense(hidden, activation="tanh", dtype="float64"),
        keras.layers.Dense(1, dtype="float64"),
    ])


def regression_task(seed=1, n_support=6, n_query=7, dim=2):
    rng = np.random.default_rng(seed)
    xs, xq = rng.normal(size=(n_support, dim)), rng.normal(size=(n_query, dim))
    w = rng.normal(size=(dim, 1))
    return (tf.constant(xs), tf.constant(np.sin(xs @ w)), tf.constant(xq),
            tf.constant(np.sin(xq @ w)))


def flat(tensors):
    return np.concatenate([np.ravel(t) for t in tensors])


def tape_grad(model, task, **kwargs):
    with tf.GradientTape() as tape:
        loss = km.maml_loss(model, *task, loss_fn=MSE, **kwargs)
    return flat(tape.gradient(loss, model.trainable_variables))


def finite_difference_grad(model, task, eps=1e-5, **kwargs):
    variables = model.trainable_variables
    original = [v.numpy().copy() for v in variables]
    theta = flat(original)
    grad = np.zeros_like(theta)

    def loss_at(vector):
        offset = 0
        for v, o in zip(variables, original):
            v.assign(vector[offset:offset + o.size].reshape(o.shape))
            offset += o.size
        return float(km.maml_loss(model, *task, loss_fn=MSE, **kwargs))

    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = eps
        grad[i] = (loss_at(theta + e) - loss_at(theta - e)) / (2 * eps)
    loss_at(theta)
    return grad


def rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_second_order_matches_finite_differences(inner_steps):
    model, task = smooth_mlp(), regression_task()
    kwargs = dict(inner_lr=0.3, inner_steps=inner_steps)
    exact = tape_grad(model, task, **kwargs)
    fd = finite_difference_grad(model, task, **kwargs)
    assert rel_err(exact, fd) < 1e-7


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_first_order_differs_from_finite_differences(inner_steps):
    model, task = smooth_mlp(), regression_task()
    fo = tape_grad(model, task, inner_lr=0.3, inner_steps=inner_steps, first_order=True)
    fd = finite_difference_grad(model, task, inner_lr=0.3, inner_steps=inner_steps)
    # The dropped Hessian terms are O(alpha): far above the FD error of ~1e-9.
    assert rel_err(fo, fd) > 1e-2


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_first_order_is_the_gradient_with_inner_gradients_held_constant(inner_steps):
    model, task = smooth_mlp(), regression_task()
    support_x, support_y, query_x, query_y = task
    fo = tape_grad(model, task, inner_lr=0.3, inner_steps=inner_steps, first_order=True)
    # With constant inner gradients, theta' = theta - const, so d theta'/d theta = I and the
    # meta-gradient is the query gradient at the adapted parameters.
    params = km.get_params(model)
    for _ in range(inner_steps):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = scalar_loss(MSE, support_y, km.functional_call(model, params, support_x))
        grads = tape.gradient(loss, params)
        params = [tf.constant(p - 0.3 * g) for p, g in zip(params, grads)]
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = scalar_loss(MSE, query_y, km.functional_call(model, params, query_x))
    expected = flat(tape.gradient(loss, params))
    np.testing.assert_allclose(fo, expected, rtol=1e-12, atol=1e-14)


def test_linear_regression_closed_form():
    """For L(theta) = 1/n ||A theta - y||^2: meta-grad = (I - alpha H_s) grad L_q(theta')."""
    rng = np.random.default_rng(3)
    dim, alpha = 3, 0.05
    model = keras.Sequential([keras.Input((dim,), dtype="float64"),
                              keras.layers.Dense(1, dtype="float64")])
    model.set_weights([rng.normal(size=(dim, 1)), rng.normal(size=(1,))])
    xs, xq = rng.normal(size=(8, dim)), rng.normal(size=(9, dim))
    ys, yq = rng.normal(size=(8, 1)), rng.normal(size=(9, 1))
    task = tuple(tf.constant(a) for a in (xs, ys, xq, yq))

    a_s = np.hstack([xs, np.ones((8, 1))])
    a_q = np.hstack([xq, np.ones((9, 1))])
    theta = np.vstack([model.get_weights()[0], model.get_weights()[1][:, None]])
    grad_s = 2 / 8 * a_s.T @ (a_s @ theta - ys)
    hess_s = 2 / 8 * a_s.T @ a_s
    adapted = theta - alpha * grad_s
    grad_q = 2 / 9 * a_q.T @ (a_q @ adapted - yq)
    expected = ((np.eye(dim + 1) - alpha * hess_s) @ grad_q).ravel()

    got = tape_grad(model, task, inner_lr=alpha, inner_steps=1)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    first_order = tape_grad(model, task, inner_lr=alpha, inner_steps=1, first_order=True)
    np.testing.assert_allclose(first_order, grad_q.ravel(), rtol=1e-12)


def test_adapt_and_maml_loss_leave_variables_untouched():
    model, task = smooth_mlp(), regression_task()
    before = [v.numpy().copy() for v in model.weights]
    km.adapt_params(model, km.get_params(model), task[0], task[1], loss_fn=MSE, inner_lr=0.5,
             inner_steps=3)
    with tf.GradientTape() as tape:
        loss = km.maml_loss(model, *task, loss_fn=MSE, inner_lr=0.5, inner_steps=2)
    tape.gradient(loss, model.trainable_variables)
    for b, v in zip(before, model.weights):
        np.testing.assert_array_equal(b, v.numpy())


def test_zero_inner_steps_is_the_plain_query_loss():
    model, task = smooth_mlp(), regression_task()
    loss = km.maml_loss(model, *task, loss_fn=MSE, inner_lr=0.5, inner_steps=0)
    expected = scalar_loss(MSE, task[3], model(task[2]))
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-12)


def test_one_small_step_lowers_the_support_loss():
    model, task = smooth_mlp(), regression_task()
    params = km.get_params(model)
    before = scalar_loss(MSE, task[1], km.functional_call(model, params, task[0]))
    adapted = km.adapt_params(model, params, task[0], task[1], loss_fn=MSE, inner_lr=0.05)
    after = scalar_loss(MSE, task[1], km.functional_call(model, adapted, task[0]))
    assert float(after) < float(before)


def test_one_hand_computed_inner_step():
    # y = w x + b at w=2, b=0.5; support (x=1, y=1): loss = (2.5-1)^2, dL/dw = 3, dL/db = 3.
    model = keras.Sequential([keras.Input((1,), dtype="float64"),
                              keras.layers.Dense(1, dtype="float64")])
    model.set_weights([np.array([[2.0]]), np.array([0.5])])
    adapted = km.adapt_params(model, km.get_params(model), tf.constant([[1.0]], tf.float64),
                       tf.constant([[1.0]], tf.float64), loss_fn=MSE, inner_lr=0.1)
    np.testing.assert_allclose(adapted[0].numpy(), [[1.7]])
    np.testing.assert_allclose(adapted[1].numpy(), [0.2])


def test_functional_call_with_own_weights_equals_model_call():
    model = smooth_mlp()
    x = tf.random.stateless_normal([5, 2], seed=[1, 2], dtype=tf.float64)
    np.testing.assert_allclose(km.functional_call(model, km.get_params(model), x).numpy(),
                               model(x).numpy(), rtol=1e-14)


def test_functional_call_rejects_wrong_parameters():
    model = smooth_mlp()
    params = km.get_params(model)
    with pytest.raises(ValueError, match="got 5 parameter tensors .* 6 trainable"):
        km.functional_call(model, params[:5], tf.zeros([1, 2], tf.float64))
    with pytest.raises(ValueError, match="shape"):
        km.functional_call(model, [tf.zeros([3, 3], tf.float64)] + params[1:],
                           tf.zeros([1, 2], tf.float64))


def test_adapt_rejects_bad_steps():
    model, task = smooth_mlp(), regression_task()
    with pytest.raises(ValueError, match="inner_steps must be an int >= 0"):
        km.adapt_params(model, km.get_params(model), task[0], task[1], loss_fn=MSE, inner_lr=0.1,
                 inner_steps=-1)


def test_per_variable_and_per_step_rates():
    model, task = smooth_mlp(), regression_task()
    params = km.get_params(model)
    n = len(params)
    zero_rates = [0.0] * n
    same = km.adapt_params(model, params, task[0], task[1], loss_fn=MSE, inner_lr=zero_rates)
    for a, b in zip(same, params):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    per_step = km.adapt_params(model, params, task[0], task[1], loss_fn=MSE,
                        inner_lr=[[0.1] * n, [0.0] * n], inner_steps=2)
    one_step = km.adapt_params(model, params, task[0], task[1], loss_fn=MSE, inner_lr=0.1)
    for a, b in zip(per_step, one_step):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-14)
    with pytest.raises(ValueError, match="learning rates"):
        km.adapt_params(model, params, task[0], task[1], loss_fn=MSE, inner_lr=[0.1] * (n - 1))


def test_steps_past_the_per_step_rates_reuse_the_last_step_rates():
    # MAML++: rates exist for the trained steps; longer adaptation reuses the last ones.
    model, task = smooth_mlp(), regression_task()
    params = km.get_params(model)
    n = len(params)
    longer = km.adapt_params(model, params, task[0], task[1], loss_fn=MSE,
                             inner_lr=[[0.1] * n, [0.05] * n], inner_steps=4)
    spelled_out = km.adapt_params(model, params, task[0], task[1], loss_fn=MSE,
                                  inner_lr=[[0.1] * n] + [[0.05] * n] * 3, inner_steps=4)
    for a, b in zip(longer, spelled_out):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
