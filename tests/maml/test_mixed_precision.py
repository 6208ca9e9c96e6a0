"""Mixed precision: convergence under mixed_bfloat16 / mixed_float16, inner-loop loss scaling,
and the trainer leaving the global dtype policy as it found it."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.data.sinusoid import sinusoid_episodes
from keras_meta.core.inner_loop import adapt_params
from keras_meta.training import train


@contextlib.contextmanager
def dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def sinusoid_maml(policy):
    with dtype_policy(policy):
        keras.utils.set_random_seed(0)
        maml = km.MAML(km.backbones.mlp(hidden=(40, 40)), inner_lr=0.01, loss="mse")
        maml.compile(keras.optimizers.Adam(3e-3))
    return maml


def query_mse(maml, batch):
    losses, _ = tf.function(lambda e: maml.meta_batch_losses(e, first_order=True))(batch)
    return float(tf.reduce_mean(losses))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_sinusoid_maml_converges_under_mixed_precision(policy):
    held_out = next(iter(sinusoid_episodes(10, 10, 100, seed=99)))
    # The untrained post-adaptation MSE, from the same initialisation in float32 (under
    # mixed_float16 the untrained model's first inner step overflows at the initial loss
    # scale of 2**15; the optimizer lowers it during the first steps).
    untrained = query_mse(sinusoid_maml("float32"), held_out)
    maml = sinusoid_maml(policy)
    assert maml.model.layers[1].compute_dtype == policy.split("_")[1]
    assert all(v.dtype == "float32" for v in maml.trainable_variables)
    step = tf.function(maml.meta_train_step)
    for batch in sinusoid_episodes(10, 10, 10, seed=0).take(400):
        step(batch)
    trained = query_mse(maml, held_out)
    assert np.isfinite(trained)
    assert trained < 0.5 * untrained, (untrained, trained)
    if policy == "mixed_float16":
        # compile wrapped Adam in a LossScaleOptimizer, whose scale the inner loop uses.
        assert isinstance(maml.optimizer, keras.optimizers.LossScaleOptimizer)
        scale = float(maml.optimizer.dynamic_scale.numpy())
        assert scale < 2.0**15  # overflowing steps were skipped and the scale lowered
        assert float(maml._inner_loss_scale()) == scale
    else:
        assert not isinstance(maml.optimizer, keras.optimizers.LossScaleOptimizer)
        assert maml._inner_loss_scale() is None


def _tiny_regression(policy):
    """A loss so small (~1e-13) that its float16 gradients underflow to zero unscaled."""
    with dtype_policy(policy):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    model.set_weights([np.full((4, 1), 0.25, np.float32)])
    x = tf.ones([64, 4])
    y = tf.fill([64, 1], 1.0 + 5e-7)
    return model, km.get_params(model), x, y


def test_inner_loss_scale_rescues_float16_inner_gradients_from_underflow():
    model, params, x, y = _tiny_regression("mixed_float16")
    run = lambda scale: adapt_params(model, params, x, y, loss_fn=keras.losses.mean_squared_error,
                              inner_lr=1.0, loss_scale=scale)[0].numpy() - params[0].numpy()
    ref_model, ref_params, _, _ = _tiny_regression("float32")
    reference = adapt_params(ref_model, ref_params, x, y, loss_fn=keras.losses.mean_squared_error,
                      inner_lr=1.0)[0].numpy() - ref_params[0].numpy()
    assert np.all(reference != 0)
    assert np.all(run(None) == 0)  # the float16 backward pass flushed the gradient to zero
    scaled = run(tf.constant(2.0**12))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, reference, rtol=2e-2)


def test_inner_loss_scale_is_exact_in_float32():
    keras.utils.set_random_seed(3)
    model = km.backbones.mlp(hidden=(8,))
    params = km.get_params(model)
    task = next(iter(sinusoid_episodes(5, 5, seed=1)))
    kwargs = dict(loss_fn=keras.losses.mean_squared_error, inner_lr=0.1, inner_steps=2)
    plain = adapt_params(model, params, task.support_x, task.support_y, **kwargs)
    one = adapt_params(model, params, task.support_x, task.support_y, loss_scale=1.0, **kwargs)
    big = adapt_params(model, params, task.support_x, task.support_y,
                loss_scale=tf.constant(1024.0), **kwargs)
    for a, b, c in zip(plain, one, big):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-6, atol=1e-7)


def test_maml_inner_loss_scale_sources():
    keras.utils.set_random_seed(0)
    plain = km.MAML(km.backbones.mlp(hidden=(4,)), loss="mse")
    plain.compile("adam")
    assert plain._inner_loss_scale() is None
    fixed = km.MAML(km.backbones.mlp(hidden=(4,)), loss="mse", inner_loss_scale=256)
    fixed.compile("adam")
    scale = fixed._inner_loss_scale()
    assert scale.dtype == tf.float32 and float(scale) == 256.0
    assert km.MAML.from_config(fixed.get_config()).inner_loss_scale == 256.0
    with pytest.raises(ValueError, match="inner_loss_scale must be > 0"):
        km.MAML(km.backbones.mlp(hidden=(4,)), loss="mse", inner_loss_scale=0)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_trainer_sets_the_policy_and_restores_it(tmp_path, policy):
    assert keras.config.dtype_policy().name == "float32"
    config = MAMLTrainConfig(num_iterations=30, meta_batch_size=4, num_shots=5, num_queries=5,
                             eval_every=0, num_eval_tasks=8, checkpoint_every=10, log_every=10,
                             eval_inner_steps=(1,), mixed_precision=policy)
    results = train(config, str(tmp_path), verbose=False)
    assert keras.config.dtype_policy().name == "float32"
    assert results["iterations"] == 30
    assert np.isfinite(results["results"]["1"]["loss"]["mean"])
    # Resuming with another loss-scaling setting is refused with a clear message.
    other = "mixed_bfloat16" if policy == "mixed_float16" else "mixed_float16"
    with pytest.raises(ValueError, match=f"mixed_precision: saved '{policy}', now '{other}'"):
        train(config.replace(mixed_precision=other, num_iterations=31), str(tmp_path),
              verbose=False)
    assert keras.config.dtype_policy().name == "float32"
