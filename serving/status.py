"""TF Serving's gRPC status codes and error messages, word for word, for the embedded server.

A client must not be able to tell the embedded model server from `tensorflow_model_server` 2.x,
so every error it answers comes from one of the constructors below: each returns a
`ServingStatus` carrying the exact `grpc.StatusCode` and message TF Serving produces, and cites
the source file (github.com/tensorflow/serving, or tensorflow/tensorflow for runtime errors)
whose format string it reproduces. `HTTP_STATUS`/`http_status` give the REST API's mapping of
those codes, `rest_error_body` its JSON error body.

Provenance (read in the stored TF Serving / TensorFlow sources, newest versions found):

* Verified against source text: every constructor not listed below. The `%s` in
  `metadata_field_unsupported` is literal: TF Serving passes a printf-style string to the
  StrCat-based `errors::InvalidArgument`, so the real message reads
  "Metadata field %s is not supportedFIELD".
* Verified against source and against the TensorFlow 2.21 runtime installed here:
  `dtype_mismatch` ("Expects arg[0] to be uint8 but float is provided", DirectSession's feed
  check, which TF Serving's Session::Run path hits for any SavedModel, TF1 or TF2) and
  `tf_dtype_name` (TF's DataTypeString for every DataType enum value).
* Inferred, no TF Serving wording exists: `shape_mismatch` (TF Serving never checks input
  shapes; the graph fails later with an op-specific message, or does not fail) reuses
  TensorFlow's EnsureShape wording; `from_tf_error` strips the Python-side decoration
  ("Graph execution error:", "Detected at node ...", "[Op:...]") that TF's C++ message would
  not carry in TF Serving, but node names inside the message still differ from a Session run.
  `json_value_to_string` approximates rapidjson's pretty printer (numbers may print
  differently); `signature_text` arguments are expected from
  `google.protobuf.text_format.MessageToString`, close to but not byte-identical with C++
  `DebugString()`.
* Not in TF Serving at all, hence not provided: a check that MultiInference tasks name the
  same version (TF Serving resolves the first task's ModelSpec and ignores the others'),
  a "no tasks" message (an empty task list reaches the servable lookup with an empty name and
  fails with `model_spec_missing_name`), and "version and label both set" over gRPC
  (`version` and `version_label` are a proto `oneof`; only REST can ask, see
  `version_and_label_both_set`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple, NoReturn

import grpc

StatusCode = grpc.StatusCode

# ToGRPCStatus (model_servers/grpc_status_util.cc) cuts gRPC details at 1024 characters.
GRPC_MESSAGE_LIMIT = 1024
GRPC_TRUNCATION_SUFFIX = "...TRUNCATED"
# server.cc: builder.SetMaxMessageSize(tensorflow::kint32max) for both directions.
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SIGNATURE_DEF_FIELD = "signature_def"

# util/net_http/server/public/response_code_enum.h + ToHTTPStatusCode (model_servers/
# http_server.cc): the REST API's HTTP status for each canonical code.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 499,
    StatusCode.UNKNOWN: 500,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.ABORTED: 409,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DATA_LOSS: 500,
    StatusCode.UNAUTHENTICATED: 401,
}

# http_rest_api_util.cc: the two URL patterns (RE2 FullMatch, case-insensitive). Groups:
# model name, version, label, then the verb (POST) or the "metadata" sub-resource (GET).
PREDICT_PATH_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)")
MODEL_STATUS_PATH_RE = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?")
# http_rest_api_util.h: only paths matching this reach the handler (others: HTTP 404).
REST_PATH_RE = re.compile(r"(?i)/v1/.*")
REST_HEADERS = (("Content-Type", "application/json"),)

# rapidjson/error/en.h (the version TF Serving vendors): reasons in "JSON Parse error: ...".
RAPIDJSON_PARSE_ERRORS = {
    "document_empty": "The document is empty.",
    "root_not_singular": "The document root must not be followed by other values.",
    "value_invalid": "Invalid value.",
    "object_miss_name": "Missing a name for object member.",
    "object_miss_colon": "Missing a colon after a name of object member.",
    "object_miss_comma_or_curly_bracket": "Missing a comma or '}' after an object member.",
    "array_miss_comma_or_square_bracket": "Missing a comma or ']' after an array element.",
    "string_unicode_escape_invalid_hex": "Incorrect hex digit after \\u escape in string.",
    "string_unicode_surrogate_invalid": "The surrogate pair in string is invalid.",
    "string_escape_invalid": "Invalid escape character in string.",
    "string_miss_quotation_mark": "Missing a closing quotation mark in string.",
    "string_invalid_encoding": "Invalid encoding in string.",
    "number_too_big": "Number too big to be stored in double.",
    "number_miss_fraction": "Miss fraction part in number.",
    "number_miss_exponent": "Miss exponent in number.",
    "termination": "Terminate parsing due to Handler error.",
    "unspecific_syntax_error": "Unspecific syntax error.",
}

# tensorflow/core/framework/types.proto: DataType enum values. DataTypeString() is the enum
# name without "DT_", lower-cased (checked for every value against the TF 2.21 runtime).
_DATA_TYPES = (
    "INVALID", "FLOAT", "DOUBLE", "INT32", "UINT8", "INT16", "INT8", "STRING", "COMPLEX64",
    "INT64", "BOOL", "QINT8", "QUINT8", "QINT32", "BFLOAT16", "QINT16", "QUINT16", "UINT16",
    "COMPLEX128", "HALF", "RESOURCE", "VARIANT", "UINT32", "UINT64", "FLOAT8_E5M2",
    "FLOAT8_E4M3FN", "FLOAT8_E4M3FNUZ", "FLOAT8_E4M3B11FNUZ", "FLOAT8_E5M2FNUZ", "INT4", "UINT4",
    "INT2", "UINT2", "FLOAT4_E2M1FN",
)
_NUMPY_TO_TF = {"float32": "float", "float64": "double", "float16": "half", "object": "string"}


class ServingStatus(Exception):
    """A non-OK TF Serving status: a gRPC code and TF Serving's exact message.

    `str(err)` is `absl::Status::ToString()`'s "CODE: message", the form TF Serving embeds when
    it nests one status in another message.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        if not isinstance(code, grpc.StatusCode) or code is StatusCode.OK:
            raise ValueError(f"ServingStatus needs a non-OK grpc.StatusCode, got {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def error_code(self) -> int:
        """The numeric code (also `tensorflow.error.Code`, e.g. for ReloadConfigResponse.status)."""
        return self.code.value[0]

    @property
    def details(self) -> str:
        """The gRPC status details TF Serving sends: the message cut at 1024 characters."""
        return truncate_for_grpc(self.message)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def rest_body(self) -> str:
        """The REST error body, `{"error": message}` as rapidjson's pretty writer prints it."""
        return rest_error_body(self.message)

    def abort(self, context: grpc.ServicerContext) -> NoReturn:
        """End the RPC the way TF Serving does: this code, the truncated message."""
        context.abort(self.code, self.details)
        raise AssertionError("grpc.ServicerContext.abort returned")  # abort always raises

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"ServingStatus({self.code.name}, {self.message!r})"


class _Fixed(NamedTuple):
    """A TF Serving status whose message takes no argument: calling it makes the exception."""

    code: grpc.StatusCode
    message: str

    def __call__(self) -> ServingStatus:
        return ServingStatus(self.code, self.message)


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status TF Serving's REST API answers for a gRPC code (http_server.cc)."""
    return HTTP_STATUS[code]


def truncate_for_grpc(message: str) -> str:
    """ToGRPCStatus (grpc_status_util.cc): over 1024 characters, keep 1024 + "...TRUNCATED"."""
    if len(message) > GRPC_MESSAGE_LIMIT:
        return message[:GRPC_MESSAGE_LIMIT] + GRPC_TRUNCATION_SUFFIX
    return message


def _rapidjson_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20:
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(
                ch, f"\\u{ord(ch):04X}"))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def rest_error_body(message: str) -> str:
    """MakeJsonFromStatus (util/json_tensor.cc): a PrettyWriter object, 4-space indent."""
    return "{\n    \"error\": " + _rapidjson_string(message) + "\n}"


