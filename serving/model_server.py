"""`python -m serving.model_server`: the embedded model server's documented command.

The server lives in `serving.embedded` (`server`: `ModelServer`, `ServerOptions`; `cli`: the
flags of `tensorflow_model_server`); this module keeps the command and the names it always
exported (`from serving.model_server import ModelServer, ServerOptions`) working.
"""

from __future__ import annotations

import sys

from serving.embedded.cli import build_parser, main, options_from_args
from serving.embedded.server import ModelServer, ServerOptions, load_model_server_config
from serving.ports import check_port_free, port_error
from serving.status import GRPC_MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES

__all__ = ["MAX_MESSAGE_BYTES", "ModelServer", "ServerOptions", "build_parser", "check_port_free",
           "load_model_server_config", "main", "options_from_args", "port_error"]

if __name__ == "__main__":
    sys.exit(main())
