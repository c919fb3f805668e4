"""`python -m serving.gateway`: keys CLI, bad flags, policy file errors, the server as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from common.errors import UsageError
from serving import testing
from serving.gateway.__main__ import main
from serving.gateway.config import GatewayConfig, GatewayPolicy, load_policy, policy_from_dict
from serving.gateway.server import Gateway
from serving.gateway.store import SQLiteStore
from tests.serving.gateway.conftest import Target, images

REPO = Path(__file__).resolve().parents[3]


def _one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("python -m serving.gateway")
    for name in names:
        assert name in err
    return err


def test_keys_add_list_rotate_revoke(tmp_path, capsys, gateway):
    state = f"sqlite:{tmp_path / 'keys.db'}"
    assert main(["keys", "add", "--state", state, "--client", "alice", "--budget", "3"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("mxk_") and len(key) > 40
    assert main(["keys", "add", "--state", state, "--client", "bob"]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--state", state]) == 0
    out = capsys.readouterr().out
    assert "alice\tactive\tused=0\tbudget=3" in out and "bob\tactive" in out
    assert key not in out
    raw = (tmp_path / "keys.db").read_bytes()
    assert key.encode() not in raw

    gw = gateway(state=state, store=SQLiteStore(tmp_path / "keys.db"))
    Target(f"127.0.0.1:{gw.port}", key).predict(images(2))
    assert main(["keys", "rotate", "--state", state, "--client", "alice"]) == 0
    new_key = capsys.readouterr().out.strip()
    assert new_key != key
    with pytest.raises(grpc.RpcError) as info:
        Target(f"127.0.0.1:{gw.port}", key).predict(images(1))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # the usage stays with the client, not the key: 2 of 3 used
    with pytest.raises(grpc.RpcError) as info:
        Target(f"127.0.0.1:{gw.port}", new_key).predict(images(2))
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    Target(f"127.0.0.1:{gw.port}", new_key).predict(images(1))
    assert main(["keys", "revoke", "--state", state, "--client", "alice"]) == 0
    with pytest.raises(grpc.RpcError) as info:
        Target(f"127.0.0.1:{gw.port}", new_key).predict(images(1))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    capsys.readouterr()
    assert main(["keys", "list", "--state", state]) == 0
    assert "alice\trevoked\tused=3" in capsys.readouterr().out


def test_keys_errors(tmp_path, capsys):
    state = f"sqlite:{tmp_path / 'keys.db'}"
    assert main(["keys", "add", "--state", state, "--client", "alice"]) == 0
    capsys.readouterr()
    assert main(["keys", "add", "--state", state, "--client", "alice"]) == 2
    _one_line_error(capsys, "client", "keys rotate")
    assert main(["keys", "revoke", "--state", state, "--client", "nobody"]) == 2
    _one_line_error(capsys, "client", "nobody")
    assert main(["keys", "add", "--state", state, "--client", "bad name!"]) == 2
    _one_line_error(capsys, "client")
    assert main(["keys", "add", "--state", "mysql://x", "--client", "carol"]) == 2
    _one_line_error(capsys, "state", "sqlite:PATH")
    assert main(["keys", "add", "--state", state, "--client", "carol", "--rate", "0"]) == 2
    _one_line_error(capsys, "rate")


@pytest.mark.parametrize("argv, names", [
    (["--upstream", "nohost"], ("upstream", "HOST:PORT")),
    (["--upstream", "127.0.0.1:8500", "--port", "70000"], ("port",)),
    (["--upstream", "127.0.0.1:8500", "--state", "postgres://x"], ("state",)),
    (["--upstream", "127.0.0.1:8500", "--tls-cert", "/nonexistent.pem"], ("tls_key",)),
    (["--upstream", "127.0.0.1:8500", "--policy", "/nonexistent.json"], ("policy",)),
    (["--upstream", "127.0.0.1:8500", "--upstream-timeout", "-1"], ("upstream_timeout",)),
])
def test_bad_server_flags_exit_2_with_one_line(argv, names, capsys):
    assert main(argv) == 2
    _one_line_error(capsys, *names)


def test_missing_upstream_is_an_argparse_error(capsys):
    assert main([]) == 2
    assert "--upstream" in capsys.readouterr().err


@pytest.mark.parametrize("data, field", [
    ({"limits": {"budget": -1}}, "limits.budget"),
    ({"limits": {"rate_per_second": 0}}, "limits.rate_per_second"),
    ({"limits": {"bugdet": 5}}, "limits"),
    ({"on_flag": {"action": "shout"}}, "on_flag.action"),
    ({"on_flag": {"policy": "top_k:0"}}, "on_flag.policy"),
    ({"always": "blur"}, "always"),
    ({"detectors": {"ood": {"window": 10}}}, "detectors.ood.path"),
    ({"detectors": {"ood": {"path": "x", "upstream_model": "y"}}}, "detectors.ood.path"),
    ({"detectors": {"ood": {"upstream_model": "y"}}}, "detectors.ood.threshold"),
    ({"detectors": {"ood": {"path": "x", "min_queries": 99, "window": 10}}},
     "detectors.ood.min_queries"),
    ({"detectors": {"prada": {"delta": 2}}}, "detectors.prada.delta"),
    ({"detectors": {"lie": {}}}, "detectors"),
    ({"models": []}, "models"),
    ({"auth": {"required": "yes"}}, "auth.required"),
    ({"extra": 1}, "policy"),
    ([1, 2], "policy"),
])
def test_policy_errors_name_the_field(data, field):
    with pytest.raises(UsageError, match=f"argument `{field}`"):
        policy_from_dict(data)


def test_policy_file_defaults_and_json_errors(tmp_path):
    assert load_policy(None) == GatewayPolicy()
    full = {
        "auth": {"required": True},
        "limits": {"budget": 100000, "rate_per_second": 100, "burst": 400},
        "detectors": {
            "ood": {"path": "detectors/cifar10_ood/1", "upstream_model": None,
                    "threshold": None, "window": 256, "level": 0.5, "min_queries": 64},
            "prada": {"delta": 0.95, "min_samples": 100, "max_set": 2000}},
        "on_flag": {"action": "degrade", "policy": "label_only"},
        "always": "identity",
        "models": ["cifar10_cnn"],
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(full))
    policy = load_policy(path)
    assert policy.ood.path == "detectors/cifar10_ood/1" and policy.prada.max_set == 2000
    assert policy.models == ("cifar10_cnn",) and policy.detectors
    assert not policy_from_dict({}).detectors
    path.write_text("{\"limits\": ")
    with pytest.raises(UsageError, match="valid JSON .line 1"):
        load_policy(path)


def test_config_checks_tls_pairs(tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    with pytest.raises(UsageError, match="tls_key"):
        GatewayConfig(upstream="127.0.0.1:1", tls_cert=str(pem))
    with pytest.raises(UsageError, match="tls_client_ca"):
        GatewayConfig(upstream="127.0.0.1:1", tls_client_ca=str(pem))
    GatewayConfig(upstream="unix:/tmp/tfs.sock")


def _gateway_process(server, state: str, tmp_path: Path):
    """A key for alice added by the keys command, and the gateway started as a process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    key = subprocess.run([sys.executable, "-m", "serving.gateway", "keys", "add", "--state",
                          state, "--client", "alice"], env=env, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    return key, testing.gateway(f"127.0.0.1:{server.port}", state=state, process=True,
                                log_file=tmp_path / "gateway.log")


@pytest.mark.slow
def test_gateway_process_end_to_end(server, tmp_path):
    """The real command: keys CLI, server process, a query, SIGTERM."""
    state = f"sqlite:{tmp_path / 'proc.db'}"
    key, gw = _gateway_process(server, state, tmp_path)
    try:
        line = next(line for line in gw.log_tail(100_000).splitlines()
                    if "Running gRPC gateway" in line)  # TF's own start-up lines come first
        assert f"at 127.0.0.1:{gw.port} -> 127.0.0.1:{server.port}" in line
        Target(gw.target, key).predict(images(2), timeout=5)
    finally:
        assert gw.proc.poll() is None
        code = gw.stop()
        assert code == 0, gw.log_tail()


@pytest.mark.slow
def test_sigkill_loses_nothing_answered(server, tmp_path):
    """SIGKILL under load: every answered request is charged and audited (SQLite, WAL)."""
    state = f"sqlite:{tmp_path / 'kill.db'}"
    key, gw = _gateway_process(server, state, tmp_path)
    port, proc = gw.port, gw.proc
    answered = []
    stop = threading.Event()

    def client() -> None:
        target = Target(f"127.0.0.1:{port}", key)
        while not stop.is_set():
            try:
                target.predict(images(3), timeout=5)
                answered.append(3)
            except grpc.RpcError:
                if stop.is_set():
                    return
                time.sleep(0.05)

    try:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < 40:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        gw.stop(signal.SIGKILL)
    store = SQLiteStore(tmp_path / "kill.db")
    ok = [r for r in store.audit_records() if r.code == "OK"]
    # answered <= recorded: nothing answered is lost; recorded - answered <= in flight (4)
    assert sum(answered) <= store.usage("alice") == sum(r.rows for r in ok)
    assert len(ok) - len(answered) <= 4


# -- issue 17, cases 5-7: ports, state stores that cannot be used, a mistyped state path -------
@pytest.mark.parametrize("action", [["list"], ["revoke", "--client", "bob"],
                                    ["rotate", "--client", "bob"]])
def test_keys_on_a_missing_state_file_is_refused_not_created(tmp_path, capsys, action):
    missing = tmp_path / "mistyped.db"
    assert main(["keys", *action, "--state", f"sqlite:{missing}"]) == 2
    line = _one_line_error(capsys, "state", "does not exist", "keys add")
    assert str(missing) in line
    assert not missing.exists() and not list(tmp_path.iterdir())


def _not_a_database(tmp_path: Path) -> str:
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"these are notes, not a SQLite database\n" * 100)
    return f"sqlite:{bad}"


