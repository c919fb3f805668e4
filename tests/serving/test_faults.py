"""Fault injection on the serving path and the attack run: what survives a crash or a half state.

Already covered elsewhere, not repeated here: a version folder without `saved_model.pb`
(`test_model_server.py`), a torn or damaged journal tail cut and not trusted, SIGKILL of a
process appending to the journal (`tests/attack/test_journal.py`), an attack interrupted while
querying (`tests/attack/test_knockoff.py`) and a surrogate fit interrupted by an exception
(`tests/attack/test_surrogate.py`).

Here: a SavedModel copied with its graph before its variables (as `cp -rp` or
`shutil.copytree` write it) is not served until whole, then is; a newest version that fails to
load leaves the previous one serving (TF Serving's availability-preserving policy); a real
`python -m attack.knockoff` process SIGKILLed during surrogate training and `--resume`d sends no
query again; and, through the gateway, the upstream killed and restarted under load (clients
get UNAVAILABLE, the gateway recovers by itself) and the gateway SIGKILLed under load and
restarted (no answered request's charge, PRADA state or audit record lost).
"""

from __future__ import annotations

import collections
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import export_tiny

ROOT = Path(__file__).resolve().parents[2]
HAS_GATEWAY = importlib.util.find_spec("serving.gateway") is not None


# -- SavedModel folders in a half state ----
def _manager(base: Path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from serving.manager import ModelManager

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(f'model_config_list {{ config {{ name: "tiny" base_path: "{base}" '
                      'model_platform: "tensorflow" } }', config)
    manager = ModelManager()
    manager.reload(config)
    return manager


def _served_version(manager) -> int | None:
    from tensorflow_serving.apis import model_pb2

    from serving import status

    try:
        return manager.resolve(model_pb2.ModelSpec(name="tiny")).version
    except status.ServingStatus:
        return None


@pytest.fixture(scope="module")
def tiny_versions(tmp_path_factory):
    """`tiny` versions 1 and 2 exported once; tests copy them around."""
    base = tmp_path_factory.mktemp("exported")
    export_tiny(base, "tiny", 1, seed=1)
    export_tiny(base, "tiny", 2, seed=2)
    return base / "tiny"


def test_graph_copied_before_variables_is_served_once_whole(tiny_versions, tmp_path):
    """A copy that writes saved_model.pb first (mtimes kept, as `cp -rp` does), then an index
    without its data shard, then the shard: version 1 keeps serving throughout; version 2 is
    served on the first poll after the copy is whole (a failed load is retried when the
    folder's files change, not only when saved_model.pb does)."""
    base = tmp_path / "tiny"
    shutil.copytree(tiny_versions / "1", base / "1")
    manager = _manager(base)
    try:
        assert _served_version(manager) == 1
        src, half = tiny_versions / "2", base / "2"
        half.mkdir()
        shutil.copy2(src / "saved_model.pb", half / "saved_model.pb")  # graph, no variables/
        manager.poll()
        assert _served_version(manager) == 1
        for extra in src.iterdir():
            if extra.is_dir() and extra.name != "variables":
                shutil.copytree(extra, half / extra.name)
        (half / "variables").mkdir()
        shutil.copy2(src / "variables" / "variables.index", half / "variables")
        manager.poll()  # index without data: incomplete, not even tried
        assert _served_version(manager) == 1
        for shard in (src / "variables").glob("variables.data-*"):
            shutil.copy2(shard, half / "variables")
        manager.poll()
        assert _served_version(manager) == 2
    finally:
        manager.stop()


def test_newest_version_that_fails_to_load_leaves_the_previous_serving(tiny_versions, tmp_path):
    """A version 2 whose graph is garbage: load fails (GetModelStatus shows the error), version
    1 keeps answering; a fixed version 2 (new bytes) is then loaded and 1 retired."""
    from tensorflow_serving.apis import model_pb2

    base = tmp_path / "tiny"
    shutil.copytree(tiny_versions / "1", base / "1")
    manager = _manager(base)
    try:
        broken = base / "2"
        shutil.copytree(tiny_versions / "2", broken)
        (broken / "saved_model.pb").write_bytes(b"\x0a\xff\xff not a SavedModel")
        manager.poll()
        assert _served_version(manager) == 1
        statuses = {s.version: s for s in manager.version_statuses(model_pb2.ModelSpec(
            name="tiny"))}
        assert statuses[2].status.error_code != 0 and statuses[1].state == 30  # AVAILABLE
        shutil.copy2(tiny_versions / "2" / "saved_model.pb", broken / "saved_model.pb")
        manager.poll()
        assert _served_version(manager) == 2
        statuses = {s.version: s for s in manager.version_statuses(model_pb2.ModelSpec(
            name="tiny"))}
        assert statuses[1].state == 50  # END: retired once 2 is up
    finally:
        manager.stop()


# -- an attack run killed while training ----
@pytest.fixture()
def counting_victim(tmp_path, monkeypatch):
    """The colour victim of tests/attack served in-process; counts images Predict answered."""
    from serving.core import ServingCore
    from serving.model_server import ModelServer, ServerOptions
    from tests.attack.conftest import CLASSES, SIZE, colour_images, colour_victim
    from victim_export import export_classifier, write_models_config

    base = tmp_path / "victims"
    export_classifier(colour_victim(), base, "colours", version=1, input_shape=(SIZE, SIZE, 3),
                      class_names=CLASSES)
    write_models_config(base, "colours", container_base_path="")
    transfer = colour_images(400, seed=1)
    data = tmp_path / "transfer.npz"
    np.savez(data, x_train=transfer, y_train=np.zeros(len(transfer), np.int64))
    counts = collections.Counter()
    original = ServingCore.predict

    def counting(self, request):
        response = original(self, request)
        for proto in request.inputs.values():
            counts["images"] += proto.tensor_shape.dim[0].size if proto.tensor_shape.dim else 1
        counts["requests"] += 1
        return response

    monkeypatch.setattr(ServingCore, "predict", counting)
    options = ServerOptions(model_config_file=str(base / "models.config"), port=0,
                            host="127.0.0.1", file_system_poll_wait_seconds=0)
    with ModelServer(options) as server:
        yield f"127.0.0.1:{server.port}", data, counts


@pytest.mark.slow
def test_knockoff_killed_during_training_resumes_without_querying(counting_victim, tmp_path):
    """`python -m attack.knockoff` SIGKILLed once its surrogate checkpoints exist (training,
    after the query phase): `--resume` sends no image to the victim, keeps the journal's
    answers byte for byte, trains from the last finished epoch and writes its report."""
    from attack.journal import QueryJournal

    target, data, counts = counting_victim
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "attack.knockoff", "--grpc", target, "--model", "colours",
           "--transfer-set", str(data), "--budget", "300", "--heldout", "0", "--backbone",
           "cnn", "--weights", "none", "--input-size", "16", "--epochs", "40",
           "--batch-size", "32", "--query-batch", "32", "--curve-points", "1", "--out", str(run)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    backup = run / "checkpoints"
    end = time.monotonic() + 240
    while time.monotonic() < end and proc.poll() is None:
        if any(p.name == "backup" for p in backup.rglob("backup")) if backup.exists() else False:
            time.sleep(1.0)  # an epoch or two into training
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before training: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sent_before = counts["images"]
    with QueryJournal.open(run) as journal:
        answered = journal.num_answered
        indices = journal.answered_indices().copy()
        responses = journal.responses().copy()
        assert len(journal.pending()) == 0
    assert answered == sent_before == 300
    assert not (run / "report.json").exists()

    out = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert counts["images"] == sent_before, "the resumed run queried the victim again"
    with QueryJournal.open(run) as journal:
        assert np.array_equal(journal.answered_indices(), indices)
        assert np.array_equal(journal.responses(), responses)
    assert (run / "report.json").is_file()


# -- the gateway under faults ----
gateway_only = pytest.mark.skipif(not HAS_GATEWAY, reason="serving.gateway not present")


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory):
    """The `tiny` victim (8x8x3, versions 1 and 2) as a model base folder."""
    base = tmp_path_factory.mktemp("gwfaults")
    export_tiny(base, "tiny", 1, seed=1)
    return base / "tiny"


