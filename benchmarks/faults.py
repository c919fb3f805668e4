"""Fault injection on the serving path and the attack run, with a table of what survived.

    python -m benchmarks.faults [--model-dir victims/cifar10_cnn] [--clients 8] [--seconds 20]

Faults, each on loopback processes it starts itself:

- `upstream`: the model server SIGKILLed under load through the gateway, restarted on the same
  port after a few seconds: clients must get UNAVAILABLE (never a hang past their deadline), the
  gateway must stay up and answer OK again without being restarted;
- `gateway`: the gateway (SQLite state, PRADA on) SIGKILLed under load and restarted on the
  same state file: per client, the budget charged, PRADA's query count and the audit records are
  compared with the answers the clients received (guarantee, from `serving.gateway.store`:
  every answered request is charged, audited and seen by PRADA; a request in flight at the kill
  is either never charged or charged without its answer reaching the client, so
  answered <= charged <= answered + in flight);
- `half-copy`: a SavedModel version copied graph first (as `cp -rp`), polled half-way;
- `journal`: a query journal whose tail is torn or garbled, reopened;
- `train-kill` (with `--attack`): `python -m attack.knockoff` on a tiny victim SIGKILLed during
  surrogate training, then `--resume`d: images sent to the victim by the resumed run.

`tests/serving/test_faults.py` runs the same functions (marked slow).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.load import DEFAULT_POLICY, add_key, drive
from serving import testing

__all__ = ["gateway_sigkill", "half_copy", "journal_tail", "main", "upstream_restart"]

ROOT = Path(__file__).resolve().parents[1]
PRADA_POLICY = {"auth": {"required": True},
                "limits": {"budget": 10**9, "rate_per_second": 10**6, "burst": 10**6},
                "detectors": {"prada": {"delta": 0.95, "min_samples": 50, "max_set": 500}},
                "on_flag": {"action": "degrade", "policy": "label_only"}}


def _segments(timeline, marks):
    """Codes per phase: [(name, start, end)] over (t, code) events."""
    out = {}
    for name, start, end in marks:
        out[name] = dict(collections.Counter(c for t, c in timeline if start <= t < end))
    return out


def upstream_restart(model_dir: Path, model: str, shape, workdir: Path, *, clients: int = 8,
                     seconds: float = 20.0, batch: int = 4, down_s: float = 4.0) -> dict:
    """Kill the upstream under load at 1/4 of the run, restart it `down_s` later."""
    server = testing.model_server(base_path=model_dir, name=model, process=True)
    names = [f"up{i}" for i in range(clients)]
    state = workdir / "up_state.db"
    keys = [add_key(state, n) for n in names]
    gateway = testing.gateway(server.target, workdir=workdir, state=state, policy=DEFAULT_POLICY,
                              process=True, key=keys[0], models=[model],
                              log_file=workdir / "gateway_up.log")
    box, stop = {}, threading.Event()
    worker = threading.Thread(target=lambda: box.update(r=drive(
        "upstream restart", gateway.target, model, shape, clients=clients, seconds=600,
        batch=batch, keys=keys, timeout=10.0, stop=stop)))
    t0 = time.monotonic()
    worker.start()
    time.sleep(seconds / 4)
    kill_at = time.monotonic() - t0
    server.stop(signal.SIGKILL)
    time.sleep(down_s)
    restart_at = time.monotonic() - t0
    server = testing.model_server(base_path=model_dir, name=model, process=True,
                                  port=server.port)
    serving_at = time.monotonic() - t0
    time.sleep(seconds / 2)  # load goes on after the restart
    stop.set()
    worker.join()
    result = box["r"]
    gateway_alive = gateway.proc.poll() is None
    try:
        after_restart = [t for t, c in result.timeline if t >= serving_at and c == "OK"]
        first_ok = min(after_restart) if after_restart else None
        phases = _segments(result.timeline, [("before kill", 0, kill_at - 0.5),
                                             ("upstream down", kill_at + 0.2, restart_at),
                                             ("after restart", serving_at, 1e9)])
        down_codes = set(phases["upstream down"])
        late = [c for t, c in result.timeline if first_ok is not None and t > first_ok + 1.0
                and c != "OK"]
        survived = (gateway_alive and set(phases["before kill"]) == {"OK"}
                    and down_codes <= {"UNAVAILABLE"} and first_ok is not None and not late
                    and "DEADLINE_EXCEEDED" not in result.codes)
        return {"fault": "upstream SIGKILL + restart under load", "clients": clients,
                "requests": result.requests, "codes": dict(result.codes), "phases": phases,
                "kill_at_s": round(kill_at, 1), "upstream_back_at_s": round(serving_at, 1),
                "first_ok_after_s": None if first_ok is None else round(first_ok - serving_at, 2),
                "gateway_alive": gateway_alive, "survived": survived}
    finally:
        gateway.stop()
        server.stop()


def _client_state(state: Path, names: list[str]) -> dict:
    from detector.prada import Prada

    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        used = dict(db.execute("SELECT name, used FROM usage").fetchall())
        prada = {n: Prada.loads(b)["queries"] if b else 0
                 for n, b in db.execute("SELECT name, prada FROM detectors").fetchall()}
        audit_ok = dict(db.execute("SELECT client, SUM(rows) FROM audit WHERE code='OK' "
                                   "GROUP BY client").fetchall())
        audit_all = dict(db.execute("SELECT client, COUNT(*) FROM audit GROUP BY client")
                         .fetchall())
    finally:
        db.close()
    return {n: {"used": int(used.get(n, 0)), "prada_queries": int(prada.get(n, 0)),
                "audit_ok_rows": int(audit_ok.get(n) or 0),
                "audit_records": int(audit_all.get(n, 0))} for n in names}


def gateway_sigkill(model_dir: Path, model: str, shape, workdir: Path, *, clients: int = 8,
                    seconds: float = 20.0, batch: int = 4) -> dict:
    """SIGKILL the gateway (SQLite state, PRADA) at mid-run, restart it on the same state."""
    server = testing.model_server(base_path=model_dir, name=model, process=True)
    names = [f"gk{i}" for i in range(clients)]
    state = workdir / "gk_state.db"
    keys = [add_key(state, n) for n in names]
    gateway = testing.gateway(server.target, workdir=workdir, state=state, policy=PRADA_POLICY,
                              process=True, key=keys[0], models=[model],
                              log_file=workdir / "gateway_gk.log")
    probe = _client_state(state, names[:1])[names[0]]  # what the readiness probe charged gk0
    box, stop = {}, threading.Event()
    worker = threading.Thread(target=lambda: box.update(r=drive(
        "gateway kill", gateway.target, model, shape, clients=clients, seconds=600,
        batch=batch, keys=keys, timeout=10.0, stop=stop)))
    t0 = time.monotonic()
    worker.start()
    time.sleep(seconds / 2)
    gateway.stop(signal.SIGKILL)
    kill_at = time.monotonic() - t0
    at_kill = _client_state(state, names)
    gateway = testing.gateway(server.target, workdir=workdir, state=state, policy=PRADA_POLICY,
                              process=True, port=gateway.port,
                              log_file=workdir / "gateway_gk.log")
    back_at = time.monotonic() - t0
    time.sleep(seconds / 2)  # load goes on after the restart
    stop.set()
    worker.join()
    gateway.stop()
    server.stop()
    result = box["r"]
    final = _client_state(state, names)
    rows, ok = [], True
    for i, name in enumerate(names):
        answered = result.per_client[f"client{i}"].get("OK", 0) * batch
        if i == 0:
            answered += probe["used"]
        s = final[name]
        fine = (answered <= s["used"] <= answered + batch
                and s["audit_ok_rows"] == s["used"] and s["prada_queries"] == s["used"])
        ok &= fine
        rows.append({"client": name, "answered_images": answered, **s, "ok": fine})
    return {"fault": "gateway SIGKILL + restart under load (SQLite, PRADA on)",
            "clients": clients, "requests": result.requests, "codes": dict(result.codes),
            "kill_at_s": round(kill_at, 1), "gateway_back_at_s": round(back_at, 1),
            "charged_at_kill": sum(v["used"] for v in at_kill.values()),
            "charged_final": sum(v["used"] for v in final.values()),
            "answered_final": sum(r["answered_images"] for r in rows),
            "per_client": rows, "survived": ok}


def half_copy(model_dir: Path, model: str, workdir: Path) -> dict:
    """Copy the newest version as version+1 graph first; poll at each step."""
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_pb2
    from tensorflow_serving.config import model_server_config_pb2

    from serving import status
    from serving.embedded.manager import ModelManager

    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    src = model_dir / str(versions[-1])
    base = workdir / "halfcopy" / model
    shutil.copytree(src, base / "1")
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(f'model_config_list {{ config {{ name: "{model}" base_path: "{base}" '
                      'model_platform: "tensorflow" } }', config)
    manager = ModelManager()
    manager.reload(config)

    def served():
        try:
            return manager.resolve(model_pb2.ModelSpec(name=model)).version
        except status.ServingStatus as err:
            return f"{err.code.name}"

    steps = []
    half = base / "2"
    half.mkdir()
    shutil.copy2(src / "saved_model.pb", half / "saved_model.pb")
    manager.poll()
    steps.append(("graph only", served()))
    for extra in src.iterdir():
        if extra.is_dir() and extra.name != "variables":
            shutil.copytree(extra, half / extra.name)
    (half / "variables").mkdir()
    shutil.copy2(src / "variables" / "variables.index", half / "variables")
    manager.poll()
    steps.append(("+ variables.index", served()))
    for shard in (src / "variables").glob("variables.data-*"):
        shutil.copy2(shard, half / "variables")
    manager.poll()
    steps.append(("+ data shards", served()))
    manager.stop()
    survived = [s for _, s in steps] == [1, 1, 2]
    return {"fault": "SavedModel version half-copied (graph first) when polled",
            "steps": steps, "survived": survived}


def journal_tail(workdir: Path) -> dict:
    """Append answers, then tear or garble the tail; reopen: cut, and the rest intact."""
    from attack.journal import QueryJournal

    out = {}
    for damage in ("truncate", "garble", "append-garbage"):
        run = workdir / f"journal_{damage}"
        run.mkdir(parents=True)
        rng = np.random.default_rng(0)
        probs = rng.random((40, 10)).astype(np.float32)
        with QueryJournal.open(run, num_classes=10) as j:
            for b in range(5):
                idx = np.arange(b * 8, b * 8 + 8)
                j.record_sent(idx)
                j.record_answers(idx, probs[idx])
        from attack.journal import JOURNAL_NAME

        path = run / JOURNAL_NAME
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[:-7]
        elif damage == "garble":
            data[-5] ^= 0xFF
        else:
            data += b"\x00garbage tail\xff" * 3
        path.write_bytes(bytes(data))
        try:
            with QueryJournal.open(run) as j:
                n = j.num_answered
                same = np.array_equal(j.responses(), probs[:n])
            out[damage] = {"answered_after": n, "prefix_intact": bool(same)}
        except Exception as err:  # a refusal is also "not trusted"
            out[damage] = {"refused": f"{type(err).__name__}: {err}"[:200]}
    survived = all(v.get("prefix_intact") and v["answered_after"] in (32, 40)
                   for v in out.values())
    return {"fault": "journal tail torn/garbled/garbage appended", "cases": out,
            "survived": survived}


def train_kill(workdir: Path) -> dict:
    """Knockoff on the tiny colour victim, SIGKILLed during training, then `--resume`d.

    The attack reaches the victim through an in-process gateway with an API key of its own, so
    the images the victim answered are the gateway's charge to that key (nothing patched)."""
    from serving.gateway.auth import generate_key, hash_key
    from serving.gateway.store import new_record

    config = testing.export_colour_victim(workdir / "victims", "colours")
    data = workdir / "transfer.npz"
    transfer = testing.colour_images(400, seed=1)
    np.savez(data, x_train=transfer, y_train=np.zeros(len(transfer), np.int64))
    with testing.model_server(config_file=config) as server, \
            testing.gateway(server.target, workdir=workdir / "gw", policy=DEFAULT_POLICY) as gw:
        key = generate_key()
        gw.store.add_client(new_record("thief", hash_key(key)))
        return _train_kill_run(gw.target, key, data, workdir / "run",
                               lambda: gw.store.usage("thief"))


