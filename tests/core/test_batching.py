"""Task-batched MAML: one pass for all tasks must give exactly the per-task loop's results."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.core import batching as task_batching
from keras_meta.core import functional
from keras_meta.core.losses import per_task_loss
from keras_meta.backbones import conv4, mlp

CE64 = dict(from_logits=True, dtype="float64")


def image_episode(num_tasks, size=8, ways=3, shots=1, queries=2, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    return km.Episode(
        tf.constant(rng.normal(size=(num_tasks, ways * shots, size, size, 1)), dtype),
        tf.constant(np.tile(np.repeat(np.arange(ways), shots), (num_tasks, 1)), tf.int32),
        tf.constant(rng.normal(size=(num_tasks, ways * queries, size, size, 1)), dtype),
        tf.constant(np.tile(np.repeat(np.arange(ways), queries), (num_tasks, 1)), tf.int32))


def per_task_params(model, num_tasks, seed=0):
    """Different parameters for every task (as after an inner step)."""
    rng = np.random.default_rng(seed)
    return [tf.constant(v.numpy() + 0.1 * rng.normal(size=(num_tasks,) + tuple(v.shape)),
                        v.dtype) for v in model.trainable_variables]


def with_bias_and_pooling(dtype):
    return keras.Sequential([
        keras.Input((12, 12, 2), dtype=dtype),
        keras.layers.Conv2D(3, 3, padding="valid", activation="tanh", dtype=dtype),
        keras.layers.AveragePooling2D(2, dtype=dtype),
        keras.layers.Conv2D(4, 2, strides=(1, 2), padding="same", dtype=dtype),
        keras.layers.Activation("relu", dtype=dtype),
        keras.layers.MaxPooling2D(2, padding="same", dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(6, activation="sigmoid", dtype=dtype),
        keras.layers.Dense(2, dtype=dtype),
    ])


MODELS = {
    "conv4_stride_bn": lambda dt: conv4(3, (8, 8, 1), filters=4, dtype=dt),
    "conv4_maxpool_bn": lambda dt: conv4(3, (16, 16, 1), filters=3, downsample="maxpool",
                                         dtype=dt),
    "conv4_no_bn": lambda dt: conv4(3, (9, 9, 1), filters=4, batch_norm="none", dtype=dt),
    "bias_pooling_activations": with_bias_and_pooling,
    "mlp": lambda dt: mlp((8, 8), input_dim=3, output_dim=2, dtype=dt),
    "mlp_batch_norm": lambda dt: keras.Sequential([
        keras.Input((3,), dtype=dt), keras.layers.Dense(8, dtype=dt),
        km.layers.MetaBatchNormalization(dtype=dt), keras.layers.ReLU(dtype=dt),
        keras.layers.Dense(2, dtype=dt)]),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype,conv,tol", [("float64", "patches", 1e-12),
                                            ("float32", "grouped", 2e-5),
                                            ("float32", "patches", 2e-5)])
def test_batched_call_equals_per_task_calls(name, dtype, conv, tol):
    keras.utils.set_random_seed(1)
    model = MODELS[name](dtype)
    assert task_batching.unsupported_layers(model) == []
    num_tasks = 3
    params = per_task_params(model, num_tasks)
    x = tf.constant(np.random.default_rng(2).normal(
        size=(num_tasks, 5) + tuple(model.input_shape[1:])), dtype)
    batched = task_batching.batched_functional_call(model, params, x, conv=conv)
    for t in range(num_tasks):
        single = functional.functional_call(model, [p[t] for p in params], x[t], training=True)
        np.testing.assert_allclose(batched[t].numpy(), single.numpy(), rtol=tol, atol=tol)


def maml_pair(base, **kwargs):
    return [km.MAML(base, task_batching=mode, dtype="float64", **kwargs)
            for mode in ("loop", "batched")]


@pytest.mark.parametrize("learn_inner_lr,weights,chunk", [(None, None, None),
                                                          ("per_coordinate", [0.3, 0.7], None),
                                                          ("per_step", None, None),
                                                          (None, [0.5, 0.5], 3)])
def test_meta_gradients_equal_the_loop_in_float64(learn_inner_lr, weights, chunk):
    keras.utils.set_random_seed(0)
    base = conv4(3, (8, 8, 1), filters=4, dtype="float64")
    loop, batched = maml_pair(base, inner_lr=0.3, inner_steps=2, learn_inner_lr=learn_inner_lr,
                              multi_step_loss_weights=weights,
                              loss=keras.losses.SparseCategoricalCrossentropy(**CE64))
    batched.task_chunk_size = chunk  # 4 tasks in chunks of 3: one full chunk, one partial
    assert batched.uses_task_batching and not loop.uses_task_batching
    episode = image_episode(4)
    loss_a, grads_a, preds_a = loop.meta_gradients(episode)
    loss_b, grads_b, preds_b = batched.meta_gradients(episode)
    np.testing.assert_allclose(loss_b.numpy(), loss_a.numpy(), rtol=1e-12)
    np.testing.assert_allclose(preds_b.numpy(), preds_a.numpy(), rtol=1e-10, atol=1e-12)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-12)


def test_batched_meta_gradient_matches_finite_differences_and_first_order_does_not():
    keras.utils.set_random_seed(3)
    base = conv4(3, (8, 8, 1), filters=3, dtype="float64")
    loss = keras.losses.SparseCategoricalCrossentropy(**CE64)
    maml = km.MAML(base, inner_lr=0.5, inner_steps=2, loss=loss, task_batching="batched",
                   dtype="float64")
    first = km.MAML(base, inner_lr=0.5, inner_steps=2, loss=loss, task_batching="batched",
                    first_order=True, dtype="float64")
    episode = image_episode(3, seed=4)
    _, grads, _ = maml.meta_gradients(episode)
    _, approx, _ = first.meta_gradients(episode)
    # Traced once, then evaluated at every probe (the variables are read at each call):
    # eagerly, the 84 evaluations would cost more than everything else in this test. The
    # library has no data-dependent Python control flow, so AutoGraph (most of the tracing
    # cost) would convert nothing here.
    meta_loss = tf.function(lambda: tf.reduce_mean(maml.meta_batch_losses(episode)[0]),
                            autograph=False)
    rng = np.random.default_rng(5)
    eps = 1e-5
    errors, first_errors = [], []
    for i, variable in enumerate(base.trainable_variables):
        original = variable.numpy()
        for _ in range(3):
            index = tuple(rng.integers(0, s) for s in original.shape)
            values = []
            for sign in (1, -1):
                moved = original.copy()
                moved[index] += sign * eps
                variable.assign(moved)
                values.append(float(meta_loss()))
            variable.assign(original)
            fd = (values[0] - values[1]) / (2 * eps)
            scale = max(abs(fd), 1e-3)
            errors.append(abs(grads[i].numpy()[index] - fd) / scale)
            first_errors.append(abs(approx[i].numpy()[index] - fd) / scale)
    assert max(errors) < 1e-6, errors
    # The same check must be able to fail: first-order MAML drops the Hessian terms.
    assert max(first_errors) > 1e-2, first_errors


def test_grouped_and_patch_convolutions_agree_to_second_order(grouped_gradients):
    grouped_gradients()
    keras.utils.set_random_seed(0)
    base = conv4(3, (8, 8, 1), filters=4)
    params = per_task_params(base, 2)
    x = image_episode(2, dtype="float32").query_x

    def second_derivative(conv):
        with tf.GradientTape() as outer:
            outer.watch(params)
            with tf.GradientTape() as inner:
                inner.watch(params)
                y = task_batching.batched_functional_call(base, params, x, conv=conv)
                value = tf.reduce_sum(tf.square(y))
            grads = inner.gradient(value, params)
            norm = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        return outer.gradient(norm, params)

    # The grouped path also uses fused batch norm (its closed-form second derivative); the
    # patch path the plain ops. Float32 round-off, relative to each tensor's scale.
    for a, b in zip(second_derivative("grouped"), second_derivative("patches")):
        a, b = a.numpy(), b.numpy()
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b), np.linalg.norm(a - b)


def test_unsupported_models_fall_back_to_the_loop_and_batched_says_why():
    per_step = conv4(3, (8, 8, 1), filters=2, batch_norm="per_step", num_inner_steps=1)
    assert any("per_step" in p for p in task_batching.unsupported_layers(per_step))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert not km.MAML(per_step, loss=loss).uses_task_batching
    with pytest.raises(ValueError, match="bn0.*per_step"):
        km.MAML(per_step, loss=loss, task_batching="batched")

    inputs = keras.Input((4,))
    branched = keras.Model(inputs, keras.layers.Add()([keras.layers.Dense(2)(inputs),
                                                       keras.layers.Dense(2)(inputs)]))
    assert "single chain" in task_batching.unsupported_layers(branched)[0]
    assert not km.MAML(branched, loss="mse").uses_task_batching

    class CustomDense(keras.layers.Dense):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    custom = keras.Sequential([keras.Input((3,)), CustomDense(2)])
    assert "CustomDense" in task_batching.unsupported_layers(custom)[0]
    channels_first_bn = keras.Sequential([
        keras.Input((3, 4, 4)), km.layers.MetaBatchNormalization(axis=1, name="bn_c1"),
        keras.layers.Flatten(), keras.layers.Dense(2)])
    assert "bn_c1" in task_batching.unsupported_layers(channels_first_bn)[0]

    rule = km.LSTMOptimizer(hidden_size=4)
    assert not km.MAML(mlp(), loss="mse", update_rule=rule).uses_task_batching
    assert km.MAML(mlp(), loss="mse").uses_task_batching
    assert not km.MAML(mlp(), loss="mse", task_batching="loop").uses_task_batching
    with pytest.raises(ValueError, match="task_chunk_size must be an int >= 1 or None"):
        km.MAML(mlp(), loss="mse", task_chunk_size=0)
    with pytest.raises(ValueError, match="task_batching must be one of"):
        km.MAML(mlp(), loss="mse", task_batching="vectorized")


def test_batched_call_rejects_wrong_shapes():
    model = mlp((4,))
    params = per_task_params(model, 2)
    with pytest.raises(ValueError, match=r"expected \(2, 1, 4\)"):
        task_batching.batched_functional_call(model, [params[0][:1]] + params[1:],
                                              tf.zeros([2, 3, 1]))
    with pytest.raises(ValueError, match="conv must be"):
        task_batching.batched_functional_call(conv4(2, (8, 8, 1), filters=2),
                                              per_task_params(conv4(2, (8, 8, 1), filters=2), 2),
                                              tf.zeros([2, 3, 8, 8, 1]), conv="fft")


def test_per_task_loss_equals_the_scalar_loss_of_each_task():
    rng = np.random.default_rng(0)
    y = tf.constant(rng.integers(0, 4, size=(3, 6)))
    logits = tf.constant(rng.normal(size=(3, 6, 4)), tf.float32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    per_task = per_task_loss(loss, y, logits).numpy()
    for t in range(3):
        np.testing.assert_allclose(per_task[t], float(loss(y[t], logits[t])), rtol=1e-6)
    mse = per_task_loss(keras.losses.get("mse"), tf.ones([3, 5, 1]),
                                      tf.zeros([3, 5, 1]))
    np.testing.assert_allclose(mse.numpy(), np.ones(3))


# -- fused batch norm as an option (MAML(fused_batch_norm=), MetaObjective, --fused_batch_norm) --

def _fused_test_episode(dtype, num_tasks=4, ways=3, shots=2, queries=3, size=12):
    rng = np.random.default_rng(7)
    return km.Episode(
        tf.constant(rng.normal(size=(num_tasks, ways * shots, size, size, 1)), dtype),
        tf.constant(np.tile(np.repeat(np.arange(ways), shots), (num_tasks, 1)), tf.int32),
        tf.constant(rng.normal(size=(num_tasks, ways * queries, size, size, 1)), dtype),
        tf.constant(np.tile(np.repeat(np.arange(ways), queries), (num_tasks, 1)), tf.int32))


def _objective(base, dtype, **kwargs):
    from keras_meta.maml.objective import MetaObjective

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)
    settings = dict(inner_lr=0.4, inner_steps=2, task_batched=True)
    return MetaObjective(base, loss, **{**settings, **kwargs})


def _meta_gradients(base, dtype, **kwargs):
    _, grads = _objective(base, dtype, **kwargs).meta_gradients(
        functional.get_params(base), _fused_test_episode(dtype))
    return [g.numpy().astype(np.float64) for g in grads]


def _relative_errors(grads, reference):
    return np.array([np.linalg.norm(g - r) / np.linalg.norm(r) for g, r in zip(grads, reference)])


def test_fused_and_plain_batch_norm_meta_gradients_agree_to_float32_rounding():
    # conv4 with transductive batch norm, 4 tasks, 2 inner steps, exact second order. In
    # float32 on CPU the convolutions are grouped, the layout where the fused op applies.
    keras.utils.set_random_seed(0)
    base32 = conv4(3, (12, 12, 1), filters=4)
    base64 = conv4(3, (12, 12, 1), filters=4, dtype="float64")
    base64.set_weights(base32.get_weights())
    # The exact meta-gradient, to float64 rounding (float64 never takes the fused op; the
    # plain path equals the loop and finite differences in float64, tests above).
    exact = _meta_gradients(base64, "float64", fused_batch_norm=False)
    plain = _relative_errors(_meta_gradients(base32, "float32", fused_batch_norm=False), exact)
    fused = _relative_errors(_meta_gradients(base32, "float32", fused_batch_norm=True), exact)
    # The float32 noise floor of this computation: how far the plain ops, exact to second
    # order, land from the exact answer in float32 (about 1e-6 relative per tensor here). It
    # is rounding and nothing else: well above float64's and well below any modelling error.
    floor = plain.max()
    assert 1e-8 < floor < 1e-4, plain
    # The fused op sums in another order (and has its own second derivative), so it lands
    # elsewhere within that noise: every tensor within a small multiple of the floor (measured
    # at 1.8x the floor on the worst tensor).
    assert fused.max() <= 5 * floor, (fused, plain)
    # This tolerance can fail: dropping the second-order terms (first-order MAML, same
    # network) lands orders of magnitude outside it.
    first_order = _relative_errors(
        _meta_gradients(base32, "float32", fused_batch_norm=True, first_order=True), exact)
    assert first_order.max() > 1000 * floor, first_order


def _op_types(base, **kwargs):
    objective = _objective(base, "float32", inner_steps=1, **kwargs)
    step = tf.function(lambda e: objective.meta_gradients(functional.get_params(base), e))
    graph = step.get_concrete_function(_fused_test_episode("float32", num_tasks=2)).graph
    return {op.type for op in graph.get_operations()}


def test_fused_batch_norm_option_switches_the_op(grouped_gradients):
    grouped_gradients()
    keras.utils.set_random_seed(0)
    base = conv4(3, (12, 12, 1), filters=4)
    fused_ops = {"FusedBatchNormV3", "FusedBatchNormGradV3"}
    # The default (no option given) is the fused op, forward and backward.
    assert fused_ops <= _op_types(base)
    assert fused_ops <= _op_types(base, fused_batch_norm=True)
    plain = _op_types(base, fused_batch_norm=False)
    assert not {t for t in plain if t.startswith("FusedBatchNorm")}, plain
    assert "Rsqrt" in plain  # the plain ops' normalization
    # batched_functional_call passes the option to the kernel; unknown keys are ignored.
    x = _fused_test_episode("float32", num_tasks=2).query_x
    params = [tf.broadcast_to(p, [2] + p.shape.as_list()) for p in functional.get_params(base)]

    def ops_of(options):
        call = tf.function(lambda x: task_batching.batched_functional_call(
            base, params, x, kernel_options=options))
        return {op.type for op in call.get_concrete_function(x).graph.get_operations()}

    assert "FusedBatchNormV3" in ops_of(None)
    assert "FusedBatchNormV3" in ops_of({"some_other_kernel_option": 1})
    assert "FusedBatchNormV3" not in ops_of({"fused_batch_norm": False})


def test_fused_batch_norm_is_a_maml_setting_a_config_field_and_a_trainer_flag():
    from absl import flags

    from keras_meta.cli import train_maml
    from keras_meta.training import build_maml
    from keras_meta.training.config import MAMLTrainConfig

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    base = conv4(3, (8, 8, 1), filters=2)
    assert km.MAML(base, loss=loss).objective().fused_batch_norm is True  # the default
    maml = km.MAML(base, loss=loss, fused_batch_norm=False)
    assert maml.objective().fused_batch_norm is False
    config = maml.get_config()
    assert config["fused_batch_norm"] is False
    assert km.MAML.from_config(config).fused_batch_norm is False
    legacy = maml.get_config()  # (a fresh one: deserializing consumes the nested model's)
    del legacy["fused_batch_norm"]  # a config saved before the option existed
    assert km.MAML.from_config(legacy).fused_batch_norm is True
    with pytest.raises(ValueError, match="fused_batch_norm must be True or False"):
        km.MAML(base, loss=loss, fused_batch_norm="no")

    assert MAMLTrainConfig().fused_batch_norm is True
    with pytest.raises(ValueError, match="Invalid fused_batch_norm='no'"):
        MAMLTrainConfig(fused_batch_norm="no")

    def parse(argv):
        fv = flags.FlagValues()
        train_maml.define_flags(fv)
        fv(["train_maml"] + argv)
        return train_maml.config_from_flags(fv)

    omniglot = ["--task_family=omniglot"]  # (the sinusoid MLP has no batch norm)
    assert parse(omniglot).fused_batch_norm is True
    assert parse(omniglot + ["--nofused_batch_norm"]).fused_batch_norm is False
    assert parse(omniglot + ["--fused_batch_norm=false"]).fused_batch_norm is False
    run_config = parse(omniglot + ["--nofused_batch_norm"])
    assert build_maml(run_config, mlp(), "mse").fused_batch_norm is False


def test_mixed_bfloat16_fused_kernels_take_bfloat16_and_match_the_cast_plain_form(grouped_gradients):
    grouped_gradients("bfloat16")
    # Under mixed_bfloat16 the fused batch norm takes the bfloat16 activations as they are
    # (no casts around it; layers/batched_batch_norm.py); the plain form casts them to float32
    # and back, with its exact closed-form derivatives. Both see the same bfloat16 network,
    # so the meta-gradients, second-order terms included, must agree to within bfloat16's
    # rounding. (Both are 0.2-2 relative from float32's on this tiny network: bfloat16's own
    # rounding through two inner steps, not something either form adds.)
    keras.utils.set_random_seed(0)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        base = conv4(3, (12, 12, 1), filters=4)
    finally:
        keras.config.set_dtype_policy(previous)
    cast_plain = _meta_gradients(base, "float32", fused_batch_norm=False)
    fused = _relative_errors(_meta_gradients(base, "float32"), cast_plain)
    assert fused.max() < 0.1, fused  # measured 0.001 to 0.024
    # The tolerance can fail: first-order MAML lands far outside it.
    first_order = _relative_errors(_meta_gradients(base, "float32", first_order=True),
                                   cast_plain)
    assert first_order.min() > 0.5, first_order
    objective = _objective(base, "float32", inner_steps=1)
    step = tf.function(lambda e: objective.meta_gradients(functional.get_params(base), e))
    graph = step.get_concrete_function(_fused_test_episode("float32", num_tasks=2)).graph
    kernels = [op for op in graph.get_operations() if op.type == "FusedBatchNormV3"]
    assert kernels and {op.get_attr("T") for op in kernels} == {tf.bfloat16}
