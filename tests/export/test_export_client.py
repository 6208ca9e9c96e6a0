"""The serving client: REST JSON and gRPC PredictRequest formats, round trips over real sockets
to stand-ins that check what TF Serving checks (serving_stand_ins.py), and the error paths."""

import json
import os
import shutil
import socket
import subprocess
import time
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

import serving_stand_ins as stand_ins
from export_helpers import PREP, make_task, reference_logits, run_client_cli
from keras_meta.export import client as serving_client
from keras_meta.export import predict_local


def test_rest_body_is_the_columnar_predict_format():
    inputs = {"support_images": np.zeros((2, 2, 2, 1), np.uint8),
              "support_labels": np.array([0, 1], np.int32),
              "query_images": np.full((1, 2, 2, 1), 255, np.uint8)}
    body = serving_client.rest_request_body(inputs, "serving_float")
    assert set(body) == {"signature_name", "inputs"}
    assert body["signature_name"] == "serving_float"
    decoded = json.loads(json.dumps(body))
    assert decoded["inputs"]["support_labels"] == [0, 1]
    assert decoded["inputs"]["query_images"] == [[[[255], [255]], [[255], [255]]]]
    assert np.asarray(decoded["inputs"]["support_images"]).shape == (2, 2, 2, 1)
    assert serving_client.rest_url("localhost:8501", "omni") == \
        "http://localhost:8501/v1/models/omni:predict"
    assert serving_client.rest_url("http://h:1/", "omni", 3) == \
        "http://h:1/v1/models/omni/versions/3:predict"
    with pytest.raises(ValueError, match="at least one input"):
        serving_client.rest_request_body({})


def test_rest_response_parser():
    out = serving_client.parse_rest_response(
        b'{"outputs": {"probabilities": [[0.25, 0.75]], "classes": [1]}}')
    np.testing.assert_allclose(out["probabilities"], [[0.25, 0.75]])
    assert out["classes"].tolist() == [1]
    single = serving_client.parse_rest_response({"outputs": [[1.5], [2.5]]}, ["predictions"])
    assert single["predictions"].shape == (2, 1)
    with pytest.raises(serving_client.ServingError, match="support_labels: expected"):
        serving_client.parse_rest_response('{"error": "support_labels: expected ..."}')
    # The row format's answer: one object per example (several outputs) or plain values.
    rows = serving_client.parse_rest_response(
        '{"predictions": [{"logits": [0.5, 1.5], "classes": 1}, '
        '{"logits": [2.0, -1.0], "classes": 0}]}')
    np.testing.assert_allclose(rows["logits"], [[0.5, 1.5], [2.0, -1.0]])
    assert rows["classes"].tolist() == [1, 0]
    plain = serving_client.parse_rest_response({"predictions": [[1.5], [2.5]]})
    assert plain["predictions"].shape == (2, 1)
    assert set(serving_client.parse_rest_response({"predictions": [3]}, ["y"])) == {"y"}
    with pytest.raises(ValueError, match="name different outputs"):
        serving_client.parse_rest_response({"predictions": [{"a": 1}, {"b": 2}]})
    with pytest.raises(ValueError, match="'outputs' or a row response with 'predictions'"):
        serving_client.parse_rest_response({"result": []})


def test_rest_row_body_is_the_instances_format():
    images = np.arange(2 * 2 * 2 * 1, dtype=np.uint8).reshape(2, 2, 2, 1)
    body = serving_client.rest_request_body({"images": images}, request_format="row")
    assert set(body) == {"signature_name", "instances"}
    assert body["instances"] == [{"images": images[0].tolist()}, {"images": images[1].tolist()}]
    with pytest.raises(ValueError, match="same non-empty first dimension"):
        serving_client.rest_request_body({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))},
                                         request_format="row")
    with pytest.raises(ValueError, match="request_format must be one of"):
        serving_client.rest_request_body({"a": [1]}, request_format="rows")


def test_grpc_request_fields():
    support = np.arange(2 * 3 * 3 * 1, dtype=np.uint8).reshape(2, 3, 3, 1)
    request = serving_client.predict_request(
        "omni", {"support_images": support, "support_labels": np.array([1, 0], np.int32)},
        "serving_default", version=4)
    assert request.model_spec.name == "omni"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 4
    images = request.inputs["support_images"]
    assert images.dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in images.tensor_shape.dim] == [2, 3, 3, 1]
    assert images.tensor_content == support.tobytes()
    labels = request.inputs["support_labels"]
    assert labels.dtype == tf.int32.as_datatype_enum
    assert [d.size for d in labels.tensor_shape.dim] == [2]
    np.testing.assert_array_equal(tf.make_ndarray(labels), [1, 0])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Round trips and error paths against stand-ins that speak TF Serving's protocol -------------
