"""TF Serving layout: versions, models.config, warmup records, config asset, saved_model_cli."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from export_helpers import CLIENT, PREP, WAYS, make_maml, make_task, reference_logits
from keras_meta.export import (ServingConfig, export_few_shot, freeze_batch_norm, next_version,
                               read_serving_config)
from keras_meta.export.warmup import WARMUP_FILE, read_warmup

CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def test_versions_models_config_and_atomic_layout(tmp_path):
    maml = make_maml("none")
    base = str(tmp_path)
    kwargs = dict(client_image_shape=CLIENT, float_signature=False, warmup=False)
    first = export_few_shot(maml, PREP, base, "omni", **kwargs)
    second = export_few_shot(maml, PREP, base, "omni", **kwargs)
    assert first.endswith(os.path.join("omni", "1")) and second.endswith(os.path.join("omni", "2"))
    assert next_version(os.path.join(base, "omni")) == 3
    assert export_few_shot(maml, PREP, base, "other", version=7, **kwargs).endswith("7")
    assert next_version(os.path.join(base, "other")) == 8
    with pytest.raises(FileExistsError, match="Version 2 already exists"):
        export_few_shot(maml, PREP, base, "omni", version=2, **kwargs)
    with pytest.raises(ValueError, match="version must be a positive int"):
        export_few_shot(maml, PREP, base, "omni", version=0, **kwargs)
    with pytest.raises(ValueError, match="model_name must be"):
        export_few_shot(maml, PREP, base, "bad/name", **kwargs)
    # No staging directory is left behind; TF Serving only ever sees whole versions.
    assert sorted(os.listdir(os.path.join(base, "omni"))) == ["1", "2"]
    assert sorted(os.listdir(os.path.join(base, "other"))) == ["7"]
    config = model_server_config_pb2.ModelServerConfig()
    with open(os.path.join(base, "models.config")) as f:
        text_format.Parse(f.read(), config)
    entries = {c.name: c for c in config.model_config_list.config}
    assert sorted(entries) == ["omni", "other"]
    assert entries["omni"].base_path == os.path.abspath(os.path.join(base, "omni"))
    assert entries["omni"].model_platform == "tensorflow"


def test_config_asset_describes_the_export(exports):
    _, path = exports("few_shot", "per_step")
    with open(os.path.join(path, "assets.extra", "keras_meta_serving_config.json")) as f:
        saved = json.load(f)
    config = read_serving_config(path)
    assert ServingConfig.from_config(saved) == config
    assert (config.kind, config.num_ways, config.num_shots, config.inner_steps) == (
        "few_shot", WAYS, None, 2)
    assert (config.batch_norm, config.inner_lr) == ("per_step", 0.5)
    assert config.preprocessing == {"image_size": [8, 8], "channels": 1, "invert": True} or \
        config.preprocessing == {"image_size": (8, 8), "channels": 1, "invert": True}
    assert config.client_input_shape == CLIENT
    assert config.signatures["serving_default"]["inputs"] == {
        "support_images": "uint8", "support_labels": "int32", "query_images": "uint8"}
    assert config.signatures["serving_float"]["outputs"] == {
        "logits": "float32", "probabilities": "float32", "classes": "int64"}
    with pytest.raises(ValueError, match="kind must be one of"):
        ServingConfig(kind="other", problem="classification", num_ways=3)


def _warmup_reference_logits(maml, kind, inputs):
    """What the library answers for one warmup request's inputs, computed eagerly."""
    if kind == "few_shot":
        return reference_logits(maml, inputs["support_images"], inputs["support_labels"],
                                inputs["query_images"])
    # The adapted export: adapted to make_task()'s support set, batch norm frozen on it.
    support, labels, _, _ = make_task()
    support_x = PREP(support)
    adapted = maml.adapt(support_x, tf.constant(labels), maml.eval_inner_steps)
    served = freeze_batch_norm(adapted, support_x, slot=maml.eval_inner_steps)
    return served(PREP(inputs["images"]), training=False).numpy()


