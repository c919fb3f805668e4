"""The wire: everything that speaks TensorFlow Serving's gRPC and REST APIs.

Wire modules, shared by every client and server of the toolkit:
- `serving.codec`: TensorProto <-> numpy, with TF Serving's decoding rules (fast paths for
  `float_val` and `tensor_content`);
- `serving.status`: TF Serving's status codes and messages, word for word, and its REST mapping;
- `serving.signature`: signatures as GetModelMetadata describes them (`TensorInfo`, `Signature`,
  the image-classifier view `SignatureInfo`);
- `serving.client`: the one gRPC client the attacks, the gateway and the benchmarks share;
  `serving.rest_client`: the same over TF Serving's REST API; `serving.transport`: what the two
  share (errors, retries, batches, image adaptation);
- `serving.ports`: port checks in TF Serving's words; `serving.testing`: the one harness that
  starts servers and gateways for tests, benchmarks and the quickstart.

Servers: `serving.embedded`, the embedded, TF-Serving-compatible model server
(`python -m serving.model_server`, same flags as `tensorflow_model_server`); `serving.gateway`,
the pre-serving filter; `serving.deploy`, the files that run the official TF Serving container.

Submodules are imported on demand (TensorFlow is heavy); import the names from them, e.g.
`from serving.client import ServingClient`.
"""

__all__ = ["client", "codec", "embedded", "model_server", "ports", "rest_client", "signature",
           "status", "testing", "transport"]
