"""Load test of the serving path: many concurrent gRPC clients against the embedded model server
and through the gateway, on loopback, bounded in clients and time.

    python -m benchmarks.load --model-dir victims/cifar10_cnn --clients 16 --seconds 20

It starts the embedded server (`python -m serving.model_server`) on the model folder (without
`--model-dir`, an untrained CIFAR-10 CNN exported to a temporary folder: same graph, same cost)
and, unless `--target server`, the gateway (`python -m serving.gateway`) in front of it with an
SQLite state, one API key per client and a policy file (`--policy`, default: auth required,
budgets and rates far above the load). Each client is a thread with its own channel sending
Predict requests of `--batch` random uint8 images back to back for `--seconds`. For each target
it prints requests, images/s, p50/p99 latency, errors by status code and, for the gateway, the
audit log's completeness: audit records of these clients in the SQLite `audit` table against
requests sent, and the budget charged (`usage.used`) against images answered.

Servers and gateways start through `serving.testing` (as processes); `add_key`, `drive` and
`audit_summary` are reused by `benchmarks.faults` and the fault tests.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from serving import testing
from serving.gateway.__main__ import main as gateway_main

__all__ = ["DEFAULT_POLICY", "LoadResult", "add_key", "audit_summary", "drive", "main",
           "predict_request"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = {"auth": {"required": True},
                  "limits": {"budget": 10**9, "rate_per_second": 10**6, "burst": 10**6}}


def predict_request(model: str, images: np.ndarray, alias: str = "images"):
    from tensorflow_serving.apis import predict_pb2

    from serving.codec import from_ndarray

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[alias].CopyFrom(from_ndarray(images, use_tensor_content=True))
    return request


def add_key(state: Path, client: str, *, budget: int | None = None,
            rate: float | None = None, burst: float | None = None) -> str:
    """`python -m serving.gateway keys add` (run in this process): the key it prints once."""
    import contextlib
    import io

    argv = ["keys", "add", "--state", f"sqlite:{state}", "--client", client]
    for flag, value in (("--budget", budget), ("--rate", rate), ("--burst", burst)):
        if value is not None:
            argv += [flag, str(value)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = gateway_main(argv)
    if rc != 0:
        raise RuntimeError(f"keys add failed ({rc}): {err.getvalue().strip()}")
    return out.getvalue().strip().splitlines()[-1].strip()


@dataclasses.dataclass
class LoadResult:
    """What `drive` saw: per-request latency (s) of answered calls and codes."""

    name: str
    clients: int
    seconds: float
    batch: int
    codes: collections.Counter
    latencies: list[float]
    per_client: dict[str, collections.Counter]
    timeline: list[tuple[float, str]]  # (time since start, code) of every request

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        return self.requests - self.codes.get("OK", 0)

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.array(self.latencies) * 1e3, q)) if self.latencies else 0.0

    def row(self) -> dict:
        ok = self.codes.get("OK", 0)
        return {"target": self.name, "clients": self.clients, "seconds": round(self.seconds, 1),
                "requests": self.requests, "ok": ok, "errors": self.errors,
                "req_per_s": round(self.requests / self.seconds, 1),
                "images_per_s": round(ok * self.batch / self.seconds, 1),
                "p50_ms": round(self.percentile(50), 1), "p99_ms": round(self.percentile(99), 1),
                "codes": dict(self.codes)}


def drive(name: str, target: str, model: str, image_shape, *, clients: int, seconds: float,
          batch: int, keys: list[str] | None = None, timeout: float = 30.0,
          stop: threading.Event | None = None, seed: int = 0) -> LoadResult:
    """`clients` threads, each with its own channel (and key), Predict back to back."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    rng = np.random.default_rng(seed)
    requests = [predict_request(model, rng.integers(0, 256, (batch, *image_shape), np.uint8))
                for _ in range(8)]
    codes: collections.Counter = collections.Counter()
    per_client: dict[str, collections.Counter] = {}
    latencies: list[float] = []
    timeline: list[tuple[float, str]] = []
    lock = threading.Lock()
    start = time.monotonic()
    end = start + seconds
    stop = stop or threading.Event()

    def client(i: int) -> None:
        metadata = [("x-api-key", keys[i % len(keys)])] if keys else None
        mine: collections.Counter = collections.Counter()
        lat: list[float] = []
        events: list[tuple[float, str]] = []
        with grpc.insecure_channel(target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            j = 0
            while time.monotonic() < end and not stop.is_set():
                t0 = time.monotonic()
                try:
                    stub.Predict(requests[(i + j) % len(requests)], timeout=timeout,
                                 metadata=metadata)
                    code = "OK"
                    lat.append(time.monotonic() - t0)
                except grpc.RpcError as err:
                    code = err.code().name
                    if code == "UNAVAILABLE":
                        time.sleep(0.05)  # do not spin on a dead port
                mine[code] += 1
                events.append((t0 - start, code))
                j += 1
        with lock:
            codes.update(mine)
            per_client[f"client{i}"] = mine
            latencies.extend(lat)
            timeline.extend(events)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 30)
    elapsed = time.monotonic() - start
    timeline.sort()
    return LoadResult(name, clients, elapsed, batch, codes, latencies, per_client, timeline)


