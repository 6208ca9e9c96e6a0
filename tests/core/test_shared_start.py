"""The shared first inner step (`keras_meta.core.batching.shared_start`): exact, and taken.

At step 0 every task has theta, so the batched pass runs dense layers and convolutions as one
ordinary op. The forms are checked against the per-task loop in float64 (to second order),
against the per-task batched forms on their own (the inner gradient of every task, and the
gradient through theta), and in the graph (the ordinary op is really there).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.backbones import conv4, mlp
from keras_meta.core import batching
from keras_meta.core.batching.shared_start import shared_matmul

CE64 = dict(from_logits=True, dtype="float64")


def image_episode(num_tasks, shape, ways=3, queries=2, seed=0):
    rng = np.random.default_rng(seed)
    return km.Episode(
        tf.constant(rng.normal(size=(num_tasks, ways) + shape), tf.float64),
        tf.constant(np.tile(np.arange(ways), (num_tasks, 1)), tf.int32),
        tf.constant(rng.normal(size=(num_tasks, ways * queries) + shape), tf.float64),
        tf.constant(np.tile(np.repeat(np.arange(ways), queries), (num_tasks, 1)), tf.int32))


def strided_and_biased(dtype):
    # Convolutions with biases, VALID and SAME padding, unequal strides, pooling, and a dense
    # layer applied to a feature map (rank 5 with the task axis).
    return keras.Sequential([
        keras.Input((11, 11, 2), dtype=dtype),
        keras.layers.Conv2D(3, 3, padding="valid", activation="tanh", dtype=dtype),
        keras.layers.Conv2D(4, 2, strides=(1, 2), padding="same", dtype=dtype),
        keras.layers.MaxPooling2D(2, dtype=dtype),
        keras.layers.Dense(3, activation="tanh", dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(3, dtype=dtype),
    ])


MODELS = {
    "conv4_batch_norm": (lambda: conv4(3, (8, 8, 1), filters=4, dtype="float64"), (8, 8, 1)),
    "strided_and_biased": (lambda: strided_and_biased("float64"), (11, 11, 2)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_shared_first_step_equals_the_loop_in_float64(name, inner_steps):
    make, shape = MODELS[name]
    keras.utils.set_random_seed(0)
    base = make()
    loss = keras.losses.SparseCategoricalCrossentropy(**CE64)
    results = {}
    for label, mode, shared in (("loop", "loop", True), ("shared", "batched", True),
                                ("per-task", "batched", False)):
        maml = km.MAML(base, inner_lr=0.3, inner_steps=inner_steps, loss=loss,
                       task_batching=mode, shared_first_step=shared, dtype="float64")
        results[label] = maml.meta_gradients(image_episode(4, shape))
    loss_loop, grads_loop, _ = results["loop"]
    for label in ("shared", "per-task"):
        meta_loss, grads, _ = results[label]
        np.testing.assert_allclose(meta_loss.numpy(), loss_loop.numpy(), rtol=1e-12)
        for a, b in zip(grads_loop, grads):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=label)


def test_shared_mlp_meta_gradient_has_the_hessian_terms():
    keras.utils.set_random_seed(1)
    base = mlp((16, 16), dtype="float64")
    rng = np.random.default_rng(2)
    episode = km.Episode(*(tf.constant(rng.normal(size=(5, n, 1)), tf.float64)
                           for n in (10, 10, 7, 7)))
    grads = {}
    for label, mode, first_order in (("loop", "loop", False), ("shared", "batched", False),
                                     ("first-order", "batched", True)):
        maml = km.MAML(base, inner_lr=0.2, inner_steps=1, loss="mse", task_batching=mode,
                       first_order=first_order, dtype="float64")
        grads[label] = maml.meta_gradients(episode)[1]
    for a, b in zip(grads["loop"], grads["shared"]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-13)
    # The same comparison can fail: first-order MAML drops the Hessian terms.
    differences = [np.max(np.abs(a.numpy() - b.numpy())) / np.max(np.abs(a.numpy()))
                   for a, b in zip(grads["loop"], grads["first-order"])]
    assert max(differences) > 1e-2, differences


def inner_and_outer_gradients(model, theta, x, options, conv):
    """Each task's inner gradient (w.r.t. its stacked copy) and d|inner grads|^2/d theta."""
    num_tasks = x.shape[0]
    with tf.GradientTape() as outer:
        outer.watch(theta)
        stacked = [tf.broadcast_to(p, [num_tasks] + p.shape.as_list()) for p in theta]
        with tf.GradientTape() as inner:
            inner.watch(stacked)
            y = batching.batched_functional_call(model, stacked, x, conv=conv,
                                                 kernel_options=options)
            value = tf.reduce_sum(tf.sin(y))
        grads = inner.gradient(value, stacked)
        norm = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
    return grads, outer.gradient(norm, theta)


@pytest.mark.parametrize("conv,dtype,tol", [("patches", "float64", 1e-11),
                                            ("grouped", "float32", 2e-4)])
def test_shared_convolution_gives_each_tasks_gradient_and_the_second_order_one(
        conv, dtype, tol, grouped_gradients):
    if conv == "grouped":
        grouped_gradients(dtype)
    keras.utils.set_random_seed(0)
    model = strided_and_biased(dtype)
    theta = [tf.identity(v.value) for v in model.trainable_variables]
    x = tf.constant(np.random.default_rng(3).normal(size=(3, 4, 11, 11, 2)), dtype)
    shared = inner_and_outer_gradients(model, theta, x, {batching.SHARED_OPTION: True}, conv)
    per_task = inner_and_outer_gradients(model, theta, x, None, conv)
    for a, b in zip(shared[0] + shared[1], per_task[0] + per_task[1]):
        a, b = a.numpy(), b.numpy()
        assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b), np.linalg.norm(a - b)


