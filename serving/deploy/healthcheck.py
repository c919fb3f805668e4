"""`python -m serving.deploy.healthcheck TARGET`: the gRPC health probe a container runs.

Asks `grpc.health.v1.Health/Check` on TARGET (`HOST:PORT` or `unix:/path`) and exits 0 when the
service answers SERVING, 1 otherwise (NOT_SERVING, unreachable, no answer within `--timeout`),
printing one line either way. The gateway answers SERVING while its upstream TF Serving answers
(service "" and "tensorflow.serving.PredictionService"), so the compose health check of the
gateway container is this probe. Kubernetes needs no script: its built-in `grpc:` probe asks the
same service.

    python -m serving.deploy.healthcheck 127.0.0.1:8500
    python -m serving.deploy.healthcheck unix:/sock/tfs.sock \\
        --service tensorflow.serving.PredictionService
"""

from __future__ import annotations

import argparse
import sys

from common.constraints import check_target
from common.errors import UsageError

__all__ = ["check", "main"]


def check(target: str, *, service: str = "", timeout: float = 3.0) -> str:
    """The health status name (`SERVING`, `NOT_SERVING`, ...) or `UNREACHABLE: <code>`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service),
                                  timeout=timeout)
        except grpc.RpcError as err:
            return f"UNREACHABLE: {err.code().name}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.deploy.healthcheck",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="HOST:PORT or unix:/path/to/socket")
    parser.add_argument("--service", default="", help='health service name (default "")')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    ns = parser.parse_args(argv)
    try:
        check_target("target", ns.target)
    except UsageError as err:
        parser.error(str(err))  # exit 2: a probe that cannot be right, not an unhealthy server
    status = check(ns.target, service=ns.service, timeout=ns.timeout)
    print(f"{ns.target} {ns.service or '<server>'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