@pytest.mark.parametrize("kind", ["few_shot", "adapted"])
def test_warmup_requests_parse_and_run(exports, kind):
    maml, path = exports(kind, "transductive")
    logs = read_warmup(os.path.join(path, WARMUP_FILE))
    loaded = tf.saved_model.load(path)
    config = read_serving_config(path)
    # One request per signature (the adapted model: batches of 1 and 8 each).
    requests = [log.predict_log.request for log in logs]
    names = sorted(r.model_spec.signature_name for r in requests)
    per_signature = 1 if kind == "few_shot" else 2
    assert names == sorted(["serving_default", "serving_float", "serving_bytes"] * per_signature)
    batch_sizes = []
    for request in requests:
        signature = request.model_spec.signature_name
        assert request.model_spec.name == os.path.basename(os.path.dirname(path))
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        # The request has exactly the signature's inputs, dtypes and the client's image shape.
        assert {k: tf.as_dtype(v.dtype).name for k, v in inputs.items()} == \
            config.signatures[signature]["inputs"]
        images = inputs["query_images" if kind == "few_shot" else "images"]
        if signature == "serving_bytes":
            # PNG files (lossless) of the client's shape: their pixels give the reference.
            assert all(f.startswith(b"\x89PNG") for f in images)
            pixels = {k: np.stack([tf.io.decode_png(f).numpy() for f in v])
                      if k.endswith("images") else v for k, v in inputs.items()}
        else:
            pixels = inputs
        assert pixels["query_images" if kind == "few_shot" else "images"].shape[1:] == CLIENT
        if signature == "serving_float":
            assert 0.0 <= images.min() and images.max() <= 1.0
        if kind == "few_shot":
            assert pixels["support_images"].shape == (WAYS,) + CLIENT
            np.testing.assert_array_equal(inputs["support_labels"], np.arange(WAYS))
            assert len(images) == WAYS
        batch_sizes.append(len(images))

        outputs = {k: v.numpy() for k, v in
                   loaded.signatures[signature](**inputs).items()}
        assert sorted(outputs) == ["classes", "logits", "probabilities"]
        logits = outputs["logits"]
        assert logits.shape == (len(images), WAYS)
        # The logits are the library's own answer to these inputs ...
        np.testing.assert_allclose(logits, _warmup_reference_logits(maml, kind, pixels),
                                   atol=1e-4, rtol=1e-4)
        # ... and the other outputs are derived from them.
        np.testing.assert_allclose(outputs["probabilities"], tf.nn.softmax(logits).numpy(),
                                   atol=1e-6)
        np.testing.assert_array_equal(outputs["classes"], logits.argmax(-1))
        assert outputs["classes"].dtype == np.int64
    if kind == "adapted":
        assert sorted(batch_sizes) == [1, 1, 1, 8, 8, 8]


def _parse_cli(text):
    """{signature: {"inputs": {name: (dtype, shape)}, "outputs": {...}}} from `show --all`."""
    signatures = {}
    current = section = None
    for line in text.splitlines():
        if line.startswith("Concrete Functions"):
            break
        match = re.match(r"signature_def\['(\w+)'\]:", line.strip())
        if match:
            current = signatures.setdefault(match.group(1), {"inputs": {}, "outputs": {},
                                                             "method": None})
            continue
        if current is None:
            continue
        if "contains the following input(s)" in line:
            section = "inputs"
        elif "contains the following output(s)" in line:
            section = "outputs"
        match = re.match(r"\s*Method name is: (\S*)", line)
        if match:
            current["method"] = match.group(1)
        match = re.match(r"\s*(inputs|outputs)\['(\w+)'\] tensor_info:", line)
        if match:
            name = match.group(2)
        match = re.match(r"\s*dtype: (\w+)", line)
        if match:
            current[section][name] = [match.group(1), None]
        match = re.match(r"\s*shape: (.+)", line)
        if match and section:
            current[section][name][1] = match.group(1).strip()
    return signatures


