"""Distributed MAML: MirroredStrategy over 2 logical CPUs against one device.

Logical devices must be configured before TensorFlow initialises, so the comparisons run in
one fresh subprocess (the script below) that prints its measurements as JSON; the assertions
are here. The equalities are exact in real arithmetic: a missing or doubled 1/num_replicas share
of the meta-loss, a replica seeing the wrong tasks, or Keras' per-replica loss scaling leaking
into the inner loop all fail them (the SGD comparison too: Adam alone is blind to a constant
gradient factor).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_meta.training import distribute
from keras_meta.training.config import MAMLTrainConfig

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = r'''
import json, os, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
import keras_meta as km
from keras_meta.data.sinusoid import sinusoid_episodes
from keras_meta.training import distribute as kd

MIRRORED = kd.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
DEFAULT = tf.distribute.get_strategy()
OUT = {}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))


def norm_rel(xs, ys):
    """|x - y| / |x| over all the tensors together."""
    flat = lambda ts: np.concatenate([np.ravel(np.asarray(t, np.float64)) for t in ts])
    x, y = flat(xs), flat(ys)
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))
'''

SCRIPT = PRELUDE + r'''
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training import train


def batch(kind):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        return next(iter(sinusoid_episodes(5, 5, 4, seed=3)))
    return km.Episode(tf.constant(rng.random((4, 3, 8, 8, 1)) + 1.0, tf.float32),
                      tf.constant([[0, 1, 2]] * 4, tf.int32),
                      tf.constant(rng.random((4, 6, 8, 8, 1)) + 1.0, tf.float32),
                      tf.constant([[0, 1, 2, 0, 1, 2]] * 4, tf.int32))


def build(kind, strategy, optimizer):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        if kind == "mlp":
            base = km.backbones.mlp(hidden=(16, 16))
            maml = km.MAML(base, inner_lr=0.05, inner_steps=2, loss="mse",
                           learn_inner_lr="per_variable")
        else:
            base = km.backbones.conv4(3, input_shape=(8, 8, 1), filters=4, batch_norm="per_step",
                                   num_inner_steps=1)
            maml = km.MAML(base, inner_lr=0.1, loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True))
        maml.compile(optimizer())
    return maml


def compare(kind):
    out = {}
    whole = batch(kind)
    dist = iter(kd.distribute_episodes(MIRRORED, tf.data.Dataset.from_tensors(whole).repeat()))

    # (1) The all-reduced meta-gradient against the single-device one of the whole meta-batch.
    sgd = lambda: keras.optimizers.SGD(0.05)
    one, two = build(kind, DEFAULT, sgd), build(kind, MIRRORED, sgd)
    # Both in graphs: eager and graph execution of the same single-device gradient already
    # differ by ~1e-5 (relative) for conv4, from Grappler's rewrites of the convolutions.
    loss1, grads1, _ = tf.function(one.meta_gradients)(whole)
    loss2, grads2 = tf.function(lambda e: kd.distributed_meta_gradients(two, MIRRORED, e))(
        next(dist))
    out["loss"] = [float(loss1), float(loss2)]
    out["grad_rel"] = max(rel(a, b) for a, b in zip(grads1, grads2))  # worst tensor
    out["grad_norm_rel"] = norm_rel(grads1, grads2)
    out["grad_max"] = max(float(np.max(np.abs(g))) for g in grads1)

    # Running statistics: the mean over replicas of the state each reached after its 2 tasks.
    halves = [km.Episode(*(x[i:i + 2] for x in whole)) for i in (0, 2)]
    states = [one.meta_batch_losses(h, return_state=True)[2] for h in halves]

    # (2) Weights after two full meta-train steps, SGD (sensitive to the gradient's scale)
    # and Adam.
    step1, step2 = tf.function(one.meta_train_step), tf.function(
        lambda e: kd.distributed_meta_train_step(two, MIRRORED, e))
    losses = []
    for i in range(2):
        l1, _ = step1(whole)
        l2, preds = step2(next(dist))
        losses.append([float(l1), float(l2)])
        if i == 0 and states[0]:
            out["state_rel"] = max(rel((a + b) / 2, v.numpy()) for a, b, v in
                                   zip(*states, two.model.non_trainable_variables))
    out["step_losses"] = losses
    out["preds_shape"] = list(preds.shape)
    initial = [v.numpy() for v in build(kind, DEFAULT, sgd).trainable_variables]
    moved = [a.numpy() - b for a, b in zip(one.trainable_variables, initial)]
    out["sgd_moved"] = norm_rel(initial, [a.numpy() for a in one.trainable_variables])
    # Relative to the displacement: the weights themselves would hide an error in the update.
    out["sgd_weight_rel"] = norm_rel(moved, [b.numpy() - i for b, i in zip(
        two.trainable_variables, initial)])

    # Adam (its slots mirrored, the step count shared) once, on the MLP: the conv4 case is
    # about the running statistics, and its second-order loop traces are the slowest part here.
    if kind == "mlp":
        adam = lambda: keras.optimizers.Adam(1e-2)
        one, two = build(kind, DEFAULT, adam), build(kind, MIRRORED, adam)
        step1, step2 = tf.function(one.meta_train_step), tf.function(
            lambda e: kd.distributed_meta_train_step(two, MIRRORED, e))
        for _ in range(2):
            step1(whole)
            step2(next(dist))
        out["adam_weight_rel"] = norm_rel(
            [a.numpy() - i for a, i in zip(one.trainable_variables, initial)],
            [b.numpy() - i for b, i in zip(two.trainable_variables, initial)])
        out["adam_iterations"] = int(two.optimizer.iterations.numpy())
    return out


def uneven():
    # An uneven meta-batch is refused with a clear message.
    try:
        kd.distribute_episodes(MIRRORED, sinusoid_episodes(5, 5, 3, seed=0))
    except ValueError as e:
        return str(e)
    return None


def trainer(model_dir):
    out = {}
    tiny = MAMLTrainConfig(num_iterations=4, meta_batch_size=4, num_shots=5, num_queries=5,
                           eval_every=2, num_val_tasks=4, num_eval_tasks=6, checkpoint_every=2,
                           log_every=2, eval_inner_steps=(1,))
    out["default"] = train(tiny, os.path.join(model_dir, "default"), verbose=False)
    out["mirrored"] = train(tiny.replace(strategy="mirrored"), os.path.join(model_dir, "mirrored"),
                            verbose=False)
    out["resumed"] = train(tiny.replace(strategy="mirrored", num_iterations=6),
                           os.path.join(model_dir, "mirrored"), verbose=False)
    try:
        train(tiny.replace(strategy="mirrored", meta_batch_size=3), os.path.join(model_dir, "x"))
        out["uneven"] = None
    except ValueError as e:
        out["uneven"] = str(e)
    return out


# The trainer's runs take a process of their own: its MirroredStrategy's collectives would
# clash with those of MIRRORED above ("Shape mismatch in the collective instance").
if sys.argv[1] == "compare":
    OUT = {"mlp": compare("mlp"), "conv4": compare("conv4")}
else:
    OUT = {**trainer(sys.argv[2]), "uneven_episodes": uneven()}
print("RESULT " + json.dumps(OUT))
'''


def _run(script, *args, tmp_path):
    path = tmp_path / "script.py"
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=str(ROOT), KERAS_BACKEND="tensorflow",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(path), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# One subprocess for both models' comparisons: each separate start would import TensorFlow
# and set up the two logical devices again. Its tests are heavy (two minutes): the same
# equalities hold across two worker processes in test_multi_worker.py (the MLP and conv4 with
# batch norm, through the same `distributed_meta_train_step`), and the mirrored trainer runs
# end to end below.
@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    return _run(SCRIPT, "compare", tmp_path=tmp_path_factory.mktemp("compare"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The trainer's runs (default, mirrored, resumed mirrored) and its uneven refusals."""
    path = tmp_path_factory.mktemp("trainer")
    return path, _run(SCRIPT, "trainer", str(path), tmp_path=path)


