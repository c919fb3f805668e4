"""Tests of `python -m victim_export` resuming after a crash (`victim_export.training_state`).

A run killed after epoch k and run again ends with the uninterrupted run's weights (bit for
bit), history, best epoch and export; a state written under other settings or for other data is
refused before any training; a damaged state file is skipped for the one before it; the state
lives where no server takes it for a model version and is gone after the export.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common.cli import config_to_dict
from common.data import ImageDataset
from common.errors import UsageError
from serving.status import aspired_versions
from tests.victim_export.tiny_data import make_images
from victim_export import VictimConfig, next_version, train_victim
from victim_export.__main__ import main
from victim_export.train import run_victim_export, training_batches
from victim_export.training_state import (
    STATE_DIR_NAME,
    EpochJournal,
    TrainingState,
    check_state,
    data_fingerprint,
    discard_state,
    load_state,
    state_dir,
    write_state,
)

ROOT = Path(__file__).resolve().parents[2]
_CNN = ("filters=[4, 8]", "block_dropout=[0.1, 0.1]", "dense_units=8")


class _Crash(Exception):
    """Raised by the patched journal after the epoch the test kills the run at."""


@pytest.fixture(scope="module")
def noisy_data():
    """160 training images with a third of the labels wrong (validation accuracy wanders, so
    early stopping keeps an epoch before the last) and 30 test images."""
    x, y = make_images(160, seed=1)
    y = y.copy()
    y[::3] = (y[::3] + 1) % 3
    x_test, y_test = make_images(30, seed=2)
    names = ("r", "g", "b")
    return (ImageDataset(x, y, names, "memory:train"),
            ImageDataset(x_test, y_test, names, "memory:test"))


def _config(out, **changes) -> VictimConfig:
    values = dict(dataset="memory", epochs=6, batch_size=32, val_split=0.25, patience=2,
                  augment="crop+flip", out=str(out), name="v", seed=2, learning_rate=0.03,
                  arch_args=_CNN, dropout=0.2, container_base_path="local")
    values.update(changes)
    return VictimConfig(**values)


def _crash_after(monkeypatch, epochs: int) -> None:
    """Make the journal raise once the state of `epochs` finished epochs is written."""
    original = EpochJournal.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch + 1 == epochs:
            raise _Crash()

    monkeypatch.setattr(EpochJournal, "on_epoch_end", on_epoch_end)


def _state(config: VictimConfig, epoch: int = 2) -> TrainingState:
    return TrainingState(epoch=epoch, model_variables=[np.arange(3.0)],
                         optimizer_variables=[np.array(7)], history={"loss": [1.0] * epoch},
                         seconds=1.5, config=config_to_dict(config),
                         fingerprint={"input_size": 16})


def _assert_same_training(resumed, uninterrupted) -> None:
    for a, b in zip(resumed.model.variables, uninterrupted.model.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.history == uninterrupted.history
    assert (resumed.best_epoch, resumed.epochs_run) == (uninterrupted.best_epoch,
                                                        uninterrupted.epochs_run)
    assert resumed.test_accuracy == uninterrupted.test_accuracy


# ---------------------------------------------------------------------------------------------
# the data order, the config rule, damaged files, where the state lives (fast)


@pytest.mark.parametrize("augment", ["none", "crop+flip"])
def test_each_epochs_batches_depend_on_seed_and_epoch_only(augment):
    images, labels = make_images(20, seed=0)
    kwargs = dict(size=16, num_classes=3, batch_size=8, seed=4, augment=augment, epochs=3)
    whole = [(x.numpy(), y.numpy()) for x, y in training_batches(images, labels, **kwargs)]
    assert [len(x) for x, _ in whole] == [8, 8, 4] * 3  # each epoch ends with its own batch
    later = [(x.numpy(), y.numpy())
             for x, y in training_batches(images, labels, first_epoch=2, **kwargs)]
    for (x, y), (x_again, y_again) in zip(later, whole[6:], strict=True):
        np.testing.assert_array_equal(x, x_again)
        np.testing.assert_array_equal(y, y_again)
    epoch_labels = [np.concatenate([y.argmax(1) for _, y in whole[i:i + 3]]) for i in (0, 3, 6)]
    for seen in epoch_labels:  # every image once per epoch, in a new order each epoch
        np.testing.assert_array_equal(np.bincount(seen, minlength=3),
                                      np.bincount(labels, minlength=3))
    firsts = [whole[i][0] for i in (0, 3, 6)]
    assert not np.array_equal(firsts[0], firsts[1]) and not np.array_equal(firsts[1], firsts[2])


def test_a_state_of_other_settings_is_refused_naming_the_flag_before_training(
        tiny_npz, tmp_path, capsys):
    out = tmp_path / "victims"
    args = ["--dataset", str(tiny_npz), "--epochs", "3", "--out", str(out), "--name", "tiny",
            "--arch-args", *_CNN]
    saved = VictimConfig(dataset=str(tiny_npz), epochs=3, out=str(out), name="tiny",
                         arch_args=_CNN, learning_rate=0.01)
    write_state(state_dir(saved), _state(saved))
    assert main(args) == 2  # --learning-rate is the default 0.001 now
    err = capsys.readouterr()
    line, = err.err.strip().splitlines()
    assert "Invalid value for argument `--learning-rate`" in line
    assert "0.01, the value of the interrupted run" in line and "after 2 epochs" in line
    assert "resume with --learning-rate 0.01" in line and "--fresh" in line
    assert "Epoch" not in err.out  # refused before any training
    assert load_state(state_dir(saved)) is not None  # and nothing discarded
    # a setting of the export only (version, logits, serving dtype, models.config path) may
    # change; the training's own may not; nor may the data
    check_state(_state(saved), VictimConfig(**{**_fields(saved), "version": 4,
                                               "export_logits": True, "fresh": True,
                                               "container_base_path": "local"}))
    with pytest.raises(UsageError, match="`epochs`.*cosine schedule.*resume with --epochs 3"):
        check_state(_state(saved), VictimConfig(**{**_fields(saved), "epochs": 5}))
    # more epochs where nothing else depends on the count; never fewer
    constant = VictimConfig(**{**_fields(saved), "schedule": "constant"})
    check_state(_state(constant), dataclasses.replace(constant, epochs=5))
    with pytest.raises(UsageError, match="`epochs`"):
        check_state(_state(constant), dataclasses.replace(constant, epochs=2))
    with pytest.raises(UsageError, match="`epochs`.*--patience above 0"):
        check_state(_state(constant), dataclasses.replace(constant, epochs=5, patience=0))
    # the devices may change: the global batches are the same on one device or several
    check_state(_state(saved), VictimConfig(**{**_fields(saved), "distribute": "mirrored"}))
    with pytest.raises(UsageError, match="`dataset`. The training data differ"):
        check_state(_state(saved), saved, {"input_size": 32})
    # the dataset's spelling may change: the data themselves are compared by fingerprint
    check_state(_state(saved), dataclasses.replace(saved, dataset=f"{tiny_npz.parent}/./x/.."
                                                   f"/{tiny_npz.name}"), {"input_size": 16})


def _fields(config: VictimConfig) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_a_damaged_state_is_skipped_for_the_one_before(tmp_path, caplog):
    config = _config(tmp_path)
    directory = state_dir(config)
    for epoch in (1, 2, 3):
        write_state(directory, _state(config, epoch))
    assert sorted(p.name for p in directory.iterdir()) == ["state-2.npz", "state-3.npz"]
    newest = directory / "state-3.npz"
    newest.write_bytes(newest.read_bytes()[:200])  # cut off mid-write
    with caplog.at_level(logging.WARNING, "victim_export.training_state"):
        state = load_state(directory)
    assert state.epoch == 2 and state.history == {"loss": [1.0, 1.0]}
    assert "skipping the unreadable training state" in caplog.text
    (directory / "state-2.npz").write_bytes(b"")
    assert load_state(directory) is None  # nothing usable: the run starts from epoch 1


def test_the_state_folder_is_no_model_version_and_goes_without_a_trace(tmp_path):
    config = _config(tmp_path)
    write_state(state_dir(config), _state(config))
    (config.model_dir / "3").mkdir()
    children = [p.name for p in config.model_dir.iterdir()]
    assert STATE_DIR_NAME in children
    assert aspired_versions(children, policy="all") == [3]
    assert next_version(config.model_dir) == 4
    (config.model_dir / f"{STATE_DIR_NAME}-removed-99").mkdir()  # a removal cut short
    discard_state(config)
    assert [p.name for p in config.model_dir.iterdir()] == ["3"]
    discard_state(config)  # nothing left to remove


def test_the_fingerprint_tells_other_data_apart():
    images, labels = make_images(12, seed=0)
    base = data_fingerprint(16, ("r", "g", "b"), [(images, labels), None])
    assert base == data_fingerprint(16, ("r", "g", "b"), [(images.copy(), labels), None])
    flipped = images.copy()
    flipped[0, 0, 0, 0] ^= 1
    assert base != data_fingerprint(16, ("r", "g", "b"), [(flipped, labels), None])
    assert base != data_fingerprint(16, ("r", "g", "b"), [(images, labels[::-1].copy()), None])
    assert base != data_fingerprint(32, ("r", "g", "b"), [(images, labels), None])


def _tiny_softmax(tmp_path, seed: int, **changes):
    """(train, test, config): 60 + 12 images of 8x8 and a softmax victim's config."""
    x, y = make_images(60, seed=seed, size=8)
    x_test, y_test = make_images(12, seed=seed + 1, size=8)
    names = ("r", "g", "b")
    config = _config(tmp_path, arch="softmax", arch_args=(), augment="none", batch_size=16,
                     learning_rate=0.05, **changes)
    return (ImageDataset(x, y, names, "memory:train"),
            ImageDataset(x_test, y_test, names, "memory:test"), config)