def _refused_redis() -> str:
    return f"redis://127.0.0.1:{testing.pick_unused_port()}/0"


@pytest.mark.parametrize("state, words", [
    (_refused_redis, ("a reachable Redis server", "ConnectionError")),
    (_not_a_database, ("a SQLite database this process can open and write",
                       "DatabaseError")),
    (lambda _tmp: "sqlite:/proc/gateway_state.db", ("open and write", "unable to open")),
])
@pytest.mark.parametrize("command", ["keys", "server"])
def test_state_that_cannot_be_used_is_one_line_exit_2(tmp_path, capsys, state, words, command):
    url = state() if state is _refused_redis else state(tmp_path)
    if url.startswith("sqlite:/proc/") and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc for a place no process can create files in")
    argv = (["keys", "add", "--client", "carol", "--state", url] if command == "keys" else
            ["--upstream", "127.0.0.1:8500", "--port", "0", "--metrics-port", "0",
             "--state", url])
    assert main(argv) == 2
    _one_line_error(capsys, "state", *words)


@pytest.mark.parametrize("flag, words", [
    ("--port", "Failed to BuildAndStart gRPC server"),
    ("--metrics-port", "Failed to start the metrics server"),
])
def test_port_in_use_is_one_line_exit_2(tmp_path, capsys, held_port, flag, words):
    ports = {"--port": "0", "--metrics-port": "0", flag: str(held_port)}
    argv = ["--upstream", "127.0.0.1:8500", "--host", "127.0.0.1",
            "--state", f"sqlite:{tmp_path / 'gw.db'}"]
    for name, value in ports.items():
        argv += [name, value]
    assert main(argv) == 2
    _one_line_error(capsys, f"{flag}={held_port}", words, "in use")


@pytest.mark.parametrize("field", ["port", "metrics_port"])
def test_start_refuses_a_taken_port_in_one_usage_error(tmp_path, held_port, field):
    """The API path (no pre-check in main): start() turns the bind failure into a UsageError
    naming the flag, and leaves nothing serving. `Gateway.start` itself is under test (and
    the object it leaves behind), so not through `serving.testing.gateway`, which calls it."""
    ports = {"port": 0, "metrics_port": 0, field: held_port}
    gw = Gateway(GatewayConfig(upstream="127.0.0.1:8500", host="127.0.0.1",
                               state=f"sqlite:{tmp_path / 'gw.db'}", **ports))
    try:
        flag = "--" + field.replace("_", "-")
        with pytest.raises(UsageError, match=rf"{flag}={held_port} on 127\.0\.0\.1: .*in use"):
            gw.start()
        assert gw._server is None
    finally:
        gw.stop()
