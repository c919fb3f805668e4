"""The serving gateway: a TF-Serving-compatible gRPC front that authenticates, meters, watches
and degrades, then forwards to the real TF Serving (or the embedded model server).

It registers TF Serving's services by name with byte-level handlers: a request arrives as the
client's bytes and, unless the policy has to look inside, leaves for the upstream unchanged; the
upstream's answer bytes come back unchanged unless an output policy rewrites them. Only
`Predict` requests are decoded further (to count rows, run the detectors, find the
probabilities: the class-score outputs come from the model's signature, `serving.gateway.outputs`).
Per request:

1. authenticate the API key (`serving.gateway.auth`): UNAUTHENTICATED when missing or unknown;
2. rate limit (token bucket, requests/s) and query budget (rows = batch size; a batch that does
   not fit in what is left is refused whole): RESOURCE_EXHAUSTED naming the limit;
3. detectors (Predict only): the gateway hands the images and the victim's probabilities to
   `detector.monitor.Monitor.observe` under the client's lock, which runs the OOD query
   classifier of Atli et al. (2020) into the client's window (`detector.aggregate`) and PRADA
   (Juuti et al. 2019) and says whether the client is flagged; a detector served by the upstream
   (``detectors.ood.upstream_model``) is asked here and its scores passed in;
4. a flagged client is refused (PERMISSION_DENIED), its answers degraded
   (`detector.policies`) or misinformed (Adaptive Misinformation, `detector.misinformation`:
   each answer blended with a misinformation function's by the query's OOD score; with
   `on_query: misinform` every client's); the `always` policy rewrites every answer; with a
   `watermark` policy a keyed fraction of each client's answers is relabelled (DAWN,
   `detector.watermark`) and stored;
5. the decision is committed to the store (charge, detector state, audit record) *before* the
   answer is returned (see `serving.gateway.store` for the exact guarantee).

`HandleReloadConfigRequest` is not registered, so a client gets UNIMPLEMENTED exactly as from a
server without that method. Upstream down: UNAVAILABLE within the caller's deadline; the gRPC
channel reconnects by itself (backoff capped at 1 s), so the gateway recovers without a restart.
Health (`grpc.health.v1`, services "" and "tensorflow.serving.PredictionService") is SERVING
while the upstream answers a probe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from common.errors import UsageError, invalid
from detector.export import ATTACK_CLASS
from detector.misinformation import AdaptiveMisinformation, MisinformationModel
from detector.monitor import MAIN_WATCH, Decision, Monitor
from detector.policies import parse_policy
from detector.watermark import Watermarker, read_key
from serving import codec, status
from serving.gateway.auth import ANONYMOUS, digest_matches, extract_key, hash_key
from serving.gateway.config import (
    GatewayConfig,
    GatewayPolicy,
    MisinformationConfig,
    load_policy,
)
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.outputs import (
    ClassOutputs,
    answer_outputs,
    class_outputs,
    degrade_predict_response,
    watched_probabilities,
)
from serving.gateway.store import (
    AuditRecord,
    ClientRecord,
    DetectorState,
    Limits,
    StateStore,
    open_store,
)
from serving.ports import check_port_free, port_error
from serving.signature import DEFAULT_SIGNATURE, select_signature

__all__ = ["ANONYMOUS", "Gateway", "degrade_predict_response"]

log = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
MAX_MESSAGE_BYTES = 2**31 - 1
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_UNAVAILABLE_MESSAGE = "Upstream model server unavailable"


class _Stop(Exception):
    """End this RPC with `code` and `message`; `action` goes into the audit record."""

    def __init__(self, code: grpc.StatusCode, message: str, action: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.action = action


@dataclass
class _Rules:
    """What decides one model's Predict answers, built from its policy (the policy itself, or
    its ``per_model`` entry): the output policies, the detectors' monitor, Adaptive
    Misinformation and the watermarker."""

    policy: GatewayPolicy
    inspects: bool = False
    always: Any = None
    on_flag: Any = None
    monitor: Monitor | None = None
    misinform: AdaptiveMisinformation | None = None
    mis_model: Any = None
    watermarker: Watermarker | None = None


@dataclass
class _Request:
    method: str
    client: ClientRecord | None = None
    name: str | None = None
    model: str = ""
    rows: int = 0
    admitted: bool = False
    verdicts: dict | None = None


def _image_input(req: predict_pb2.PredictRequest) -> tuple[str, Any] | None:
    """The alias and TensorProto of the rank-4 image input, if the request has one."""
    for alias, proto in req.inputs.items():
        if len(proto.tensor_shape.dim) == 4 and proto.tensor_shape.dim[3].size in (1, 3):
            return alias, proto
    return None


def _rows(shape_dims) -> int:
    return int(shape_dims[0].size) if len(shape_dims) else 1


# -- the gateway -------------------------------------------------------------------------------

class Gateway:
    """The gateway server. `start()` binds and serves; `stop()` ends it; also a context manager.

    >>> with Gateway(GatewayConfig(upstream="127.0.0.1:8500", port=0, metrics_port=0,
    ...                            state="sqlite:/tmp/gw.db")) as gw:
    ...     target = f"127.0.0.1:{gw.port}"

    `policy`, `store` and `ood_detector` override what the config would load (tests, embedding);
    `monitor` replaces the `detector.monitor.Monitor` built from the policy's detector sections
    (more scorers and windows, see its module doc).
    """

    def __init__(self, config: GatewayConfig, *, policy: GatewayPolicy | None = None,
                 store: StateStore | None = None, ood_detector: Any = None,
                 monitor: Monitor | None = None) -> None:
        self.config = config
        self.policy = policy if policy is not None else load_policy(config.policy)
        self.metrics = GatewayMetrics()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None
        self._health = None
        self._stopped = threading.Event()
        self._prober: threading.Thread | None = None
        self._up: bool | None = None
        self._client_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._flagged: set[str] = set()
        self._outputs: dict[tuple, ClassOutputs] = {}
        # detectors load (and fail) before any state is opened; `ood_detector` and `monitor`
        # are the policy's own (a per_model entry builds its own from its sections)
        self._rules = self._build_rules(self.policy, ood_detector, monitor)
        self._model_rules = {name: self._build_rules(sub, None, None, where=f"per_model.{name}.")
                             for name, sub in self.policy.per_model}
        self._store_given = store is not None
        self.store: StateStore = store if store is not None else open_store(config.state)

    # -- policy objects ------------------------------------------------------------------------
    @staticmethod
    def _build_rules(p: GatewayPolicy, ood_detector: Any, monitor: Monitor | None,
                     where: str = "") -> _Rules:
        """The objects of policy `p`; `where` prefixes the field names of its errors."""
        r = _Rules(p, inspects=p.inspects or monitor is not None, monitor=monitor)
        if p.always != "identity" or p.detectors or monitor is not None:
            r.always = None if p.always == "identity" else parse_policy(p.always)
            r.on_flag = parse_policy(p.on_flag_policy)
        if p.detectors and monitor is None:
            if p.ood is not None and p.ood.path is not None and ood_detector is None \
                    and not Path(p.ood.path).exists():
                raise invalid(f"{where}detectors.ood.path", p.ood.path, "an exported detector "
                              "folder (detectors/<name>/<version>)")
            r.monitor = Monitor.from_configs(p.ood, p.prada, detector=ood_detector)
        if p.misinforms:
            m = p.misinformation or MisinformationConfig()
            tau = r.monitor.watch(MAIN_WATCH).limit if m.tau is None else m.tau
            r.misinform = AdaptiveMisinformation(tau=tau, nu=m.nu, function=m.function)
            if m.path is not None:
                if not Path(m.path).exists():
                    raise invalid(f"{where}misinformation.path", m.path, "an exported "
                                  "misinformation model folder (python -m "
                                  "detector.misinformation)")
                r.mis_model = MisinformationModel.load(m.path)
            log.info("%smisinformation: %r", where, r.misinform)
        if p.watermark is not None:
            r.watermarker = Watermarker(read_key(p.watermark.key_file), p.watermark.fraction)
        return r

    def _rules_for(self, model: str) -> _Rules:
        return self._model_rules.get(model, self._rules)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Gateway":
        from grpc_health.v1 import health, health_pb2_grpc

        cfg = self.config
        self._channel = grpc.insecure_channel(cfg.upstream, options=_CHANNEL_OPTIONS)
        self._upstream = {m: self._channel.unary_unary(f"/{svc}/{m}")
                          for svc, m in ((PREDICTION_SERVICE, "Predict"),
                                         (PREDICTION_SERVICE, "GetModelMetadata"),
                                         (PREDICTION_SERVICE, "Classify"),
                                         (PREDICTION_SERVICE, "Regress"),
                                         (PREDICTION_SERVICE, "MultiInference"),
                                         (MODEL_SERVICE, "GetModelStatus"))}
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="gateway"),
            options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_receive_message_length", cfg.max_request_mb * 2**20),
                     ("grpc.so_reuseport", 0)])
        h = grpc.unary_unary_rpc_method_handler
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(PREDICTION_SERVICE, {
                "Predict": h(self._wrap("Predict", self._predict)),
                "GetModelMetadata": h(self._wrap("GetModelMetadata", self._describe)),
                "Classify": h(self._wrap("Classify", self._examples)),
                "Regress": h(self._wrap("Regress", self._examples)),
                "MultiInference": h(self._wrap("MultiInference", self._examples)),
            }),
            grpc.method_handlers_generic_handler(MODEL_SERVICE, {
                "GetModelStatus": h(self._wrap("GetModelStatus", self._describe)),
            }),
        ))
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{cfg.host}:{cfg.port}" if ":" not in cfg.host else f"[{cfg.host}]:{cfg.port}"
        try:
            if cfg.tls_cert:
                key = Path(cfg.tls_key).read_bytes()
                cert = Path(cfg.tls_cert).read_bytes()
                ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
                creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                    require_client_auth=ca is not None)
                self.port = server.add_secure_port(address, creds)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.5x raises where older versions returned 0
            self.port = 0
        if not self.port:
            check_port_free(cfg.host, cfg.port, "port")  # raises with the reason
            raise port_error(cfg.host, cfg.port, "port", "binding it failed")
        if cfg.metrics_port:  # before serving: a taken metrics port stops the start cleanly
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host)
            except OSError as err:
                server.stop(None)
                raise port_error(cfg.host, cfg.metrics_port, "metrics-port",
                                 err.strerror or str(err), head="Failed to start the metrics "
                                 "server") from None
        self._probe()
        server.start()
        self._server = server
        self._prober = threading.Thread(target=self._probe_loop, name="gateway-health",
                                        daemon=True)
        self._prober.start()
        watched = [(model, r.policy) for model, r in
                   (("", self._rules), *self._model_rules.items())]
        log.info("gateway on %s:%d -> %s (auth %s, detectors: %s)", cfg.host, self.port,
                 cfg.upstream, "required" if self.policy.auth_required else "optional",
                 ", ".join(f"{model + ':' if model else ''}{n}" for model, p in watched
                           for n, d in (("ood", p.ood), ("prada", p.prada)) if d is not None)
                 or "none")
        return self

    def stop(self, grace: float | None = 0.5) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._prober is not None:
            self._prober.join(timeout=5)
            self._prober = None
        self.metrics.stop()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if not self._store_given:
            self.store.close()

    def wait(self) -> None:
        self._stopped.wait()

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- health --------------------------------------------------------------------------------
    def _set_up(self, up: bool) -> None:
        if up == self._up:
            return
        from grpc_health.v1 import health_pb2

        self._up = up
        self.metrics.upstream_up.set(1 if up else 0)
        state = health_pb2.HealthCheckResponse.SERVING if up else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        if self._health is not None:
            for service in ("", PREDICTION_SERVICE, MODEL_SERVICE):
                self._health.set(service, state)
        log.log(logging.INFO if up else logging.WARNING, "upstream %s is %s",
                self.config.upstream, "up" if up else "DOWN")

    def _probe(self) -> None:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.policy.models[0] if self.policy.models else ""
        timeout = min(1.0, self.config.health_interval)
        try:
            self._upstream["GetModelStatus"](request.SerializeToString(), timeout=timeout)
            self._set_up(True)
        except grpc.RpcError as err:
            # any answer from the server (NOT_FOUND for an unknown model...) means it is up
            self._set_up(err.code() not in (grpc.StatusCode.UNAVAILABLE,
                                            grpc.StatusCode.DEADLINE_EXCEEDED))

    def _probe_loop(self) -> None:
        while not self._stopped.wait(self.config.health_interval):
            try:
                self._probe()
            except Exception:  # noqa: BLE001 - the prober must never die
                log.exception("health probe failed")

    # -- common request path -------------------------------------------------------------------
    def _wrap(self, method: str, body: Callable[[_Request, bytes, grpc.ServicerContext], bytes]):
        metrics = self.metrics
        answered = metrics.requests.labels(method, "OK")  # bound once: the hot path's children
        latency = metrics.latency.labels(method)

        def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
            start = time.perf_counter()
            req = _Request(method)
            try:
                answer = body(req, request, context)
            except _Stop as stop:
                self._refused(req, stop)
                metrics.child(metrics.requests, method, stop.code.name).inc()
                latency.observe(time.perf_counter() - start)
                context.abort(stop.code, status.truncate_for_grpc(stop.message))
            except Exception as err:  # never let a request take the gateway down
                log.exception("internal error in %s", method)
                stop = _Stop(grpc.StatusCode.INTERNAL, f"gateway error: {type(err).__name__}",
                             "error")
                self._refused(req, stop)
                metrics.child(metrics.requests, method, "INTERNAL").inc()
                context.abort(stop.code, stop.message)
            answered.inc()
            latency.observe(time.perf_counter() - start)
            return answer

        return handler

    def _refused(self, req: _Request, stop: _Stop) -> None:
        """Release a reservation, count and audit a request that got no answer."""
        if stop.action == "refuse_committed":  # already charged and audited under the lock
            return
        if req.admitted and req.name is not None:
            self.store.cancel(req.name, req.rows)
        if stop.action in ("refuse", "rate", "budget", "auth"):
            self.metrics.child(self.metrics.refusals, req.name or "-", stop.action).inc()
        try:
            self.store.audit(AuditRecord(time.time(), req.name, req.method, req.model,
                                         req.rows,
                                         req.verdicts or {}, stop.action, stop.code.name,
                                         stop.message[:200]))
        except Exception:  # noqa: BLE001 - an audit failure must not hide the answer's status
            log.exception("could not write the audit record")

    def _authenticate(self, req: _Request, context: grpc.ServicerContext) -> None:
        key = extract_key(context.invocation_metadata())
        if key is None:
            if self.policy.auth_required:
                raise _Stop(grpc.StatusCode.UNAUTHENTICATED,
                            "Missing API key: send it as gRPC metadata `x-api-key: KEY` or "
                            "`authorization: Bearer KEY`", "auth")
            req.name = ANONYMOUS
            return
        digest = hash_key(key)
        record = self.store.find_client(digest)
        if record is None or record.revoked or not digest_matches(record.key_hash, digest):
            raise _Stop(grpc.StatusCode.UNAUTHENTICATED, "Invalid API key", "auth")
        req.client = record
        req.name = record.name

    def _limits(self, req: _Request) -> Limits:
        p, c = self.policy, req.client
        if c is None:
            return Limits(p.budget, p.rate_per_second, p.burst)
        return Limits(c.budget if c.budget is not None else p.budget,
                      c.rate if c.rate is not None else p.rate_per_second,
                      c.burst if c.burst is not None else p.burst)

    def _admit(self, req: _Request, rows: int) -> None:
        req.rows = rows
        refusal = self.store.admit(req.name, rows, self._limits(req), time.time())
        if refusal is not None:
            raise _Stop(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message, refusal.limit)
        req.admitted = True

    def _check_model(self, name: str, *, for_status: bool = False,
                     version: int | None = None) -> None:
        models = self.policy.models
        if models is not None and name not in models:
            err = status.model_not_found_in_status(name) if for_status else \
                status.servable_not_found(name, version)
            raise _Stop(err.code, err.message, "unknown_model")

    def _forward(self, method: str, payload: bytes, context: grpc.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        timeout = self.config.upstream_timeout
        if remaining is not None:
            if remaining <= 0:
                raise _Stop(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "error")
            # answer before the caller's deadline, so it sees our status, not its own timeout
            timeout = min(timeout, max(remaining - min(0.05, remaining * 0.1), 0.001))
        start = time.perf_counter()
        try:
            answer = self._upstream[method](payload, timeout=timeout)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            if code is grpc.StatusCode.UNAVAILABLE or (
                    code is grpc.StatusCode.DEADLINE_EXCEEDED and not self._up):
                if "connect" in details.lower() or self.config.upstream in details \
                        or code is grpc.StatusCode.DEADLINE_EXCEEDED or not details:
                    self._set_up(False)
                    details = _UNAVAILABLE_MESSAGE
                code = grpc.StatusCode.UNAVAILABLE
            raise _Stop(code, details, "upstream_error") from None
        finally:
            self.metrics.child(self.metrics.upstream_latency, method).observe(
                time.perf_counter() - start)
        if not self._up:
            self._set_up(True)
        return answer

    def _commit(self, req: _Request, detectors: DetectorState | None, action: str) -> None:
        self.store.commit(req.name, req.rows, detectors,
                          AuditRecord(time.time(), req.name, req.method, req.model, req.rows,
                                      req.verdicts or {}, action, "OK", ""))
        req.admitted = False  # charged now: nothing left to cancel
        if req.rows:
            self.metrics.child(self.metrics.queries, req.name).inc(req.rows)

    def _client_lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._client_locks.get(name)
            if lock is None:
                lock = self._client_locks[name] = threading.Lock()
            return lock

    # -- methods -------------------------------------------------------------------------------
    def _describe(self, req: _Request, payload: bytes, context) -> bytes:
        """GetModelMetadata and GetModelStatus: forwarded, free of charge."""
        self._authenticate(req, context)
        for_status = req.method == "GetModelStatus"
        msg = _parse(get_model_status_pb2.GetModelStatusRequest if for_status
                     else get_model_metadata_pb2.GetModelMetadataRequest, payload)
        req.model = msg.model_spec.name
        self._check_model(req.model, for_status=for_status,
                          version=None if for_status else _version(msg.model_spec))
        self._admit(req, 0)
        answer = self._forward(req.method, payload, context)
        self._commit(req, None, "pass")
        return answer

    def _examples(self, req: _Request, payload: bytes, context) -> bytes:
        """Classify, Regress, MultiInference: forwarded and charged per example (x tasks)."""
        self._authenticate(req, context)
        if req.method == "MultiInference":
            msg = _parse(inference_pb2.MultiInferenceRequest, payload)
            specs = [t.model_spec for t in msg.tasks]
            tasks = max(len(specs), 1)
        else:
            cls = classification_pb2.ClassificationRequest if req.method == "Classify" else \
                regression_pb2.RegressionRequest
            msg = _parse(cls, payload)
            specs, tasks = [msg.model_spec], 1
        for spec in specs:
            self._check_model(spec.name, version=_version(spec))
        req.model = specs[0].name if specs else ""
        rules = self._rules_for(req.model)
        if rules.inspects or rules.always is not None:
            raise _Stop(grpc.StatusCode.PERMISSION_DENIED,
                        f"{req.method} is not available through this gateway: its policy "
                        "inspects and rewrites Predict answers only", "refuse")
        kind = msg.input.WhichOneof("kind")
        examples = len(getattr(msg.input, kind).examples) if kind else 0
        self._admit(req, examples * tasks)
        answer = self._forward(req.method, payload, context)
        self._commit(req, None, "pass")
        return answer

    def _predict(self, req: _Request, payload: bytes, context) -> bytes:
        self._authenticate(req, context)
        msg = _parse(predict_pb2.PredictRequest, payload)
        req.model = msg.model_spec.name
        self._check_model(req.model, version=_version(msg.model_spec))
        rows = max((_rows(t.tensor_shape.dim) for t in msg.inputs.values()), default=0)
        self._admit(req, rows)
        rules = self._rules_for(req.model)
        if not rules.inspects:
            outputs = self._class_outputs(msg.model_spec, context, rules) if rules.always \
                else None
            answer = self._forward("Predict", payload, context)
            action = "pass"
            if rules.always is not None:
                answer = degrade_predict_response(answer, rules.always, outputs)
                action = f"always:{rules.policy.always}"
            self._commit(req, None, action)
            return answer
        return self._predict_watched(req, msg, payload, context, rules)

    def _class_outputs(self, spec, context, rules: _Rules) -> ClassOutputs | None:
        """The class-score outputs of the signature `spec` asks for (GetModelMetadata, once per
        model, version and signature); None when the upstream does not describe it (then the
        answer's own float [N, K] outputs are used)."""
        version = spec.version.value if spec.HasField("version") else spec.version_label
        name = spec.signature_name or DEFAULT_SIGNATURE
        key = (spec.name, version, name)
        found = self._outputs.get(key)
        if found is not None:
            return self._fits(spec.name, found, rules)
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.CopyFrom(spec)
        try:
            answer = get_model_metadata_pb2.GetModelMetadataResponse.FromString(
                self._forward("GetModelMetadata", request.SerializeToString(), context))
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            if not answer.metadata["signature_def"].Unpack(signature_map):
                raise KeyError("signature_def")
            signature = select_signature(signature_map, name, where=f"model '{spec.name}'")
        except (_Stop, UsageError, KeyError, DecodeError) as err:
            log.warning("no signature for model %r (%s): class-score outputs taken from the "
                        "answers", spec.name, getattr(err, "message", err))
            return None
        try:
            found = class_outputs(signature, rules.policy.output)
        except UsageError as err:
            raise _Stop(grpc.StatusCode.FAILED_PRECONDITION,
                        f"The gateway policy does not fit model '{spec.name}': {err}",
                        "invalid") from None
        self._outputs[key] = found
        return self._fits(spec.name, found, rules)

    def _fits(self, model: str, found: ClassOutputs, rules: _Rules) -> ClassOutputs:
        """`found`, unless the rules would rewrite answers whose scores come as top-k pairs
        (FAILED_PRECONDITION: rewriting the full scores only would leave the pairs telling
        the truth, and the pairs alone cannot be relabelled or misinformed without K)."""
        if found.topk and rules.policy.rewrites:
            pairs = ", ".join(f"'{s}' with '{c}'" for s, c in found.topk)
            raise _Stop(grpc.StatusCode.FAILED_PRECONDITION,
                        f"The gateway policy does not fit model '{model}': its answers carry "
                        f"top-k pairs ({pairs}), which an output policy, misinformation or "
                        "a watermark cannot rewrite; serve a signature with [batch, K] class "
                        f"scores, or give {self._key(model, 'on_flag')} the action refuse and "
                        "no always, on_query, watermark", "invalid")
        return found

    def _key(self, model: str, key: str) -> str:
        """The policy key that decides `model`: its per_model entry's, else the policy's."""
        return f"per_model.{model}.{key}" if model in self._model_rules else key

    def _pixels(self, model: str, images: np.ndarray | None, rules: _Rules,
                outputs: ClassOutputs | None = None) -> np.ndarray | None:
        """The request's images as uint8 pixels 0..255 (what the detectors, misinformation
        model and watermark records read), mapped from the model's declared ``input_range``
        when its input is float (by its signature in `outputs`, else by the request);
        FAILED_PRECONDITION naming the key when it is not declared. Float pixels for a uint8
        input are left as they are: the upstream refuses them."""
        if images is None or images.dtype == np.uint8 or (
                outputs is not None and not outputs.float_input):
            return images
        scale = rules.policy.input_range
        if scale is None:
            raise _Stop(grpc.StatusCode.FAILED_PRECONDITION,
                        f"The gateway policy does not fit model '{model}': its image input is "
                        f"{images.dtype.name}, and the gateway's detectors and watermarks read "
                        f"uint8 pixels; set {self._key(model, 'input_range')} to the range "
                        "the model reads ('0,1', '-1,1' or '0,255')", "invalid")
        x = images.astype(np.float32)
        x = {"0,1": x * 255.0, "-1,1": (x + 1.0) * 127.5, "0,255": x}[scale]
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def _images(self, msg: predict_pb2.PredictRequest) -> np.ndarray | None:
        found = _image_input(msg)
        if found is None:
            return None
        alias, proto = found
        try:
            return codec.to_ndarray(proto)
        except codec.TensorDecodeError:
            err = status.tensor_parsing_error(alias)
            raise _Stop(err.code, err.message, "invalid") from None

    def _predict_watched(self, req: _Request, msg: predict_pb2.PredictRequest, payload: bytes,
                         context, rules: _Rules) -> bytes:
        p, monitor = rules.policy, rules.monitor
        refuse = p.on_flag_action == "refuse"
        if refuse and self.store.load_detectors(req.name).flagged:
            raise _Stop(grpc.StatusCode.PERMISSION_DENIED,
                        f"Client '{req.name}' is flagged for model extraction; "
                        "queries are refused", "refuse")
        outputs = self._class_outputs(msg.model_spec, context, rules)
        images = self._pixels(req.model, self._images(msg), rules, outputs)
        watched = images is not None and len(images) > 0
        scores = None
        if watched and monitor is not None and monitor.needs_scores():
            scores = {name: self._upstream_scores(p.ood.upstream_model, images, context)
                      for name in monitor.needs_scores()}
        answer = self._forward("Predict", payload, context)
        resp = probs = None
        if watched:
            resp = predict_pb2.PredictResponse.FromString(answer)
            if outputs is not None and outputs.watched is not None \
                    and outputs.watched not in resp.outputs:
                self._outputs.clear()  # a new version since the signature was read: ask again
            probs = watched_probabilities(resp, outputs or answer_outputs(resp), len(images))
        with self._client_lock(req.name):
            state = self.store.load_detectors(req.name)
            if monitor is not None:
                decision = monitor.observe(state, images, probs, scores=scores,
                                           client=req.name)
            else:
                decision = Decision(flagged=state.flagged, verdicts={"flagged": state.flagged})
            self._count(req.name, decision)
            verdicts = req.verdicts = decision.verdicts
            action = "pass"
            if state.flagged and refuse:
                # charged (the upstream answered) and audited, but the answer is withheld
                self.store.commit(req.name, req.rows, state, AuditRecord(
                    time.time(), req.name, req.method, req.model, req.rows, verdicts,
                    "refuse", "PERMISSION_DENIED", "flagged"))
                req.admitted = False
                self.metrics.refusals.labels(req.name, "refuse").inc()
                raise _Stop(grpc.StatusCode.PERMISSION_DENIED,
                            f"Client '{req.name}' is flagged for model extraction; "
                            "queries are refused", "refuse_committed")
            policies = []
            ood_scores = decision.scores.get(MAIN_WATCH)
            misinform = rules.misinform is not None and ood_scores is not None \
                and probs is not None and (p.on_query == "misinform" or (
                    state.flagged and p.on_flag_action == "misinform"))
            if misinform:
                label_only = (state.flagged and p.on_flag_policy == "label_only") or \
                    p.always == "label_only"
                policies.append(self._misinformation_policy(rules, images, ood_scores,
                                                            label_only, context))
                weights = rules.misinform.weights(ood_scores)
                verdicts["misinformation_weight"] = round(float(weights.mean()), 4)
                action = "misinform"
            if state.flagged:
                policies.append(rules.on_flag)
                action = f"{p.on_flag_action}:{p.on_flag_policy}"
            if rules.always is not None:
                policies.append(rules.always)
                action = action if action != "pass" else f"always:{p.always}"
            marks = None
            watermarker = rules.watermarker
            if watermarker is not None and probs is not None:
                top1 = np.argmax(probs, axis=1)
                marks = watermarker.choose(req.name, images, top1, probs.shape[1])
                if len(marks[0]):
                    policies.append(_relabel(marks[0], marks[1]))
                    verdicts["watermarked"] = int(len(marks[0]))
            if policies:
                answer = degrade_predict_response(resp if resp is not None else answer,
                                                  _chain(policies), outputs)
            if marks is not None and len(marks[0]):
                # stored before the answer leaves (as the audit record below)
                self.store.add_watermarks(watermarker.records(
                    req.name, images, marks[0], marks[1], top1, marks[2],
                    model=req.model, now=time.time()))
            self.store.commit(req.name, req.rows, state, AuditRecord(
                time.time(), req.name, req.method, req.model, req.rows, verdicts, action,
                "OK", ""))
            req.admitted = False
        self.metrics.child(self.metrics.queries, req.name).inc(req.rows)
        return answer

    def _count(self, name: str, decision: Decision) -> None:
        """The monitor's timings and new flags into the metrics."""
        for detector, seconds in decision.seconds.items():
            self.metrics.detector_latency.labels(detector).observe(seconds)
        if decision.newly:
            for detector in decision.newly:
                self.metrics.flags.labels(detector).inc()
            self._flagged.add(name)
            self.metrics.flagged.set(len(self._flagged))

    def _misinformation_policy(self, rules: _Rules, images: np.ndarray, scores: np.ndarray,
                               label_only: bool, context) -> Callable[[np.ndarray], np.ndarray]:
        """The answer rewrite of Adaptive Misinformation for this batch (its scores fixed)."""
        mis = None
        if rules.misinform.function == "model":
            if rules.mis_model is not None:
                mis = rules.mis_model(images)
            else:
                mis = self._upstream_predict(rules.policy.misinformation.upstream_model,
                                             images, context)

        def apply(probs: np.ndarray) -> np.ndarray:
            return rules.misinform(probs, scores, mis, label_only=label_only)

        return apply

    def _upstream_predict(self, model: str, images: np.ndarray, context) -> np.ndarray:
        """The ``probabilities`` a detector export served by the upstream gives `images`."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs["images"].CopyFrom(codec.from_ndarray(images.astype(np.uint8),
                                                             use_tensor_content=True))
        answer = predict_pb2.PredictResponse.FromString(
            self._forward("Predict", request.SerializeToString(), context))
        return codec.to_ndarray(answer.outputs["probabilities"])

    def _upstream_scores(self, model: str, images: np.ndarray, context) -> np.ndarray:
        """The upstream-served OOD detector's attack probability per image, float64."""
        t0 = time.perf_counter()
        try:
            probs = self._upstream_predict(model, images, context)
            return probs[:, ATTACK_CLASS].astype(np.float64)
        finally:
            self.metrics.detector_latency.labels(MAIN_WATCH).observe(time.perf_counter() - t0)


def _relabel(rows: np.ndarray, wrong: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda probs: Watermarker.relabel(probs, rows, wrong)


def _chain(policies: list[Callable[[np.ndarray], np.ndarray]]):
    def apply(probs: np.ndarray) -> np.ndarray:
        for policy in policies:
            probs = np.asarray(policy(probs), dtype=np.float32)
        return probs

    return apply


def _version(spec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


def _parse(cls, payload: bytes):
    try:
        return cls.FromString(payload)
    except DecodeError:
        # what a gRPC server answers when its request deserializer fails
        raise _Stop(grpc.StatusCode.INTERNAL, "Exception deserializing request!",
                    "invalid") from None