@pytest.mark.slow  # three tiny fits: 3-8 s on the shared machine
def test_a_dense_victim_killed_after_an_epoch_resumes_bit_for_bit(tmp_path, monkeypatch):
    train, test, config = _tiny_softmax(tmp_path, 7, epochs=3, schedule="plateau", patience=0)
    whole = train_victim(config, train=train, test=test)
    journal = state_dir(config)
    journal.mkdir(parents=True)
    (journal / "state-7.npz").write_bytes(b"cut")  # an unreadable file of a later epoch
    _crash_after(monkeypatch, 1)
    with pytest.raises(_Crash):
        train_victim(config, train=train, test=test, journal=journal)
    monkeypatch.undo()
    assert sorted(p.name for p in journal.iterdir()) == ["state-1.npz"]
    state = load_state(journal)
    assert state.epoch == 1 and len(state.optimizer_variables) > 2  # step, rate, moments
    resumed = train_victim(config, train=train, test=test, journal=journal, resume=state)
    _assert_same_training(resumed, whole)
    assert load_state(journal).epoch == 3


@pytest.mark.slow  # three tiny fits: 3-8 s on the shared machine
def test_more_epochs_on_resume_end_as_a_run_started_with_them(tmp_path, monkeypatch):
    train, test, config = _tiny_softmax(tmp_path, 9, epochs=4, schedule="constant", patience=3)
    whole = train_victim(config, train=train, test=test)
    journal = state_dir(config)
    _crash_after(monkeypatch, 2)
    with pytest.raises(_Crash):
        train_victim(dataclasses.replace(config, epochs=3), train=train, test=test,
                     journal=journal)
    monkeypatch.undo()
    resumed = train_victim(config, train=train, test=test, journal=journal,
                           resume=load_state(journal))
    _assert_same_training(resumed, whole)