def json_value_to_string(value: object) -> str:
    """JsonValueToString (json_tensor.cc) approximated: rapidjson pretty print, 4-space indent.

    Inferred: strings, nesting and layout match; floats may print differently (rapidjson's
    Grisu vs Python's repr, e.g. 1e-07 vs 1e-7).
    """
    return json.dumps(value, indent=4, ensure_ascii=False, separators=(",", ": "))


# -- DataType names ---------------------------------------------------------------------------

def tf_dtype_name(dtype: int | str | object) -> str:
    """TF's DataTypeString (`float`, `uint8`, `half`, ...) for an enum, DT_ name or numpy name."""
    if isinstance(dtype, int):
        if 0 < dtype < len(_DATA_TYPES):
            return _DATA_TYPES[dtype].lower()
        if 100 < dtype < 100 + len(_DATA_TYPES):  # reference types print as "float_ref"
            return _DATA_TYPES[dtype - 100].lower() + "_ref"
        raise ValueError(f"Unknown DataType enum value: {dtype}")
    name = str(getattr(dtype, "name", dtype))
    if name.upper().startswith("DT_") and name[3:].upper() in _DATA_TYPES:
        return name[3:].lower()
    if name in _NUMPY_TO_TF:
        return _NUMPY_TO_TF[name]
    if name.startswith(("bytes", "str")):  # numpy fixed-width byte and unicode strings
        return "string"
    if name.upper() in _DATA_TYPES[1:]:
        return name.lower()
    raise ValueError(f"Unknown dtype: {dtype!r}")


