"""The task-batched path with and without grouped-convolution gradients, on any x86 CPU.

TensorFlow's CPU kernels differentiate a grouped convolution only through oneDNN, which it
turns on by default only on some CPUs (`TF_ENABLE_ONEDNN_OPTS` overrides that when it starts).
Each test here starts a fresh process with one setting, so both paths run on every machine:
without oneDNN the batched pass must take the patch form and stay exact, and with it the
tests that force the grouped form (skipped in a process without it) run and pass.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

GROUPED_TESTS = [
    "tests/core/test_batching.py::test_grouped_and_patch_convolutions_agree_to_second_order",
    "tests/core/test_batching.py::test_fused_batch_norm_option_switches_the_op",
    "tests/core/test_shared_start.py::"
    "test_shared_convolution_gives_each_tasks_gradient_and_the_second_order_one",
    "tests/core/test_shared_start.py::"
    "test_step_zero_runs_an_ordinary_convolution_and_later_steps_a_grouped_one",
]

# Without oneDNN: the probe says no, the batched step runs (it failed in Eigen's kernel
# before), takes the patch form, and its second-order meta-gradient equals the loop's.
WITHOUT_ONEDNN = """
import json
import keras, numpy as np, tensorflow as tf
import keras_meta as km
from keras_meta.backbones import conv4, mlp
from keras_meta.core.batching import grouped_convolution_available

keras.utils.set_random_seed(0)
base = conv4(3, (8, 8, 1), filters=4)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
rng = np.random.default_rng(0)
episodes = km.Episode(tf.constant(rng.random((4, 3, 8, 8, 1)), tf.float32),
                      tf.constant(np.tile(np.arange(3), (4, 1)), tf.int32),
                      tf.constant(rng.random((4, 6, 8, 8, 1)), tf.float32),
                      tf.constant(np.tile(np.arange(3).repeat(2), (4, 1)), tf.int32))
grads = {}
for mode in ("batched", "loop"):
    maml = km.MAML(base, inner_lr=0.4, inner_steps=2, loss=loss, task_batching=mode)
    step = tf.function(lambda e, maml=maml: maml.meta_gradients(e)[1])
    graph = step.get_concrete_function(episodes).graph
    grads[mode] = [g.numpy() for g in step(episodes)]
    if mode == "batched":
        ops = {op.type for op in graph.get_operations()}
errors = [float(np.linalg.norm(a - b) / np.linalg.norm(b))
          for a, b in zip(grads["batched"], grads["loop"])]
# Unmeasured, "auto" takes the loop for convolutions here, the batched pass for dense layers;
# measuring says why the batched pass is slow here.
lines = []
auto = km.MAML(base, inner_lr=0.4, loss=loss)
auto.autotune(episodes, repeats=1, use_cache=False, log=lines.append)
# A budget that affords one trace times what auto runs unmeasured here: the loop.
short = km.MAML(base, inner_lr=0.4, loss=loss)
short_choice, short_report = short.autotune(episodes, repeats=1, use_cache=False,
                                            log=lines.append, run_iterations=1)
print(json.dumps({"grouped": bool(grouped_convolution_available(tf.float32)),
                  "batch_matmul": "BatchMatMulV2" in ops, "errors": errors,
                  "auto_conv_batched": km.MAML(base, loss=loss).uses_task_batching,
                  "auto_dense_batched": km.MAML(mlp(), loss="mse").uses_task_batching,
                  "autotune_log": lines, "short_choice": short_choice.label,
                  "short_left_out": short_report["over_budget"]}))
"""


def _run(code_or_args, onednn, timeout=600):
    # Unmeasured "auto" (KERAS_META_AUTOTUNE=0, as every test runs) is part of what is tested.
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_META_AUTOTUNE="0")
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    return subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _grouped_available(onednn):
    proc = _run("import tensorflow as tf\n"
                "from keras_meta.core.batching import grouped_convolution_available\n"
                "print(grouped_convolution_available(tf.float32))", onednn)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1] == "True"


pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="TF_ENABLE_ONEDNN_OPTS switches oneDNN on x86 only")


def test_without_onednn_the_batched_pass_takes_patches_and_matches_the_loop():
    proc = _run(WITHOUT_ONEDNN, "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["grouped"] is False
    assert result["batch_matmul"], "the batched pass should run its convolutions as patches"
    # float32 against float32 in another order of sums (both are exact to second order:
    # tests/core/test_batching.py checks them against float64).
    assert max(result["errors"]) < 1e-4, result["errors"]
    assert result["auto_conv_batched"] is False and result["auto_dense_batched"] is True
    assert any("TF_ENABLE_ONEDNN_OPTS=1" in line for line in result["autotune_log"]), \
        result["autotune_log"]
    # A one-iteration run's measurement: the loop, and nothing else traced.
    assert result["short_choice"] == "loop" and "batched" in result["short_left_out"], result


def test_the_grouped_form_tests_pass_in_a_process_with_onednn(grouped_gradients):
    import tensorflow as tf

    from keras_meta.core.batching import grouped_convolution_available

    if grouped_convolution_available(tf.float32):
        pytest.skip("this process has grouped-convolution gradients: the grouped tests ran "
                    "here already")
    if not _grouped_available("1"):
        pytest.fail("even with TF_ENABLE_ONEDNN_OPTS=1 TensorFlow has no grouped-convolution "
                    "gradients on this x86 CPU")
    proc = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"] + GROUPED_TESTS, "1",
                timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary, summary
