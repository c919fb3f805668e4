"""Tests for serving.status: TF Serving's codes and messages, character for character.

The expected strings are written out by hand from TF Serving's format strings (the source file
is named next to each case), so a constructor that drifts by one space or brace fails. The
runtime cases check the two messages TensorFlow itself produces (dtype mismatch, DataType
names) against the TensorFlow installed here.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from serving import status
from serving.status import ServingStatus

C = grpc.StatusCode

CASES = [
    # server_core.cc, core/basic_manager.cc, core/manager.h
    (status.missing_model_spec(), C.INVALID_ARGUMENT, "Missing ModelSpec"),
    (status.model_spec_missing_name(), C.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    (status.servable_not_found("mnist"), C.NOT_FOUND,
     "Servable not found for request: Latest(mnist)"),
    (status.servable_not_found("mnist", version=3), C.NOT_FOUND,
     "Servable not found for request: Specific(mnist, 3)"),
    (status.unknown_version_label("canary"), C.INVALID_ARGUMENT,
     "Unrecognized servable version label: canary"),
    (status.version_labels_not_allowed(), C.INVALID_ARGUMENT,
     "ModelSpec has 'version_label' set, but it is not currently allowed by the server."),
    (status.model_labels_not_ready("stable"), C.UNAVAILABLE,
     "Model labels does not init yet.stable"),
    (status.version_and_label_both_set(2, "stable"), C.INVALID_ARGUMENT,
     "Both model version (2) and model version label (stable) cannot be supplied."),
    # get_model_status_impl.cc
    (status.model_not_found_in_status("mnist"), C.NOT_FOUND,
     "Could not find any versions of model mnist"),
    (status.version_not_found_in_status("mnist", 7), C.NOT_FOUND,
     "Could not find version 7 of model mnist"),
    # predict_util.cc, tensorflow/cc/saved_model/util.cc
    (status.signature_not_found("nope"), C.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    (status.wrong_method_name("prediction", "", "foo"), C.INTERNAL,
     "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
     "tensorflow/serving/classify, tensorflow/serving/regress}. Was: foo"),
    (status.wrong_method_name("classification", status.CLASSIFY_METHOD, status.PREDICT_METHOD),
     C.INVALID_ARGUMENT,
     "Expected classification signature method_name to be tensorflow/serving/classify. "
     "Was: tensorflow/serving/predict"),
    (status.wrong_method_name("regression", status.REGRESS_METHOD, "x"), C.INVALID_ARGUMENT,
     "Expected regression signature method_name to be tensorflow/serving/regress. Was: x"),
    (status.inputs_mismatch(["unknown_key2", "unknown_key1"], ["x"]), C.INVALID_ARGUMENT,
     "input size does not match signature: 2!=1 len({unknown_key1,unknown_key2}) != len({x}). "
     "Sent extra: {unknown_key1,unknown_key2}. Missing but required: {x}."),
    (status.inputs_mismatch([], ["b", "a"]), C.INVALID_ARGUMENT,
     "input size does not match signature: 0!=2 len({}) != len({a,b}). Sent extra: {}. "
     "Missing but required: {a,b}."),
    (status.input_alias_missing("x", "serving_default_x:0", ["images"]), C.INVALID_ARGUMENT,
     "Signature input alias: x(feed name: serving_default_x:0) not found in request and no "
     "default value provided. Inputs expected to be in the request {images}, or default input "
     "alias set: "),
    (status.invalid_input_names(["a"], ["b", "a"]), C.INVALID_ARGUMENT,
     "Inputs contains invalid name. Used request inputs: a, request input: a,b"),
    (status.tensor_parsing_error("images"), C.INVALID_ARGUMENT, "tensor parsing error: images"),
    (status.output_alias_not_found("logit", ["probs", "logits"]), C.INVALID_ARGUMENT,
     "output tensor alias not found in signature: logit Outputs expected to be in the set "
     "{logits,probs}."),
    (status.duplicate_output_alias("y"), C.INVALID_ARGUMENT, "duplicate output tensor alias: y"),
    (status.dtype_mismatch("uint8", "float32"), C.INVALID_ARGUMENT,
     "Expects arg[0] to be uint8 but float is provided"),
    (status.dtype_mismatch(1, "DT_BOOL", index=2), C.INVALID_ARGUMENT,
     "Expects arg[2] to be float but bool is provided"),
    (status.shape_mismatch("x", [1, 16, 16, 3], [None, 32, 32, 3]), C.INVALID_ARGUMENT,
     "Shape of tensor x [1,16,16,3] is not compatible with expected shape [?,32,32,3]."),
    (status.shape_mismatch("x", "[1,2]", "[?,3]"), C.INVALID_ARGUMENT,
     "Shape of tensor x [1,2] is not compatible with expected shape [?,3]."),
    # get_model_metadata_impl.cc
    (status.metadata_field_missing(), C.INVALID_ARGUMENT,
     "GetModelMetadataRequest must specify at least one metadata_field"),
    (status.metadata_field_unsupported("some_stuff"), C.INVALID_ARGUMENT,
     "Metadata field %s is not supportedsome_stuff"),
    # classifier.cc, regressor.cc, util.cc
    (status.no_signature_with_name("classify"), C.INVALID_ARGUMENT,
     "No signature was found with the name: classify"),
    (status.expected_one_input(), C.INVALID_ARGUMENT, "Expected one input Tensor."),
    (status.classify_expected_outputs(3), C.INVALID_ARGUMENT,
     "Expected one or two output Tensors, found 3"),
    (status.regress_expected_one_output(), C.INVALID_ARGUMENT, "Expected one output Tensor."),
    (status.classify_inputs_missing("method_name: \"m\"\n"), C.INVALID_ARGUMENT,
     "No classification inputs found in SignatureDef: method_name: \"m\"\n"),
    (status.classify_outputs_missing("S"), C.INVALID_ARGUMENT,
     'Expected classification signature outputs to contain at least one of "classes" or '
     '"scores". Signature was: S'),
    (status.regress_input_missing("S"), C.INVALID_ARGUMENT,
     "No regression inputs found in SignatureDef: S"),
    (status.regress_output_missing("S"), C.INVALID_ARGUMENT,
     "No regression outputs found in SignatureDef: S"),
    (status.input_empty(), C.INVALID_ARGUMENT, "Input is empty."),
    (status.classify_bad_output_shape("scores", [4], 4), C.INVALID_ARGUMENT,
     "Expected Tensor shape: [batch_size num_classes] but got [4]"),
    (status.classify_bad_output_shape("classes", [3, 10], 4), C.INVALID_ARGUMENT,
     "Expected classes output batch size of 4. Got: 3"),
    (status.classify_bad_output_dtype("scores", 2), C.INVALID_ARGUMENT,
     "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
    (status.classify_bad_output_dtype("classes", "int32"), C.INVALID_ARGUMENT,
     "Expected classes Tensor of DT_STRING. Got: DT_INT32"),
    (status.classify_outputs_disagree(3, 4), C.INVALID_ARGUMENT,
     "Tensors class and score should match in dim_size(1). Got 3 vs. 4"),
    (status.regress_bad_output_shape([2, 3], 2), C.INVALID_ARGUMENT,
     "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [2,3]"),
    (status.regress_bad_output_shape([3, 1], 2), C.INVALID_ARGUMENT,
     "Input batch size did not match output batch size: 2 vs. 3"),
    (status.regress_bad_output_dtype("int64"), C.INVALID_ARGUMENT,
     "Expected output Tensor of DT_FLOAT.  Got: DT_INT64"),
    # multi_inference.cc
    (status.multi_inference_empty_model_name(), C.INVALID_ARGUMENT,
     "Found ModelSpec with an empty model name."),
    (status.multi_inference_different_models(), C.INVALID_ARGUMENT,
     "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
    (status.multi_inference_duplicate_signature("regress_x_to_y"), C.INVALID_ARGUMENT,
     "Duplicate evaluation of signature: regress_x_to_y"),
    (status.multi_inference_signature_not_found("s"), C.INVALID_ARGUMENT,
     "Requested signature not found in model graph: s"),
    (status.multi_inference_unsupported_method("tensorflow/serving/predict"), C.UNIMPLEMENTED,
     "Unsupported signature method_name: tensorflow/serving/predict"),
    (status.multi_inference_input_mismatch(), C.INVALID_ARGUMENT,
     "Input tensor must be the same for all Signatures."),
    # model_service_impl.cc, server_core.cc, reader.cc
    (status.custom_model_config_unsupported(), C.INVALID_ARGUMENT,
     "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList "
     "is currently supported"),
    (status.duplicate_model_in_config("m"), C.INVALID_ARGUMENT,
     "Illegal to list model m multiple times in config list"),
    (status.relative_base_path("m", "models/m"), C.INVALID_ARGUMENT,
     "Expected model m to have an absolute path or URI; got base_path()=models/m"),
    (status.missing_platform(), C.INVALID_ARGUMENT,
     "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
     "ModelServerConfig::model_platform."),
    (status.unsupported_platform("m", "onnx"), C.INVALID_ARGUMENT,
     "Model m requests unsupported platform onnx"),
    (status.platform_changed("m", "tensorflow", "tflite"), C.INVALID_ARGUMENT,
     "Illegal to change a model's platform. For model m platform was tensorflow and new "
     "platform requested is tflite"),
    (status.label_to_unavailable_version("stable", 2, "m"), C.FAILED_PRECONDITION,
     "Request to assign label to version 2 of model m, which is not currently available for "
     "inference"),
    (status.config_labels_not_allowed(), C.FAILED_PRECONDITION,
     "Model version labels are not currently allowed by the server."),
    (status.config_transition_not_allowed(), C.FAILED_PRECONDITION,
     "Cannot transition to requested config. It is only legal to transition from one "
     "ModelConfigList to another."),
    (status.savedmodel_not_found("/models/m/1"), C.NOT_FOUND,
     "Could not find SavedModel .pb or .pbtxt at supplied export directory path: /models/m/1. "
     "Check that the directory exists and that you have the right permissions for accessing "
     "it."),
    (status.models_not_available([("m", 1, status.savedmodel_not_found("/b/1")),
                                  ("n", 2, None)]), C.UNKNOWN,
     "2 model(s) did not become available: {{{name: m version: 1} due to error: NOT_FOUND: "
     "Could not find SavedModel .pb or .pbtxt at supplied export directory path: /b/1. Check "
     "that the directory exists and that you have the right permissions for accessing it.}, "
     "{{name: n version: 2}}, }"),
    # http_rest_api_handler.cc, http_rest_api_util.cc, json_tensor.cc
    (status.malformed_request("POST", "/v1/models/m:explain"), C.INVALID_ARGUMENT,
     "Malformed request: POST /v1/models/m:explain"),
    (status.missing_model_name(), C.INVALID_ARGUMENT, "Missing model name in request."),
    (status.version_not_numeric("99999999999999999999"), C.INVALID_ARGUMENT,
     "Failed to convert version: 99999999999999999999 to numeric."),
    (status.rest_signature_not_found("nope"), C.INVALID_ARGUMENT,
     'Serving signature name: "nope" not found in signature def'),
    (status.json_parse_error(status.RAPIDJSON_PARSE_ERRORS["value_invalid"], 0),
     C.INVALID_ARGUMENT, "JSON Parse error: Invalid value. at offset: 0"),
    (status.json_document_empty(), C.INVALID_ARGUMENT, "JSON Parse error: The document is empty"),
    (status.json_not_object([1]), C.INVALID_ARGUMENT, "JSON Value: [\n    1\n] Is not object"),
    (status.signature_name_not_string({"signature_name": 100}), C.INVALID_ARGUMENT,
     "JSON Value: {\n    \"signature_name\": 100\n} not formatted correctly. 'signature_name' "
     "key must be a string value."),
    (status.missing_inputs_or_instances(), C.INVALID_ARGUMENT,
     "Missing 'inputs' or 'instances' key"),
    (status.both_inputs_and_instances({}), C.INVALID_ARGUMENT,
     "JSON Value: {} Not formatted correctly expecting only one of 'inputs' or 'instances' "
     "keys to exist "),
    (status.instances_not_list({}), C.INVALID_ARGUMENT,
     "JSON Value: {} Excepting 'instances' to be an list/array"),
    (status.instances_empty({}), C.INVALID_ARGUMENT,
     "JSON Value: {} No values in 'instances' array"),
    (status.no_input_map(""), C.INVALID_ARGUMENT,
     "Failed to get input map for signature: DEFAULT"),
    (status.missing_named_input("images"), C.INVALID_ARGUMENT,
     "Missing named input: images in 'inputs' object."),
    (status.json_type_error("x", "String", 1), C.INVALID_ARGUMENT,
     "JSON Value: \"x\" Type: String is not of expected type: float"),
    (status.instances_element_error(0, status.json_type_error("x", "String", 1), key="a"),
     C.INVALID_ARGUMENT,
     "Failed to process element: 0 key: a of 'instances' list. Error: INVALID_ARGUMENT: JSON "
     "Value: \"x\" Type: String is not of expected type: float"),
]


@pytest.mark.parametrize("err, code, message", CASES)
def test_constructor_code_and_message(err, code, message):
    assert isinstance(err, ServingStatus)
    assert err.code is code
    assert err.message == message


def test_http_mapping_matches_tf_serving_table():
    # ToHTTPStatusCode, model_servers/http_server.cc, with response_code_enum.h values.
    expected = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
                "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
                "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
                "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
                "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
    assert {code.name: value for code, value in status.HTTP_STATUS.items()} == expected
    assert set(status.HTTP_STATUS) == set(grpc.StatusCode)
    for code, value in status.HTTP_STATUS.items():
        assert status.http_status(code) == value
    assert status.servable_not_found("m").http_status == 404
    assert status.signature_not_found("s").http_status == 400


def test_serving_status_forms():
    err = status.servable_not_found("m", version=1)
    assert str(err) == "NOT_FOUND: Servable not found for request: Specific(m, 1)"
    assert err.error_code == 5
    assert err.details == err.message
    assert json.loads(err.rest_body()) == {"error": err.message}
    with pytest.raises(ValueError, match="non-OK"):
        ServingStatus(grpc.StatusCode.OK, "fine")
    with pytest.raises(ValueError, match="non-OK"):
        ServingStatus(404, "not a grpc code")


def test_grpc_details_truncated_like_to_grpc_status():
    assert status.truncate_for_grpc("a" * 1024) == "a" * 1024
    long = ServingStatus(C.INVALID_ARGUMENT, "b" * 1025)
    assert long.details == "b" * 1024 + "...TRUNCATED"
    assert long.message == "b" * 1025


def test_abort_uses_code_and_truncated_details():
    class Context:
        def abort(self, code, details):
            self.seen = (code, details)
            raise RuntimeError("aborted")

    context = Context()
    with pytest.raises(RuntimeError, match="aborted"):
        ServingStatus(C.NOT_FOUND, "x" * 2000).abort(context)
    assert context.seen == (C.NOT_FOUND, "x" * 1024 + "...TRUNCATED")


def test_rest_error_body_is_rapidjson_pretty_output():
    assert status.rest_error_body("Missing 'inputs' or 'instances' key") == (
        '{\n    "error": "Missing \'inputs\' or \'instances\' key"\n}')
    # rapidjson escapes quotes, backslashes and control characters (uppercase hex), not UTF-8.
    assert status.rest_error_body('q"\\\n\x01é/') == '{\n    "error": "q\\"\\\\\\n\\u0001é/"\n}'


def test_wrong_method_name_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        status.wrong_method_name("predict", "", "x")


SIGNATURE = {"x": "serving_default_x:0", "y": "serving_default_y:0"}


@pytest.mark.parametrize("sent, defaults, expected", [
    (["x", "y", "z"], (), "input size does not match signature: 3!=2 len({x,y,z}) != "
                          "len({x,y}). Sent extra: {z}. Missing but required: {}."),
    (["x"], (), "input size does not match signature: 1!=2 len({x}) != len({x,y}). "
                "Sent extra: {}. Missing but required: {y}."),
    (["x", "z"], (), "Signature input alias: y(feed name: serving_default_y:0) not found in "
                     "request and no default value provided. Inputs expected to be in the "
                     "request {x,z}, or default input alias set: "),
    (["z"], ["y"], "Signature input alias: x(feed name: serving_default_x:0) not found in "
                   "request and no default value provided. Inputs expected to be in the "
                   "request {z}, or default input alias set: y"),
    (["x", "z"], ["y"], "Inputs contains invalid name. Used request inputs: x, request input: "
                        "x,z"),
])
def test_check_predict_inputs_errors(sent, defaults, expected):
    with pytest.raises(ServingStatus) as info:
        status.check_predict_inputs(sent, SIGNATURE, defaults)
    assert info.value.code is C.INVALID_ARGUMENT
    assert info.value.message == expected


def test_check_predict_inputs_accepts_valid_requests():
    assert status.check_predict_inputs(["y", "x"], SIGNATURE) is None
    assert status.check_predict_inputs(["x"], SIGNATURE, defaults=["y"]) is None


def test_check_output_filter():
    assert status.check_output_filter([], ["probs", "logits"]) == ["probs", "logits"]
    assert status.check_output_filter(["logits"], ["probs", "logits"]) == ["logits"]
    with pytest.raises(ServingStatus, match="^INVALID_ARGUMENT: output tensor alias not found"):
        status.check_output_filter(["nope"], ["probs"])
    with pytest.raises(ServingStatus) as info:
        status.check_output_filter(["probs", "probs"], ["probs"])
    assert info.value.message == "duplicate output tensor alias: probs"


def test_load_failed_passes_the_loader_error_through():
    err = status.savedmodel_not_found("/m/1")
    assert status.load_failed(err) is err
    plain = status.load_failed(OSError("disk on fire"))
    assert (plain.code, plain.message) == (C.UNKNOWN, "disk on fire")


def test_from_tf_error_strips_python_decoration():
    class OpError:
        error_code = 3
        message = ("Graph execution error:\n\nDetected at node 'EnsureShape' defined at (most "
                   "recent call last):\n    File \"m.py\", line 5, in <module>\nNode: "
                   "'EnsureShape'\nShape of tensor x [1,2] is not compatible with expected "
                   "shape [?,3].\n\t [[{{node EnsureShape}}]] [Op:__inference_serve_12]")

    err = status.from_tf_error(OpError())
    assert err.code is C.INVALID_ARGUMENT
    assert err.message == ("Shape of tensor x [1,2] is not compatible with expected shape "
                           "[?,3].\n\t [[{{node EnsureShape}}]]")


def test_version_policy_selection():
    children = ["1", "3", "010", "assets", "2a", "-", " 7 ", "+8"]
    assert status.parse_version("007") == 7
    assert status.parse_version("+8") is None
    assert status.parse_version("2a") is None
    assert status.parse_version(str(2**63)) is None
    assert status.aspired_versions(children) == [10]
    assert status.aspired_versions(children, num_versions=0) == [10]
    assert status.aspired_versions(children, num_versions=2) == [10, 7]
    assert status.aspired_versions(children, "all") == [10, 7, 3, 1]
    assert status.aspired_versions(children, "specific", versions=[3, 4]) == [3]
    assert status.aspired_versions([], "latest") == []
    with pytest.raises(ValueError, match="policy"):
        status.aspired_versions(children, "newest")


def test_rest_path_patterns():
    match = status.PREDICT_PATH_RE.fullmatch("/v1/models/mnist/versions/2:predict")
    assert match.groups() == ("mnist", "2", None, "predict")
    match = status.PREDICT_PATH_RE.fullmatch("/V1/Models/mnist/labels/canary:Classify")
    assert match.groups() == ("mnist", None, "canary", "Classify")
    assert status.PREDICT_PATH_RE.fullmatch("/v1/models/mnist:explain") is None
    match = status.MODEL_STATUS_PATH_RE.fullmatch("/v1/models/mnist/versions/1/metadata")
    assert match.groups() == ("mnist", "1", None, "metadata")
    assert status.MODEL_STATUS_PATH_RE.fullmatch("/v1/models").groups() == (None,) * 4
    assert status.REST_PATH_RE.fullmatch("/v2/models/m") is None


def test_dtype_names_accept_enum_dt_tf_and_numpy_forms():
    assert status.tf_dtype_name(np.dtype(np.float32)) == "float"
    assert status.tf_dtype_name(np.dtype(np.float16)) == "half"
    assert status.tf_dtype_name(np.dtype(object)) == "string"
    assert status.tf_dtype_name(np.dtype("S3")) == "string"
    assert status.tf_dtype_name(np.dtype(bool)) == "bool"
    assert status.tf_dtype_name("DT_UINT8") == "uint8"
    assert status.tf_dtype_name(101) == "float_ref"
    assert status.dtype_enum_name("double") == "DT_DOUBLE"
    with pytest.raises(ValueError, match="Unknown dtype"):
        status.tf_dtype_name("complex7")


def test_dtype_names_cover_every_tensorflow_datatype():
    types_pb2 = pytest.importorskip("tensorflow.core.framework.types_pb2")
    for name, value in types_pb2.DataType.items():
        if 0 < value < 100:
            assert status.tf_dtype_name(value) == name[3:].lower()
            assert status.dtype_enum_name(name) == name


def test_dtype_mismatch_matches_the_tensorflow_runtime():
    """Feed a float tensor to a uint8 placeholder through Session::Run, as TF Serving does."""
    tf = pytest.importorskip("tensorflow")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.uint8, [None, 2], name="x")
        y = tf.identity(x)
        session = tf.compat.v1.Session(graph=graph)
    if not hasattr(session, "_do_run"):
        pytest.skip("tf.compat.v1.Session._do_run (feeds without dtype casting) is gone")
    with session, pytest.raises(tf.errors.InvalidArgumentError) as info:
        session._do_run(None, [], [y], {x.ref(): np.zeros((1, 2), np.float32)}, None, None)
    err = status.from_tf_error(info.value)
    expected = status.dtype_mismatch("uint8", np.dtype(np.float32))
    assert (err.code, err.message) == (expected.code, expected.message)