def dtype_enum_name(dtype: int | str | object) -> str:
    """DataType_Name (`DT_FLOAT`, ...), the form classifier.cc/regressor.cc messages print."""
    return "DT_" + tf_dtype_name(dtype).upper()


def _shape(dims: Iterable[int | None] | str) -> str:
    # TensorShape::DebugString: "[2,3]", unknown dims as "?". A string is taken as formatted.
    if isinstance(dims, str):
        return dims
    return "[" + ",".join("?" if d is None or d < 0 else str(d) for d in dims) + "]"


def _set(names: Iterable[str]) -> str:
    # absl::StrJoin over a std::set<string>: sorted bytewise (= code point order), "," joined.
    return ",".join(sorted(set(names)))


# -- servable lookup: server_core.cc, core/basic_manager.cc, core/manager.h -------------------

missing_model_spec = _Fixed(StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
"""Request without a model_spec (predict_impl.cc, get_model_metadata_impl.cc,
classification_service.cc, regression_service.cc, get_model_status_impl.cc)."""


model_spec_missing_name = _Fixed(StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
"""ModelSpec with an empty name, every gRPC lookup (ServerCore::ServableRequestFromModelSpec,
server_core.cc). Also what a MultiInference request with no tasks gets."""


def servable_not_found(name: str, version: int | None = None) -> ServingStatus:
    """No available servable (BasicManager::ServingMap::GetUntypedServableHandle,
    core/basic_manager.cc; ServableRequest::DebugString, core/manager.h).

    Unknown model, unknown version and a still-loading version all read the same. A version
    label is resolved to its version first, so pass that version.
    """
    request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return ServingStatus(StatusCode.NOT_FOUND, f"Servable not found for request: {request}")


def unknown_version_label(label: str) -> ServingStatus:
    """A label the model's config does not define (ServerCore::GetModelVersionForLabel)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Unrecognized servable version label: {label}")


version_labels_not_allowed = _Fixed(
    StatusCode.INVALID_ARGUMENT,
    "ModelSpec has 'version_label' set, but it is not currently allowed by "
    "the server.")
"""A version_label with ServerCore::Options.allow_version_labels false (server_core.cc)."""


def model_labels_not_ready(label: str) -> ServingStatus:
    """A label asked before the label map exists (server_core.cc; no space before the label)."""
    return ServingStatus(StatusCode.UNAVAILABLE, f"Model labels does not init yet.{label}")


def version_and_label_both_set(version: int, label: str) -> ServingStatus:
    """REST only: FillModelSpecWithNameVersionAndLabel (http_rest_api_util.cc). Over gRPC the
    two are a oneof, so a request cannot carry both."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Both model version ({version}) and model version label ({label}) "
                         "cannot be supplied.")


# -- GetModelStatus: model_servers/get_model_status_impl.cc -----------------------------------

def model_not_found_in_status(name: str) -> ServingStatus:
    """GetModelStatus without a version, no version ever seen. An empty name is not checked
    over gRPC and ends here too ("... of model " with nothing after)."""
    return ServingStatus(StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")


def version_not_found_in_status(name: str, version: int) -> ServingStatus:
    """GetModelStatus with model_spec.version that the state monitor never saw."""
    return ServingStatus(StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")


# -- Predict: servables/tensorflow/predict_util.cc, tensorflow/cc/saved_model/util.cc ---------

def signature_not_found(key: str) -> ServingStatus:
    """Predict's signature lookup (internal::RunPredict, predict_util.cc)."""
    return ServingStatus(StatusCode.FAILED_PRECONDITION,
                         f'Serving signature key "{key}" not found.')


def wrong_method_name(kind: str, expected: str, actual: str) -> ServingStatus:
    """A signature whose method_name the API refuses. Only with --enable_signature_method_name_
    check (default off, server.h); TF2 SavedModels always say tensorflow/serving/predict.

    kind "prediction": VerifySignature (predict_util.cc) accepts any of the three methods and
    answers INTERNAL; "classification"/"regression" (classifier.cc/regressor.cc) answer
    INVALID_ARGUMENT. `expected` is ignored for "prediction" (it lists all three).
    """
    if kind == "prediction":
        return ServingStatus(StatusCode.INTERNAL,
                             "Expected prediction signature method_name to be one of {"
                             f"{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                             f"Was: {actual}")
    if kind not in ("classification", "regression"):
        raise ValueError(f"kind must be prediction, classification or regression, got {kind!r}")
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Expected {kind} signature method_name to be {expected}. Was: {actual}")


def inputs_mismatch(sent: Iterable[str], expected: Iterable[str]) -> ServingStatus:
    """VerifyRequestInputsSize (predict_util.cc): request and signature input counts differ.

    `sent`: the request's input keys; `expected`: the signature's input aliases. Raised only
    when more are sent than the signature has, or fewer and the signature has no defaults;
    equal counts with other names give `input_alias_missing` (see `check_predict_inputs`).
    """
    sent, expected = set(sent), set(expected)
    return ServingStatus(
        StatusCode.INVALID_ARGUMENT,
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{_set(sent)}}}) != len({{{_set(expected)}}}). "
        f"Sent extra: {{{_set(sent - expected)}}}. "
        f"Missing but required: {{{_set(expected - sent)}}}.")


def input_alias_missing(alias: str, feed_name: str, sent: Iterable[str],
                        defaults: Iterable[str] = ()) -> ServingStatus:
    """GetInputValues (tensorflow/cc/saved_model/util.cc): a signature input neither sent nor
    defaulted. `feed_name` is the signature's TensorInfo.name, e.g. "serving_default_x:0"."""
    return ServingStatus(
        StatusCode.INVALID_ARGUMENT,
        f"Signature input alias: {alias}(feed name: {feed_name}) not found in request and no "
        f"default value provided. Inputs expected to be in the request {{{_set(sent)}}}, or "
        f"default input alias set: {_set(defaults)}")


def invalid_input_names(used: Iterable[str], sent: Iterable[str]) -> ServingStatus:
    """GetInputValues (tensorflow/cc/saved_model/util.cc): request keys the signature lacks,
    reachable only when the signature has defaults."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Inputs contains invalid name. Used request inputs: {_set(used)}, "
                         f"request input: {_set(sent)}")


def tensor_parsing_error(alias: str) -> ServingStatus:
    """A TensorProto that Tensor::FromProto rejects (tensorflow/cc/saved_model/util.cc)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}")


