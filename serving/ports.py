"""Ports for TF-Serving-style servers: pick an unused one, check one is free, say why it is not.

The embedded model server (`serving.embedded`) and the gateway (`serving.gateway`) both bind a
gRPC port (and a REST or metrics port) and must refuse a port in use with one line in TF
Serving's words, before TensorFlow is imported and before any model loads. The test harness
(`serving.testing`) picks loopback ports for the servers it starts. Standard library only.
"""

from __future__ import annotations

import socket

from common.errors import UsageError

__all__ = ["check_port_free", "pick_unused_port", "port_error"]


def pick_unused_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_error(host: str, port: int, flag: str, reason: str, *,
               head: str | None = None) -> UsageError:
    """TF Serving's words for a port it cannot serve on (main.cc / server.cc), naming the flag
    (`head` replaces them for a port TF Serving does not have)."""
    if head is not None:
        pass
    elif flag == "rest_api_port":  # server.cc logs this one; TF Serving then runs without REST
        head = f"Failed to start HTTP Server at {host}:{port}"
    else:
        head = ("Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC "
                "server")
    return UsageError(f"{head} (--{flag}={port} on {host}: {reason}; stop what holds it or "
                      f"pass another --{flag})")


def check_port_free(host: str, port: int, flag: str, *, head: str | None = None) -> None:
    """Raise `port_error` when a TCP listener cannot bind `host`:`port` now (0: any port).

    Binds and closes a socket with SO_REUSEADDR, as gRPC and the REST server do, so a port
    left in TIME_WAIT counts as free and one with a live listener does not. Cheap, and free
    of TensorFlow: the command lines run it before the heavy imports and before any model loads.
    """
    if not port:
        return
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bare, port))
        except OSError as err:
            raise port_error(host, port, flag, err.strerror or str(err), head=head) from None
