"""`python -m serving.gateway`: the gateway server, and `python -m serving.gateway keys ...`.

    python -m serving.gateway --upstream 127.0.0.1:8501 --port 8500 --policy policy.json \\
        --state sqlite:gateway_state.db --metrics-port 9102
    python -m serving.gateway keys add --state sqlite:gateway_state.db --client alice \\
        --budget 50000
    python -m serving.gateway keys list|revoke|rotate --state ... [--client NAME]

`keys add` and `keys rotate` print the new key once on stdout; only its SHA-256 is stored.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from collections.abc import Sequence

from common import quiet
from common.cli import ArgumentParser, build_parser, config_from_args, configure_logging, run_cli
from common.constraints import check_int, check_number
from common.errors import invalid
from serving.gateway.auth import ANONYMOUS, generate_key, hash_key
from serving.gateway.config import GatewayConfig
from serving.gateway.store import new_record, open_store
from serving.ports import check_port_free

__all__ = ["main"]

PROG = "python -m serving.gateway"
_CLIENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

log = logging.getLogger("serving.gateway")


def _keys_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=f"{PROG} keys", description="Manage the gateway's API keys.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{add,list,revoke,rotate}")
    for name, help_text in (("add", "add a client and print its new key"),
                            ("list", "list clients (never keys)"),
                            ("revoke", "revoke a client's key"),
                            ("rotate", "replace a client's key, keep its usage; print it")):
        p = sub.add_parser(name, help=help_text, prog=f"{PROG} keys {name}")
        p.add_argument("--state", default="sqlite:gateway_state.db",
                       help="sqlite:PATH or redis://HOST:PORT/DB (as the server's --state); "
                            + ("created when missing" if name == "add" else "must exist"))
        if name != "list":
            p.add_argument("--client", required=True, help="client name")
        if name == "add":
            p.add_argument("--budget", type=int, default=None,
                           help="queries this client may send (default: the policy's)")
            p.add_argument("--rate", type=float, default=None,
                           help="requests per second (default: the policy's)")
            p.add_argument("--burst", type=float, default=None,
                           help="token-bucket burst (default: the policy's)")
    return parser


def _storage_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a state store raises when its database or server fails mid-command."""
    import sqlite3

    errors: list[type[BaseException]] = [sqlite3.Error]
    redis = sys.modules.get("redis")  # imported by the store only for redis:// states
    if redis is not None:
        errors.append(redis.exceptions.RedisError)
    return tuple(errors)


def _keys(argv: Sequence[str]) -> int:
    ns = _keys_parser().parse_args(list(argv))
    try:
        return _run_keys(ns)
    except _storage_errors() as err:  # e.g. a read-only or locked database, Redis gone away
        raise invalid("state", ns.state, f"a state store that answers ({type(err).__name__}: "
                      f"{' '.join(str(err).split())})") from None


def _run_keys(ns: argparse.Namespace) -> int:
    client = getattr(ns, "client", None)
    if client is not None and (not _CLIENT_RE.match(client) or client == ANONYMOUS):
        raise invalid("client", client, "1-64 letters, digits or _ . @ - (not 'anonymous')")
    if ns.action == "add":
        check_int("budget", ns.budget, min=0, optional=True)
        check_number("rate", ns.rate, gt=0, optional=True)
        check_number("burst", ns.burst, gt=0, optional=True)
    store = open_store(ns.state, create=ns.action == "add")
    try:
        if ns.action == "list":
            for c in store.list_clients():
                state = "revoked" if c.revoked else "active"
                print(f"{c.name}\t{state}\tused={store.usage(c.name)}"
                      f"\tbudget={'policy' if c.budget is None else c.budget}"
                      f"\trate={'policy' if c.rate is None else c.rate}"
                      f"\tburst={'policy' if c.burst is None else c.burst}")
            return 0
        if ns.action == "revoke":
            store.revoke(client)
            print(f"revoked {client}", file=sys.stderr)
            return 0
        key = generate_key()
        if ns.action == "add":
            store.add_client(new_record(client, hash_key(key), budget=ns.budget, rate=ns.rate,
                                        burst=ns.burst))
        else:
            store.rotate(client, hash_key(key))
        print(key)
        print(f"{ns.action}: key for {client} printed once; only its SHA-256 is stored",
              file=sys.stderr)
        return 0
    finally:
        store.close()


def _serve(argv: Sequence[str]) -> int:
    parser = build_parser(GatewayConfig, prog=PROG, description=__doc__.split("\n\n")[0])
    ns = parser.parse_args(list(argv))
    quiet.configure(ns.verbose)
    config = config_from_args(GatewayConfig, ns)
    # a port in use is one line before TensorFlow and the detectors load (start() checks again)
    check_port_free(config.host, config.port, "port")
    if config.metrics_port:
        check_port_free(config.host, config.metrics_port, "metrics-port",
                        head="Failed to start the metrics server")
    open_store(config.state).close()  # unreachable or unwritable state: one line, before TF
    configure_logging()
    from serving.gateway.server import Gateway  # TensorFlow: once the flags are valid

    gateway = Gateway(config).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"Running gRPC gateway at {config.host}:{gateway.port} -> {config.upstream}"
          + (f" (metrics on :{gateway.metrics_port}/metrics)" if gateway.metrics_port else ""),
          file=sys.stderr, flush=True)
    stop.wait()
    gateway.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def body(_argv) -> int:
        if args and args[0] == "keys":
            return _keys(args[1:])
        return _serve(args)

    return run_cli(body, args, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
