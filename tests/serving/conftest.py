"""Fixtures for the serving tests: tiny SavedModels on disk and an embedded server over them.

Two kinds of model, both as TF Serving loads them:
- `tiny`: a Keras image classifier (uint8 [batch, 8, 8, 3] -> probabilities, logits), exported
  by the project's own exporter, in versions 1 and 2 (different weights);
- `examples`: a TF1-style SavedModel with classify, regress and predict signatures over
  serialized `tf.Example`s (feature `x`, two floats), for Classify/Regress/MultiInference.

Fuzz tests take `fuzz_tally`: their own count of what they sent and how each request ended (no
tally is shared between tests, so none depends on another's order); `pytest -n 0 -s` prints each
table, and the run's summary line adds up the requests of every fuzz test that ran (also
across pytest-xdist workers: the count travels as a user property of the test's report).
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import numpy as np
import pytest

from serving import testing

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
    import tensorflow as tf

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


@pytest.fixture(scope="session")
def model_base(tmp_path_factory):
    """A models folder: `tiny` (versions 1, 2) and `examples` (version 1), with Keras models."""
    base = tmp_path_factory.mktemp("models")
    models = {1: export_tiny(base, "tiny", 1, seed=1), 2: export_tiny(base, "tiny", 2, seed=2)}
    export_examples_model(base / "examples" / "1")
    return base, models


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


@pytest.fixture(scope="module")
def server(model_base, tmp_path_factory):
    """The embedded server (`ModelServer`) on loopback with gRPC and REST, over a copy of
    `model_base`; `.base` is that copy, `.keras_models` the Keras models by version."""
    src, models = model_base
    base = tmp_path_factory.mktemp("served")
    shutil.copytree(src, base, dirs_exist_ok=True)
    config = base / "models.config"
    config.write_text(models_config_text(base))
    with testing.model_server(config_file=config, rest=True, poll_seconds=0.2) as running:
        srv = running.obj
        srv.base = base
        srv.keras_models = models
        yield srv


@pytest.fixture(scope="module")
def channel(server):
    import grpc

    from serving.model_server import MAX_MESSAGE_BYTES

    ch = grpc.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceStub(channel)


# -- fuzzing: a tally per test ------------------------------------------------------------------
class FuzzTally:
    """What one fuzz test sent: `outcomes[kind, code]` counts requests by how they ended,
    `notes[what]` counts notable request kinds (not requests of their own)."""

    def __init__(self) -> None:
        self.outcomes: collections.Counter = collections.Counter()
        self.notes: collections.Counter = collections.Counter()

    def add(self, kind: str, code: str, n: int = 1) -> None:
        self.outcomes[kind, code] += n

    def count(self, kind: str | None = None, code: str | None = None) -> int:
        """Requests of `kind` (all kinds when None) that ended in `code` (any when None)."""
        return sum(n for (k, c), n in self.outcomes.items()
                   if (kind is None or k == kind) and (code is None or c == code))

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def table(self) -> str:
        lines = [f"  {kind:<40} {code:<28} {n:>6}"
                 for (kind, code), n in sorted(self.outcomes.items())]
        lines += [f"  {what:<69} {n:>6}" for what, n in sorted(self.notes.items())]
        return "\n".join(lines)


@pytest.fixture
def fuzz_tally(request):
    """A fresh `FuzzTally` for this test; printed (with `pytest -n 0 -s`) and, as the test's
    `fuzz_requests` user property, summed by tests/conftest.py at the end of the run."""
    tally = FuzzTally()
    yield tally
    request.node.user_properties.append(("fuzz_requests", tally.requests))
    print(f"\n{request.node.name}: {tally.requests} requests\n{tally.table()}")
