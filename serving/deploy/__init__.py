"""Deployment files for the official TensorFlow Serving container with the gateway in front.

The folder holds what an operator deploys, not library code:

- `docker-compose.gpu.yml` / `docker-compose.cpu.yml`: `tensorflow/serving` (gRPC on a UNIX
  socket in a shared volume, REST only on an internal network), the gateway built from
  `Dockerfile.gateway`, Redis for the gateway's shared state, an optional Prometheus;
- `kustomization.yaml` + `k8s/`: the same on Kubernetes (`kubectl apply -k serving/deploy`);
- `config/`: `models.config`, `batching.config`, `monitoring.config` (text protos that
  `tensorflow_model_server` reads), `policy.json` (the gateway's policy), `prometheus.yml`.

Two small modules support them: `serving.deploy.healthcheck` (the gRPC health probe the gateway
container runs) and `serving.deploy.protos` (the `BatchingParameters` and `MonitoringConfig`
messages, which `tensorflow-serving-api` does not ship, to parse those files offline).
`docs/runbook.md` says how to operate all of it; `tests/serving/test_deploy.py` keeps these files
and the code from drifting apart.
"""

__all__ = ["healthcheck", "protos"]