def _check_equal_to_one_device(out, adam=True):
    loss1, loss2 = out["loss"]
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert out["grad_max"] > 1e-3  # a real gradient, not zeros compared with zeros
    # float32 rounding: 1e-5 relative (the norm over all tensors, and the worst tensor).
    assert out["grad_norm_rel"] < 1e-5
    assert out["grad_rel"] < 1e-5
    for l1, l2 in out["step_losses"]:
        assert l2 == pytest.approx(l1, rel=1e-5)
    assert out["sgd_moved"] > 1e-3  # the steps changed the weights
    # Relative to the weights' displacement from the initialisation (a wrong replica share
    # of the meta-loss is an error of order 1 for SGD and ~1e-2 for Adam here; float32
    # rounding after two second-order conv4 steps reaches ~2e-5).
    assert out["sgd_weight_rel"] < 1e-4
    if adam:
        assert out["adam_weight_rel"] < 1e-4
        assert out["adam_iterations"] == 2


@pytest.mark.heavy
def test_mirrored_meta_gradient_and_steps_equal_one_device_mlp(compared):
    out = compared["mlp"]
    _check_equal_to_one_device(out)
    assert out["preds_shape"] == [4, 5, 1]  # gathered in the global task order


def test_uneven_meta_batch_is_refused(trained):
    message = trained[1]["uneven_episodes"]
    assert message is not None
    assert "meta-batch size 3 does not divide evenly across the 2 replicas" in message
    assert "multiple of 2" in message


