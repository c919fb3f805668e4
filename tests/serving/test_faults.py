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

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import status, testing
from serving.embedded.manager import ModelManager


# -- SavedModel folders in a half state ----
def _manager(base: Path):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(f'model_config_list {{ config {{ name: "tiny" base_path: "{base}" '
                      'model_platform: "tensorflow" } }', config)
    manager = ModelManager()
    manager.reload(config)
    return manager


def _served_version(manager) -> int | None:
    try:
        return manager.resolve(model_pb2.ModelSpec(name="tiny")).version
    except status.ServingStatus:
        return None


@pytest.fixture(scope="module")
def tiny_versions(model_base):
    """`tiny` versions 1 and 2 (the serving tests' models, exported once per run); tests copy
    them around."""
    return model_base[0] / "tiny"


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
@pytest.mark.slow
def test_knockoff_killed_during_training_resumes_without_querying(tmp_path):
    """`python -m attack.knockoff` (through a gateway that charges its key per image answered)
    SIGKILLed once its surrogate checkpoints exist (training, after the query phase):
    `--resume` sends no image to the victim, keeps the journal's answers byte for byte, trains
    from the last finished epoch and writes its report."""
    from benchmarks.faults import train_kill

    result = train_kill(tmp_path)
    # the journal holds the 300 paid answers; the victim also answered the attack's probe of
    # its input range (a few images, before the budget is spent, not journaled)
    assert result["answered_at_kill"] == 300 <= result["images_answered_before_kill"], result
    assert result["pending_at_kill"] == 0, result
    assert result["resume_rc"] == 0, result
    assert result["images_sent_by_resume"] == 0, "the resumed run queried the victim again"
    assert result["journal_unchanged"] and result["report"], result
    assert result["survived"]


# -- the gateway under faults ----


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory):
    """The `tiny` victim (8x8x3, versions 1 and 2) as a model base folder."""
    return testing.export_tiny_classifier(tmp_path_factory.mktemp("gwfaults"), "tiny", 1, seed=1)


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