# ---------------------------------------------------------------------------------------------
# slow: real training, interrupted and resumed


@pytest.mark.slow  # three short trainings and two exports: about 25 s on the shared 2-core machine
@pytest.mark.parametrize("schedule, seed, rate", [("cosine", 2, 0.03), ("plateau", 0, 0.1)])
def test_a_run_interrupted_after_its_best_epoch_resumes_to_the_same_victim(
        noisy_data, tmp_path, monkeypatch, schedule, seed, rate):
    train, test = noisy_data
    settings = dict(schedule=schedule, seed=seed, learning_rate=rate)
    path, whole = run_victim_export(_config(tmp_path / "a", **settings), train=train,
                                    test=test)
    # early stopping ended the run after its best epoch: kill it right after the best one
    assert whole.best_epoch is not None and whole.best_epoch < whole.epochs_run < 6
    if schedule == "plateau":  # the rate fell after the kill: the plateau's state came back
        rates = whole.history["learning_rate"]
        assert rates[whole.best_epoch] < rates[whole.best_epoch - 1]
    config = _config(tmp_path / "b", **settings)
    _crash_after(monkeypatch, whole.best_epoch)
    with pytest.raises(_Crash):
        run_victim_export(config, train=train, test=test)
    assert load_state(state_dir(config)).epoch == whole.best_epoch
    assert not (config.model_dir / "1").exists()
    monkeypatch.undo()
    resumed_path, resumed = run_victim_export(config, train=train, test=test)
    _assert_same_training(resumed, whole)
    assert not state_dir(config).exists()  # removed after the export
    card = json.loads((config.model_dir / "card.json").read_text())["versions"]["1"]
    assert card["history"] == whole.history and card["best_epoch"] == whole.best_epoch
    assert card["epochs_run"] == whole.epochs_run
    served = tf.saved_model.load(str(resumed_path)).signatures["serving_default"]
    predicted = served(images=tf.constant(test.images))["probabilities"].numpy().argmax(1)
    assert float((predicted == test.labels).mean()) == card["test_accuracy"]