def _train_kill_run(target: str, key: str, data: Path, run: Path, answered_images) -> dict:
    from attack.journal import QueryJournal

    cmd = [sys.executable, "-m", "attack.knockoff", "--grpc", target, "--model", "colours",
           "--transfer-set", str(data), "--budget", "300", "--heldout", "0", "--backbone",
           "cnn", "--weights", "none", "--input-size", "16", "--epochs", "40",
           "--batch-size", "32", "--query-batch", "32", "--curve-points", "1", "--out", str(run),
           "--api-key", key]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    end = time.monotonic() + 300
    while time.monotonic() < end and proc.poll() is None:
        if (run / "checkpoints").exists() and any((run / "checkpoints").rglob("backup")):
            time.sleep(1.0)
            break
        time.sleep(0.1)
    if proc.poll() is not None:
        raise RuntimeError(f"the run ended before training: {proc.stderr.read()[-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sent_before = answered_images()
    with QueryJournal.open(run) as j:
        answered, pending = j.num_answered, len(j.pending())
        indices, responses = j.answered_indices().copy(), j.responses().copy()
    t0 = time.monotonic()
    out = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    with QueryJournal.open(run) as j:
        same = (np.array_equal(j.answered_indices(), indices)
                and np.array_equal(j.responses(), responses))
    resent = answered_images() - sent_before
    return {"fault": "knockoff SIGKILL during surrogate training, then --resume",
            "answered_at_kill": answered, "pending_at_kill": pending,
            "images_answered_before_kill": sent_before,
            "images_sent_by_resume": resent, "journal_unchanged": bool(same),
            "resume_rc": out.returncode, "resume_s": round(time.monotonic() - t0, 1),
            "report": (run / "report.json").is_file(),
            "survived": out.returncode == 0 and resent == 0 and same
            and (run / "report.json").is_file()}


def _shape_of(model_dir: Path) -> tuple[int, ...]:
    from serving.embedded.savedmodel import read_signature_defs

    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    sig = read_signature_defs(model_dir / str(versions[-1]))["serving_default"]
    info = next(iter(sig.inputs.values()))
    return tuple(d.size for d in info.tensor_shape.dim[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="", help="model base folder; default: an "
                        "untrained CIFAR-10 CNN")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", default="upstream,gateway,half-copy,journal",
                        help="comma-separated faults (add train-kill for the attack run)")
    parser.add_argument("--json", default="")
    ns = parser.parse_args(argv)
    wanted = set(ns.only.split(","))
    unknown = wanted - {"upstream", "gateway", "half-copy", "journal", "train-kill"}
    if unknown or not 1 <= ns.clients <= 64 or not 4 <= ns.seconds <= 300:
        print(f"{parser.prog}: error: Invalid value for argument `only`/`clients`/`seconds`. "
              f"Received: only={ns.only!r}, clients={ns.clients}, seconds={ns.seconds}. "
              "Expected faults among upstream,gateway,half-copy,journal,train-kill, 1-64 "
              "clients, 4-300 seconds.", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if ns.model_dir:
            model_dir = Path(ns.model_dir).resolve()
        else:
            model_dir = testing.export_untrained_cnn(tmp / "models")
        model = model_dir.name
        shape = _shape_of(model_dir)
        if "upstream" in wanted:
            results.append(upstream_restart(model_dir, model, shape, tmp, clients=ns.clients,
                                            seconds=ns.seconds))
        if "gateway" in wanted:
            results.append(gateway_sigkill(model_dir, model, shape, tmp, clients=ns.clients,
                                           seconds=ns.seconds))
        if "half-copy" in wanted:
            results.append(half_copy(model_dir, model, tmp))
        if "journal" in wanted:
            results.append(journal_tail(tmp))
        if "train-kill" in wanted:
            results.append(train_kill(tmp))
    print("| fault | survived | details |")
    print("|---|---|---|")
    for r in results:
        details = {k: v for k, v in r.items() if k not in ("fault", "survived", "per_client")}
        print(f"| {r['fault']} | {'yes' if r['survived'] else 'NO'} | {json.dumps(details)} |")
    for r in results:
        for row in r.get("per_client", []):
            print(f"  {row}")
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r["survived"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
