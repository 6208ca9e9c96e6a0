r"""Talking to a model served by TF Serving (REST or gRPC), or answering locally from disk.

A few-shot request carries a support set and a query set, whose first dimensions differ, so the
REST body uses TF Serving's columnar format:

    POST http://HOST:8501/v1/models/NAME[/versions/V]:predict
    {"signature_name": "serving_default",
     "inputs": {"support_images": [[[[...]]]], "support_labels": [0, 1, ...],
                "query_images": [[[[...]]]]}}

and the answer is `{"outputs": {"probabilities": [[...]], "classes": [...], ...}}` (or
`{"outputs": [...]}` when the signature has a single output). Requests whose inputs share
their first (batch) dimension, such as an adapted model's `{"images": ...}`, may also use the
row format (`request_format="row"`): `{"signature_name": ..., "instances": [{"images": ...},
...]}`, answered `{"predictions": [{"logits": [...], "classes": 2}, ...]}` (a plain list for a
single output). Errors are `{"error": "..."}` with the HTTP status TF Serving maps the error
to (400 for a bad request, 404 for an unknown model or version).

Encoded image files go to the `serving_bytes` signature as `[n]` string tensors. JSON cannot
carry raw bytes, so each file is written as TF Serving's base64 object (it decodes
`{"b64": ...}` for any string input):

    {"signature_name": "serving_bytes",
     "inputs": {"support_images": [{"b64": "/9j/4AAQ..."}, ...], "support_labels": [0, 1, ...],
                "query_images": [{"b64": "iVBORw0K..."}, ...]}}

`file_inputs` reads the files (checking that each is a JPEG, PNG, GIF or BMP) into such inputs;
over gRPC they travel as `DT_STRING` tensors.

The command line is `keras-meta-client` (`keras_meta.cli.serving_client`).
"""

import base64
import json
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf

from keras_meta.export.image_bytes import as_bytes_array, read_image_files
from keras_meta.export.local import predict_local

PROTOCOLS = ("rest", "grpc")
REST_FORMATS = ("columnar", "row")


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


