"""The one harness that starts model servers and gateways for tests, benchmarks and the quickstart.

Shaped after TF Serving's `tensorflow_model_server_test_base.py`: pick an unused port, start the
server, wait until it answers over gRPC, tear it down. Everything that needs a running server
goes through here, so a change in how servers start (a flag, a readiness rule, a log file) is
made once:

    from serving import testing

    base = testing.export_tiny_classifier(tmp / "models", "tiny")       # <tmp>/models/tiny/1/
    with testing.model_server(base_path=base, name="tiny") as server:   # in this process
        with testing.gateway(server.target, policy={"auth": {"required": False}},
                             workdir=tmp / "gw", process=True) as gw:   # `python -m ...`
            ...  # gRPC to gw.target

- `model_server(...)`: the embedded server (`serving.embedded`) over a `models.config` or
  one model base folder, in this process (`ModelServer`, the default: no second TensorFlow
  start-up) or as its own `python -m serving.model_server` process (`process=True`: what a
  benchmark measures, what a signal test kills). It returns once every configured model has an
  AVAILABLE version (GetModelStatus), or raises with the process's log tail.
- `gateway(...)`: `serving.gateway` in front of an upstream, in-process (`Gateway`) or as a
  process; ready when its gRPC health service answers SERVING (it probes its upstream), and,
  with `key=` and `models=`, when those models are AVAILABLE through it.
- `Running`: what both return: `port`, `target`, `rest_port`, `proc` (a process) or `obj` (the
  in-process `ModelServer` / `Gateway`), `log`, `stop(sig)` and the context-manager protocol.
- `wait_for_models(target, names)`, `wait_for_health(target)`: the readiness checks alone (for
  servers started some other way, e.g. the compose command lines).
- `export_tiny_classifier(...)`: a tiny Keras image classifier exported as TF Serving loads it
  (uint8 `[batch, H, W, 3]` -> probabilities); `export_untrained_cnn(...)`: the CIFAR-10 CNN,
  untrained (same graph, same cost per image: for latency and load benchmarks);
  `export_colour_victim(...)`: a victim a small surrogate can steal in seconds ("which colour
  channel dominates", 3 classes), with `colour_images(n, seed)` to query it.
- `pick_unused_port()`: a loopback TCP port that was free a moment ago.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import grpc
import numpy as np

from serving.embedded.server import ModelServer, ServerOptions, load_model_server_config
from serving.ports import pick_unused_port

log = logging.getLogger(__name__)

__all__ = ["COLOUR_CLASSES", "COLOUR_SIZE", "Running", "colour_images", "colour_victim",
           "export_colour_victim", "export_tiny_classifier", "export_untrained_cnn", "gateway",
           "model_server", "models_in_config", "pick_unused_port", "wait_for_health",
           "wait_for_models"]

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 180.0  # seconds a server may take to load its models (a loaded 2-core machine)
_POLL = 0.1


# -- what was started ------------------------------------------------------------------------------
@dataclasses.dataclass
class Running:
    """A started model server or gateway: in this process (`obj`) or as a process (`proc`)."""

    port: int
    host: str = "127.0.0.1"
    rest_port: int | None = None
    proc: subprocess.Popen | None = None
    obj: Any = None  # the in-process ModelServer or Gateway
    log: Path | None = None  # the process's stdout and stderr
    args: list[str] = dataclasses.field(default_factory=list)  # the process's command line
    store: Any = None  # an in-process gateway's state store (closed on stop)
    _cleanup: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        if self.log is None or not self.log.is_file():
            return ""
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, sig: int | None = None, timeout: float = 30.0) -> int | None:
        """Stop it (a process: `sig`, default SIGTERM, then SIGKILL after `timeout`); returns the
        process's exit code (None in-process). Stopping twice is harmless."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM if sig is None else sig)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        elif self.obj is not None:
            self.obj.stop()
            self.obj = None
        if self.store is not None:
            self.store.close()
            self.store = None
        while self._cleanup:
            self._cleanup.pop()()
        return code

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- readiness -------------------------------------------------------------------------------------
def _check_alive(proc: subprocess.Popen | None, what: str, log_file: Path | None) -> None:
    if proc is not None and proc.poll() is not None:
        tail = log_file.read_text(errors="replace")[-3000:] if log_file and log_file.is_file() \
            else ""
        raise RuntimeError(f"{what} exited with code {proc.returncode} before serving"
                           + (f":\n{tail}" if tail else ""))


