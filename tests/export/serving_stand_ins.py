"""Stand-ins for TF Serving's predict APIs (REST and gRPC), answering from SavedModels on disk.

They check what `tensorflow_model_server` checks, in its order, with its messages and its
statuses, so that the client's error paths are tested against the real protocol rather than
against whatever a lenient fake accepts. Sources (tensorflow/serving):

* `model_servers/http_rest_api_handler.cc`: the route
  `POST /v1/models/<name>[/versions/<v>]:predict` (any other `/v1/...` request is
  "Malformed request: <method> <path>"), the model looked up before the signature, an unknown
  signature an INVALID_ARGUMENT `Serving signature name: "<s>" not found in signature def`,
  and every error answered as `{"error": "<message>"}`;
* `model_servers/http_server.cc` (`ToHTTPStatusCode`): INVALID_ARGUMENT and
  FAILED_PRECONDITION -> 400, NOT_FOUND -> 404, UNIMPLEMENTED -> 501, INTERNAL/UNKNOWN -> 500;
* `core/manager.h` / `core/aspired_versions_manager`: an unknown model or version is NOT_FOUND
  `Servable not found for request: Latest(<name>)` / `Specific(<name>, <version>)`;
* `util/json_tensor.cc`: the JSON body (`signature_name` a string; exactly one of `instances`
  (row format, a non-empty list; one object per example with exactly the signature's input
  names, or plain values for a single input) and `inputs` (columnar; an object with every
  input, or a plain value for a single input)); values typed by the signature (an integer
  input takes JSON integers only; a string input JSON strings or `{"b64": "<base64>"}`
  objects, decoded into bytes, and such an object is a value, never a row of named inputs);
  the answer `{"predictions": [...]}` to rows (every output with the same batch size;
  objects when there are several outputs) and `{"outputs": ...}` to columns (the bare value
  when there is a single output); integers are not range-checked (TF Serving casts them, as
  `astype` does here);
* `servables/tensorflow/predict_util.cc`: over gRPC an unknown signature is
  FAILED_PRECONDITION `Serving signature key "<s>" not found.`, the inputs must be exactly
  the signature's (INVALID_ARGUMENT `input size does not match signature: ...` /
  `input tensor alias not found in signature: ...`), `output_filter` names outputs, and the
  response carries the model spec that answered (name, version, signature).

Only `:predict` is served (classify/regress answer UNIMPLEMENTED here) and only on 127.0.0.1.
The model itself runs through the SavedModel's signature functions, as the server's session
would; a dtype the signature does not take is refused before the call, as the session does.
The model server does not compare a request's shapes with the signature's
(tensorflow/serving#1436: "Modelserver does not do any input shape verification"), while a
loaded signature function refuses them in Python; such requests therefore run as the server
runs them, in a graph session on the SavedModel's MetaGraph (`session_run`), where the graph's
own checks answer.
"""

import base64
import binascii
import http.server
import json
import os
import re
import threading
from concurrent import futures

import numpy as np
import tensorflow as tf

from keras_meta.export.local import load_saved_model

HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
               "NOT_FOUND": 404, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNKNOWN": 500}