def test_shared_matmul_is_one_matmul_with_per_task_kernel_gradients():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(3, 5, 4)))
    theta = tf.constant(rng.normal(size=(4, 2)))
    kernels = tf.broadcast_to(theta, [3, 4, 2])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, kernels])
        shared = shared_matmul(x, kernels)
        batched = tf.matmul(x, kernels)
        weights = tf.constant(rng.normal(size=(3, 5, 2)))
        shared_value = tf.reduce_sum(shared * weights)
        batched_value = tf.reduce_sum(batched * weights)
    np.testing.assert_allclose(shared.numpy(), batched.numpy(), rtol=1e-13)
    for a, b in zip(tape.gradient(shared_value, [x, kernels]),
                    tape.gradient(batched_value, [x, kernels])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    graph = tf.function(shared_matmul).get_concrete_function(x, kernels).graph
    shapes = [op.outputs[0].shape.as_list() for op in graph.get_operations()
              if op.type == "MatMul"]
    assert shapes == [[15, 2]], shapes  # all tasks' rows at once, no batched matmul


def test_shared_matmul_of_width_one_matches_the_batched_one_to_second_order():
    # A width of 1 makes the input gradient an outer product, computed as a broadcast multiply
    # instead of a matmul: the same derivatives, to second order, in float64.
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(3, 5, 4)))
    theta = tf.constant(rng.normal(size=(4, 1)))
    weights = tf.constant(rng.normal(size=(3, 5, 1)))

    def derivatives(matmul):
        with tf.GradientTape() as outer:
            outer.watch([x, theta])
            kernels = tf.broadcast_to(theta, [3, 4, 1])
            with tf.GradientTape() as inner:
                inner.watch([x, kernels])
                value = tf.reduce_sum(tf.sin(matmul(x, kernels)) * weights)
            dx, dk = inner.gradient(value, [x, kernels])
            norm = tf.reduce_sum(tf.square(dx)) + tf.reduce_sum(dk * dk * dk)
        return [dx, dk] + outer.gradient(norm, [x, theta])

    for a, b in zip(derivatives(shared_matmul), derivatives(tf.matmul)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)

    def input_gradient(x, kernels):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = shared_matmul(x, kernels)
        return tape.gradient(y, x, output_gradients=weights)

    kernels = tf.broadcast_to(theta, [3, 4, 1])
    graph = tf.function(input_gradient).get_concrete_function(x, kernels).graph
    assert [op.outputs[0].shape.as_list() for op in graph.get_operations()
            if op.type == "MatMul"] == [[15, 1]]  # the forward pass only


def conv_kernel_shapes(maml, episode):
    graph = tf.function(lambda e: maml.meta_gradients(e)[1]).get_concrete_function(
        episode).graph
    return [op.inputs[1].shape.as_list() for op in graph.get_operations()
            if op.type == "Conv2D"]


def test_step_zero_runs_an_ordinary_convolution_and_later_steps_a_grouped_one(
        grouped_gradients):
    grouped_gradients()
    keras.utils.set_random_seed(0)
    base = conv4(3, (8, 8, 1), filters=4)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    episode = image_episode(5, (8, 8, 1))
    episode = km.Episode(tf.cast(episode.support_x, tf.float32), episode.support_y,
                         tf.cast(episode.query_x, tf.float32), episode.query_y)
    shapes = {}
    for shared in (True, False):
        maml = km.MAML(base, inner_lr=0.3, inner_steps=2, loss=loss, task_batching="batched",
                       shared_first_step=shared)
        shapes[shared] = conv_kernel_shapes(maml, episode)
    # theta's own kernel [3, 3, C, 4] appears only with the shared first step: its 4 layers'
    # forward passes (their gradients add more convolutions of the same kind).
    ordinary = [[3, 3, 1, 4], [3, 3, 4, 4]]
    assert sum(s in ordinary for s in shapes[True]) >= 4, shapes[True]
    assert not any(s in ordinary for s in shapes[False]), shapes[False]
    # Later steps and the query pass still run the 5 tasks' kernels as one grouped one.
    assert any(s[-1] == 5 * 4 for s in shapes[True]), shapes[True]


def test_shared_first_step_is_a_checked_setting_that_survives_get_config():
    base = mlp((8,))
    maml = km.MAML(base, inner_lr=0.1, loss="mse", shared_first_step=False)
    assert maml.get_config()["shared_first_step"] is False
    assert km.MAML.from_config(maml.get_config()).shared_first_step is False
    assert km.MAML(base, inner_lr=0.1, loss="mse").shared_first_step is True
    with pytest.raises(ValueError, match="shared_first_step must be True or False; got 'yes'"):
        km.MAML(base, inner_lr=0.1, loss="mse", shared_first_step="yes")


def test_xla_on_the_cpu_keeps_the_patch_form_for_convolutions():
    # XLA's CPU convolution was no faster there and lost float32 precision in second-order
    # MAML (kernels.py); dense layers stay shared under XLA.
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        pytest.skip("the rule is for XLA on a CPU")
    keras.utils.set_random_seed(0)
    base = conv4(3, (8, 8, 1), filters=4, dtype="float64")
    maml = km.MAML(base, inner_lr=0.3, inner_steps=1, task_batching="batched",
                   loss=keras.losses.SparseCategoricalCrossentropy(**CE64), dtype="float64")
    episode = image_episode(2, (8, 8, 1))
    graph = tf.function(lambda e: maml.meta_gradients(e)[1], jit_compile=True) \
        .get_concrete_function(episode).graph
    types = {op.type for op in graph.get_operations()}
    assert "Conv2D" not in types, sorted(types)
    assert types & {"BatchMatMulV2", "BatchMatMulV3"}, sorted(types)