def output_alias_not_found(alias: str, outputs: Iterable[str]) -> ServingStatus:
    """An output_filter entry the signature lacks (PreProcessPrediction, predict_util.cc).
    No period after the alias, as in the source."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"output tensor alias not found in signature: {alias} Outputs expected "
                         f"to be in the set {{{_set(outputs)}}}.")


def duplicate_output_alias(alias: str) -> ServingStatus:
    """An output_filter entry given twice (PreProcessPrediction, predict_util.cc)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")


def dtype_mismatch(expected: int | str | object, provided: int | str | object,
                   index: int = 0) -> ServingStatus:
    """A fed tensor of the wrong dtype: FunctionCallFrame::SetArgs (tensorflow/core/framework/
    function.cc) under DirectSession::Run, which TF Serving's Predict calls for TF1 and TF2
    SavedModels alike. `index` is the input's position among the feeds (0 for one input);
    dtypes as DataType enums, DT_ names, TF or numpy names."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Expects arg[{index}] to be {tf_dtype_name(expected)} but "
                         f"{tf_dtype_name(provided)} is provided")


def shape_mismatch(alias: str, got: Iterable[int | None] | str,
                   expected: Iterable[int | None] | str) -> ServingStatus:
    """Inferred: TF Serving does not check input shapes (the graph fails later with an
    op-specific INVALID_ARGUMENT, or succeeds). Worded as TF's EnsureShape kernel."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Shape of tensor {alias} {_shape(got)} is not compatible with expected "
                         f"shape {_shape(expected)}.")