def _is_bytes(value):
    """Whether `value` holds encoded bytes (a string input) rather than numbers."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "S" or (
            value.dtype.kind == "O" and value.size > 0 and
            isinstance(value.flat[0], (bytes, bytearray)))
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return isinstance(value, (bytes, bytearray))


def _as_array(value, name="input"):
    # Bytes stay Python objects: np.asarray would pad them into a fixed-width array and drop
    # their trailing zero bytes.
    return as_bytes_array(value, name) if _is_bytes(value) else np.asarray(value)


def _b64(value):
    """Nested lists of `{"b64": ...}` objects for bytes; plain lists for numbers."""
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_b64(item) for item in value]
    return value


def _json_row(value):
    # One example of an array: a numpy value (numbers) or a Python bytes object (a file).
    return _b64(value.tolist() if hasattr(value, "tolist") else value)


def _tolist(value, name="input"):
    array = _as_array(value, name)
    return _b64(array.tolist()) if array.dtype == object else array.tolist()


def rest_request_body(inputs, signature_name="serving_default", request_format="columnar"):
    """The JSON-ready dict of a REST predict request.

    `request_format="columnar"`: `{"signature_name", "inputs": {name: value}}`, for any inputs.
    `"row"`: `{"signature_name", "instances": [{name: value[i], ...}, ...]}`, one object per
    example, which needs every input to have the same first (batch) dimension.

    Bytes (encoded image files, e.g. from `read_image_files`) become `{"b64": "<base64>"}`
    objects, the form TF Serving decodes into a string tensor; numbers stay JSON numbers.

    Example:

    >>> rest_request_body({"images": [b"\\x89PNG..."]}, "serving_bytes")
    {'signature_name': 'serving_bytes', 'inputs': {'images': [{'b64': 'iVBORy4uLg=='}]}}
    """
    if not inputs:
        raise ValueError("A request needs at least one input.")
    if request_format not in REST_FORMATS:
        raise ValueError(f"request_format must be one of {REST_FORMATS}; got "
                         f"{request_format!r}.")
    if request_format == "columnar":
        return {"signature_name": signature_name,
                "inputs": {name: _tolist(value, name) for name, value in inputs.items()}}
    arrays = {name: _as_array(value, name) for name, value in inputs.items()}
    sizes = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise ValueError(
            "The row format ('instances') needs every input to have the same non-empty first "
            f"dimension; got {sizes}. Use request_format='columnar' (e.g. for a few-shot "
            "request, whose support and query sets differ in size).")
    rows = next(iter(sizes.values()))
    return {"signature_name": signature_name,
            "instances": [{name: _json_row(a[i]) for name, a in arrays.items()}
                          for i in range(rows)]}


def rest_url(server, model_name, version=None):
    """`http://server/v1/models/<name>[/versions/<v>]:predict`."""
    base = server if server.startswith(("http://", "https://")) else f"http://{server}"
    version_part = f"/versions/{int(version)}" if version is not None else ""
    return f"{base.rstrip('/')}/v1/models/{model_name}{version_part}:predict"


def parse_rest_response(body, output_names=None):
    """Numpy outputs of a REST predict response (bytes, str or the decoded dict).

    Columnar (`{"outputs": ...}`, the answer to an `inputs` request) or row format
    (`{"predictions": [...]}`, the answer to an `instances` request: one object per example
    with a value per output, stacked here into one array per output). A single-output
    signature answers without the output's name; it is returned under `output_names[0]` when
    given, else under `"outputs"` / `"predictions"`. `{"error": ...}` raises `ServingError`.
    """
    if isinstance(body, (bytes, str)):
        body = json.loads(body)
    if not isinstance(body, dict):
        raise ValueError(f"Expected a JSON object as the response; got {type(body).__name__}.")
    if "error" in body:
        raise ServingError(body["error"])
    if "outputs" in body:
        key, outputs = "outputs", body["outputs"]
        if isinstance(outputs, dict):
            return {name: np.asarray(value) for name, value in outputs.items()}
    elif "predictions" in body:
        key, outputs = "predictions", body["predictions"]
        if not isinstance(outputs, list):
            raise ValueError(f"Expected 'predictions' to be a list; got "
                             f"{type(outputs).__name__}.")
        if outputs and all(isinstance(row, dict) for row in outputs):
            names = list(outputs[0])
            if any(set(row) != set(names) for row in outputs):
                raise ValueError("The rows of 'predictions' name different outputs.")
            return {name: np.asarray([row[name] for row in outputs]) for name in names}
    else:
        raise ValueError("Expected a columnar response with 'outputs' or a row response with "
                         f"'predictions'; got keys {sorted(body)}.")
    return {(output_names[0] if output_names else key): np.asarray(outputs)}


def rest_predict(server, model_name, inputs, signature_name="serving_default", version=None,
                 timeout=30.0, request_format="columnar"):
    """Sends one REST predict request with `urllib`; returns the outputs as numpy arrays.

    `request_format`: `"columnar"` (`inputs`, any request) or `"row"` (`instances`; inputs
    with a common first dimension). An error answer raises `ServingError` with the server's
    message (the `error` field of its JSON) and the HTTP status.
    """
    data = json.dumps(rest_request_body(inputs, signature_name, request_format)).encode()
    request = urllib.request.Request(rest_url(server, model_name, version), data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return parse_rest_response(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and "error" in decoded:
            text = decoded["error"]
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
        request.inputs[name].CopyFrom(tf.make_tensor_proto(_as_array(value, name)))
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


def file_inputs(*, support_files=None, support_labels=None, query_files=None,
                image_files=None):
    """The inputs of a `serving_bytes` request from image files: few-shot or adapted.

    Each file is read and checked to be a JPEG, PNG, GIF or BMP before anything is sent; the
    graph decodes it at its own size and preprocesses it like `serving_default`'s images.

    Args:
        support_files, support_labels, query_files: a few-shot request (paths, class indices,
            paths).
        image_files: instead, an adapted model's images (paths).

    Returns:
        `{"support_images", "support_labels", "query_images"}` or `{"images"}`: bytes arrays
        (and int32 labels), ready for `request(..., signature="serving_bytes")`.

    Example:

    >>> inputs = file_inputs(support_files=["a0.png", "b0.jpg"], support_labels=[0, 1],
    ...                      query_files=["q.jpg"])
    >>> request(inputs, server="localhost:8501", model_name="omniglot",
    ...         signature="serving_bytes")["classes"]
    """
    few_shot = (support_files, support_labels, query_files)
    if image_files is not None:
        if any(v is not None for v in few_shot):
            raise ValueError("Pass either image_files (an adapted model) or support_files, "
                             "support_labels and query_files (a few-shot model), not both.")
        return {"images": read_image_files(image_files, "images")}
    if any(v is None for v in few_shot):
        raise ValueError("A few-shot request needs support_files, support_labels and "
                         f"query_files; got support_files={support_files!r}, "
                         f"support_labels={support_labels!r}, query_files={query_files!r}.")
    labels = np.asarray(support_labels)
    if labels.ndim != 1 or len(labels) != len(support_files) or (
            len(labels) and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"support_labels: expected one integer class index per support file "
                         f"({len(support_files)}); received {list(support_labels)!r}.")
    return {"support_images": read_image_files(support_files, "support_images"),
            "support_labels": labels.astype(np.int32),
            "query_images": read_image_files(query_files, "query_images")}


def request(inputs, *, server=None, protocol="rest", model_name=None, signature="serving_default",
            version=None, saved_model_dir=None, timeout=30.0):
    """One prediction through the chosen route: local SavedModel, REST or gRPC."""
    if saved_model_dir:
        return predict_local(saved_model_dir, inputs=inputs, signature_name=signature)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}.")
    send = rest_predict if protocol == "rest" else grpc_predict
    return send(server, model_name, inputs, signature, version, timeout)