@pytest.mark.slow
def test_saved_model_cli_lists_signatures(exports):
    _, path = exports("few_shot", "transductive", jit_compile=True)
    result = subprocess.run([CLI, "show", "--all", "--dir", path], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    found = _parse_cli(result.stdout)
    assert {"serving_default", "serving_float", "serving_xla", "serving_bytes"} <= set(found)
    default = found["serving_default"]
    # What TF Serving's metadata shows a client: the batch is free, the image shape is not.
    assert default["inputs"] == {"support_images": ["DT_UINT8", "(-1, 12, 12, 3)"],
                                 "support_labels": ["DT_INT32", "(-1)"],
                                 "query_images": ["DT_UINT8", "(-1, 12, 12, 3)"]}
    assert found["serving_bytes"]["inputs"] == {"support_images": ["DT_STRING", "(-1)"],
                                                "support_labels": ["DT_INT32", "(-1)"],
                                                "query_images": ["DT_STRING", "(-1)"]}
    assert found["serving_bytes"]["outputs"] == default["outputs"]
    assert default["outputs"] == {"classes": ["DT_INT64", "(-1)"],
                                  "logits": ["DT_FLOAT", f"(-1, {WAYS})"],
                                  "probabilities": ["DT_FLOAT", f"(-1, {WAYS})"]}
    assert found["serving_float"]["inputs"]["query_images"][0] == "DT_FLOAT"
    assert found["serving_xla"]["inputs"] == default["inputs"]
    assert default["method"] == "tensorflow/serving/predict"


def test_function_aliases_name_the_serving_functions(exports):
    from tensorflow.core.protobuf import saved_model_pb2

    _, path = exports("few_shot", "transductive")
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    aliases = set(proto.meta_graphs[0].meta_info_def.function_aliases.values())
    assert {"few_shot_model", "serving_default", "serving_float"} <= aliases


# The shapes each signature declares: what `saved_model_cli show` and TF Serving's metadata
# endpoint (`GET /v1/models/<name>/metadata`, the SignatureDefs' TensorInfo) tell a client.
IMAGE = [None] + list(CLIENT)
EXPECTED_SHAPES = {
    "few_shot": {
        "serving_default": {"support_images": IMAGE, "support_labels": [None],
                            "query_images": IMAGE},
        "serving_float": {"support_images": IMAGE, "support_labels": [None],
                          "query_images": IMAGE},
        "serving_bytes": {"support_images": [None], "support_labels": [None],
                          "query_images": [None]},
    },
    "adapted": {"serving_default": {"images": IMAGE}, "serving_float": {"images": IMAGE},
                "serving_bytes": {"images": [None]}},
}


def _signature_defs(path):
    """The SignatureDefs TF Serving reads from saved_model.pb (its metadata answer)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    (meta_graph,) = proto.meta_graphs
    return meta_graph.signature_def


@pytest.mark.parametrize("kind", ["few_shot", "adapted"])
def test_signatures_declare_the_client_shapes(exports, kind):
    _, path = exports(kind, "transductive")
    expected = EXPECTED_SHAPES[kind]
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == set(expected)
    for name, inputs in expected.items():
        specs = loaded.signatures[name].structured_input_signature[1]
        assert {k: spec.shape.as_list() for k, spec in specs.items()} == inputs, name
    for name, signature_def in _signature_defs(path).items():
        if name == "__saved_model_init_op":
            continue
        shapes = {alias: [None if d.size == -1 else d.size for d in info.tensor_shape.dim]
                  for alias, info in signature_def.inputs.items()}
        assert shapes == expected[name], name
        assert not any(info.tensor_shape.unknown_rank for info in signature_def.inputs.values())
    # The serving config beside the export says the same.
    assert {name: summary["input_shapes"] for name, summary in
            read_serving_config(path).signatures.items()} == expected


def test_regression_signatures_declare_the_input_shapes(tmp_path):
    import keras

    import keras_meta as km

    keras.utils.set_random_seed(0)
    maml = km.MAML(km.backbones.mlp(hidden=(4,)), inner_lr=0.01, inner_steps=1, loss="mse")
    path = export_few_shot(maml, None, str(tmp_path), "sine", warmup=False)
    specs = tf.saved_model.load(path).signatures["serving_default"].structured_input_signature[1]
    assert {k: spec.shape.as_list() for k, spec in specs.items()} == {
        "support_x": [None, 1], "support_y": [None, 1], "query_x": [None, 1]}
    assert "serving_bytes" not in read_serving_config(path).signatures
