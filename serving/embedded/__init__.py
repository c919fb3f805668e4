"""The embedded, TF-Serving-compatible model server (where the `tensorflow_model_server` binary
cannot run: CI, a laptop without Docker), beside the wire modules it shares with every client.

- `serving.embedded.server`: `ModelServer` and `ServerOptions` (the gRPC servicers);
- `serving.embedded.cli`: its command line, `python -m serving.model_server` (the same flags as
  `tensorflow_model_server`);
- `serving.embedded.core`: TF Serving's seven RPCs, transport-free, over a
- `serving.embedded.manager`: the models of a `models.config`, their versions, labels and
  polling, each version loaded by
- `serving.embedded.savedmodel`: a SavedModel version, its SignatureDefs, the checks before the
  graph runs;
- `serving.embedded.rest`: TF Serving's REST API over the same core.

Submodules are imported on demand (TensorFlow is heavy): `from serving.embedded.server import
ModelServer`.
"""

__all__ = ["cli", "core", "manager", "rest", "savedmodel", "server"]
