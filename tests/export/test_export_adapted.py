"""The adapted SavedModel: batch-independent (frozen batch norm) and faithful to the adaptation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from export_helpers import PREP, make_maml, make_task
from keras_meta.export import freeze_batch_norm, predict_local, read_serving_config
from keras_meta.layers import FrozenBatchNormalization
from serving_stand_ins import session_run


@pytest.mark.parametrize("batch_norm", ["transductive", "per_step", "none"])
def test_prediction_does_not_depend_on_the_batch(exports, batch_norm):
    _, path = exports("adapted", batch_norm)
    _, _, query, _ = make_task(seed=7, queries=6)
    alone = predict_local(path, inputs={"images": query[:1]})["logits"]
    others = np.concatenate([query[:1], 255 - query[1:]])  # very different neighbours
    for batch in (query, others, np.repeat(query[:1], 4, axis=0)):
        together = predict_local(path, inputs={"images": batch})["logits"][:1]
        np.testing.assert_allclose(together, alone, atol=1e-5)


def test_transductive_freezes_the_support_statistics(exports):
    maml, path = exports("adapted", "transductive")
    support, labels, query, _ = make_task()
    adapted = maml.adapt(PREP(support), labels)
    # On the support set itself the frozen model is the transductive model.
    np.testing.assert_allclose(predict_local(path, inputs={"images": support})["logits"],
                               adapted(PREP(support)).numpy(), atol=1e-4)
    # On queries it is not (transductive uses the query batch's statistics): the documented
    # difference, measured in benchmarks/serving.py.
    served = predict_local(path, inputs={"images": query})["logits"]
    assert np.abs(served - adapted(PREP(query)).numpy()).max() > 1e-4
    config = read_serving_config(path)
    assert config.kind == "adapted" and config.support_set_size == len(support)
    assert "support set" in config.get_config()["serving_batch_norm"]


@pytest.mark.parametrize("batch_norm", ["per_step", "none"])
def test_inductive_modes_match_the_adapted_model(exports, batch_norm):
    maml, path = exports("adapted", batch_norm)
    support, labels, query, _ = make_task()
    adapted = maml.adapt(PREP(support), labels)
    out = predict_local(path, inputs={"images": query})
    # per_step: the running statistics of the last slot (training=False), not batch statistics.
    expected = adapted(PREP(query), training=False).numpy()
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4)
    np.testing.assert_array_equal(out["classes"], expected.argmax(-1))
    float_out = predict_local(path, inputs={"images": (query / 255.0).astype(np.float32)},
                              signature_name="serving_float")
    np.testing.assert_allclose(float_out["logits"], expected, atol=1e-4)


def test_adapted_rejects_bad_images(exports):
    _, path = exports("adapted", "transductive")
    _, _, query, _ = make_task()
    # In Python, before the call: the signature declares [None, 12, 12, 3].
    with pytest.raises(ValueError, match=r"images: expected shape \[n, 12, 12, 3\] \(uint8\); "
                                         r"received shape \[5, 12, 12, 1\]\."):
        predict_local(path, inputs={"images": query[..., :1]})
    # As TF Serving runs it (no shape check at its boundary): the graph's own check.
    for bad, received in ((query[..., :1], r"shape\] \[5 12 12 1\]"),
                          (query[None], r"rank\] \[5\] \[with shape\] \[1 5 12 12 3\]")):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"images: expected (a uint8 tensor of rank 4, )?shape "
                                 r"\[n, 12, 12, 3\]; received " + received):
            session_run(path, "serving_default", {"images": bad})


def test_export_adapted_checks_the_support_set(tmp_path):
    from keras_meta.export import export_adapted

    maml = make_maml("none")
    support, labels, _, _ = make_task()
    with pytest.raises(ValueError, match=r"no example of class\(es\) \[2\]"):
        export_adapted(maml, PREP, support, np.where(labels == 2, 0, labels), str(tmp_path), "m")
    with pytest.raises(ValueError, match=r"must lie in 0..2; got"):
        export_adapted(maml, PREP, support, labels + 1, str(tmp_path), "m")
    with pytest.raises(TypeError, match="MAMLTrainConfig, an ImagePreprocessing"):
        export_adapted(maml, "omniglot", support, labels, str(tmp_path), "m")


def test_frozen_layer_config_round_trip_and_freeze_errors():
    layer = FrozenBatchNormalization(axis=-1, epsilon=1e-2, name="bn")
    clone = FrozenBatchNormalization.from_config(layer.get_config())
    assert (clone.axis, clone.epsilon, clone.name) == (-1, 1e-2, "bn")
    maml = make_maml("transductive")
    with pytest.raises(ValueError, match="pass the support set"):
        freeze_batch_norm(maml.model)
    with pytest.raises(ValueError, match="needs a built keras.Model"):
        freeze_batch_norm(keras.layers.Dense(2))