@pytest.mark.slow  # three dense trainings and two exports: about 12 s
def test_a_dense_victim_resumes_a_crash_before_the_export_trains_nothing_again_and_fresh(
        tmp_path, monkeypatch, caplog):
    x, y = make_images(120, seed=3)
    x_test, y_test = make_images(30, seed=4)
    train = ImageDataset(x, y, ("r", "g", "b"), "memory:train")
    test = ImageDataset(x_test, y_test, ("r", "g", "b"), "memory:test")
    dense = dict(arch="mlp", arch_args=("hidden=4",), augment="none", patience=0, epochs=4,
                 learning_rate=0.01, val_split=0.2)
    _, whole = run_victim_export(_config(tmp_path / "a", **dense), train=train, test=test)
    config = _config(tmp_path / "b", **dense)
    _crash_after(monkeypatch, 2)
    with pytest.raises(_Crash):
        run_victim_export(config, train=train, test=test)
    monkeypatch.undo()
    interrupted = {}

    def no_export(config, trained):
        interrupted["trained"] = trained
        raise KeyboardInterrupt

    monkeypatch.setattr("victim_export.train.save_or_keep", no_export)
    with pytest.raises(KeyboardInterrupt):
        run_victim_export(config, train=train, test=test)
    _assert_same_training(interrupted["trained"], whole)
    kept = load_state(state_dir(config))
    assert kept.epoch == 4  # kept: nothing was exported
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, "victim_export"):
        _, exported = run_victim_export(config, train=train, test=test)
    assert "nothing to train" in caplog.text
    _assert_same_training(exported, whole)
    assert exported.training_seconds == kept.seconds > 0
    assert not state_dir(config).exists()
    # --fresh: a state of other settings is discarded, the run trains from the start
    write_state(state_dir(config), _state(dataclasses.replace(config, epochs=9)))
    with pytest.raises(UsageError, match="`epochs`"):
        run_victim_export(config, train=train, test=test)
    _, fresh = run_victim_export(dataclasses.replace(config, fresh=True), train=train, test=test)
    _assert_same_training(fresh, whole)
    assert not state_dir(config).exists()


def _npz(tmp_path: Path) -> Path:
    x, y = make_images(400, seed=5, size=32)
    x_test, y_test = make_images(40, seed=6, size=32)
    path = tmp_path / "signs.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test,
             class_names=np.array(["r", "g", "b"]))
    return path


@pytest.mark.slow  # two processes and an in-process run, 8 epochs each: about 40 s
def test_a_killed_process_resumes_with_the_same_command_past_a_damaged_state(tmp_path, monkeypatch):
    monkeypatch.setenv("MEXT_CACHE_DIR", str(tmp_path / "cache"))
    data = _npz(tmp_path)

    def args(out, dataset=str(data)):
        return ["--dataset", dataset, "--epochs", "8", "--batch-size", "32", "--out", str(out),
                "--name", "signs", "--seed", "1", "--learning-rate", "0.01", "--patience", "0",
                "--arch-args", *_CNN, "--augment", "rotate+crop+color"]

    assert main(args(tmp_path / "whole")) == 0
    out = tmp_path / "killed"
    states = out / "signs" / STATE_DIR_NAME
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEXT_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "victim_export", *args(out)], cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (states / "state-2.npz").exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "signs" / "1").exists()  # killed before the export
    killed_at = load_state(states).epoch
    assert 2 <= killed_at < 8
    newest = states / f"state-{killed_at}.npz"  # as if the kill had cut its write short
    newest.write_bytes(newest.read_bytes()[:newest.stat().st_size // 2])
    assert load_state(states).epoch == killed_at - 1

    assert main(args(out, f"{data.parent}/./{data.name}")) == 0  # the same data, spelled anew
    assert not states.exists()
    cards = [json.loads((base / "signs" / "card.json").read_text())["versions"]["1"]
             for base in (tmp_path / "whole", out)]
    for key in ("history", "best_epoch", "epochs_run", "test_accuracy", "per_class_accuracy"):
        assert cards[0][key] == cards[1][key], key
    images = make_images(40, seed=6, size=32)[0]
    answers = [tf.saved_model.load(str(base / "signs" / "1")).signatures["serving_default"](
        images=tf.constant(images))["probabilities"].numpy()
        for base in (tmp_path / "whole", out)]
    np.testing.assert_array_equal(answers[0], answers[1])
