r"""Talking to a model served by TF Serving (REST or gRPC), or answering locally from disk.

A few-shot request carries a support set and a query set, whose first dimensions differ, so the
REST body uses TF Serving's columnar format:

    POST http://HOST:8501/v1/models/NAME[/versions/V]:predict
    {"signature_name": "serving_default",
     "inputs": {"support_images": [[[[...]]]], "support_labels": [0, 1, ...],
                "query_images": [[[[...]]]]}}

and the answer is `{"outputs": {"probabilities": [[...]], "classes": [...], ...}}` (or
`{"outputs": [...]}` when the signature has a single output).

The command line is `keras-meta-client` (`keras_meta.cli.serving_client`).
"""

import json
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf

from keras_meta.export.local import predict_local

PROTOCOLS = ("rest", "grpc")


class ServingError(RuntimeError):
    """The model server answered with an error (bad request, unknown model, failed assert).

    Args:
        message: the server's error text (TF Serving puts the in-graph assertion there).
        status: HTTP status code or gRPC status name, when known.

    Example:

    >>> try:
    ...     rest_predict("localhost:8501", "omniglot", {"query_images": bad})
    ... except ServingError as error:
    ...     print(error.status, error)
    """

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def _tolist(value):
    return np.asarray(value).tolist()


def rest_request_body(inputs, signature_name="serving_default"):
    """The JSON-ready dict of a columnar REST predict request (`{"signature_name", "inputs"}`)."""
    if not inputs:
        raise ValueError("A request needs at least one input.")
    return {"signature_name": signature_name,
            "inputs": {name: _tolist(value) for name, value in inputs.items()}}


def rest_url(server, model_name, version=None):
    """`http://server/v1/models/<name>[/versions/<v>]:predict`."""
    base = server if server.startswith(("http://", "https://")) else f"http://{server}"
    version_part = f"/versions/{int(version)}" if version is not None else ""
    return f"{base.rstrip('/')}/v1/models/{model_name}{version_part}:predict"


def parse_rest_response(body, output_names=None):
    """Numpy outputs of a REST predict response (bytes, str or the decoded dict).

    A single-output signature answers `{"outputs": [...]}` without the name; it is returned
    under `output_names[0]` when given, else under `"outputs"`. `{"error": ...}` raises
    `ServingError`.
    """
    if isinstance(body, (bytes, str)):
        body = json.loads(body)
    if "error" in body:
        raise ServingError(body["error"])
    if "outputs" not in body:
        raise ValueError(f"Expected a columnar response with 'outputs'; got keys {sorted(body)}.")
    outputs = body["outputs"]
    if not isinstance(outputs, dict):
        return {(output_names[0] if output_names else "outputs"): np.asarray(outputs)}
    return {name: np.asarray(value) for name, value in outputs.items()}


def rest_predict(server, model_name, inputs, signature_name="serving_default", version=None,
                 timeout=30.0):
    """Sends one REST predict request with `urllib`; returns the outputs as numpy arrays."""
    data = json.dumps(rest_request_body(inputs, signature_name)).encode()
    request = urllib.request.Request(rest_url(server, model_name, version), data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return parse_rest_response(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            text = json.loads(text).get("error", text)
        except ValueError:
            pass
        raise ServingError(text, status=error.code) from None


def predict_request(model_name, inputs, signature_name="serving_default", version=None):
    """A `PredictRequest`: model_spec (name, signature, version) and one TensorProto per input.

    The one builder of predict requests: the gRPC client sends it, the warmup records hold it.
    """
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return request


def parse_grpc_response(response):
    """Numpy outputs of a `PredictResponse`."""

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def grpc_predict(server, model_name, inputs, signature_name="serving_default", version=None,
                 timeout=30.0):
    """Sends one gRPC Predict call to `server` (host:port); returns numpy outputs."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = predict_request(model_name, inputs, signature_name, version)
    # Few-shot requests carry whole images; the 4 MB gRPC default is too small for 20-way tasks.
    options = [("grpc.max_send_message_length", 256 << 20),
               ("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(server, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            raise ServingError(error.details(), status=error.code().name) from None
    return parse_grpc_response(response)


def load_npz(path):
    """The arrays of an .npz request file, by name."""
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def request(inputs, *, server=None, protocol="rest", model_name=None, signature="serving_default",
            version=None, saved_model_dir=None, timeout=30.0):
    """One prediction through the chosen route: local SavedModel, REST or gRPC."""
    if saved_model_dir:
        return predict_local(saved_model_dir, inputs=inputs, signature_name=signature)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}.")
    send = rest_predict if protocol == "rest" else grpc_predict
    return send(server, model_name, inputs, signature, version, timeout)
