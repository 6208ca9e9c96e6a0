"""The few-shot SavedModel answers like MAML.adapt_and_predict and rejects bad requests."""

import re

import numpy as np
import pytest
import tensorflow as tf

from export_helpers import CLIENT, PREP, WAYS, make_task, reference_logits
from keras_meta.export import predict_local, read_serving_config
from serving_stand_ins import session_run


@pytest.mark.parametrize("batch_norm", ["transductive", "per_step", "none"])
def test_matches_adapt_and_predict(exports, batch_norm):
    maml, path = exports("few_shot", batch_norm)
    support, labels, query, _ = make_task(seed=1)
    expected = reference_logits(maml, support, labels, query)
    out = predict_local(path, support, labels, query)
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4, rtol=1e-4)
    # The probabilities are the served logits' softmax; the logits' own tolerance above is
    # what float rounding between the two graphs leaves (it differs between CPU kernels).
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(out["logits"]).numpy(),
                               atol=1e-6)
    np.testing.assert_array_equal(out["classes"], expected.argmax(-1))
    # Adaptation really happened inside the graph: the answer differs from the initialisation.
    unadapted = maml.adapt_and_predict(PREP(support), labels, PREP(query), steps=0).numpy()
    assert np.abs(out["logits"] - unadapted).max() > 1e-3
    floats = predict_local(path, (support / 255.0).astype(np.float32), labels,
                           (query / 255.0).astype(np.float32), signature_name="serving_float")
    np.testing.assert_allclose(floats["logits"], expected, atol=1e-4, rtol=1e-4)