def check_predict_inputs(sent: Iterable[str], signature_inputs: Mapping[str, str],
                         defaults: Iterable[str] = ()) -> None:
    """Raise TF Serving's error for a Predict request's input keys, or return None.

    `signature_inputs` maps alias -> feed name (TensorInfo.name); `defaults` are the aliases in
    SignatureDef.defaults. Order as predict_util.cc then GetInputValues; where several aliases
    are missing, the C++ proto map's (unspecified) order is replaced by sorted order.
    """
    sent, defaults = set(sent), set(defaults)
    expected = set(signature_inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not defaults):
        raise inputs_mismatch(sent, expected)
    for alias in sorted(expected):
        if alias not in sent and alias not in defaults:
            raise input_alias_missing(alias, signature_inputs[alias], sent, defaults)
    used = sent & expected
    if sent and len(used) != len(sent):
        raise invalid_input_names(used, sent)


def check_output_filter(output_filter: Iterable[str], outputs: Iterable[str]) -> list[str]:
    """The aliases to fetch, in TF Serving's order, or its output_filter error (predict_util.cc).
    An empty filter fetches every signature output."""
    outputs = list(outputs)
    wanted: list[str] = []
    for alias in output_filter:
        if alias not in outputs:
            raise output_alias_not_found(alias, outputs)
        if alias in wanted:
            raise duplicate_output_alias(alias)
        wanted.append(alias)
    return wanted or outputs


# -- GetModelMetadata: servables/tensorflow/get_model_metadata_impl.cc ------------------------

metadata_field_missing = _Fixed(
    StatusCode.INVALID_ARGUMENT,
    "GetModelMetadataRequest must specify at least one metadata_field")
"""Empty metadata_field list; checked before the servable lookup."""


def metadata_field_unsupported(field: str) -> ServingStatus:
    """A metadata_field other than "signature_def". The printf-style "%s" goes to StrCat-based
    errors::InvalidArgument, so it stays literal and the field is glued to the end."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT, f"Metadata field %s is not supported{field}")


# -- Classify / Regress: classifier.cc, regressor.cc, util.cc ---------------------------------

def no_signature_with_name(name: str) -> ServingStatus:
    """Classify/Regress signature lookup (GetClassificationSignatureDef,
    GetRegressionSignatureDef). Predict says `signature_not_found` instead."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"No signature was found with the name: {name}")


expected_one_input = _Fixed(StatusCode.INVALID_ARGUMENT, "Expected one input Tensor.")
"""A classify/regress signature without exactly one input (PreProcessClassification,
PreProcessRegression)."""


def classify_expected_outputs(count: int) -> ServingStatus:
    """A classify signature with neither one nor two outputs (PreProcessClassification)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Expected one or two output Tensors, found {count}")


regress_expected_one_output = _Fixed(StatusCode.INVALID_ARGUMENT, "Expected one output Tensor.")
"""A regress signature without exactly one output (PreProcessRegression)."""


def classify_inputs_missing(signature_text: str) -> ServingStatus:
    """Classify signature without the "inputs" input (PreProcessClassification).
    `signature_text`: the SignatureDef's text format (C++ DebugString)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"No classification inputs found in SignatureDef: {signature_text}")


def classify_outputs_missing(signature_text: str) -> ServingStatus:
    """Classify signature with neither "classes" nor "scores" (PreProcessClassification)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         'Expected classification signature outputs to contain at least one of '
                         f'"classes" or "scores". Signature was: {signature_text}')


def regress_input_missing(signature_text: str) -> ServingStatus:
    """Regress signature without the "inputs" input (PreProcessRegression)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"No regression inputs found in SignatureDef: {signature_text}")


def regress_output_missing(signature_text: str) -> ServingStatus:
    """Regress signature without the "outputs" output (PreProcessRegression)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"No regression outputs found in SignatureDef: {signature_text}")


input_empty = _Fixed(StatusCode.INVALID_ARGUMENT, "Input is empty.")
"""Classify/Regress/MultiInference Input with no examples, or no Input at all
(InputToSerializedExampleTensor, servables/tensorflow/util.cc)."""


def classify_bad_output_shape(name: str, shape: Iterable[int], batch: int) -> ServingStatus:
    """A "classes"/"scores" output that is not [batch_size, num_classes]
    (PostProcessClassificationResult): rank first, then the batch size."""
    shape = list(shape)
    if len(shape) != 2:
        return ServingStatus(StatusCode.INVALID_ARGUMENT,
                             "Expected Tensor shape: [batch_size num_classes] but got "
                             f"{_shape(shape)}")
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Expected {name} output batch size of {batch}. Got: {shape[0]}")


def classify_bad_output_dtype(name: str, dtype: int | str | object) -> ServingStatus:
    """"classes" not DT_STRING or "scores" not DT_FLOAT (PostProcessClassificationResult)."""
    want = "DT_STRING" if name == "classes" else "DT_FLOAT"
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Expected {name} Tensor of {want}. Got: {dtype_enum_name(dtype)}")


def classify_outputs_disagree(num_classes: int, num_scores: int) -> ServingStatus:
    """"classes" and "scores" of different widths (PostProcessClassificationResult)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         "Tensors class and score should match in dim_size(1). Got "
                         f"{num_classes} vs. {num_scores}")


