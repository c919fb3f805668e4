"""The embedded server's request handling: TF Serving's seven RPCs over a `ModelManager`.

Each method takes the request proto of `tensorflow_serving.apis` and returns the response proto,
or raises `serving.status.ServingStatus` with TF Serving's code and message. The gRPC servicers
(`serving.model_server`) and the REST handlers (`serving.rest`, which turn JSON into the same
request protos, as TF Serving's own HTTP handler does) are thin shells around this one core, so
the two APIs cannot disagree.

Order of checks follows TF Serving's `predict_util.cc`/`classifier.cc`: resolve the servable,
find the signature, check input aliases, parse tensors, check `output_filter`, run. Our one
addition is a dtype/shape check against the SignatureDef before the graph runs (see
`serving.savedmodel`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from google.protobuf import any_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from serving import codec, status
from serving.manager import ModelManager
from serving.savedmodel import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD, LoadedVersion

__all__ = ["ServingCore"]

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
DEFAULT_SIGNATURE = "serving_default"


def _fill_spec(target, servable: LoadedVersion, signature_name: str | None) -> None:
    target.name = servable.name
    target.version.value = servable.version
    if signature_name is not None:
        target.signature_name = signature_name


def serialize_examples(inp: input_pb2.Input) -> np.ndarray:
    """An `Input` as the batch of serialized `tf.Example`s a classify/regress signature reads.

    With a context, each example is the context's bytes followed by the example's: proto
    merge semantics, exactly what TF Serving feeds (`InputToSerializedExampleTensor`).
    """
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in inp.example_list.examples]
    elif kind == "example_list_with_context":
        ctx = inp.example_list_with_context.context.SerializeToString()
        examples = [ctx + e.SerializeToString() for e in inp.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise status.input_empty()
    return np.array(examples, dtype=object)


class ServingCore:
    """TF Serving's PredictionService and ModelService semantics, transport-free."""

    def __init__(self, manager: ModelManager, *,
                 reload_hook: Callable[[object], None] | None = None) -> None:
        self.manager = manager
        self._reload_hook = reload_hook

    # -- Predict ---------------------------------------------------------------------------------
    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = self.manager.resolve(request.model_spec)
        key = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signature(key)
        if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise status.wrong_method_name("prediction", PREDICT_METHOD, signature.method_name)
        inputs, outputs = servable.io_specs(key)
        sent = set(request.inputs)
        if sent != set(inputs):
            raise status.inputs_mismatch(sorted(sent - set(inputs)), sorted(set(inputs) - sent),
                                         len(sent), len(inputs))
        arrays = {}
        for alias, proto in request.inputs.items():
            try:
                arrays[alias] = codec.to_ndarray(proto)
            except codec.TensorDecodeError:
                raise status.tensor_parsing_error(alias) from None
        wanted = list(request.output_filter)
        seen: set[str] = set()
        for alias in wanted:
            if alias not in outputs:
                raise status.output_alias_not_found(alias)
            if alias in seen:
                raise status.duplicate_output_alias(alias)
            seen.add(alias)
        servable.check_inputs(key, arrays)
        results = servable.run(key, arrays, wanted or None)
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, servable, key)
        for alias, array in results.items():
            response.outputs[alias].CopyFrom(codec.from_ndarray(array))
        return response

    # -- GetModelMetadata ------------------------------------------------------------------------
    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise status.metadata_field_missing()
        for name in request.metadata_field:
            if name != SIGNATURE_DEF_FIELD:
                raise status.metadata_field_unsupported(name)
        servable = self.manager.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, servable, None)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        packed = any_pb2.Any()
        packed.Pack(sig_map)
        response.metadata[SIGNATURE_DEF_FIELD].CopyFrom(packed)
        return response

    # -- Classify / Regress / MultiInference -----------------------------------------------------
    def _run_example_signature(self, servable: LoadedVersion, key: str, method: str,
                               examples: np.ndarray) -> dict[str, np.ndarray]:
        signature = servable.signature(key)
        kind = "classification" if method == CLASSIFY_METHOD else "regression"
        if signature.method_name != method:
            raise status.wrong_method_name(kind, method, signature.method_name)
        if len(signature.inputs) != 1:
            raise status.expected_one_input()
        alias = next(iter(signature.inputs))
        arrays = {alias: examples}
        servable.check_inputs(key, arrays)
        return servable.run(key, arrays)

    def _classification_result(self, outputs: dict[str, np.ndarray], batch: int
                               ) -> classification_pb2.ClassificationResult:
        classes = outputs.get("classes")
        scores = outputs.get("scores")
        if classes is None and scores is None:
            raise status.classify_outputs_missing()
        for name, arr in (("classes", classes), ("scores", scores)):
            if arr is not None and (arr.ndim != 2 or arr.shape[0] != batch):
                raise status.classify_bad_output_shape(name, list(arr.shape), batch)
        if classes is not None and scores is not None and classes.shape != scores.shape:
            raise status.classify_bad_output_shape("classes", list(classes.shape), batch)
        result = classification_pb2.ClassificationResult()
        width = (classes if classes is not None else scores).shape[1]
        for i in range(batch):
            row = result.classifications.add()
            for j in range(width):
                cls = row.classes.add()
                if classes is not None:
                    label = classes[i, j]
                    cls.label = label.decode() if isinstance(label, bytes) else str(label)
                if scores is not None:
                    cls.score = float(scores[i, j])
        return result

    def _regression_result(self, outputs: dict[str, np.ndarray], batch: int
                           ) -> regression_pb2.RegressionResult:
        values = outputs.get("outputs")
        if values is None:
            raise status.regress_output_missing()
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1 or values.shape[0] != batch:
            raise status.regress_bad_output_shape(list(values.shape), batch)
        result = regression_pb2.RegressionResult()
        for v in values:
            result.regressions.add().value = float(v)
        return result

    def classify(self, request: classification_pb2.ClassificationRequest
                 ) -> classification_pb2.ClassificationResponse:
        servable = self.manager.resolve(request.model_spec)
        key = request.model_spec.signature_name or DEFAULT_SIGNATURE
        servable.signature(key)
        examples = serialize_examples(request.input)
        outputs = self._run_example_signature(servable, key, CLASSIFY_METHOD, examples)
        response = classification_pb2.ClassificationResponse()
        _fill_spec(response.model_spec, servable, key)
        response.result.CopyFrom(self._classification_result(outputs, len(examples)))
        return response

    def regress(self, request: regression_pb2.RegressionRequest
                ) -> regression_pb2.RegressionResponse:
        servable = self.manager.resolve(request.model_spec)
        key = request.model_spec.signature_name or DEFAULT_SIGNATURE
        servable.signature(key)
        examples = serialize_examples(request.input)
        outputs = self._run_example_signature(servable, key, REGRESS_METHOD, examples)
        response = regression_pb2.RegressionResponse()
        _fill_spec(response.model_spec, servable, key)
        response.result.CopyFrom(self._regression_result(outputs, len(examples)))
        return response

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest
                        ) -> inference_pb2.MultiInferenceResponse:
        if not request.tasks:
            raise status.multi_inference_no_tasks()
        first = request.tasks[0].model_spec
        names: set[str] = set()
        for task in request.tasks:
            spec = task.model_spec
            if spec.name != first.name:
                raise status.multi_inference_different_models()
            if (spec.WhichOneof("version_choice") != first.WhichOneof("version_choice")
                    or spec.version.value != first.version.value
                    or spec.version_label != first.version_label):
                raise status.multi_inference_different_versions()
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise status.multi_inference_unsupported_method(task.method_name)
            key = spec.signature_name or DEFAULT_SIGNATURE
            if key in names:
                raise status.multi_inference_duplicate_signature(key)
            names.add(key)
        servable = self.manager.resolve(first)
        examples = serialize_examples(request.input)
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            key = task.model_spec.signature_name or DEFAULT_SIGNATURE
            servable.signature(key)
            outputs = self._run_example_signature(servable, key, task.method_name, examples)
            result = response.results.add()
            _fill_spec(result.model_spec, servable, key)
            if task.method_name == CLASSIFY_METHOD:
                result.classification_result.CopyFrom(
                    self._classification_result(outputs, len(examples)))
            else:
                result.regression_result.CopyFrom(self._regression_result(outputs, len(examples)))
        return response

    # -- ModelService ----------------------------------------------------------------------------
    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                         ) -> get_model_status_pb2.GetModelStatusResponse:
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.extend(self.manager.version_statuses(request.model_spec))
        return response

    def handle_reload_config(self, request: model_management_pb2.ReloadConfigRequest
                             ) -> model_management_pb2.ReloadConfigResponse:
        self.manager.reload(request.config)
        if self._reload_hook is not None:
            self._reload_hook(request.config)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response
