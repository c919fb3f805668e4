"""`python -m serving.model_server`: an embedded, TF-Serving-compatible model server.

Started with the same flags as `tensorflow_model_server` for what it supports, over the same
SavedModel layout and `models.config`; gRPC and REST clients cannot tell it from TF Serving:

    python -m serving.model_server --port=8500 --rest_api_port=8501 \\
        --model_config_file=victims/models.config

Flags it accepts and ignores (with a warning), so that a container's command line starts it
unchanged: `--enable_batching`, `--batching_parameters_file` (parsed and checked),
`--monitoring_config_file` (parsed and checked), `--tensorflow_session_parallelism`. The flags
are parsed and the ports checked before TensorFlow is imported (`serving.embedded.server`
imports it only when the server starts).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from common import quiet
from common.cli import ArgumentParser, report_usage_error
from common.errors import UsageError
from serving.embedded.server import ModelServer, ServerOptions
from serving.ports import check_port_free

__all__ = ["build_parser", "main", "options_from_args"]


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "t", "y"):
        return True
    if lowered in ("0", "false", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, received {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(  # one-line usage errors with a pointer to --help
        prog="python -m serving.model_server",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Examples:\n"
            "  python -m serving.model_server --port=8500 --rest_api_port=8501 \\\n"
            "      --model_config_file=victims/models.config\n"
            "  python -m serving.model_server --port=8500 --model_name=cifar10_cnn \\\n"
            "      --model_base_path=victims/cifar10_cnn"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = ServerOptions.__dataclass_fields__
    add = parser.add_argument
    add("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    add("--grpc_socket_path", default="", help="also listen for gRPC on this UNIX socket")
    add("--rest_api_port", type=int, default=0, help="HTTP/REST port; 0 disables REST")
    add("--rest_api_num_threads", type=int, default=d["rest_api_num_threads"].default)
    add("--rest_api_timeout_in_ms", type=int, default=d["rest_api_timeout_in_ms"].default)
    add("--model_config_file", default="", help="text ModelServerConfig (models.config)")
    add("--model_config_file_poll_wait_seconds", type=float, default=0.0,
        help="re-read --model_config_file this often (0: never)")
    add("--model_name", default="default", help="name of the model (with --model_base_path)")
    add("--model_base_path", default="", help="folder of integer version sub-folders")
    add("--file_system_poll_wait_seconds", type=float, default=1.0,
        help="poll for new versions this often (0: once at start)")
    for flag in ("allow_version_labels_for_unavailable_models", "enable_batching"):
        add(f"--{flag}", type=_bool, nargs="?", const=True, default=False)
    add("--grpc_max_threads", type=int, default=d["grpc_max_threads"].default)
    add("--tensorflow_intra_op_parallelism", type=int, default=0)
    add("--tensorflow_inter_op_parallelism", type=int, default=0)
    add("--tensorflow_session_parallelism", type=int, default=0, help="accepted, ignored")
    add("--batching_parameters_file", default="")
    add("--monitoring_config_file", default="")
    add("--host", default="0.0.0.0", help="address to bind (embedded-server extension)")
    quiet.add_verbose_argument(parser)
    return parser


def options_from_args(ns: argparse.Namespace) -> ServerOptions:
    values = {k: v for k, v in vars(ns).items() if k in ServerOptions.__dataclass_fields__}
    values["rest_api_port"] = ns.rest_api_port or None  # TF Serving: 0 means no REST
    return ServerOptions(**values)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    quiet.configure(ns.verbose)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = options_from_args(ns)
        # before TensorFlow is imported and any model loads (start() checks again when binding)
        check_port_free(options.host, options.port, "port")
        if options.rest_api_port is not None:
            check_port_free(options.host, options.rest_api_port, "rest_api_port")
        server = ModelServer(options).start()
    except UsageError as err:
        return report_usage_error(parser.prog, err)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"Running gRPC ModelServer at {ns.host}:{server.port} ...", file=sys.stderr, flush=True)
    if server.rest_port:
        print(f"Exporting HTTP/REST API at:{ns.host}:{server.rest_port} ...", file=sys.stderr,
              flush=True)
    stop.wait()
    server.stop()
    return 0