DEFAULT_SIGNATURE = "serving_default"
_PREDICT_PATH = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)")
_TF_CODE_NAMES = {getattr(tf.errors, name): name for name in (
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED")}


class ServingStatus(Exception):
    """A non-OK status: `code` is the canonical (gRPC) code name, `message` the server's text."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def _dtype_string(dtype):
    """TensorFlow's C++ `DataTypeString` ("float", "uint8", ...), which its messages use."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(tf.as_dtype(dtype).as_datatype_enum)[3:].lower()


def _json_text(value):
    return json.dumps(value, separators=(",", ":"))


class ModelRepository:
    """What a model server has loaded: `{model_name: {version: saved_model_dir}}`."""

    def __init__(self, models):
        self.models = {name: {int(v): path for v, path in versions.items()}
                       for name, versions in models.items()}

    def find(self, name, version=None):
        """`(version, path)` of the servable the request names (latest when no version)."""
        versions = self.models.get(name, {})
        if version is None and versions:
            version = max(versions)
            return version, versions[version]
        if version is not None and version in versions:
            return version, versions[version]
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        raise ServingStatus("NOT_FOUND", f"Servable not found for request: {request}")

    @staticmethod
    def signature(path, signature_name, rest):
        name = signature_name or DEFAULT_SIGNATURE
        signatures = load_saved_model(path).signatures
        if name not in signatures:
            if rest:  # http_rest_api_handler.cc GetInfoMap
                raise ServingStatus("INVALID_ARGUMENT",
                                    f'Serving signature name: "{name}" not found in signature def')
            raise ServingStatus("FAILED_PRECONDITION",  # predict_util.cc RunPredict
                                f'Serving signature key "{name}" not found.')
        return name, signatures[name]

    @staticmethod
    def run(path, signature_name, fn, arrays):
        """Runs a signature on numpy inputs already checked against it; numpy outputs."""
        specs = fn.structured_input_signature[1]
        for i, name in enumerate(sorted(arrays)):
            expected = specs[name].dtype
            if tf.as_dtype(arrays[name].dtype) != expected:
                raise ServingStatus(
                    "INVALID_ARGUMENT", f"Expects arg[{i}] to be {_dtype_string(expected)} but "
                    f"{_dtype_string(arrays[name].dtype)} is provided")
        try:
            if all(specs[name].shape.is_compatible_with(value.shape)
                   for name, value in arrays.items()):
                out = fn(**{name: tf.constant(value, specs[name].dtype)
                            for name, value in arrays.items()})
                return {name: value.numpy() for name, value in out.items()}
            return session_run(path, signature_name, arrays)
        except tf.errors.OpError as error:
            raise ServingStatus(_TF_CODE_NAMES.get(error.error_code, "UNKNOWN"),
                                error.message) from None


_SESSIONS = {}


def session_run(saved_model_dir, signature_name, arrays):
    """Runs a signature as tensorflow_model_server does: a TF1 session on the MetaGraph.

    The C++ session (with Grappler, as in the server) takes whatever shape is fed; only
    Python's `Session.run` would compare the feeds with the placeholders' shapes, so the feeds
    go to the session through `_call_tf_sessionrun`, as the server's `Session::Run` receives
    them. Returns numpy outputs by name; errors are the session's `tf.errors.OpError`s.
    """
    key = os.path.realpath(saved_model_dir)
    if key not in _SESSIONS:
        graph = tf.Graph()
        with graph.as_default():
            session = tf.compat.v1.Session(graph=graph)
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], key)
        _SESSIONS[key] = (graph, session, meta_graph)
    graph, session, meta_graph = _SESSIONS[key]
    signature = meta_graph.signature_def[signature_name]
    feeds = {graph.get_tensor_by_name(signature.inputs[name].name)._as_tf_output(): value
             for name, value in arrays.items()}
    names = sorted(signature.outputs)
    fetches = [graph.get_tensor_by_name(signature.outputs[name].name)._as_tf_output()
               for name in names]
    return dict(zip(names, session._call_tf_sessionrun(None, feeds, fetches, [], None)))


# -- REST -----------------------------------------------------------------------------------------

def _leaves(value):
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _type_error(value, dtype):
    kind = {bool: "Boolean", str: "String", dict: "Object"}.get(type(value), "Number")
    return ServingStatus("INVALID_ARGUMENT", f"JSON Value: {_json_text(value)} Type: {kind} is "
                         f"not of expected type: {_dtype_string(dtype)}")


def _is_b64(value):
    """TF Serving's base64 object: exactly one key, "b64", holding a string."""
    return isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str)