@pytest.mark.heavy
def test_mirrored_meta_gradient_and_steps_equal_one_device_conv4_batch_norm(compared):
    out = compared["conv4"]
    _check_equal_to_one_device(out, adam=False)
    # Per-step batch norm: running statistics are the replicas' mean.
    assert out["state_rel"] < 1e-5


def test_trainer_end_to_end_with_mirrored_strategy(trained):
    tmp_path, out = trained
    default, mirrored, resumed = out["default"], out["mirrored"], out["resumed"]
    assert mirrored["iterations"] == 4 and resumed["iterations"] == 6
    assert mirrored["config"]["strategy"] == "mirrored"
    # Same seed, same tasks: the test MSE after 4 distributed iterations is the single-device one.
    a, b = default["results"]["1"]["loss"]["mean"], mirrored["results"]["1"]["loss"]["mean"]
    assert b == pytest.approx(a, rel=1e-4)
    assert resumed["results"]["1"]["loss"]["mean"] > 0
    assert os.path.exists(tmp_path / "mirrored" / "checkpoints" / "checkpoint")
    assert "does not divide evenly across the 2 replicas" in out["uneven"]


def test_make_strategy_names_and_clear_errors():
    import tensorflow as tf

    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    assert distribute.make_strategy("one_device", devices=["/cpu:0"]).num_replicas_in_sync == 1
    with pytest.raises(ValueError, match=r"Unknown strategy 'gpus'; expected one of \("):
        distribute.make_strategy("gpus")
    with pytest.raises(ValueError, match="tpu='x' applies only to strategy 'tpu'"):
        distribute.make_strategy("mirrored", tpu="x")
    with pytest.raises(RuntimeError, match="Could not find or initialise the TPU 'no-such-tpu'"):
        distribute.make_strategy("tpu", tpu="no-such-tpu")


def test_config_validates_strategy_and_mixed_precision():
    assert MAMLTrainConfig(strategy="mirrored").strategy == "mirrored"
    with pytest.raises(ValueError, match="Invalid strategy='gpus'"):
        MAMLTrainConfig(strategy="gpus")
    with pytest.raises(ValueError, match="Invalid tpu='x'"):
        MAMLTrainConfig(tpu="x")
    with pytest.raises(ValueError, match="Invalid mixed_precision='float16'"):
        MAMLTrainConfig(mixed_precision="float16")
    with pytest.raises(ValueError, match="Invalid jit_compile=True"):
        MAMLTrainConfig(strategy="mirrored", jit_compile=True)
