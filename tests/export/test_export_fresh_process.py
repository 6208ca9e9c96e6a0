"""Exports load with plain TensorFlow in a process that never imports keras_meta."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import make_task
from keras_meta.export import predict_local

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    few_shot_dir, adapted_dir, inputs_path, outputs_path = sys.argv[1:]
    data = np.load(inputs_path)
    few_shot = tf.saved_model.load(few_shot_dir).signatures["serving_default"]
    adapted = tf.saved_model.load(adapted_dir).signatures["serving_default"]
    a = few_shot(support_images=tf.constant(data["support_images"]),
                 support_labels=tf.constant(data["support_labels"]),
                 query_images=tf.constant(data["query_images"]))
    b = adapted(images=tf.constant(data["query_images"]))
    assert "keras_meta" not in sys.modules, "the SavedModel pulled in keras_meta"
    np.savez(outputs_path, few_shot_probabilities=a["probabilities"].numpy(),
             few_shot_classes=a["classes"].numpy(), adapted_logits=b["logits"].numpy())
    print("ok", "keras" in sys.modules)
""")


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", ["transductive", "per_step"])
def test_fresh_process_matches_in_process(exports, tmp_path, batch_norm):
    _, few_shot_dir = exports("few_shot", batch_norm)
    _, adapted_dir = exports("adapted", batch_norm)
    support, labels, query, _ = make_task(seed=11)
    inputs = tmp_path / "inputs.npz"
    outputs = tmp_path / "outputs.npz"
    np.savez(inputs, support_images=support, support_labels=labels, query_images=query)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, few_shot_dir, adapted_dir, str(inputs), str(outputs)],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")
    child = np.load(outputs)
    here = predict_local(few_shot_dir, support, labels, query)
    np.testing.assert_allclose(child["few_shot_probabilities"], here["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(child["few_shot_classes"], here["classes"])
    np.testing.assert_allclose(child["adapted_logits"],
                               predict_local(adapted_dir, inputs={"images": query})["logits"],
                               atol=1e-5)
