"""The embedded, TF-Serving-compatible model server: `ModelServer` and its `ServerOptions`.

Production runs the official `tensorflow/serving` container. Where its binary cannot run (CI, a
laptop without Docker, these machines), this server speaks the same gRPC API from
`tensorflow-serving-api` (PredictionService: Predict, GetModelMetadata, Classify, Regress,
MultiInference; ModelService: GetModelStatus, HandleReloadConfigRequest) and the same REST API,
over the same SavedModel layout and the same `models.config`, with the same options as
`tensorflow_model_server` for what it supports. A client cannot tell the two apart. The gRPC
servicers here and the REST front end (`serving.embedded.rest`) are thin shells over one
transport-free core (`serving.embedded.core`); the command line is `serving.embedded.cli`
(`python -m serving.model_server`).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from common.constraints import check_fields
from common.errors import UsageError, invalid
from serving import status
from serving.ports import check_port_free, port_error

__all__ = ["MAX_MESSAGE_BYTES", "ModelServer", "ServerOptions", "load_model_server_config"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = status.GRPC_MAX_MESSAGE_BYTES  # TF Serving sets INT_MAX both ways
_PORT = {"min": 0, "max": 65535}


@dataclass(frozen=True)
class ServerOptions:
    """The `tensorflow_model_server` flags the embedded server honours (same names)."""

    port: int = field(default=8500, metadata=_PORT)
    grpc_socket_path: str = ""
    # None (flag 0): REST off; 0 in the Python API: any free port
    rest_api_port: int | None = field(default=None, metadata=_PORT)
    rest_api_num_threads: int = field(default=16, metadata={"min": 1})
    rest_api_timeout_in_ms: int = 30000
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    model_name: str = "default"
    model_base_path: str = ""
    file_system_poll_wait_seconds: float = 1.0
    allow_version_labels_for_unavailable_models: bool = False
    grpc_max_threads: int = field(default=16, metadata={"min": 1})
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    enable_batching: bool = False
    batching_parameters_file: str = ""
    monitoring_config_file: str = ""
    host: str = "0.0.0.0"  # embedded-server extension: the address to bind

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.model_config_file and not self.model_base_path:
            raise UsageError(
                "Invalid value for argument `model_base_path`. Received: model_base_path=''. "
                "Expected a SavedModel base folder (<base>/<version>/saved_model.pb), or pass "
                "--model_config_file=FILE instead."
            )
        if self.model_config_file and self.model_base_path:
            raise UsageError(
                "Invalid value for argument `model_base_path`. Received: model_base_path="
                f"{self.model_base_path!r} together with model_config_file="
                f"{self.model_config_file!r}. Expected one of the two, not both."
            )
        for name in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise invalid(name, value, "an existing text-format protobuf file")
        if self.model_base_path and not Path(self.model_base_path).is_dir():
            raise invalid("model_base_path", self.model_base_path,
                          "an existing folder holding integer version sub-folders")


def load_model_server_config(path: str | Path):
    """Parse a text `ModelServerConfig` (the `models.config` both servers read)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:  # unreadable, or not text at all
        raise invalid("model_config_file", str(path),
                      f"a readable text-format ModelServerConfig ({err})") from None
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise invalid("model_config_file", str(path),
                      f"a text-format ModelServerConfig (parse error: {err})") from None
    return config


def _grpc_handler(method):
    """Run one core method; answer ServingStatus with its code and message, as TF Serving does."""

    def handler(request, context):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        try:
            return method(request)
        except status.ServingStatus as err:
            # no traceback kept: its frames hold the request (up to 2 GiB) until a GC pass
            failure = err.with_traceback(None)
        except Exception as err:  # never let a request take the server down
            log.exception("internal error in %s", getattr(method, "__name__", method))
            failure = status.ServingStatus(grpc.StatusCode.INTERNAL, str(err))
            del err
        failure.abort(context)  # code + message cut at 1,024 characters, as TF Serving

    return handler


