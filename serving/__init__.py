"""The wire: everything that speaks TensorFlow Serving's gRPC and REST APIs.

- `serving.codec`: TensorProto <-> numpy, with TF Serving's decoding rules (fast paths for
  `float_val` and `tensor_content`);
- `serving.status`: TF Serving's status codes and messages, word for word, and its REST mapping;
- `serving.model_server`: the embedded, TF-Serving-compatible model server
  (`python -m serving.model_server`, same flags as `tensorflow_model_server`);
- `serving.client`: the one client the attacks, the gateway and the benchmarks share.

Submodules are imported on demand (TensorFlow is heavy); import the names from them, e.g.
`from serving.client import ServingClient`.
"""

__all__ = ["client", "codec", "model_server", "status"]