def wait_for_models(target: str, names: Iterable[str], *, timeout: float = READY_TIMEOUT,
                    metadata: Sequence[tuple[str, str]] = (),
                    proc: subprocess.Popen | None = None, log_file: Path | None = None) -> None:
    """Until each model in `names` has a version AVAILABLE at `target` (GetModelStatus).

    UNAVAILABLE (not listening yet), NOT_FOUND (not loaded yet) and DEADLINE_EXCEEDED are waited
    through; another code, a version that ended in error, `proc` exiting or `timeout` raise."""
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
    )

    waiting = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
               grpc.StatusCode.DEADLINE_EXCEEDED)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    end = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for name in names:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = name
            last = "no answer yet"
            while True:
                _check_alive(proc, target, log_file)
                try:
                    response = stub.GetModelStatus(request, timeout=5, metadata=tuple(metadata))
                except grpc.RpcError as err:
                    if err.code() not in waiting:
                        raise RuntimeError(f"{target}: GetModelStatus({name!r}) answered "
                                           f"{err.code().name}: {err.details()}") from None
                    last = f"{err.code().name}: {err.details()}"
                else:
                    states = response.model_version_status
                    if any(v.state == available for v in states):
                        break
                    failed = [v for v in states if v.status.error_code != 0]
                    if states and len(failed) == len(states):
                        raise RuntimeError(f"{target}: model {name!r} failed to load: "
                                           f"{failed[0].status.error_message}")
                    last = f"versions {[v.version for v in states]} not AVAILABLE yet"
                if time.monotonic() > end:
                    raise TimeoutError(f"{target} did not serve {name!r} within {timeout:.0f} s "
                                       f"({last})")
                time.sleep(_POLL)


