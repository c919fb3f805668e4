"""The embedded server's REST API, as TF Serving's `http_rest_api_handler` exposes it.

    GET  /v1/models/NAME[/versions/V | /labels/L]            model status
    GET  /v1/models/NAME[/versions/V | /labels/L]/metadata   signature defs
    POST /v1/models/NAME[/versions/V | /labels/L]:predict    "instances" (row) or "inputs"
    POST /v1/models/NAME[/versions/V | /labels/L]:classify   tf.Example "examples" (+ "context")
    POST /v1/models/NAME[/versions/V | /labels/L]:regress

Each request becomes the same request proto the gRPC API takes and runs through the same
`ServingCore`, so REST and gRPC give the same answers and the same errors; an error is
`{"error": "<message>"}` with the HTTP status TF Serving maps its gRPC code to. Binary strings
travel as `{"b64": "..."}` both ways. Standard library only (`http.server`): it is a test and
laptop path, not the production front end.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from serving import codec, status

__all__ = ["RestServer"]

log = logging.getLogger(__name__)

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?/?$"
)
_MAX_BODY = 2**31 - 1


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _model_spec(match: re.Match) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=match["name"])
    if match["version"] is not None:
        spec.version.value = int(match["version"])
    elif match["label"] is not None:
        spec.version_label = match["label"]
    return spec


# -- JSON <-> numpy --------------------------------------------------------------------------------
def _decode_b64(value):
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise _BadRequest("JSON Value: " + json.dumps(value) + " not formatted correctly "
                              "for base64 data")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as err:
            raise _BadRequest(f"Unable to base64 decode: {err}") from None
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    if isinstance(value, str):
        return value.encode()
    raise _BadRequest(f"JSON Value: {json.dumps(value)} Type: {type(value).__name__} "
                      "is not of expected type: string")


def _to_array(value, np_dtype: np.dtype, alias: str) -> np.ndarray:
    if np_dtype == np.dtype(object):
        data = _decode_b64(value)
        try:
            arr = np.empty(np.shape(data) if isinstance(data, list) else (), dtype=object)
            arr[...] = data
        except ValueError:
            raise _BadRequest(f"Failed to process element: {alias} of 'inputs' field: "
                              "expected a rectangular list of strings") from None
        return arr
    try:
        arr = np.asarray(value)
    except ValueError:
        raise _BadRequest(f"Failed to process element: {alias}: list lengths differ "
                          "(the tensor must be rectangular)") from None
    if arr.dtype == object or arr.dtype.kind in "US":
        raise _BadRequest(f"Failed to process element: {alias}: expected numbers of type "
                          f"{np_dtype.name}, got a ragged list or strings")
    if np_dtype.kind in "iu" and arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise _BadRequest(f"Failed to process element: {alias}: expected integers for "
                              f"type {np_dtype.name}")
    if np_dtype.kind in "iu" and arr.size:
        info = np.iinfo(np_dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise _BadRequest(f"Failed to process element: {alias}: value out of range for "
                              f"type {np_dtype.name}")
    return arr.astype(np_dtype)


def _to_json(arr: np.ndarray):
    if arr.dtype == object or arr.dtype.kind == "S":
        def enc(v):
            if isinstance(v, bytes):
                try:
                    return v.decode("utf-8")
                except UnicodeDecodeError:
                    return {"b64": base64.b64encode(v).decode()}
            return v
        return np.vectorize(enc, otypes=[object])(arr).tolist() if arr.size else arr.tolist()
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            out = arr.astype(object)
            out[np.isnan(arr)] = "NaN"
            out[np.isposinf(arr)] = "Infinity"
            out[np.isneginf(arr)] = "-Infinity"
            return out.tolist()
    return arr.tolist()


def _feature(value) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    if not values:
        return feature
    if all(isinstance(v, bool) for v in values) or all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        feature.int64_list.value.extend(int(v) for v in values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(float(v) for v in values)
    else:
        feature.bytes_list.value.extend(_decode_b64(v) if not isinstance(v, bytes) else v
                                        for v in values)
    return feature


def _example(obj) -> example_pb2.Example:
    if not isinstance(obj, dict):
        raise _BadRequest("'examples' must be an array of objects (feature name to value)")
    example = example_pb2.Example()
    for key, value in obj.items():
        example.features.feature[key].CopyFrom(_feature(value))
    return example


# -- the handler -----------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server_version = "TensorFlowServing-embedded"
    protocol_version = "HTTP/1.1"
    core = None  # set per server class

    def log_message(self, fmt, *args) -> None:  # route http.server's logging to `logging`
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: dict | str) -> None:
        data = (body if isinstance(body, str) else json.dumps(body, indent=4)).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: grpc.StatusCode, message: str) -> None:
        self._send(status.http_status(code), status.rest_error_body(message))

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        match = _PATH.match(path)
        try:
            if match is None:
                raise status.malformed_request(method, path)
            if method == "GET" and match["verb"] is None:
                body = self._metadata(match) if match["metadata"] else self._status(match)
            elif method == "POST" and match["verb"] is not None:
                request = self._read_json()
                body = getattr(self, "_" + match["verb"])(match, request)
            else:
                raise status.malformed_request(method, path)
        except status.ServingStatus as err:
            self._error(err.code, err.message)
            return
        except _BadRequest as err:
            self._error(grpc.StatusCode.INVALID_ARGUMENT, err.message)
            return
        except Exception as err:  # a request must never take the server down
            log.exception("REST request failed")
            self._error(grpc.StatusCode.INTERNAL, str(err))
            return
        self._send(200, body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > _MAX_BODY:
            raise _BadRequest("Missing or invalid Content-Length")
        raw = self.rfile.read(int(length))
        if not raw.strip():
            raise status.json_document_empty()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as err:
            raise status.json_parse_error(status.RAPIDJSON_PARSE_ERRORS["value_invalid"],
                                          err.pos) from None
        except RecursionError:  # rapidjson's iterative parser has no such limit; we refuse
            raise status.json_parse_error(status.RAPIDJSON_PARSE_ERRORS["termination"],
                                          0) from None
        except (ValueError, UnicodeDecodeError):
            raise status.json_parse_error(
                status.RAPIDJSON_PARSE_ERRORS["string_invalid_encoding"], 0) from None
        if not isinstance(body, dict):
            raise status.json_not_object(body)
        if "signature_name" in body and not isinstance(body["signature_name"], str):
            raise status.signature_name_not_string(body)
        return body

    # -- endpoints ---------------------------------------------------------------------------------
    def _status(self, match):
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=_model_spec(match))
        response = self.core.get_model_status(request)
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True,
                                         preserving_proto_field_name=True)

    def _metadata(self, match):
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_model_spec(match), metadata_field=["signature_def"])
        response = self.core.get_model_metadata(request)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        spec = json_format.MessageToDict(response.model_spec,
                                         always_print_fields_with_no_presence=True,
                                         preserving_proto_field_name=True)
        return {"model_spec": spec, "metadata": {"signature_def": json_format.MessageToDict(
            sig_map, preserving_proto_field_name=True)}}

    def _predict(self, match, body):
        spec = _model_spec(match)
        spec.signature_name = body.get("signature_name", "") or ""
        has_rows, has_cols = "instances" in body, "inputs" in body
        servable = self.core.manager.resolve(spec)
        key = spec.signature_name or "serving_default"
        if key not in servable.signature_defs:
            raise status.rest_signature_not_found(key)
        inputs, _ = servable.io_specs(key)
        if not inputs:
            raise status.no_input_map(spec.signature_name)
        if has_rows and has_cols:
            raise status.both_inputs_and_instances(body)
        if not has_rows and not has_cols:
            raise status.missing_inputs_or_instances()
        dtypes = {a: codec.tf_dtype_to_numpy(s.tf_dtype) for a, s in inputs.items()}
        request = predict_pb2.PredictRequest(model_spec=spec)
        if has_rows:
            rows = body["instances"]
            if not isinstance(rows, list):
                raise status.instances_not_list(body)
            if not rows:
                raise status.instances_empty(body)
            named = bool(rows) and all(isinstance(r, dict) and "b64" not in r for r in rows)
            if named:
                columns = {a: [r.get(a) for r in rows] for a in rows[0]}
                if any(set(r) != set(rows[0]) for r in rows):
                    raise _BadRequest("Failed to process element: all objects in 'instances' "
                                      "must have the same keys")
            else:
                if len(inputs) != 1:
                    raise _BadRequest("instances must be objects naming each of the inputs "
                                      f"{sorted(inputs)}")
                columns = {next(iter(inputs)): rows}
        else:
            cols = body["inputs"]
            if isinstance(cols, dict) and not (set(cols) == {"b64"}):
                for alias in inputs:
                    if alias not in cols:
                        raise status.missing_named_input(alias)
                columns = cols
            else:
                if len(inputs) != 1:
                    raise _BadRequest("'inputs' must be an object naming each of the inputs "
                                      f"{sorted(inputs)}")
                columns = {next(iter(inputs)): cols}
        for alias, value in columns.items():
            dtype = dtypes.get(alias, np.dtype(np.float32))
            request.inputs[alias].CopyFrom(codec.from_ndarray(_to_array(value, dtype, alias),
                                                              use_tensor_content=True))
        response = self.core.predict(request)
        outputs = {a: codec.to_ndarray(t) for a, t in response.outputs.items()}
        if has_rows:
            if len(outputs) == 1:
                return {"predictions": _to_json(next(iter(outputs.values())))}
            batch = min(len(v) for v in outputs.values()) if outputs else 0
            return {"predictions": [{a: _to_json(v[i]) for a, v in outputs.items()}
                                    for i in range(batch)]}
        if len(outputs) == 1:
            return {"outputs": _to_json(next(iter(outputs.values())))}
        return {"outputs": {a: _to_json(v) for a, v in outputs.items()}}

    def _examples_input(self, body, request) -> None:
        examples = body.get("examples")
        if not isinstance(examples, list):
            raise _BadRequest("'examples' must be a JSON array of objects")
        if "context" in body:
            target = request.input.example_list_with_context
            target.context.CopyFrom(_example(body["context"]))
        else:
            target = request.input.example_list
        for obj in examples:
            target.examples.add().CopyFrom(_example(obj))

    def _classify(self, match, body):
        request = classification_pb2.ClassificationRequest(model_spec=_model_spec(match))
        request.model_spec.signature_name = body.get("signature_name", "") or ""
        self._examples_input(body, request)
        response = self.core.classify(request)
        return {"results": [[[c.label, c.score] for c in row.classes]
                            for row in response.result.classifications]}

    def _regress(self, match, body):
        request = regression_pb2.RegressionRequest(model_spec=_model_spec(match))
        request.model_spec.signature_name = body.get("signature_name", "") or ""
        self._examples_input(body, request)
        response = self.core.regress(request)
        return {"results": [r.value for r in response.result.regressions]}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up early is logged in one line, not a traceback on stderr
        (garbage clients must not be able to flood the log)."""
        err = sys.exc_info()[1]
        if isinstance(err, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            log.debug("REST client %s went away: %s", client_address, err)
            return
        log.exception("REST request from %s failed", client_address)


class RestServer:
    """A threaded HTTP server for the REST API, started beside the gRPC server."""

    def __init__(self, core, *, host: str, port: int, num_threads: int = 16,
                 timeout_s: float = 30.0) -> None:
        handler = type("Handler", (_Handler,), {"core": core, "timeout": timeout_s})
        self._httpd = _HTTPServer((host, port), handler)
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest-api",
                                        daemon=True)
        self._thread.start()
        return self._httpd.server_address[1]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
