"""The embedded server's request handling: TF Serving's seven RPCs over a `ModelManager`.

Each method takes the request proto of `tensorflow_serving.apis` and returns the response proto,
or raises `serving.status.ServingStatus` with TF Serving's code and message. The gRPC servicers
(`serving.embedded.server`) and the REST handlers (`serving.embedded.rest`, which turn JSON into
the same request protos, as TF Serving's own HTTP handler does) are thin shells around this one
core, so the two APIs cannot disagree.

Order of checks follows TF Serving's `predict_util.cc`/`classifier.cc`: resolve the servable,
find the signature, check input aliases, parse tensors, check `output_filter`, run. Our one
addition is a dtype/shape check against the SignatureDef before the graph runs (see
`serving.embedded.savedmodel`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from google.protobuf import any_pb2, text_format
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
from serving.embedded.manager import ModelManager
from serving.embedded.savedmodel import CLASSIFY_METHOD, INIT_OP_KEY, REGRESS_METHOD, LoadedVersion
from serving.signature import DEFAULT_SIGNATURE

__all__ = ["ServingCore"]

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"


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
        # TF Serving checks method_name only under --enable_signature_method_name_check (off).
        status.check_predict_inputs(request.inputs,
                                    {a: t.name for a, t in signature.inputs.items()},
                                    signature.defaults)
        _, outputs = servable.io_specs(key)
        wanted = status.check_output_filter(request.output_filter, outputs)
        arrays = {}
        for alias in signature.inputs:
            proto = request.inputs[alias] if alias in request.inputs else signature.defaults[alias]
            try:
                arrays[alias] = codec.to_ndarray(proto)
            except codec.TensorDecodeError:
                raise status.tensor_parsing_error(alias) from None
        servable.check_inputs(key, arrays)
        results = servable.run(key, arrays, wanted)
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, servable, key)
        for alias, array in results.items():
            response.outputs[alias].CopyFrom(codec.from_ndarray(array))
        return response

    # -- GetModelMetadata ------------------------------------------------------------------------
    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise status.missing_model_spec()
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
    @staticmethod
    def _example_signature(servable: LoadedVersion, key: str, method: str, *,
                           multi: bool = False):
        """Classify/Regress signature checks, in classifier.cc / regressor.cc order."""
        if key not in servable.signature_defs or key == INIT_OP_KEY:
            raise (status.multi_inference_signature_not_found(key) if multi
                   else status.no_signature_with_name(key))
        signature = servable.signature_defs[key]
        classify = method == CLASSIFY_METHOD
        if signature.method_name != method:
            kind = "classification" if classify else "regression"
            raise status.wrong_method_name(kind, method, signature.method_name)
        if len(signature.inputs) != 1:
            raise status.expected_one_input()
        text = text_format.MessageToString(signature)
        if classify:
            if len(signature.outputs) not in (1, 2):
                raise status.classify_expected_outputs(len(signature.outputs))
            if "inputs" not in signature.inputs:
                raise status.classify_inputs_missing(text)
            if "classes" not in signature.outputs and "scores" not in signature.outputs:
                raise status.classify_outputs_missing(text)
        else:
            if len(signature.outputs) != 1:
                raise status.regress_expected_one_output()
            if "inputs" not in signature.inputs:
                raise status.regress_input_missing(text)
            if "outputs" not in signature.outputs:
                raise status.regress_output_missing(text)
        return signature

    def _run_examples(self, servable: LoadedVersion, key: str,
                      examples: np.ndarray) -> dict[str, np.ndarray]:
        arrays = {"inputs": examples}
        servable.check_inputs(key, arrays)
        return servable.run(key, arrays)

    def _classification_result(self, outputs: dict[str, np.ndarray], batch: int
                               ) -> classification_pb2.ClassificationResult:
        classes = outputs.get("classes")
        scores = outputs.get("scores")
        for name, arr in (("classes", classes), ("scores", scores)):
            if arr is None:
                continue
            if arr.ndim != 2 or arr.shape[0] != batch:
                raise status.classify_bad_output_shape(name, arr.shape, batch)
            if name == "classes" and arr.dtype != object:
                raise status.classify_bad_output_dtype(name, arr.dtype)
            if name == "scores" and arr.dtype != np.float32:
                raise status.classify_bad_output_dtype(name, arr.dtype)
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise status.classify_outputs_disagree(classes.shape[1], scores.shape[1])
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
        values = outputs["outputs"]
        if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)) or \
                values.shape[0] != batch:
            raise status.regress_bad_output_shape(values.shape, batch)
        if values.dtype != np.float32:
            raise status.regress_bad_output_dtype(values.dtype)
        result = regression_pb2.RegressionResult()
        for v in values.reshape(batch):
            result.regressions.add().value = float(v)
        return result

    def _examples_result(self, method: str, outputs: dict[str, np.ndarray], batch: int):
        if method == CLASSIFY_METHOD:
            return self._classification_result(outputs, batch)
        return self._regression_result(outputs, batch)

    def _examples_rpc(self, request, method: str, response):
        """Classify or Regress: `response` filled from `request` over its one signature."""
        servable = self.manager.resolve(request.model_spec)
        key = request.model_spec.signature_name or DEFAULT_SIGNATURE
        self._example_signature(servable, key, method)
        examples = serialize_examples(request.input)
        outputs = self._run_examples(servable, key, examples)
        _fill_spec(response.model_spec, servable, key)
        response.result.CopyFrom(self._examples_result(method, outputs, len(examples)))
        return response

    def classify(self, request: classification_pb2.ClassificationRequest
                 ) -> classification_pb2.ClassificationResponse:
        return self._examples_rpc(request, CLASSIFY_METHOD,
                                  classification_pb2.ClassificationResponse())

    def regress(self, request: regression_pb2.RegressionRequest
                ) -> regression_pb2.RegressionResponse:
        return self._examples_rpc(request, REGRESS_METHOD, regression_pb2.RegressionResponse())

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest
                        ) -> inference_pb2.MultiInferenceResponse:
        if not request.tasks:
            raise status.model_spec_missing_name()
        first = request.tasks[0].model_spec
        servable = self.manager.resolve(first)  # other tasks' versions are ignored, as in TF
        keys: list[str] = []
        input_names = set()
        for task in request.tasks:
            spec = task.model_spec
            if not spec.name:
                raise status.multi_inference_empty_model_name()
            if spec.name != first.name:
                raise status.multi_inference_different_models()
            key = spec.signature_name or DEFAULT_SIGNATURE
            if key in keys:
                raise status.multi_inference_duplicate_signature(key)
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise status.multi_inference_unsupported_method(task.method_name)
            signature = self._example_signature(servable, key, task.method_name, multi=True)
            input_names.add(signature.inputs["inputs"].name)
            keys.append(key)
        if len(input_names) > 1:
            raise status.multi_inference_input_mismatch()
        examples = serialize_examples(request.input)
        response = inference_pb2.MultiInferenceResponse()
        for task, key in zip(request.tasks, keys):
            outputs = self._run_examples(servable, key, examples)
            result = response.results.add()
            _fill_spec(result.model_spec, servable, key)
            field = ("classification_result" if task.method_name == CLASSIFY_METHOD
                     else "regression_result")
            getattr(result, field).CopyFrom(
                self._examples_result(task.method_name, outputs, len(examples)))
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