def regress_bad_output_shape(shape: Iterable[int], batch: int) -> ServingStatus:
    """A regression output not [batch_size] or [batch_size, 1] (PostProcessRegressionResult):
    rank first, then the batch size."""
    shape = list(shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        return ServingStatus(StatusCode.INVALID_ARGUMENT,
                             "Expected output Tensor shape to be either [batch_size] or "
                             f"[batch_size, 1] but got {_shape(shape)}")
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         "Input batch size did not match output batch size: "
                         f"{batch} vs. {shape[0]}")


def regress_bad_output_dtype(dtype: int | str | object) -> ServingStatus:
    """A regression output not DT_FLOAT (PostProcessRegressionResult; two spaces, as source)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Expected output Tensor of DT_FLOAT.  Got: {dtype_enum_name(dtype)}")


# -- MultiInference: servables/tensorflow/multi_inference.cc ----------------------------------

multi_inference_empty_model_name = _Fixed(
    StatusCode.INVALID_ARGUMENT,
    "Found ModelSpec with an empty model name.")
"""A task whose ModelSpec has no name (after the first task resolved a servable)."""


multi_inference_different_models = _Fixed(
    StatusCode.INVALID_ARGUMENT,
    "All ModelSpecs in a MultiInferenceRequest must access the same model "
    "name.")
"""Tasks naming different models."""


def multi_inference_duplicate_signature(name: str) -> ServingStatus:
    """Two tasks with the same signature (empty name counts as serving_default)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {name}")


def multi_inference_signature_not_found(name: str) -> ServingStatus:
    """A task's signature missing from the MetaGraphDef."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Requested signature not found in model graph: {name}")


def multi_inference_unsupported_method(method: str) -> ServingStatus:
    """A task whose method_name is neither classify nor regress (predict included)."""
    return ServingStatus(StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {method}")


multi_inference_input_mismatch = _Fixed(
    StatusCode.INVALID_ARGUMENT,
    "Input tensor must be the same for all Signatures.")
"""Tasks whose signatures read different input tensors."""


# -- config and HandleReloadConfigRequest: model_service_impl.cc, server_core.cc --------------

custom_model_config_unsupported = _Fixed(
    StatusCode.INVALID_ARGUMENT,
    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
    "Only ModelConfigList is currently supported")
"""HandleReloadConfigRequest with anything but model_config_list (model_service_impl.cc)."""


def duplicate_model_in_config(name: str) -> ServingStatus:
    """A model name listed twice (ValidateModelConfigList, server_core.cc)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Illegal to list model {name} multiple times in config list")


def relative_base_path(name: str, base_path: str) -> ServingStatus:
    """A relative base_path without --model_config_list_root_dir (ValidateModelConfigList)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Expected model {name} to have an absolute path or URI; got "
                         f"base_path()={base_path}")


missing_platform = _Fixed(
    StatusCode.INVALID_ARGUMENT,
    "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
    "ModelServerConfig::model_platform.")
"""A ModelConfig without model_platform (GetPlatform, server_core.cc). The config file has
no default platform; only --model_name/--model_base_path fill in "tensorflow"."""


def unsupported_platform(name: str, platform: str) -> ServingStatus:
    """A platform absent from the platform config map; only "tensorflow" by default
    (CreateStoragePathRoutes, server_core.cc)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Model {name} requests unsupported platform {platform}")


