"""Tests of `common.distribute`: strategy names, TF_CONFIG checks, the batch-size rule, the
configs' `distribute` field, and training under the strategies.

The default suite runs the checks (names, TF_CONFIG, the batch rule, the configs' field). The
training tests are marked slow (seconds to minutes on two shared cores): a surrogate trained and
resumed under a mirrored strategy over this process's one CPU device, and, in fresh interpreters
(`distribute_child.py`, since logical devices and multi-worker collectives must be set up before
TensorFlow starts), the CPU split into two logical devices (mirrored) and two local worker
processes talking over loopback ports (multiworker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from attack.config import KnockoffConfig
from attack.surrogate import BACKUP_DIR_NAME, FINAL_WEIGHTS_NAME, SurrogateTrainer
from common.distribute import (
    STRATEGIES,
    check_distribute,
    check_global_batch,
    is_chief,
    make_strategy,
    parse_tf_config,
    per_replica_batch,
    worker_suffix,
)
from common.errors import UsageError
from detector.ood import DetectorConfig
from serving.testing import pick_unused_port
from tests.common.distribute_child import TINY_CNN, colour_task
from victim_export.config import VictimConfig

CHILD = Path(__file__).with_name("distribute_child.py")
ROOT = Path(__file__).resolve().parents[2]


def tf_config(index: int, kind: str = "worker", **cluster) -> str:
    cluster = cluster or {"worker": ["localhost:12345", "localhost:12346"]}
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


# -- names, TF_CONFIG, the batch rule ------------------------------------------------------------

def test_strategy_names_are_checked():
    assert STRATEGIES == ("none", "mirrored", "multiworker")
    assert check_distribute("none") == "none" and check_distribute("mirrored") == "mirrored"
    with pytest.raises(UsageError, match=r"`distribute`.*Received: distribute='tpu'.*one of "
                                         r"'none', 'mirrored', 'multiworker'"):
        check_distribute("tpu")


def test_a_valid_tf_config_is_parsed():
    spec = parse_tf_config(tf_config(1))
    assert spec == {"cluster": {"worker": ["localhost:12345", "localhost:12346"]},
                    "task": {"type": "worker", "index": 1}}
    with_chief = tf_config(0, "chief", chief=["10.0.0.1:2222"], worker=["[::1]:2222"])
    assert parse_tf_config(with_chief)["task"] == {"type": "chief", "index": 0}
    assert check_distribute("multiworker", environ={"TF_CONFIG": tf_config(0)}) == "multiworker"


@pytest.mark.parametrize("text, fragment", [
    (None, "a JSON cluster spec for --distribute multiworker"),
    ("{not json", "JSON (Expecting property name"),
    ("[1, 2]", "a JSON object with 'cluster' and 'task'"),
    ('{"task": {"type": "worker", "index": 0}}', "a 'cluster' object"),
    (tf_config(0, ps=["a:1"], worker=["b:2"]), "not 'ps'"),
    (tf_config(0, worker=[]), "cluster.worker as a non-empty list"),
    (tf_config(0, worker=["localhost"]), "host:port addresses in cluster.worker"),
    (tf_config(0, worker=["h:70000"]), "not 'h:70000'"),
    (tf_config(0, worker=["h:1", "h:1"]), "each address once"),
    (tf_config(0, "chief", chief=["a:1", "b:1"], worker=["c:1"]), "at most one chief"),
    ('{"cluster": {"worker": ["a:1"]}}', "a 'task' object"),
    (tf_config(0, "evaluator"), "task.type among the cluster's jobs"),
    (tf_config(2), "task.index in 0..1 for 2 worker address(es), not 2"),
    (tf_config(True), "not True"),
])
def test_a_bad_tf_config_is_one_line_naming_it(text, fragment):
    with pytest.raises(UsageError) as err:
        check_distribute("multiworker", environ={} if text is None else {"TF_CONFIG": text})
    message = str(err.value)
    assert message.startswith("Invalid value for argument `TF_CONFIG`.") and "\n" not in message
    assert fragment in message


def test_the_batch_is_global_and_splits_evenly_over_replicas():
    two = SimpleNamespace(num_replicas_in_sync=2)
    assert check_global_batch(7, None) == 7 and per_replica_batch(7, None) == 7
    assert per_replica_batch(64, two) == 32
    with pytest.raises(UsageError, match=r"`batch_size`.*=63.*a multiple of the 2 replicas"):
        per_replica_batch(63, two)


def test_chief_and_worker_files(monkeypatch):
    import tensorflow as tf

    TFConfigClusterResolver = tf.distribute.cluster_resolver.TFConfigClusterResolver

    def task(text):
        monkeypatch.setenv("TF_CONFIG", text)
        return SimpleNamespace(cluster_resolver=TFConfigClusterResolver())

    assert is_chief(None) and worker_suffix(None) == ""
    assert is_chief(task(tf_config(0))) and worker_suffix(task(tf_config(0))) == ""
    assert not is_chief(task(tf_config(1))) and worker_suffix(task(tf_config(1))) == ".worker-1"
    chief = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert is_chief(task(tf_config(0, "chief", **chief)))
    assert worker_suffix(task(tf_config(0, **chief))) == ".worker-0"


# -- the configs' field --------------------------------------------------------------------------

def test_every_training_config_checks_distribute(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    det = dict(benign="b", attack="a", out=str(tmp_path / "d" / "1"))
    assert VictimConfig(dataset="d", distribute="mirrored").distribute == "mirrored"
    assert DetectorConfig(**det, distribute="mirrored").distribute == "mirrored"
    assert KnockoffConfig(transfer_set="t", distribute="mirrored").distribute == "mirrored"
    for build in (lambda d: VictimConfig(dataset="d", distribute=d),
                  lambda d: DetectorConfig(**det, distribute=d)):
        with pytest.raises(UsageError, match="`distribute`.*one of 'none', 'mirrored'"):
            build("gpus")
        with pytest.raises(UsageError, match="`TF_CONFIG`"):
            build("multiworker")
    monkeypatch.setenv("TF_CONFIG", tf_config(0))
    assert VictimConfig(dataset="d", distribute="multiworker").distribute == "multiworker"
    with pytest.raises(UsageError, match="none or mirrored for an attack"):
        KnockoffConfig(transfer_set="t", distribute="multiworker")
    with pytest.raises(UsageError, match="none with --semi-supervised"):
        KnockoffConfig(transfer_set="t", distribute="mirrored", semi_supervised=True,
                       unlabelled=10)
    with pytest.raises(UsageError, match="none for the dense arch softmax"):
        VictimConfig(dataset="d", arch="softmax", distribute="mirrored")


def test_the_cli_flag_reaches_the_config(tmp_path):
    from common.cli import parse_config

    config = parse_config(VictimConfig, ["--dataset", "d", "--distribute", "mirrored"],
                          prog="victim")
    assert config.distribute == "mirrored"
    with pytest.raises(SystemExit) as exit_:
        parse_config(KnockoffConfig, ["--transfer-set", "t", "--distribute", "multiworker"],
                     prog="knockoff")
    assert exit_.value.code == 2


# -- training under a strategy, in-process (one CPU device) --------------------------------------

@pytest.mark.slow
def test_surrogate_trains_and_resumes_under_a_mirrored_strategy(tmp_path):
    """The in-process check of the distributed path (a mirrored strategy over this process's
    CPU): the copy built under the scope trains, its weights come back to `model`, and a
    finished run is restored from the checkpoint."""
    import keras

    assert make_strategy("mirrored") is make_strategy("mirrored")  # one per process
    images, targets, labels = colour_task(96, seed=0)

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def trainer():
        return SurrogateTrainer("cnn", "none", 16, 3, epochs=2, batch_size=32, lr=3e-3, seed=1,
                                augment="none", arch_kwargs=TINY_CNN, distribute="mirrored",
                                checkpoint_dir=tmp_path)

    first = trainer()
    before = first.predict_logits(images)
    with pytest.raises(KeyboardInterrupt):
        first.fit(images, targets, callbacks=[Stop()])
    assert (tmp_path / BACKUP_DIR_NAME).is_dir()
    resumed = trainer()
    resumed.fit(images, targets)
    assert resumed.initial_epoch == 1 and resumed.epochs_run == 1
    assert resumed._fit_model is not None and resumed._fit_model is not resumed.model
    after = resumed.predict_logits(images)
    assert not np.allclose(before, after)  # the trained weights reached the plain model
    assert (tmp_path / FINAL_WEIGHTS_NAME).is_file()
    again = trainer()
    again.fit(images, targets)
    assert again.restored_final
    np.testing.assert_allclose(again.predict_logits(images), after, rtol=1e-5, atol=1e-5)


# -- several devices and several workers, in fresh interpreters ----------------------------------

def run_child(mode: str, result: Path, work: Path, env: dict | None = None) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k != "TF_CONFIG"}, "PYTHONPATH": str(ROOT),
           **(env or {})}
    return subprocess.Popen([sys.executable, str(CHILD), mode, str(result), str(work)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 900) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus(tmp_path):
    result = tmp_path / "result.json"
    finish(run_child("mirrored", result, tmp_path / "work"))
    out = json.loads(result.read_text())
    assert out["none"]["replicas"] == 1 and out["mirrored"]["replicas"] == 2
    # Same data, seed and global batch: both learn the task, to within noise of each other.
    assert out["none"]["agreement"] > 0.8 and out["mirrored"]["agreement"] > 0.8
    assert abs(out["none"]["loss"][-1] - out["mirrored"]["loss"][-1]) < 0.1
    assert "a multiple of the 2 replicas" in out["odd_batch_error"]
    assert "backup" in out["backup_after_interrupt"]
    assert out["resume"] == {"epochs": [1, 2], "initial_epoch": 1,
                             "restored_final_on_none": True, "same_weights": True}
    assert out["victim"]["path"].endswith("victims/tiny/1") and out["victim"]["accuracy"] > 0.5
    assert out["detector"]["path"].endswith("detectors/ood/1") and out["detector"]["auc"] > 0.9
    # A mirrored victim killed after epoch 1 of 3 resumes with the same command: it trains
    # epochs 2 and 3 only and ends with the uninterrupted mirrored run's weights, bit for bit.
    resumed = out["victim_resume"]
    assert resumed["left"] == ["state-1.npz"] and resumed["exported"]
    assert resumed["resumed_epochs"] == [1, 2] and resumed["whole_epochs"] == [0, 1, 2]
    assert resumed["resumed"] == resumed["whole"]
    # ... and on one device (--distribute none): the same global batches, so it may move.
    moved = out["victim_resume_on_one"]
    assert moved["left"] == ["state-1.npz"] and moved["resumed_epochs"] == [1, 2]
    assert moved["exported"] and moved["accuracy"] > 0.5


@pytest.mark.slow
def test_multiworker_with_two_local_workers(tmp_path):
    work = tmp_path / "shared"
    ports = [pick_unused_port(), pick_unused_port()]
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = [run_child("worker", tmp_path / f"worker{i}.json", work,
                         {"TF_CONFIG": tf_config(i, **cluster)}) for i in range(2)]
    for process in workers:
        finish(process)
    chief, other = (json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2))
    assert chief["chief"] and not other["chief"]
    assert chief["replicas"] == other["replicas"] == 2
    # One synchronous model: the same losses and weights on both workers, and it learned.
    assert chief["surrogate"]["loss"] == other["surrogate"]["loss"]
    assert chief["surrogate"]["weights"] == other["surrogate"]["weights"]
    assert chief["surrogate"]["agreement"] > 0.8
    names = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert names == ["final.weights.h5", "final.worker-1.weights.h5", "fit_state.json",
                     "fit_state.worker-1.json"]
    # Only the chief exports.
    assert chief["victim"]["path"].endswith("victims/tiny/1") and other["victim"]["path"] is None
    assert sorted(p.name for p in (work / "victims" / "tiny").iterdir()) == ["1", "card.json"]
    assert chief["detector"]["path"] and other["detector"]["path"] is None
    assert chief["victim"]["accuracy"] == other["victim"]["accuracy"] > 0.5
    # Killed after epoch 1 of 3: only the chief journaled; both workers resume from its state
    # in the shared folder, train epochs 2 and 3, and end where the uninterrupted run ends.
    for worker in (chief, other):
        resumed = worker["victim_resume"]
        assert resumed["resumed_epochs"] == [1, 2] and resumed["whole_epochs"] == [0, 1, 2]
        assert resumed["resumed"] == resumed["whole"] == chief["victim_resume"]["whole"]
    assert chief["victim_resume"]["left"] == ["state-1.npz"] and chief["victim_resume"]["exported"]
    assert not other["victim_resume"]["exported"]
    # A worker whose --out is not the chief's finds no state: every worker stops, one line each,
    # before training (none hangs in a collective), and the chief's state is kept.
    for worker in (chief, other):
        error = worker["victim_unshared"]["error"]
        assert error.startswith("Invalid value for argument `out`.") and "--fresh" in error
        assert "shared by every worker" in error and "\n" not in error
    assert "one after epoch 1" in chief["victim_unshared"]["error"]
    assert "this one none" in other["victim_unshared"]["error"]
    assert (work / "victims" / "unshared" / ".training" / "state-1.npz").is_file()
