"""Tiny SavedModels for the serving tests, both kinds as TF Serving loads them.

- `tiny`: a Keras image classifier (uint8 [batch, 8, 8, 3] -> probabilities, logits), exported
  by the project's own exporter (`serving.testing.export_tiny_classifier`);
- `examples`: a TF1-style SavedModel with classify, regress and predict signatures over
  serialized `tf.Example`s (feature `x`, two floats), for Classify/Regress/MultiInference;
- `models_config_text`: the `models.config` serving both, with version labels;
- `model_spec`, `predict_request`: requests to them as a TF Serving client builds them.

Imported by `conftest.py` (the session's model folder) and by the tests that build their own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2

from serving import testing
from serving.codec import from_ndarray

IMAGE_SHAPE = (8, 8, 3)
CLASS_NAMES = ("ant", "bee", "cat")
W_EXAMPLES = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -0.5]], dtype=np.float32)


def export_tiny(base: Path, name: str, version: int, seed: int):
    """`name` version `version` under `base` (the harness's tiny classifier, logits exported
    too); returns the Keras model."""
    models = []
    testing.export_tiny_classifier(base, name, version, input_shape=IMAGE_SHAPE,
                                   class_names=CLASS_NAMES, seed=seed, export_logits=True,
                                   model_out=models)
    return models[0]


def export_examples_model(path: Path) -> None:
    """A TF1 SavedModel with classification, regression and predict signatures."""
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(serialized,
                                       {"x": tf.io.FixedLenFeature([2], tf.float32)})
        x = features["x"]
        scores = tf.nn.softmax(tf.matmul(x, tf.constant(W_EXAMPLES)))
        classes = tf.tile(tf.constant([list(CLASS_NAMES)]), [tf.shape(x)[0], 1])
        total = tf.reduce_sum(x, axis=1, keepdims=True)
        sig = tf.compat.v1.saved_model
        with tf.compat.v1.Session(graph=graph) as sess:
            builder = sig.Builder(str(path))
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
                "classify_x": sig.classification_signature_def(serialized, classes, scores),
                "scores_only": sig.classification_signature_def(serialized, None, scores),
                "regress_x": sig.regression_signature_def(serialized, total),
                "serving_default": sig.predict_signature_def({"x": x}, {"scores": scores}),
            })
            builder.save()


def models_config_text(base: Path, *, policy: str = "all {}", labels=None) -> str:
    labels = labels if labels is not None else {"stable": 1, "canary": 2}
    label_text = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n'
                         for k, v in labels.items())
    return (
        "model_config_list {\n"
        f'  config {{\n    name: "tiny"\n    base_path: "{base / "tiny"}"\n'
        f'    model_platform: "tensorflow"\n    model_version_policy {{ {policy} }}\n'
        f"{label_text}  }}\n"
        f'  config {{\n    name: "examples"\n    base_path: "{base / "examples"}"\n'
        '    model_platform: "tensorflow"\n  }\n'
        "}\n"
    )


def model_spec(name: str = "tiny", *, version: int | None = None, label: str | None = None,
               signature: str = "") -> model_pb2.ModelSpec:
    """A ModelSpec naming `name`, pinned to `version` or `label` when given."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec


def predict_request(images: np.ndarray | None, name: str = "tiny", *, version: int | None = None,
                    label: str | None = None, signature: str = "", output_filter=(),
                    alias: str = "images") -> predict_pb2.PredictRequest:
    """A PredictRequest of `images` as `tensor_content` under `alias` (no input when None)."""
    request = predict_pb2.PredictRequest(
        model_spec=model_spec(name, version=version, label=label, signature=signature))
    if images is not None:
        request.inputs[alias].CopyFrom(from_ndarray(images, use_tensor_content=True))
    request.output_filter.extend(output_filter)
    return request