# (serving_stand_ins.py: the route, model/version lookup, signature, wire formats, statuses and
# messages of tensorflow_model_server, from its sources). Expected values come from the library
# itself (MAML.adapt_and_predict / MAML.adapt), not from the code the stand-ins answer with.

UNKNOWN_SIGNATURE = "serving_nope"
# Errors whose whole message the server composes (the others quote the model's own assertion
# or the offending value).
EXACT_MESSAGES = ("unknown model", "unknown version", "unknown signature", "missing input")


@pytest.fixture(scope="module")
def served(exports):
    """The models the stand-ins hold (name -> {version: SavedModel}) and independent answers.

    "omniglot" is the few-shot export; "adapted" has two versions: 1 the transductive adapted
    export (frozen support-set statistics), 2 the adapted export without batch norm, so that
    which version answered shows in the numbers.
    """
    few_shot_maml, few_shot = exports("few_shot", "transductive")
    maml_v1, adapted_v1 = exports("adapted", "transductive")
    maml_v2, adapted_v2 = exports("adapted", "none")
    support, labels, _, _ = make_task()  # the support set the adapted exports were adapted on
    # The transductive model with its support statistics frozen is, on the support set itself,
    # the adapted transductive model; the model without batch norm is batch-independent.
    expected = {1: maml_v1.adapt(PREP(support), labels)(PREP(support)).numpy(),
                2: maml_v2.adapt(PREP(support), labels)(PREP(support), training=False).numpy()}
    assert np.abs(expected[1] - expected[2]).max() > 1e-2  # the versions are told apart
    models = {"omniglot": {1: few_shot}, "adapted": {1: adapted_v1, 2: adapted_v2}}
    return types.SimpleNamespace(models=models, few_shot_maml=few_shot_maml, support=support,
                                 adapted_logits=expected)


@pytest.fixture(scope="module")
def rest_server(served):
    with stand_ins.RestServer(served.models) as server:
        yield server.address


@pytest.fixture(scope="module")
def grpc_server(served):
    pytest.importorskip("grpc")
    with stand_ins.GrpcServer(served.models) as server:
        yield server.address


def _few_shot_request(seed):
    support, labels, query, _ = make_task(seed=seed)
    return {"support_images": support, "support_labels": labels, "query_images": query}


def _check_few_shot(out, served, inputs):
    logits = reference_logits(served.few_shot_maml, inputs["support_images"],
                              inputs["support_labels"], inputs["query_images"])
    np.testing.assert_allclose(out["logits"], logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(logits).numpy(), atol=1e-5)
    np.testing.assert_array_equal(out["classes"], logits.argmax(-1))


def test_rest_round_trips_in_both_wire_formats(served, rest_server):
    inputs = _few_shot_request(seed=12)
    # Columnar (`inputs`, answered with `outputs`): the only format a few-shot request fits.
    _check_few_shot(serving_client.rest_predict(rest_server, "omniglot", inputs), served, inputs)
    _check_few_shot(serving_client.rest_predict(rest_server, "omniglot", inputs, version=1),
                    served, inputs)
    floats = {**inputs, "support_images": (inputs["support_images"] / 255.0).astype(np.float32),
              "query_images": (inputs["query_images"] / 255.0).astype(np.float32)}
    _check_few_shot(serving_client.rest_predict(rest_server, "omniglot", floats,
                                                signature_name="serving_float"), served, inputs)
    with pytest.raises(ValueError, match="same non-empty first dimension"):
        serving_client.rest_predict(rest_server, "omniglot", inputs, request_format="row")
    # Rows (`instances`, answered with `predictions`), and the version in the URL.
    images = {"images": served.support}
    for version, expected_version in ((None, 2), (2, 2), (1, 1)):
        for request_format in ("row", "columnar"):
            out = serving_client.rest_predict(rest_server, "adapted", images, version=version,
                                              request_format=request_format)
            expected = served.adapted_logits[expected_version]
            np.testing.assert_allclose(out["logits"], expected, atol=1e-4, rtol=1e-4)
            np.testing.assert_array_equal(out["classes"], expected.argmax(-1))
            assert out["probabilities"].shape == expected.shape


@pytest.mark.parametrize("case", ["unknown model", "unknown version", "unknown signature",
                                  "label out of range", "missing input", "float images",
                                  "wrong image size"])
