"""Exports load with plain TensorFlow in a process that never imports keras_meta."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from export_helpers import make_task
from keras_meta.export import predict_local

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    inputs_path, outputs_path = sys.argv[1:3]
    data = np.load(inputs_path)
    results = {}
    for i, (few_shot_dir, adapted_dir) in enumerate(zip(sys.argv[3::2], sys.argv[4::2])):
        few_shot = tf.saved_model.load(few_shot_dir).signatures["serving_default"]
        adapted = tf.saved_model.load(adapted_dir).signatures["serving_default"]
        a = few_shot(support_images=tf.constant(data["support_images"]),
                     support_labels=tf.constant(data["support_labels"]),
                     query_images=tf.constant(data["query_images"]))
        b = adapted(images=tf.constant(data["query_images"]))
        results[f"few_shot_probabilities_{i}"] = a["probabilities"].numpy()
        results[f"few_shot_classes_{i}"] = a["classes"].numpy()
        results[f"adapted_logits_{i}"] = b["logits"].numpy()
    assert "keras_meta" not in sys.modules, "the SavedModel pulled in keras_meta"
    np.savez(outputs_path, **results)
    print("ok")
""")


@pytest.mark.slow
def test_fresh_process_matches_in_process(exports, tmp_path):
    modes = ("transductive", "per_step")
    dirs = [(exports("few_shot", m)[1], exports("adapted", m)[1]) for m in modes]
    support, labels, query, _ = make_task(seed=11)
    inputs = tmp_path / "inputs.npz"
    outputs = tmp_path / "outputs.npz"
    np.savez(inputs, support_images=support, support_labels=labels, query_images=query)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # One child for all exports: each TensorFlow start costs seconds on a small machine.
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(inputs), str(outputs)] + [d for p in dirs for d in p],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")
    child = np.load(outputs)
    for i, (few_shot_dir, adapted_dir) in enumerate(dirs):
        here = predict_local(few_shot_dir, support, labels, query)
        np.testing.assert_allclose(child[f"few_shot_probabilities_{i}"], here["probabilities"],
                                   atol=1e-5)
        np.testing.assert_array_equal(child[f"few_shot_classes_{i}"], here["classes"])
        np.testing.assert_allclose(child[f"adapted_logits_{i}"],
                                   predict_local(adapted_dir, inputs={"images": query})["logits"],
                                   atol=1e-5)