def platform_changed(name: str, old: str, new: str) -> ServingStatus:
    """A reload that changes a model's platform (ValidateNoModelsChangePlatforms)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Illegal to change a model's platform. For model {name} platform was "
                         f"{old} and new platform requested is {new}")


def label_to_unavailable_version(label: str, version: int, name: str) -> ServingStatus:
    """A version_labels entry naming a version that is not AVAILABLE (UpdateModelVersionLabel-
    Map, server_core.cc). The message names version and model, not the label; at startup every
    label fails this way unless --allow_version_labels_for_unavailable_models."""
    del label  # not part of TF Serving's message
    return ServingStatus(StatusCode.FAILED_PRECONDITION,
                         f"Request to assign label to version {version} of model {name}, which is "
                         "not currently available for inference")


config_labels_not_allowed = _Fixed(
    StatusCode.FAILED_PRECONDITION,
    "Model version labels are not currently allowed by the server.")
"""A config with version_labels while labels are disabled (UpdateModelVersionLabelMap)."""


config_transition_not_allowed = _Fixed(
    StatusCode.FAILED_PRECONDITION,
    "Cannot transition to requested config. It is only legal to transition "
    "from one ModelConfigList to another.")
"""A reload away from ModelConfigList (ServerCore::ReloadConfig)."""


def models_not_available(
        failures: Iterable[tuple[str, int, ServingStatus | None]]) -> ServingStatus:
    """New models of a reload that did not reach AVAILABLE (WaitUntilModelsAvailable,
    server_core.cc; ServableId::DebugString, core/servable_id.h). Each failure is
    (name, version, load error or None)."""
    failures = list(failures)
    parts = "".join(
        f"{{{{name: {name} version: {version}}}"
        f"{'' if error is None else ' due to error: ' + str(error)}}}, "
        for name, version, error in failures)
    return ServingStatus(StatusCode.UNKNOWN,
                         f"{len(failures)} model(s) did not become available: {{{parts}}}")


def savedmodel_not_found(export_dir: str) -> ServingStatus:
    """A version directory without saved_model.pb(txt): the load error GetModelStatus then
    reports for it (tensorflow/cc/saved_model/reader.cc; also in the TF 2.21 binary)."""
    return ServingStatus(StatusCode.NOT_FOUND,
                         "Could not find SavedModel .pb or .pbtxt at supplied export directory "
                         f"path: {export_dir}. Check that the directory exists and that you have "
                         "the right permissions for accessing it.")


def load_failed(error: object) -> ServingStatus:
    """The status a version that failed to load reports in GetModelStatus: the loader's own
    error, unchanged (LoaderHarness::Load and Retry add nothing, core/loader_harness.cc)."""
    if isinstance(error, ServingStatus):
        return error
    if isinstance(getattr(error, "error_code", None), int):
        return from_tf_error(error)
    return ServingStatus(StatusCode.UNKNOWN, str(error))


# -- REST API: model_servers/http_rest_api_handler.cc, http_rest_api_util.cc, json_tensor.cc --

def malformed_request(http_method: str, path: str) -> ServingStatus:
    """A /v1/ path neither regex matches, or a verb/method mix the handler does not serve."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT, f"Malformed request: {http_method} {path}")