def test_rest_errors_reach_the_client_with_the_servers_message_and_status(rest_server, case):
    inputs = _few_shot_request(seed=13)
    model, version, signature = "omniglot", None, "serving_default"
    status, message = 400, None
    if case == "unknown model":
        model, status = "omniglot_v2", 404
        message = "Servable not found for request: Latest(omniglot_v2)"
    elif case == "unknown version":
        version, status = 7, 404
        message = "Servable not found for request: Specific(omniglot, 7)"
    elif case == "unknown signature":
        signature = UNKNOWN_SIGNATURE
        message = f'Serving signature name: "{UNKNOWN_SIGNATURE}" not found in signature def'
    elif case == "label out of range":
        inputs["support_labels"] = inputs["support_labels"] + 5
        message = "expected class indices in 0..2"
    elif case == "missing input":
        del inputs["query_images"]
        message = "Missing named input: query_images in 'inputs' object."
    elif case == "float images":  # JSON floats for the uint8 signature
        inputs["query_images"] = inputs["query_images"] / 255.0
        message = "is not of expected type: uint8"
    elif case == "wrong image size":
        # TF Serving does not compare the request with the signature's [-1, 12, 12, 3]: the
        # graph's own check answers.
        inputs["query_images"] = inputs["query_images"][:, :10]
        message = "query_images: expected shape [n, 12, 12, 3]; received shape] [5 10 12 3]"
    with pytest.raises(serving_client.ServingError) as error:
        serving_client.rest_predict(rest_server, model, inputs, signature_name=signature,
                                    version=version)
    # The server's message itself (the `error` field), not the JSON around it.
    text = str(error.value)
    assert text == message if case in EXACT_MESSAGES else message in text, text
    assert not text.lstrip().startswith("{"), text
    assert error.value.status == status


