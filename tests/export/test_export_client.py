"""The serving client: REST JSON and gRPC PredictRequest formats, round trips over real sockets."""

import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent import futures

import numpy as np
import pytest
import tensorflow as tf

from export_helpers import make_task
from keras_meta.cli import serving_client as serving_client_cli
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
    with pytest.raises(ValueError, match="Expected a columnar response"):
        serving_client.parse_rest_response({"predictions": []})


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


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """Answers TF Serving's REST predict route from a local SavedModel (same JSON both ways)."""

    saved_model_dir = None

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path.endswith(":predict")
        try:
            out = predict_local(self.saved_model_dir, inputs=body["inputs"],
                                signature_name=body["signature_name"])
            status, reply = 200, {"outputs": {k: v.tolist() for k, v in out.items()}}
        except (tf.errors.InvalidArgumentError, TypeError) as error:
            status, reply = 400, {"error": str(error)}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_rest_round_trip_over_http(exports):
    _, path = exports("few_shot", "transductive")
    support, labels, query, _ = make_task(seed=12)
    handler = type("Handler", (_RestHandler,), {"saved_model_dir": path})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        inputs = {"support_images": support, "support_labels": labels, "query_images": query}
        out = serving_client.rest_predict(address, "few_shot_transductive", inputs)
        expected = predict_local(path, support, labels, query)
        np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-6)
        inputs["support_labels"] = labels + 5
        with pytest.raises(serving_client.ServingError, match="expected class indices") as err:
            serving_client.rest_predict(address, "few_shot_transductive", inputs)
        assert err.value.status == 400
    finally:
        server.shutdown()
        server.server_close()


def test_grpc_round_trip(exports):
    grpc = pytest.importorskip("grpc")
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    _, path = exports("adapted", "transductive")

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            out = predict_local(path, inputs=inputs,
                                signature_name=request.model_spec.signature_name)
            response = predict_pb2.PredictResponse()
            for name, value in out.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        _, _, query, _ = make_task(seed=13)
        out = serving_client.grpc_predict(f"127.0.0.1:{port}", "adapted", {"images": query})
        expected = predict_local(path, inputs={"images": query})
        np.testing.assert_allclose(out["logits"], expected["logits"], atol=1e-6)
        assert out["classes"].dtype == np.int64
    finally:
        server.stop(None)


def test_command_line_answers_locally(exports, tmp_path, capsys):
    from absl import flags

    _, path = exports("few_shot", "none")
    support, labels, query, _ = make_task(seed=14)
    request = tmp_path / "request.npz"
    np.savez(request, support_images=support, support_labels=labels, query_images=query)
    flag_values = flags.FlagValues()
    serving_client_cli.define_flags(flag_values)
    flag_values(["client", f"--saved_model_dir={path}", f"--npz={request}"])
    original = serving_client_cli.FLAGS
    serving_client_cli.FLAGS = flag_values
    try:
        serving_client_cli.main(["client"])
    finally:
        serving_client_cli.FLAGS = original
    printed = json.loads(capsys.readouterr().out)
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