def audit_summary(state: Path, clients: list[str] | None = None) -> dict:
    """Audit records (per code) and budget charged, read from the gateway's SQLite file."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        where, params = "", ()
        if clients is not None:
            where = f" WHERE client IN ({','.join('?' * len(clients))})"
            params = tuple(clients)
        by_code = dict(db.execute(f"SELECT code, COUNT(*) FROM audit{where} GROUP BY code",
                                  params).fetchall())
        rows_ok = db.execute(f"SELECT COALESCE(SUM(rows), 0) FROM audit{where}"
                             + (" AND" if where else " WHERE") + " code = 'OK'",
                             params).fetchone()[0]
        used = db.execute("SELECT COALESCE(SUM(used), 0) FROM usage"
                          + (f" WHERE name IN ({','.join('?' * len(clients))})"
                             if clients is not None else ""), params).fetchone()[0]
    finally:
        db.close()
    return {"records": sum(by_code.values()), "by_code": by_code, "rows_ok": rows_ok,
            "used": used}


def _image_shape(target: str, model: str) -> tuple[int, ...]:
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        response = stub.GetModelMetadata(request, timeout=60)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigs)
        info = next(iter(sigs.signature_def["serving_default"].inputs.values()))
        return tuple(d.size for d in info.tensor_shape.dim[1:])


def print_table(rows: list[dict], audit: dict | None = None, out=sys.stdout) -> None:
    head = ("target", "clients", "seconds", "requests", "ok", "errors", "req_per_s",
            "images_per_s", "p50_ms", "p99_ms")
    print("| " + " | ".join(head) + " | codes |", file=out)
    print("|" + "---|" * (len(head) + 1), file=out)
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in head) + f" | {r['codes']} |", file=out)
    if audit is not None:
        print(f"\ngateway audit: {audit}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="", help="model base folder (<dir>/<version>/); "
                        "default: an untrained CIFAR-10 CNN")
    parser.add_argument("--model", default="", help="model name (default: the folder's name)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=8, help="images per request")
    parser.add_argument("--target", choices=("server", "gateway", "both"), default="both")
    parser.add_argument("--policy", default="", help="gateway policy JSON (default: auth only)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    ns = parser.parse_args(argv)
    for name, value, low, high in (("clients", ns.clients, 1, 256),
                                   ("seconds", ns.seconds, 1, 600), ("batch", ns.batch, 1, 4096)):
        if not low <= value <= high:
            print(f"{parser.prog}: error: Invalid value for argument `{name}`. Received: "
                  f"{name}={value}. Expected a number in [{low}, {high}].", file=sys.stderr)
            return 2
    if ns.model_dir and not Path(ns.model_dir).is_dir():
        print(f"{parser.prog}: error: Invalid value for argument `model_dir`. Received: "
              f"model_dir={ns.model_dir!r}. Expected a model base folder.", file=sys.stderr)
        return 2
    policy = json.loads(Path(ns.policy).read_text()) if ns.policy else DEFAULT_POLICY
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = (Path(ns.model_dir) if ns.model_dir
                     else testing.export_untrained_cnn(tmp / "models"))
        model = ns.model or model_dir.name
        server = testing.model_server(base_path=model_dir, name=model, process=True)
        gateway = None
        rows, audit = [], None
        try:
            shape = _image_shape(server.target, model)
            if ns.target in ("server", "both"):
                result = drive("embedded server", server.target, model, shape,
                               clients=ns.clients, seconds=ns.seconds, batch=ns.batch)
                rows.append(result.row())
            if ns.target in ("gateway", "both"):
                state = tmp / "gw" / "gateway_state.db"
                state.parent.mkdir()
                names = [f"load{i}" for i in range(ns.clients)]
                keys = [add_key(state, n) for n in names]
                gateway = testing.gateway(server.target, workdir=tmp / "gw", state=state,
                                          policy=policy, process=True, key=keys[0],
                                          models=[model])
                before = audit_summary(state, names)
                result = drive("gateway -> embedded server", gateway.target, model, shape,
                               clients=ns.clients, seconds=ns.seconds, batch=ns.batch,
                               keys=keys)
                rows.append(result.row())
                time.sleep(0.5)
                after = audit_summary(state, names)
                records = after["records"] - before["records"]
                ok_rows = after["rows_ok"] - before["rows_ok"]
                audit = {"requests_sent": result.requests, "audit_records": records,
                         "complete": records == result.requests,
                         "audit_by_code": after["by_code"],
                         "images_answered": result.codes.get("OK", 0) * ns.batch,
                         "audit_rows_ok": ok_rows, "budget_used": after["used"]
                         - before["used"]}
        finally:
            if gateway is not None:
                gateway.stop()
            server.stop()
        print_table(rows, audit)
        if ns.json:
            Path(ns.json).write_text(json.dumps({"rows": rows, "audit": audit}, indent=2))
        if audit is not None and not audit["complete"]:
            print("audit log INCOMPLETE", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