@gateway_only
@pytest.mark.slow
def test_upstream_killed_and_restarted_under_load(cnn_dir, tmp_path):
    """8 clients through the gateway; the model server SIGKILLed, restarted on the same port:
    every request before the kill OK, every one while it is down UNAVAILABLE (no hang, no
    other code), OK again within a second of the upstream being back, gateway never
    restarted."""
    from benchmarks.faults import upstream_restart

    result = upstream_restart(cnn_dir, "tiny", (8, 8, 3), tmp_path, clients=8, seconds=12)
    assert result["gateway_alive"]
    assert set(result["phases"]["before kill"]) == {"OK"}, result["phases"]
    assert set(result["phases"]["upstream down"]) == {"UNAVAILABLE"}, result["phases"]
    assert result["first_ok_after_s"] is not None and result["first_ok_after_s"] < 1.0
    assert result["survived"], result


@gateway_only
@pytest.mark.slow
def test_gateway_sigkilled_under_load_loses_no_answered_charge(cnn_dir, tmp_path):
    """8 clients, PRADA on, SQLite state; the gateway SIGKILLed mid-run and restarted on the
    same file. Per client: answered <= charged <= answered + one batch in flight, and the
    audit's answered rows and PRADA's query count both equal the charge."""
    from benchmarks.faults import gateway_sigkill

    result = gateway_sigkill(cnn_dir, "tiny", (8, 8, 3), tmp_path, clients=8, seconds=12)
    for row in result["per_client"]:
        assert row["answered_images"] <= row["used"] <= row["answered_images"] + 4, row
        assert row["audit_ok_rows"] == row["used"] == row["prada_queries"], row
    assert result["charged_final"] > result["charged_at_kill"] > 0