def test_dynamic_shots_and_queries(exports):
    maml, path = exports("few_shot", "transductive")
    for shots, queries in ((1, 1), (3, 7)):
        support, labels, query, _ = make_task(seed=shots, shots=shots, queries=queries)
        out = predict_local(path, support, labels, query)
        assert out["probabilities"].shape == (queries, WAYS)
        np.testing.assert_allclose(out["logits"], reference_logits(maml, support, labels, query),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_xla_signature_matches(exports):
    maml, path = exports("few_shot", "transductive", jit_compile=True)
    support, labels, query, _ = make_task(seed=2)
    out = predict_local(path, support, labels, query, signature_name="serving_xla")
    np.testing.assert_allclose(out["logits"], reference_logits(maml, support, labels, query),
                               atol=1e-4, rtol=1e-4)
    assert read_serving_config(path).jit_compile


def _bad_requests():
    """name -> (request, in-graph message, whether the signature's declared shapes allow it)."""
    support, labels, query, _ = make_task(seed=3)
    return {
        "wrong rank": ((support[0], labels, query),
                       r"support_images: expected (a uint8 tensor of rank 4, )?shape "
                       r"\[n, 12, 12, 3\]; received (rank\] \[3\] \[with )?shape\] \[12 12 3\]",
                       False),
        # The declared rank used to fold the rank check away: [1, 12, 12, 3, 6] passed it and
        # would have been reshaped into six wrong images.
        "extra dimension": ((support, labels, np.repeat(query[:1, ..., None], 6, axis=-1)),
                            r"query_images: expected a uint8 tensor of rank 4, shape \[n, 12, "
                            r"12, 3\]; received rank\] \[5\] \[with shape\] \[1 12 12 3 6\]",
                            False),
        "wrong size": ((support, labels, query[:, :10]),
                       r"query_images: expected shape \[n, 12, 12, 3\]; received shape\] "
                       r"\[5 10 12 3\]", False),
        "wrong channels": ((support[..., :1], labels, query),
                           r"support_images: expected shape \[n, 12, 12, 3\]", False),
        "label out of range": ((support, np.where(labels == 2, 3, labels), query),
                               r"expected class indices in 0..2 \(3-way model\); received\] "
                               r"\[0 1 3 0 1 3\]", True),
        "negative label": ((support, labels - 1, query), r"expected class indices in 0..2", True),
        "missing class": ((support, np.array([0, 1, 1, 0, 1, 1], np.int32), query),
                          r"must contain every class 0..2 at least once; examples per class "
                          r"received\] \[2 4 0\]", True),
        "label count": ((support, labels[:4], query),
                        r"expected one label per support image, shape\] \[6\] \[; received "
                        r"shape\] \[4\]", True),
        # Either check may fire first (Grappler orders independent asserts); both are clear.
        "labels rank": ((support, labels[None], query),
                        r"support_labels: expected (a rank-1|one label per support image, "
                        r"shape\] \[6\] \[; received shape\] \[1 6\])", False),
        "no queries": ((support, labels, query[:0]), r"query_images: expected at least 1", True),
    }


@pytest.mark.parametrize("case", sorted(_bad_requests()))
def test_bad_requests_fail_clearly_in_the_graph(exports, case):
    # As TF Serving runs them: its session takes any shape (it does not compare requests with
    # the signature's shapes), so the graph's own checks must answer, with Grappler on.
    _, path = exports("few_shot", "transductive")
    (support, labels, query), message, _ = _bad_requests()[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        session_run(path, "serving_default", {
            "support_images": support, "support_labels": labels.astype(np.int32),
            "query_images": query})


@pytest.mark.parametrize("case", sorted(_bad_requests()))
def test_bad_requests_fail_clearly_in_python(exports, case):
    # predict_local names a shape the signature declares impossible before calling it; the
    # other requests reach the graph and get its message.
    _, path = exports("few_shot", "transductive")
    args, message, shape_allowed = _bad_requests()[case]
    if shape_allowed:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            predict_local(path, *args)
        return
    names = ("support_images", "support_labels", "query_images")
    bad = next(n for n, a, ok in zip(names, args, make_task(seed=3)) if a.shape != ok.shape)
    expected = "[n]" if bad == "support_labels" else "[n, 12, 12, 3]"
    received = list(args[names.index(bad)].shape)
    with pytest.raises(ValueError, match=re.escape(f"{bad}: expected shape {expected} (") +
                       r"\w+\); " + re.escape(f"received shape {received}.")):
        predict_local(path, *args)


def test_float_images_out_of_range_and_wrong_dtype(exports):
    _, path = exports("few_shot", "transductive")
    support, labels, query, _ = make_task(seed=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must lie in \[0, 1\]"):
        predict_local(path, support.astype(np.float32), labels, query.astype(np.float32),
                      signature_name="serving_float")
    # The helper names the input; the raw signature (as a server would) refuses the dtype too.
    with pytest.raises(TypeError, match="support_images: expected dtype uint8; received float32"):
        predict_local(path, support.astype(np.float32), labels, query)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    with pytest.raises(TypeError, match=r"Can not cast TensorSpec\(shape=\(6, 12, 12, 3\), "
                                        r"dtype=tf.float32, name='support_images'\) to TensorSpec"
                                        r"\(shape=\(None, 12, 12, 3\), dtype=tf.uint8"):
        fn(support_images=tf.constant(support, tf.float32), support_labels=labels,
           query_images=tf.constant(query))


def test_fixed_shots_are_enforced(exports, tmp_path):
    from export_helpers import make_maml
    from keras_meta.export import export_few_shot

    maml = make_maml("none")
    path = export_few_shot(maml, PREP, str(tmp_path), "fixed", client_image_shape=CLIENT,
                           num_shots=2, float_signature=False, warmup=False)
    support, labels, query, _ = make_task(seed=5, shots=2)
    np.testing.assert_allclose(predict_local(path, support, labels, query)["logits"],
                               reference_logits(maml, support, labels, query), atol=1e-4)
    support, labels, query, _ = make_task(seed=5, shots=1)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"exported for 2 shot\(s\) per class; examples per class received"
                             r"\] \[1 1 1\]"):
        predict_local(path, support, labels, query)
    assert read_serving_config(path).num_shots == 2


def test_learned_inner_rates_travel_with_the_export(tmp_path):
    import keras

    import keras_meta as km
    from keras_meta.export import export_few_shot

    keras.utils.set_random_seed(3)
    base = km.backbones.conv4(WAYS, input_shape=(8, 8, 1), filters=4, batch_norm="none")
    maml = km.MAML(base, inner_lr=0.5, inner_steps=2, learn_inner_lr="per_step",
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Rates unlike the initial value, so a model exported without them would answer otherwise.
    for i, step in enumerate(maml.inner_lrs):
        for v in step:
            v.assign(0.2 + 0.3 * i)
    path = export_few_shot(maml, PREP, str(tmp_path), "learned", client_image_shape=CLIENT,
                           float_signature=False, warmup=False)
    support, labels, query, _ = make_task(seed=6)
    np.testing.assert_allclose(predict_local(path, support, labels, query)["logits"],
                               reference_logits(maml, support, labels, query), atol=1e-4)
    assert len(tf.saved_model.load(path).inner_learning_rates) == 2 * len(
        base.trainable_variables)


@pytest.mark.parametrize("batch_norm", ["per_step", "transductive"])
def test_per_step_answers_do_not_depend_on_the_other_queries(exports, batch_norm):
    # Per-step batch norm (MAML++) predicts the queries from its running statistics, so a
    # query's answer is the same alone and among 15; transductive batch norm normalizes with
    # the query batch (the MAML paper), so there the answers differ.
    _, path = exports("few_shot", batch_norm)
    support, labels, query, _ = make_task(seed=4, queries=15)
    batch = predict_local(path, support, labels, query)["logits"]
    alone = np.concatenate([predict_local(path, support, labels, query[i:i + 1])["logits"]
                            for i in range(len(query))])
    if batch_norm == "per_step":
        np.testing.assert_allclose(alone, batch, rtol=1e-5, atol=1e-5)
    else:
        assert np.abs(alone - batch).max() > 1e-3