def wait_for_health(target: str, *, service: str = "", timeout: float = READY_TIMEOUT,
                    proc: subprocess.Popen | None = None, log_file: Path | None = None) -> None:
    """Until `target`'s gRPC health service reports SERVING for `service`."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    end = time.monotonic() + timeout
    last = "no answer yet"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            _check_alive(proc, target, log_file)
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as err:
                last = err.code().name
            if time.monotonic() > end:
                raise TimeoutError(f"{target} not SERVING within {timeout:.0f} s ({last})")
            time.sleep(_POLL)


def models_in_config(path: str | Path) -> list[str]:
    """The model names a text `ModelServerConfig` lists."""
    return [c.name for c in load_model_server_config(path).model_config_list.config]


# -- processes -------------------------------------------------------------------------------------
def _spawn(args: list[str], log_file: Path | None, *, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path, list]:
    """`python *args` with stdout and stderr in `log_file` (a temporary file when None)."""
    cleanup = []
    if log_file is None:
        fd, name = tempfile.mkstemp(prefix="serving-", suffix=".log")
        os.close(fd)
        log_file = Path(name)
        cleanup.append(lambda: log_file.unlink(missing_ok=True))
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env.update(env or {})
    with open(log_file, "ab") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd or ROOT, env=full_env,
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    return proc, log_file, cleanup


# -- the model server ------------------------------------------------------------------------------
def model_server(*, config_file: str | Path | None = None, base_path: str | Path | None = None,
                 name: str | None = None, process: bool = False, rest: bool = False,
                 host: str = "127.0.0.1", port: int | None = None,
                 poll_seconds: float = 0.0, flags: Sequence[str] = (),
                 log_file: str | Path | None = None, env: dict[str, str] | None = None,
                 wait: bool = True, timeout: float = READY_TIMEOUT, **options: Any) -> Running:
    """Start the embedded model server over `config_file` (a `models.config`) or one model
    (`base_path` with integer version folders, served as `name`, default the folder's name),
    on `port` (default: an unused one) and, with `rest`, a REST port; return when its models are
    AVAILABLE (unless `wait=False`).

    In this process (default) `options` are further `ServerOptions` fields; as a process
    (`process=True`) `flags` are further command-line flags and `log_file` keeps its output.
    `poll_seconds` is `--file_system_poll_wait_seconds` (0: load once)."""
    if (config_file is None) == (base_path is None):
        raise ValueError("model_server: give exactly one of config_file and base_path")
    if base_path is not None:
        base_path = Path(base_path).resolve()
        name = name or base_path.name
        names = [name]
    else:
        config_file = Path(config_file).resolve()
        names = models_in_config(config_file)
    if not process:
        if flags or log_file is not None or env:
            raise ValueError("model_server: flags, log_file and env need process=True")
        source = ({"model_config_file": str(config_file)} if config_file is not None
                  else {"model_base_path": str(base_path), "model_name": name})
        opts = ServerOptions(port=port or 0, host=host, rest_api_port=0 if rest else None,
                             file_system_poll_wait_seconds=poll_seconds, **source, **options)
        server = ModelServer(opts).start()
        running = Running(server.port, host, rest_port=server.rest_port, obj=server)
        try:
            if wait:
                wait_for_models(running.target, names, timeout=timeout)
        except BaseException:
            running.stop()
            raise
        return running
    if options:
        raise ValueError(f"model_server: {sorted(options)} are in-process options; "
                         "as a process give them as flags")
    port = port or pick_unused_port(host)
    rest_port = pick_unused_port(host) if rest else None
    args = ["-m", "serving.model_server", f"--port={port}", f"--host={host}",
            f"--file_system_poll_wait_seconds={poll_seconds}"]
    args += ([f"--model_config_file={config_file}"] if config_file is not None
             else [f"--model_base_path={base_path}", f"--model_name={name}"])
    if rest_port:
        args.append(f"--rest_api_port={rest_port}")
    args += list(flags)
    proc, log_path, cleanup = _spawn(args, Path(log_file) if log_file else None, env=env)
    running = Running(port, host, rest_port=rest_port, proc=proc, log=log_path,
                      args=[sys.executable, *args], _cleanup=cleanup)
    try:
        if wait:
            wait_for_models(running.target, names, timeout=timeout, proc=proc,
                            log_file=log_path)
    except BaseException:
        running.stop(signal.SIGKILL)
        raise
    return running


# -- the gateway -----------------------------------------------------------------------------------
def gateway(upstream: str, *, policy: Any = None, state: str | Path | None = None,
            workdir: str | Path | None = None, process: bool = False, host: str = "127.0.0.1",
            port: int | None = None, metrics_port: int = 0, flags: Sequence[str] = (),
            key: str | None = None, models: Sequence[str] = (),
            log_file: str | Path | None = None, env: dict[str, str] | None = None,
            wait: bool = True, timeout: float = READY_TIMEOUT, store: Any = None,
            ood_detector: Any = None, **config: Any) -> Running:
    """Start the gateway in front of `upstream` (HOST:PORT or unix:PATH) and wait until its
    health service is SERVING and, given `key` and `models`, those models are AVAILABLE
    through it.

    `policy`: a `GatewayPolicy` or its JSON form (a dict; as a process it is written to
    `<workdir>/policy.json`), None for the defaults. `state`: `sqlite:PATH`, `redis://...` or a
    path (SQLite); default `<workdir>/gateway_state.db` (`workdir` is then required).
    In this process, `store`, `ood_detector` and `config` (further `GatewayConfig` fields) are
    passed through; as a process, `flags` are further command-line flags."""
    workdir = Path(workdir) if workdir is not None else None
    if state is None:
        if workdir is None:
            raise ValueError("gateway: give state= or workdir=")
        state = workdir / "gateway_state.db"
    state = str(state)
    if "://" not in state and not state.startswith("sqlite:"):
        state = f"sqlite:{state}"
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    if not process:
        if flags or log_file is not None or env:
            raise ValueError("gateway: flags, log_file and env need process=True")
        from serving.gateway.config import GatewayConfig, GatewayPolicy, policy_from_dict
        from serving.gateway.server import Gateway

        if isinstance(policy, dict):
            policy = policy_from_dict(policy)
        own_store = None
        if store is None and state.startswith("sqlite:"):
            from serving.gateway.store import SQLiteStore

            store = own_store = SQLiteStore(state[len("sqlite:"):])
        cfg = GatewayConfig(upstream=upstream, port=port or 0, host=host,
                            metrics_port=metrics_port, state=state, **config)
        gw = Gateway(cfg, policy=policy if policy is not None else GatewayPolicy(),
                     store=store, ood_detector=ood_detector).start()
        running = Running(gw.port, host, obj=gw, store=own_store)
    else:
        if config or store is not None or ood_detector is not None:
            raise ValueError("gateway: store, ood_detector and config fields are in-process "
                             "options; as a process give them as flags")
        port = port or pick_unused_port(host)
        args = ["-m", "serving.gateway", "--upstream", upstream, "--port", str(port),
                "--host", host, "--state", state, "--metrics-port", str(metrics_port)]
        if policy is not None:
            if not isinstance(policy, dict) or workdir is None:
                raise ValueError("gateway: as a process, the policy is a dict (its JSON form) "
                                 "and needs workdir= (it is written there)")
            policy_file = workdir / "policy.json"
            policy_file.write_text(json.dumps(policy))
            args += ["--policy", str(policy_file)]
        args += list(flags)
        if log_file is None and workdir is not None:
            log_file = workdir / "gateway.log"
        proc, log_path, cleanup = _spawn(args, Path(log_file) if log_file else None, env=env)
        running = Running(port, host, proc=proc, log=log_path, args=[sys.executable, *args],
                          _cleanup=cleanup)
    try:
        if wait:
            wait_for_health(running.target, timeout=timeout, proc=running.proc,
                            log_file=running.log)
            if key is not None and models:
                wait_for_models(running.target, models, timeout=timeout,
                                metadata=[("x-api-key", key)], proc=running.proc,
                                log_file=running.log)
    except BaseException:
        running.stop(signal.SIGKILL if process else None)
        raise
    return running


# -- tiny exported models --------------------------------------------------------------------------
def export_tiny_classifier(base: str | Path, name: str = "tiny", version: int = 1, *,
                           input_shape: tuple[int, int, int] = (8, 8, 3),
                           class_names: Sequence[str] = ("ant", "bee", "cat"), seed: int = 0,
                           filters: int = 4, export_logits: bool = False,
                           model_out: list | None = None) -> Path:
    """Export a tiny seeded Keras CNN (uint8 images -> Rescaling, one Conv2D, pooling, Dense)
    to `<base>/<name>/<version>/` with the project's exporter; returns `<base>/<name>`. The
    Keras model is appended to `model_out` when given (to compare answers with it)."""
    import keras

    from victim_export import export_classifier

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(class_names))(x))
    export_classifier(model, Path(base), name, version=version, input_shape=tuple(input_shape),
                      class_names=tuple(class_names), export_logits=export_logits)
    if model_out is not None:
        model_out.append(model)
    return Path(base) / name


def export_untrained_cnn(base: str | Path, name: str = "cifar10_cnn") -> Path:
    """The CIFAR-10 CNN of `victim_export`, untrained, exported to `<base>/<name>/1/` (32x32
    uint8 in, 10 probabilities out): the real graph's cost per image, for latency and load
    benchmarks; returns `<base>/<name>`."""
    from common.backbones import build_classifier
    from victim_export import export_classifier

    model = build_classifier("cnn", 10, input_size=32)
    export_classifier(model, Path(base), name, version=1, input_shape=(32, 32, 3),
                      class_names=tuple(str(i) for i in range(10)))
    return Path(base) / name


COLOUR_SIZE = 16
COLOUR_CLASSES = ("red", "green", "blue")


def colour_victim(size: int = COLOUR_SIZE):
    """A Keras victim answering "which colour channel dominates the image" (3 classes) with a
    softmax-able logit per channel mean: a function a small surrogate learns from a few hundred
    queries, so end-to-end attack tests can ask for agreement well above chance (1/3)."""
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Rescaling(1 / 8.0)(x)  # channel means 0..255 -> logits 0..32
    outputs = keras.layers.Dense(3, use_bias=False, kernel_initializer="identity")(x)
    return keras.Model(inputs, outputs)


def colour_images(n: int, seed: int, size: int = COLOUR_SIZE) -> np.ndarray:
    """`n` uint8 images with one dominant channel each (random which), noisy."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, size=(n, size, size, 3)).astype(np.int64)
    dominant = rng.integers(0, 3, size=n)
    images[np.arange(n), :, :, dominant] += rng.integers(40, 130, size=(n, 1, 1))
    return np.clip(images, 0, 255).astype(np.uint8)


def export_colour_victim(base: str | Path, name: str = "colours", *,
                         size: int = COLOUR_SIZE) -> Path:
    """`colour_victim` exported to `<base>/<name>/1/` with a `<base>/models.config` listing it;
    returns that config file."""
    from victim_export import export_classifier, write_models_config

    base = Path(base)
    export_classifier(colour_victim(size), base, name, version=1, input_shape=(size, size, 3),
                      class_names=COLOUR_CLASSES)
    write_models_config(base, name, container_base_path="")
    return base / "models.config"
