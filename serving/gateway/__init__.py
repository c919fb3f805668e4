"""The serving gateway (pre-serving filter): `python -m serving.gateway --upstream HOST:PORT`.

It speaks TF Serving's gRPC API, forwards to an upstream TF Serving (or the embedded model
server) and decides per request from the client's API key, its budget and rate limit, the
detectors' verdicts (Atli et al.'s OOD query classifier, PRADA of Juuti et al.) and the policy
file: pass, degrade the answer with an output policy, or refuse with a TF-Serving-style status.

- `serving.gateway.config`: the policy file and the server flags (`GatewayPolicy`,
  `GatewayConfig`, `load_policy`);
- `serving.gateway.auth`: API keys (SHA-256 only, constant-time comparison);
- `serving.gateway.store`: per-client state and audit log (`SQLiteStore`, `RedisStore`);
- `serving.gateway.server`: the servicer (`Gateway`); the detection logic it calls is
  `detector.monitor.Monitor`;
- `serving.gateway.outputs`: the class-score outputs of an answer (from the model's signature)
  and their rewriting by output policies;
- `serving.gateway.metrics`: Prometheus metrics.

Submodules are imported on demand: `from serving.gateway.server import Gateway`.
"""

__all__ = ["auth", "config", "metrics", "outputs", "server", "store"]