class ModelServer:
    """The embedded server: start it, query it with any TF Serving client, stop it.

    >>> with ModelServer(ServerOptions(model_name="cnn", model_base_path="victims/cnn",
    ...                                port=0, host="127.0.0.1")) as server:
    ...     target = f"127.0.0.1:{server.port}"
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.port: int | None = None
        self.rest_port: int | None = None
        self._grpc: grpc.Server | None = None
        self._rest = None
        self._config_poller: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "ModelServer":
        from tensorflow_serving.apis import (
            model_service_pb2_grpc,
            prediction_service_pb2_grpc,
        )
        from tensorflow_serving.config import model_server_config_pb2

        from serving.embedded.core import ServingCore
        from serving.embedded.manager import ModelManager

        opts = self.options
        self._configure_tensorflow()
        # tensorflow-serving-api ships neither proto: serving.deploy.protos builds them, so a
        # file the container would refuse is refused here too (the same checks as TF Serving)
        from serving.deploy import protos

        for path, parse, argument in (
                (opts.batching_parameters_file, protos.parse_batching_parameters,
                 "batching_parameters_file"),
                (opts.monitoring_config_file, protos.parse_monitoring_config,
                 "monitoring_config_file")):
            if path:
                if not Path(path).is_file():
                    raise invalid(argument, path, "a readable text-format file")
                parse(Path(path))
        if opts.enable_batching:
            log.warning("--enable_batching is accepted but the embedded server runs each request "
                        "as its own batch")
        if opts.model_config_file:
            config = load_model_server_config(opts.model_config_file)
            config_dir = Path(opts.model_config_file).resolve().parent
        else:
            config = model_server_config_pb2.ModelServerConfig()
            entry = config.model_config_list.config.add()
            entry.name = opts.model_name
            entry.base_path = str(Path(opts.model_base_path).resolve())
            entry.model_platform = "tensorflow"
            config_dir = None
        self.manager = ModelManager(
            config_dir=config_dir,
            allow_version_labels_for_unavailable_models=opts.allow_version_labels_for_unavailable_models,
        )
        self.core = ServingCore(self.manager)
        # Ports first, models second: a port in use is one line before minutes of loading.
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=opts.grpc_max_threads,
                                       thread_name_prefix="grpc"),
            options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=None,
        )
        core = self.core
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionServicer(core), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(core), server)
        self._add_health(server)
        address = f"{_bracket(opts.host)}:{opts.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.5x raises where older versions returned 0
            self.port = 0
        if self.port == 0:
            # the reason (in use, not an address of this machine, a privileged port)
            check_port_free(opts.host, opts.port, "port")
            raise port_error(opts.host, opts.port, "port", "binding it failed")
        rest = None
        try:
            if opts.grpc_socket_path:
                try:
                    bound = server.add_insecure_port(f"unix:{opts.grpc_socket_path}")
                except RuntimeError:
                    bound = 0
                if not bound:
                    raise invalid("grpc_socket_path", opts.grpc_socket_path,
                                  "a UNIX socket path this process can create")
            if opts.rest_api_port is not None:
                from serving.embedded.rest import RestServer

                try:
                    rest = RestServer(core, host=opts.host, port=opts.rest_api_port,
                                      num_threads=opts.rest_api_num_threads,
                                      timeout_s=opts.rest_api_timeout_in_ms / 1000.0)
                except OSError as err:
                    raise port_error(opts.host, opts.rest_api_port, "rest_api_port",
                                     err.strerror or str(err)) from None
            try:
                self.manager.reload(config)
            except status.ServingStatus as err:
                raise UsageError(f"model_config_file: {err.message}") from None
        except BaseException:
            if rest is not None:
                rest.stop()
            server.stop(None)
            raise
        server.start()
        self._grpc = server
        log.debug("Running gRPC ModelServer at %s:%d ...", opts.host, self.port)
        if rest is not None:
            self._rest = rest
            self.rest_port = rest.start()
            log.debug("Exporting HTTP/REST API at:%s:%d ...", opts.host, self.rest_port)
        self.manager.start_polling(opts.file_system_poll_wait_seconds)
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            self._start_config_polling()
        return self

    def _configure_tensorflow(self) -> None:
        import tensorflow as tf

        opts = self.options
        try:
            if opts.tensorflow_intra_op_parallelism:
                tf.config.threading.set_intra_op_parallelism_threads(
                    opts.tensorflow_intra_op_parallelism)
            if opts.tensorflow_inter_op_parallelism:
                tf.config.threading.set_inter_op_parallelism_threads(
                    opts.tensorflow_inter_op_parallelism)
        except RuntimeError:  # TF already initialised in this process (tests): keep its pools
            log.warning("TensorFlow already initialised; thread-pool flags ignored")

    def _add_health(self, server: grpc.Server) -> None:
        try:
            from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        except ImportError:  # grpcio-health-checking is optional for the embedded server
            return
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

    def _start_config_polling(self) -> None:
        path = self.options.model_config_file
        interval = self.options.model_config_file_poll_wait_seconds

        def loop() -> None:
            last = self.manager.config
            while not self._stopped.wait(interval):
                try:
                    config = load_model_server_config(path)
                    if config != last:
                        self.manager.reload(config)
                        last = config
                        log.info("reloaded %s", path)
                except (UsageError, status.ServingStatus, OSError) as err:
                    log.error("could not reload %s: %s", path, err)

        self._config_poller = threading.Thread(target=loop, name="config-poller", daemon=True)
        self._config_poller.start()

    def stop(self, grace: float | None = 1.0) -> None:
        self._stopped.set()
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
        if hasattr(self, "manager"):
            self.manager.stop()

    def wait(self) -> None:
        self._stopped.wait()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _PredictionServicer:
    def __init__(self, core) -> None:
        self.Predict = _grpc_handler(core.predict)
        self.GetModelMetadata = _grpc_handler(core.get_model_metadata)
        self.Classify = _grpc_handler(core.classify)
        self.Regress = _grpc_handler(core.regress)
        self.MultiInference = _grpc_handler(core.multi_inference)


class _ModelServicer:
    def __init__(self, core) -> None:
        self.GetModelStatus = _grpc_handler(core.get_model_status)
        self.HandleReloadConfigRequest = _grpc_handler(core.handle_reload_config)