missing_model_name = _Fixed(StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
"""REST GET /v1/models (no name) for status or metadata. gRPC says
`model_spec_missing_name` (lookups) or `model_not_found_in_status("")` instead."""


def version_not_numeric(text: str) -> ServingStatus:
    """A /versions/N that does not fit int64 (ParseModelInfo)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Failed to convert version: {text} to numeric.")


def rest_signature_not_found(name: str) -> ServingStatus:
    """REST Predict's signature lookup while parsing the JSON (HttpRestApiHandler::GetInfoMap);
    gRPC Predict says `signature_not_found` instead."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f'Serving signature name: "{name}" not found in signature def')


def json_parse_error(reason: str, offset: int) -> ServingStatus:
    """Unparseable body (ParseJson); `reason` is one of RAPIDJSON_PARSE_ERRORS' values."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"JSON Parse error: {reason} at offset: {offset}")


def _json_value_error(value: object, complaint: str) -> ServingStatus:
    """TF Serving's REST complaint about a JSON value: "JSON Value: <value> <complaint>"."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"JSON Value: {json_value_to_string(value)} {complaint}")


json_document_empty = _Fixed(StatusCode.INVALID_ARGUMENT, "JSON Parse error: The document is empty")
"""Empty body (ParseJson; no final period, unlike rapidjson's own text)."""


def json_not_object(value: object) -> ServingStatus:
    """A body that parses but is not a JSON object (ParseJson)."""
    return _json_value_error(value, "Is not object")


def signature_name_not_string(document: object) -> ServingStatus:
    """"signature_name" present but not a string (FormatSignatureError)."""
    return _json_value_error(document, "not formatted correctly. 'signature_name' key must be a "
                                       "string value.")


missing_inputs_or_instances = _Fixed(
    StatusCode.INVALID_ARGUMENT,
    "Missing 'inputs' or 'instances' key")
"""Predict body with neither key (FillPredictRequestFromJson)."""


def both_inputs_and_instances(document: object) -> ServingStatus:
    """Predict body with both keys (FillPredictRequestFromJson; trailing space as source)."""
    return _json_value_error(document, "Not formatted correctly expecting only one of 'inputs' or "
                                       "'instances' keys to exist ")


def instances_not_list(document: object) -> ServingStatus:
    """"instances" that is not an array (FillPredictRequestFromJson; "Excepting" as source)."""
    return _json_value_error(document, "Excepting 'instances' to be an list/array")


def instances_empty(document: object) -> ServingStatus:
    """"instances": [] (FillPredictRequestFromJson)."""
    return _json_value_error(document, "No values in 'instances' array")


def no_input_map(signature_name: str) -> ServingStatus:
    """A signature with no inputs (FillPredictRequestFromJson)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         "Failed to get input map for signature: "
                         f"{signature_name or 'DEFAULT'}")


def missing_named_input(name: str) -> ServingStatus:
    """Columnar "inputs" object lacking a signature input (FillTensorMapFromInputsMap)."""
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Missing named input: {name} in 'inputs' object.")


def json_type_error(value: object, json_type: str, dtype: int | str | object) -> ServingStatus:
    """A JSON value the input's dtype cannot take (TypeError in json_tensor.cc). `json_type`:
    Null, False, True, Object, Array, String or Number."""
    return _json_value_error(value,
                             f"Type: {json_type} is not of expected type: {tf_dtype_name(dtype)}")


def instances_element_error(index: int, error: ServingStatus,
                            key: str | None = None) -> ServingStatus:
    """An "instances" element that failed to convert (FillTensorMapFromInstancesList): wraps
    the inner status as its ToString()."""
    where = f"{index}" if key is None else f"{index} key: {key}"
    return ServingStatus(StatusCode.INVALID_ARGUMENT,
                         f"Failed to process element: {where} of 'instances' list. Error: {error}")


# -- TensorFlow runtime errors ----------------------------------------------------------------

_PY_PREFIX = "Graph execution error:\n\n"
_OP_SUFFIX = re.compile(r" \[Op:[^\]]*\]$")


def from_tf_error(error: object) -> ServingStatus:
    """A TensorFlow OpError (any object with int `error_code` and str `message`) as TF Serving
    would relay it: same code, C++ message. Inferred: strips the decoration Python adds
    ("Graph execution error:", the "Detected at node ..." traceback, " [Op:...]")."""
    code = next((c for c in StatusCode if c.value[0] == error.error_code), StatusCode.UNKNOWN)
    if code is StatusCode.OK:
        code = StatusCode.UNKNOWN
    message = str(getattr(error, "message", error))
    if message.startswith(_PY_PREFIX):
        message = message[len(_PY_PREFIX):]
        lines = message.split("\n")
        if lines and lines[0].startswith("Detected at node"):
            lines.pop(0)
            while lines and (lines[0].startswith((" ", "<stack traces unavailable>", "Node: '"))):
                lines.pop(0)
        message = "\n".join(lines)
    return ServingStatus(code, _OP_SUFFIX.sub("", message))


# -- version policy: sources/storage_path/file_system_storage_path_source.cc ------------------

def parse_version(name: str) -> int | None:
    """A version directory's number as safe_strto64 reads it ("007" -> 7, "1a"/"+1" -> None)."""
    match = re.fullmatch(r"\s*(-?\d+)\s*", name)
    if match is None:
        return None
    value = int(match.group(1))
    return value if -(2**63) <= value < 2**63 else None


def aspired_versions(children: Iterable[str | int], policy: str = "latest",
                     num_versions: int = 1, versions: Iterable[int] = ()) -> list[int]:
    """The versions TF Serving serves from a model's base path, newest first.

    `children`: directory names under base_path (non-numeric ones are skipped). `policy`:
    "latest" (default; the num_versions highest, 0 meaning 1), "all", or "specific" (those of
    `versions` present on disk; listed ones missing are only logged).
    """
    found = set()
    for child in children:
        number = child if isinstance(child, int) else parse_version(child)
        if number is not None:
            found.add(number)
    ordered = sorted(found, reverse=True)
    if policy == "latest":
        return ordered[:max(num_versions, 1)]
    if policy == "all":
        return ordered
    if policy == "specific":
        wanted = set(versions)
        return [v for v in ordered if v in wanted]
    raise ValueError(f"policy must be latest, all or specific, got {policy!r}")