def _string(leaf):
    if isinstance(leaf, str):
        return leaf.encode()
    if isinstance(leaf, dict):
        if not _is_b64(leaf):
            raise ServingStatus("INVALID_ARGUMENT", f"JSON Value: {_json_text(leaf)} not "
                                "formatted correctly for base64 data")
        try:
            return base64.b64decode(leaf["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ServingStatus("INVALID_ARGUMENT", "Unable to base64 decode") from None
    raise _type_error(leaf, tf.string)


def _typed_strings(value, spec):
    shape = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    leaves = [_string(leaf) for leaf in _leaves(value)]
    if len(leaves) != int(np.prod(shape)):
        raise ServingStatus("INVALID_ARGUMENT", f"Encountered list at unexpected size in the "
                            f"value of input {spec.name} (not a dense tensor)")
    array = np.empty(len(leaves), dtype=object)
    array[:] = leaves
    return array.reshape(shape)


def _typed(value, spec):
    """A JSON value as an array of the signature's dtype, or INVALID_ARGUMENT (json_tensor.cc)."""
    dtype = spec.dtype
    if dtype == tf.string:
        return _typed_strings(value, spec)
    for leaf in _leaves(value):  # the first value of the wrong JSON type, as TF Serving reports
        if isinstance(leaf, bool) or not isinstance(leaf, (int, float)) or (
                dtype.is_integer and not isinstance(leaf, int)):
            raise _type_error(leaf, dtype)
    try:
        array = np.array(value)
    except ValueError:
        array = None
    if array is None or array.dtype == object:
        raise ServingStatus("INVALID_ARGUMENT", f"Encountered list at unexpected size in the "
                            f"value of input {spec.name} (not a dense tensor)")
    return array.astype(dtype.as_numpy_dtype)


def _from_instances(instances, specs):
    if not isinstance(instances, list):
        raise ServingStatus("INVALID_ARGUMENT", "JSON Value: ... Excepting 'instances' to be "
                            "an list/array")
    if not instances:
        raise ServingStatus("INVALID_ARGUMENT", "JSON Value: ... No values in 'instances' array")
    names = sorted(specs)
    objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not objects and len(names) > 1:
        raise ServingStatus("INVALID_ARGUMENT", "instances is a plain list, but expecting list "
                            "of objects as multiple input tensors required as per tensorinfo_map")
    columns = {name: [] for name in names}
    for i, item in enumerate(instances):
        if objects != (isinstance(item, dict) and not _is_b64(item)):
            kind = "object but got list" if objects else "value/list but got object"
            raise ServingStatus("INVALID_ARGUMENT", f"Expecting {kind} at item {i} of input list")
        if objects and sorted(item) != names:
            raise ServingStatus(
                "INVALID_ARGUMENT", f"Failed to process element: {i} of 'instances' list. JSON "
                f"object: {_json_text(item)} must only have keys: {','.join(names)}")
        for name in names:
            columns[name].append(item[name] if objects else item)
    arrays = {}
    for name in names:
        shapes = {np.shape(v) for v in columns[name]}
        if len(shapes) > 1:
            first, other = np.shape(columns[name][0]), next(s for s in shapes
                                                             if s != np.shape(columns[name][0]))
            raise ServingStatus(
                "INVALID_ARGUMENT", f"Failed to process element of 'instances' list, key: {name}"
                f". Error: Expecting shape {list(first)} but got: {list(other)}")
        arrays[name] = _typed(columns[name], specs[name])
    return arrays


def _from_inputs(inputs, specs):
    names = sorted(specs)
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(names) > 1:
            raise ServingStatus("INVALID_ARGUMENT", "inputs is a plain value/list, but expecting "
                                "an object as multiple input tensors required as per "
                                "tensorinfo_map")
        return {names[0]: _typed(inputs, specs[names[0]])}
    arrays = {}
    for name in names:  # keys the signature does not take are not read, as TF Serving does
        if name not in inputs:
            raise ServingStatus("INVALID_ARGUMENT",
                                f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _typed(inputs[name], specs[name])
    return arrays


def _rows(outputs):
    batch = None
    for name in sorted(outputs):
        value = outputs[name]
        if value.ndim == 0:
            raise ServingStatus("INVALID_ARGUMENT", f"Tensor name: {name} has no shape information ")
        if batch is not None and value.shape[0] != batch:
            raise ServingStatus("INVALID_ARGUMENT", f"Tensor name: {name} has inconsistent batch "
                                f"size: {value.shape[0]} expecting: {batch}")
        batch = value.shape[0]
    if len(outputs) == 1:
        return next(iter(outputs.values())).tolist()
    return [{name: value[i].tolist() for name, value in outputs.items()} for i in range(batch)]


def rest_predict(repository, path, raw_body):
    """`(http_status, reply)` for one POST to `path`, as TF Serving's REST handler.

    `reply` is the JSON object to send, or `None` outside `/v1/` (TF Serving registers no
    handler there: its HTTP server answers 404 without a JSON body).
    """
    if not path.lower().startswith("/v1/"):
        return 404, None
    try:
        match = _PREDICT_PATH.fullmatch(path)
        if match is None:
            raise ServingStatus("INVALID_ARGUMENT", f"Malformed request: POST {path}")
        name, version, method = match.group(1), match.group(2), match.group(3).lower()
        if method != "predict":
            raise ServingStatus("UNIMPLEMENTED", f"The stand-in serves :predict only, not :{method}")
        version = int(version) if version is not None else None
        if not raw_body:
            raise ServingStatus("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
        try:
            body = json.loads(raw_body)
        except ValueError as error:
            raise ServingStatus("INVALID_ARGUMENT", f"JSON Parse error: {error}") from None
        if not isinstance(body, dict):
            raise ServingStatus("INVALID_ARGUMENT", f"JSON Value: {_json_text(body)} Is not object")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingStatus("INVALID_ARGUMENT", "JSON Value: ... not formatted correctly. "
                                "'signature_name' key must be a string value.")
        _, saved_model = repository.find(name, version)
        _, fn = repository.signature(saved_model, signature_name, rest=True)
        specs = fn.structured_input_signature[1]
        if "instances" in body and "inputs" in body:
            raise ServingStatus("INVALID_ARGUMENT", "JSON Value: ... Not formatted correctly "
                                "expecting only one of 'inputs' or 'instances' keys to exist ")
        if "instances" in body:
            arrays, row = _from_instances(body["instances"], specs), True
        elif "inputs" in body:
            arrays, row = _from_inputs(body["inputs"], specs), False
        else:
            raise ServingStatus("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
        outputs = repository.run(saved_model, signature_name or DEFAULT_SIGNATURE, fn, arrays)
        if row:
            return 200, {"predictions": _rows(outputs)}
        if len(outputs) == 1:
            return 200, {"outputs": next(iter(outputs.values())).tolist()}
        return 200, {"outputs": {k: v.tolist() for k, v in outputs.items()}}
    except ServingStatus as status:
        return HTTP_STATUS.get(status.code, 500), {"error": status.message}


def _handler(repository):
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 30  # seconds a connection may stay silent

        def _reply(self, status, reply):
            data = b"Not Found" if reply is None else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type",
                             "text/plain" if reply is None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._reply(*rest_predict(repository, self.path, raw))

        def do_GET(self):  # noqa: N802
            # The model status/metadata APIs exist in TF Serving; the stand-in does not serve them.
            self._reply(501, {"error": f"The stand-in serves POST :predict only, not GET {self.path}"})

        def log_message(self, *args):
            pass

    return Handler


class RestServer:
    """A threaded HTTP stand-in on 127.0.0.1 (an ephemeral port); a context manager."""

    def __init__(self, models):
        self.repository = ModelRepository(models)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.repository))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self):
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# -- gRPC -----------------------------------------------------------------------------------------

def grpc_predict(repository, request):
    """The `PredictResponse` to a `PredictRequest`, or raises `ServingStatus` (predict_util.cc)."""
    from tensorflow_serving.apis import predict_pb2

    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    if spec.version_label:
        raise ServingStatus("UNIMPLEMENTED", "The stand-in does not serve version labels")
    served_version, saved_model = repository.find(spec.name, version)
    signature_name, fn = repository.signature(saved_model, spec.signature_name, rest=False)
    specs = fn.structured_input_signature[1]
    sent, expected = sorted(request.inputs), sorted(specs)
    if len(sent) != len(expected):
        raise ServingStatus(
            "INVALID_ARGUMENT", f"input size does not match signature: {len(sent)}!="
            f"{len(expected)} len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. Missing but "
            f"required: {{{','.join(sorted(set(expected) - set(sent)))}}}.")
    arrays = {}
    for alias in sent:
        if alias not in specs:
            raise ServingStatus(
                "INVALID_ARGUMENT", f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(expected)}}}.")
        try:
            arrays[alias] = tf.make_ndarray(request.inputs[alias])
        except Exception:  # noqa: BLE001 (any undecodable proto)
            raise ServingStatus("INVALID_ARGUMENT", f"tensor parsing error: {alias}") from None
    output_names = sorted(fn.structured_outputs)
    wanted = list(request.output_filter)
    for alias in wanted:
        if alias not in output_names:
            raise ServingStatus(
                "INVALID_ARGUMENT", f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{','.join(output_names)}}}.")
    if len(set(wanted)) != len(wanted):
        raise ServingStatus("INVALID_ARGUMENT", "duplicate output tensor alias: "
                            + next(a for a in wanted if wanted.count(a) > 1))
    outputs = repository.run(saved_model, signature_name, fn, arrays)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = spec.name
    response.model_spec.version.value = served_version
    response.model_spec.signature_name = signature_name
    for name in wanted or output_names:
        response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
    return response


class GrpcServer:
    """A gRPC `PredictionService` stand-in on 127.0.0.1 (an ephemeral port); a context manager."""

    def __init__(self, models):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        repository = ModelRepository(models)

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
                try:
                    return grpc_predict(repository, request)
                except ServingStatus as status:
                    context.abort(grpc.StatusCode[status.code], status.message)

        self.repository = repository
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(),
                                                                            self._server)
        self._port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self):
        return f"127.0.0.1:{self._port}"

    def __enter__(self):
        self._server.start()
        return self

    def __exit__(self, *exc):
        self._server.stop(grace=None).wait(timeout=10)