def _post(address, path, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{address}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text


def test_rest_stand_in_holds_requests_to_tensorflow_servings_wire_format(served, rest_server):
    images = served.support[:2].tolist()
    route = "/v1/models/adapted/versions/1:predict"
    bad = {
        "both keys": (route, {"instances": images, "inputs": {"images": images}},
                      "expecting only one of 'inputs' or 'instances' keys to exist"),
        "neither key": (route, {"signature_name": "serving_default"},
                        "Missing 'inputs' or 'instances' key"),
        "empty rows": (route, {"instances": []}, "No values in 'instances' array"),
        "unnamed rows, several inputs": (
            "/v1/models/omniglot:predict", {"instances": images},
            "instances is a plain list, but expecting list of objects"),
        "row with an extra key": (route, {"instances": [{"images": images[0], "x": 1}]},
                                  "must only have keys: images"),
        "signature not a string": (route, {"signature_name": 1, "inputs": images},
                                   "'signature_name' key must be a string value"),
        "not JSON": (route, b"{instances", "JSON Parse error"),
        "bad route": ("/v1/models/adapted:predicted", {"inputs": images},
                      "Malformed request: POST /v1/models/adapted:predicted"),
    }
    for name, (path, body, message) in bad.items():
        status, reply = _post(rest_server, path, body)
        assert status == 400, (name, status, reply)
        assert set(reply) == {"error"} and message in reply["error"], (name, reply)
    # What TF Serving accepts: rows as objects or plain values (a single input), columns as an
    # object or a plain value (a single input); rows answer `predictions`, columns `outputs`.
    for body in ({"instances": [{"images": i} for i in images]}, {"instances": images}):
        status, reply = _post(rest_server, route, body)
        assert status == 200 and set(reply) == {"predictions"}
        assert len(reply["predictions"]) == 2
        assert set(reply["predictions"][0]) == {"logits", "probabilities", "classes"}
    for body in ({"inputs": {"images": images}}, {"inputs": images}):
        status, reply = _post(rest_server, route, body)
        assert status == 200 and set(reply) == {"outputs"}
        assert set(reply["outputs"]) == {"logits", "probabilities", "classes"}
    np.testing.assert_allclose(serving_client.parse_rest_response(reply)["logits"],
                               served.adapted_logits[1][:2], atol=1e-4, rtol=1e-4)
    # Outside /v1/ TF Serving has no handler: a bare 404, which the client still reports.
    with pytest.raises(serving_client.ServingError) as error:
        serving_client.rest_predict(f"http://{rest_server}/api", "adapted",
                                    {"images": served.support})
    assert error.value.status == 404 and str(error.value) == "Not Found"


def test_grpc_round_trips_and_model_spec(served, grpc_server):
    from tensorflow_serving.apis import predict_pb2  # noqa: F401  (the stand-in's response)

    inputs = _few_shot_request(seed=14)
    _check_few_shot(serving_client.grpc_predict(grpc_server, "omniglot", inputs), served, inputs)
    for version, expected_version in ((None, 2), (1, 1)):
        out = serving_client.grpc_predict(grpc_server, "adapted", {"images": served.support},
                                          version=version)
        np.testing.assert_allclose(out["logits"], served.adapted_logits[expected_version],
                                   atol=1e-4, rtol=1e-4)
        assert out["classes"].dtype == np.int64
    # The response names what answered, as TF Serving's does; output_filter picks outputs.
    request = serving_client.predict_request("adapted", {"images": served.support})
    request.output_filter.append("classes")
    response = stand_ins.grpc_predict(stand_ins.ModelRepository(served.models), request)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("adapted", 2, "serving_default")
    assert list(response.outputs) == ["classes"]


@pytest.mark.parametrize("case", ["unknown model", "unknown version", "unknown signature",
                                  "label out of range", "missing input", "float images",
                                  "wrong rank", "unknown output"])
def test_grpc_errors_reach_the_client_with_the_servers_details_and_code(grpc_server, case):
    import grpc

    inputs = _few_shot_request(seed=15)
    model, version, signature = "omniglot", None, "serving_default"
    code = "INVALID_ARGUMENT"
    if case == "unknown model":
        model, code = "omniglot_v2", "NOT_FOUND"
        message = "Servable not found for request: Latest(omniglot_v2)"
    elif case == "unknown version":
        version, code = 7, "NOT_FOUND"
        message = "Servable not found for request: Specific(omniglot, 7)"
    elif case == "unknown signature":  # gRPC's predict reports it as a failed precondition
        signature, code = UNKNOWN_SIGNATURE, "FAILED_PRECONDITION"
        message = f'Serving signature key "{UNKNOWN_SIGNATURE}" not found.'
    elif case == "label out of range":
        inputs["support_labels"] = inputs["support_labels"] + 5
        message = "expected class indices in 0..2"
    elif case == "missing input":
        del inputs["query_images"]
        message = ("input size does not match signature: 2!=3 len({support_images,"
                   "support_labels}) != len({query_images,support_images,support_labels}). "
                   "Sent extra: {}. Missing but required: {query_images}.")
    elif case == "float images":
        inputs["query_images"] = (inputs["query_images"] / 255.0).astype(np.float32)
        message = "to be uint8 but float is provided"
    elif case == "wrong rank":  # one image without its batch dimension
        inputs["support_images"] = inputs["support_images"][0]
        message = ("support_images: expected a uint8 tensor of rank 4, shape [n, 12, 12, 3]; "
                   "received rank] [3] [with shape] [12 12 3]")
    if case == "unknown output":  # not reachable through grpc_predict: a raw stub call
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        request = serving_client.predict_request(model, inputs)
        request.output_filter.append("scores")
        with grpc.insecure_channel(grpc_server) as channel:
            with pytest.raises(grpc.RpcError) as error:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                    request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("output tensor alias not found in signature: "
                                                "scores Outputs expected to be in the set {")
        return
    with pytest.raises(serving_client.ServingError) as error:
        serving_client.grpc_predict(grpc_server, model, inputs, signature_name=signature,
                                    version=version)
    text = str(error.value)
    assert text == message if case in EXACT_MESSAGES else message in text, text
    assert error.value.status == code


def test_command_line_answers_locally(exports, tmp_path, capsys):
    _, path = exports("few_shot", "none")
    support, labels, query, _ = make_task(seed=14)
    request = tmp_path / "request.npz"
    np.savez(request, support_images=support, support_labels=labels, query_images=query)
    printed = run_client_cli([f"--saved_model_dir={path}", f"--npz={request}"], capsys)
    np.testing.assert_allclose(printed["probabilities"],
                               predict_local(path, support, labels, query)["probabilities"],
                               atol=1e-6)


@pytest.mark.slow
def test_tensorflow_model_server_if_installed(exports, tmp_path):
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("tensorflow_model_server is not on PATH; the REST/gRPC round trips above "
                    "use stand-in servers")
    _, path = exports("few_shot", "transductive")
    base = os.path.dirname(os.path.dirname(path))
    port = _free_port()
    process = subprocess.Popen([binary, f"--rest_api_port={port}", "--port=0",
                                f"--model_config_file={os.path.join(base, 'models.config')}"])
    try:
        support, labels, query, _ = make_task(seed=15)
        inputs = {"support_images": support, "support_labels": labels, "query_images": query}
        for _ in range(60):
            try:
                out = serving_client.rest_predict(f"127.0.0.1:{port}", "few_shot_transductive",
                                                  inputs)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("tensorflow_model_server did not answer within 60 s")
        np.testing.assert_allclose(out["probabilities"],
                                   predict_local(path, support, labels, query)["probabilities"],
                                   atol=1e-5)
    finally:
        process.terminate()
        process.wait(timeout=30)
