"""The training state of a victim, journaled at every epoch's end so that a crash loses one epoch.

``python -m victim_export --arch cnn --epochs 30`` runs for the better part of an hour; killed at
epoch 29 it used to lose everything. `EpochJournal` (a Keras callback) writes, after every
epoch, what a resumed run needs to train as if it had never stopped (Keras' `BackupAndRestore`
saves the weights, the optimizer and the epoch only, not the callbacks' state nor the data
order):

* every model variable (``model.variables``: weights, batch-norm statistics and the dropout
  layers' seed-generator states) and every optimizer variable (step count, moments, and the
  learning rate itself when ``--schedule plateau`` changes it; a cosine schedule follows the
  restored step);
* the number of finished epochs, EarlyStopping's state (best value, best epoch, wait, and the
  best epoch's weights it restores at the end) and ReduceLROnPlateau's (best, wait, cooldown);
* the history so far and the training seconds spent, for the model card;
* the run's config and a fingerprint of its data (image counts, classes, input size, a BLAKE2
  digest of the training and validation images and labels).

The data order needs no state: `victim_export.train.training_batches` draws epoch ``e``'s order
and augmentation from ``(seed, e)`` alone.

Where it lives: ``<out>/<name>/.training/state-<epoch>.npz``, beside the model's integer version
folders. TF Serving (``FileSystemStoragePathSource``), the embedded server
(`serving.status.aspired_versions`) and `victim_export.export.next_version` take only folders
named by an integer for versions; ``models.config`` lists model names, which cannot start with
a dot (`victim_export.config.MODEL_NAME_RE`), so ``.training`` is never a model nor a version.
Each state is one ``.npz`` written atomically (`common.fileio.write_atomic`: a synced temporary
file renamed over the target); the two newest are kept (an older one is removed once the new
one is in place), and a state that cannot be read (a truncated file) is skipped with a warning
for the one before it. The folder is removed after a successful export and kept when the export
fails (the same command then exports without training again). The removal starts with one
atomic rename (to ``.training-removed-<pid>``, deleted next, or by the next removal should a
crash interrupt it), so only a crash in the instant between the export's own rename and that
one leaves a finished state behind (the same command would then export the same weights once
more, as the next version).

The rule (`check_state`): the same command resumes. A state is only used by a run whose config
equals the one that wrote it, except for `RESUME_NEUTRAL_FIELDS` (where the export goes and in
which form: they cannot change the trained weights), and whose data have the same fingerprint;
anything else is refused with one line naming the differing field and how to continue
(`UsageError`, exit code 2): the run's own value resumes, ``--fresh`` discards the state. A
state is never mixed into another run, and never silently thrown away. ``--epochs`` may grow on
resume when nothing else depends on it (``--schedule constant|plateau`` and ``--patience`` above
0: the run then ends as one started with the larger count would have); the cosine schedule
spans the whole run, so there it may not.

Under ``--distribute`` the run journals and resumes the same way: its global batches are the
single-device run's, split over the replicas, so ``--distribute`` is resume-neutral (a run on
two GPUs may continue on one, or the other way round; the figures then differ in the last bits,
as the sums run in another order). In a multi-worker run only the chief writes; every worker
reads the state from ``<out>``, which the workers share as they share the export, and
`agree_on_resume` stops all of them, one line each, unless they found the same state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from common.cli import as_flags, config_to_dict
from common.data import ImageDataset
from common.errors import UsageError, invalid
from common.fileio import write_atomic
from victim_export.config import VictimConfig

__all__ = [
    "RESUME_NEUTRAL_FIELDS",
    "STATE_DIR_NAME",
    "EpochJournal",
    "TrainingState",
    "agree_on_resume",
    "check_state",
    "data_fingerprint",
    "discard_state",
    "fit_resumably",
    "load_state",
    "restore_variables",
    "state_dir",
]

logger = logging.getLogger(__name__)

STATE_DIR_NAME = ".training"
_STATE_FILE = re.compile(r"^state-(\d+)\.npz$")
_FORMAT = 1

RESUME_NEUTRAL_FIELDS = ("out", "name", "version", "export_logits", "input_dtype", "flatten",
                         "container_base_path", "dataset", "data_dir", "fresh", "distribute")
"""Fields a resumed run may change: where and in which form the victim is exported (``out``
and ``name`` locate the state itself), how the dataset is spelled and where tensorflow-datasets
keeps its files (``../data/x.zip`` from one folder is ``data/x.zip`` from another: the images
and labels trained and validated on are compared by their fingerprint instead), ``fresh``, and
``distribute`` (the global batches do not depend on the devices). Every other field must be the
interrupted run's."""


def state_dir(config: VictimConfig) -> Path:
    """``<out>/<name>/.training``: where the training state of `config`'s model is journaled."""
    return config.model_dir / STATE_DIR_NAME


@dataclass
class TrainingState:
    """What `EpochJournal` writes after each epoch (`epoch` epochs finished)."""

    epoch: int
    model_variables: list[np.ndarray]
    optimizer_variables: list[np.ndarray]
    history: dict[str, list[float]]
    seconds: float
    stopped: bool = False
    early: dict[str, Any] | None = None
    best_weights: list[np.ndarray] | None = None
    plateau: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the ``.npz`` file: ``meta`` (JSON as bytes) and the variables."""
        meta = {"format": _FORMAT, "epoch": self.epoch, "history": self.history,
                "seconds": self.seconds, "stopped": self.stopped, "early": self.early,
                "plateau": self.plateau, "config": self.config,
                "fingerprint": self.fingerprint,
                "counts": [len(self.model_variables), len(self.optimizer_variables),
                           -1 if self.best_weights is None else len(self.best_weights)]}
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)}
        for prefix, values in (("model", self.model_variables),
                               ("optimizer", self.optimizer_variables),
                               ("best", self.best_weights or [])):
            arrays.update({f"{prefix}_{i}": np.asarray(v) for i, v in enumerate(values)})
        return arrays

    @classmethod
    def read(cls, path: Path) -> TrainingState:
        """The state in `path`; `ValueError`/`OSError` when it is unreadable or incomplete."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"unknown state format {meta.get('format')!r}")
            models, optimizers, best = meta["counts"]
            return cls(
                epoch=int(meta["epoch"]),
                model_variables=[data[f"model_{i}"] for i in range(models)],
                optimizer_variables=[data[f"optimizer_{i}"] for i in range(optimizers)],
                best_weights=None if best < 0 else [data[f"best_{i}"] for i in range(best)],
                history=meta["history"], seconds=float(meta["seconds"]),
                stopped=bool(meta["stopped"]), early=meta["early"], plateau=meta["plateau"],
                config=meta["config"], fingerprint=meta["fingerprint"], path=path)


def _state_files(directory: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the state files in `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _STATE_FILE.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def load_state(directory: Path) -> TrainingState | None:
    """The newest readable state in `directory`, or None when there is none.

    A file that cannot be read (truncated by a crash on a file system without atomic renames,
    or damaged) is skipped with a warning and the one before it is used.
    """
    for epoch, path in _state_files(directory):
        try:
            return TrainingState.read(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            logger.warning("skipping the unreadable training state %s (%s)", path,
                           " ".join(str(err).split()) or type(err).__name__)
    return None


def discard_state(config: VictimConfig) -> None:
    """Remove `config`'s training-state folder (after an export, or on ``--fresh``)."""
    directory = state_dir(config)
    doomed = directory.with_name(f"{STATE_DIR_NAME}-removed-{os.getpid()}")
    try:  # one atomic rename: from here on no run resumes it, whatever happens to the rmtree
        os.replace(directory, doomed)
    except FileNotFoundError:  # none, or another worker removed it first
        pass
    else:
        logger.info("removed the training state in %s", directory)
    for leftover in directory.parent.glob(f"{STATE_DIR_NAME}-removed-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def data_fingerprint(size: int, class_names: Sequence[str],
                     splits: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> dict[str, Any]:
    """What identifies a run's data: input size, classes, and per split (fit, validation) the
    count and a BLAKE2 digest of the images and labels."""
    parts: list[dict[str, Any] | None] = []
    for split in splits:
        if split is None:
            parts.append(None)
            continue
        images, labels = split
        digest = hashlib.blake2b(digest_size=16)
        for array in (np.ascontiguousarray(images), np.ascontiguousarray(labels)):
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
        parts.append({"count": int(len(images)), "digest": digest.hexdigest()})
    return {"input_size": int(size), "class_names": list(class_names), "splits": parts}


def check_state(state: TrainingState, config: VictimConfig,
                fingerprint: dict[str, Any] | None = None) -> None:
    """Raise `UsageError` unless `state` was written by a run of `config` (up to
    `RESUME_NEUTRAL_FIELDS`) on the same data; the message names the first differing field."""
    where = state.path.parent if state.path is not None else state_dir(config)
    how = "or pass --fresh to discard it and train from the start"
    current = config_to_dict(config)
    for name in sorted(current):
        if name in RESUME_NEUTRAL_FIELDS:
            continue
        saved = state.config.get(name, current[name])
        if name == "epochs" and _epochs_may_grow(config, saved):
            continue
        if _comparable(saved) != _comparable(current[name]):
            why = ""
            if name == "epochs":
                why = (" (more epochs only without the cosine schedule, which spans the whole "
                       "run, and with --patience above 0, which is otherwise the epoch count)")
            raise invalid(name, current[name],
                          f"{saved!r}, the value of the interrupted run whose training state "
                          f"is in {where} (after {state.epoch} epochs){why}: resume with "
                          f"{as_flags(config, {name: saved})}, {how}")
    if fingerprint is not None and state.fingerprint != fingerprint:
        raise UsageError(
            f"Invalid value for argument `dataset`. The training data differ from those of the "
            f"interrupted run whose training state is in {where} (after {state.epoch} epochs): "
            f"expected the same images, labels, classes and input size; resume with the same "
            f"data, {how}.", argument="dataset", received=config.dataset,
            expected="the interrupted run's data")


def _epochs_may_grow(config: VictimConfig, saved: Any) -> bool:
    """Whether `config.epochs` may replace the interrupted run's `saved` count: more epochs,
    and nothing else depends on the count (no cosine schedule; early stopping's patience its
    own number), so the run ends as one started with the new count would have."""
    return (isinstance(saved, int) and config.epochs > saved and config.schedule != "cosine"
            and config.patience > 0)


def _comparable(value: Any) -> Any:
    """JSON values as compared by `check_state` (lists and tuples alike)."""
    return json.loads(json.dumps(value))


def agree_on_resume(strategy: Any, state: TrainingState | None, config: VictimConfig) -> None:
    """In a multi-worker run, check that every worker resumes from the same epoch (0: none)
    before any of them trains; `UsageError` on every worker otherwise. Nothing to check for
    one process (no strategy, or a mirrored one).

    A worker that cannot see the chief's ``<out>`` (not a shared folder) would start from epoch
    0 while the others resume, and the collective operations of training would wait forever.
    One all-reduce of (1, e, e^2) over the replicas answers on every worker alike: the epochs
    are all equal exactly when n * sum(e^2) == sum(e)^2.
    """
    if getattr(strategy, "cluster_resolver", None) is None:
        return
    import tensorflow as tf

    epoch = 0 if state is None else state.epoch
    local = tf.constant([1.0, epoch, epoch * epoch], tf.float64)

    @tf.function
    def total() -> Any:
        per_replica = strategy.run(lambda: tf.identity(local))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    count, sum_epochs, sum_squares = (float(v) for v in total().numpy())
    if count * sum_squares == sum_epochs * sum_epochs:
        return
    here = "none" if state is None else f"one after epoch {epoch}"
    raise invalid("out", config.out,
                  f"one folder shared by every worker, where the chief journals the training "
                  f"state (the workers found different states: this one {here} in "
                  f"{state_dir(config)}, the replicas' mean epoch {sum_epochs / count:g}); run "
                  f"every worker with the same shared --out, or pass --fresh to all of them")


def restore_variables(model: keras.Model, state: TrainingState) -> None:
    """Assign `state`'s model and optimizer variables (the optimizer built first)."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    for what, variables, values in (("model", model.variables, state.model_variables),
                                    ("optimizer", optimizer.variables,
                                     state.optimizer_variables)):
        shapes = [tuple(v.shape) for v in variables]
        saved = [tuple(np.shape(v)) for v in values]
        if shapes != saved:
            raise UsageError(f"The training state {state.path} does not fit the {what} "
                             f"({len(saved)} variables saved, {len(shapes)} built); pass "
                             "--fresh to discard it.")
        for variable, value in zip(variables, values):
            variable.assign(value)


class EpochJournal(keras.callbacks.Callback):
    """Writes a `TrainingState` into `directory` at the end of every epoch, and puts a resumed
    run's variables and EarlyStopping / ReduceLROnPlateau state back at the start of training
    (`directory` None: restores and records the history, writes nothing).

    Place it after `early` and `plateau` in the callback list: their ``on_train_begin`` resets
    them, this one's restores them, and at an epoch's end it records what they decided.
    """

    def __init__(self, directory: Path | None, *, config: dict[str, Any],
                 fingerprint: dict[str, Any],
                 early: keras.callbacks.EarlyStopping | None = None,
                 plateau: keras.callbacks.ReduceLROnPlateau | None = None,
                 resumed: TrainingState | None = None) -> None:
        super().__init__()
        self.directory = None if directory is None else Path(directory)
        self.config = config
        self.fingerprint = fingerprint
        self.early = early
        self.plateau = plateau
        self.resumed = resumed
        self.history: dict[str, list[float]] = (
            {k: list(v) for k, v in resumed.history.items()} if resumed else {})
        self.seconds_before = resumed.seconds if resumed else 0.0
        self._started = time.monotonic()

    @property
    def seconds(self) -> float:
        """Training seconds so far, the interrupted runs' included."""
        return self.seconds_before + (time.monotonic() - self._started)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._started = time.monotonic()
        state = self.resumed
        if self.directory is not None:  # files of later epochs: unreadable, or another run's
            first_epoch = 0 if state is None else state.epoch
            for epoch, path in _state_files(self.directory):
                if epoch > first_epoch:
                    path.unlink(missing_ok=True)
        if state is None:
            return
        restore_variables(self.model, state)
        if self.early is not None and state.early is not None:
            for key, value in state.early.items():
                setattr(self.early, key, value)
            self.early.best_weights = state.best_weights
        if self.plateau is not None and state.plateau is not None:
            for key, value in state.plateau.items():
                setattr(self.plateau, key, value)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.directory is None:
            return
        early = None
        if self.early is not None:
            early = {"best": _plain(self.early.best), "best_epoch": int(self.early.best_epoch),
                     "wait": int(self.early.wait), "stopped_epoch": int(self.early.stopped_epoch)}
        plateau = None
        if self.plateau is not None:
            plateau = {"best": _plain(self.plateau.best), "wait": int(self.plateau.wait),
                       "cooldown_counter": int(self.plateau.cooldown_counter)}
        best = None if self.early is None else self.early.best_weights
        state = TrainingState(
            epoch=epoch + 1,
            model_variables=[np.asarray(v) for v in self.model.variables],
            optimizer_variables=[np.asarray(v) for v in self.model.optimizer.variables],
            best_weights=None if best is None else [np.asarray(w) for w in best],
            history=self.history, seconds=self.seconds,
            stopped=bool(getattr(self.model, "stop_training", False)),
            early=early, plateau=plateau, config=self.config, fingerprint=self.fingerprint)
        write_state(self.directory, state)


def write_state(directory: Path, state: TrainingState) -> Path:
    """Write `state` as ``state-<epoch>.npz`` in `directory` atomically, then remove the older
    states but the one before (kept as a fallback should the newest be unreadable)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"state-{state.epoch}.npz"
    arrays = state.to_arrays()
    write_atomic(path, lambda handle: np.savez(handle, **arrays))
    for _, older in _state_files(directory)[2:]:
        older.unlink(missing_ok=True)
    logger.debug("training state after epoch %d written to %s", state.epoch, path)
    return path


def _plain(value: Any) -> float | None:
    """A monitor's best value as JSON (None before the first epoch)."""
    return None if value is None else float(value)


def fit_resumably(
    model: keras.Model,
    fit: Callable[[int, list[keras.callbacks.Callback]], keras.callbacks.History],
    *,
    config: VictimConfig,
    journal: Path | None,
    resume: TrainingState | None,
    size: int,
    fit_set: ImageDataset,
    val_set: ImageDataset | None,
    callbacks: list[keras.callbacks.Callback],
    early: keras.callbacks.EarlyStopping | None = None,
    plateau: keras.callbacks.ReduceLROnPlateau | None = None,
) -> tuple[dict[str, list[float]], float]:
    """Train `model` through ``fit(first_epoch, callbacks)`` (a ``model.fit`` from
    `first_epoch` on, whose data order depends on the epoch alone); return (history, seconds),
    the interrupted runs' epochs and seconds included.

    With `journal`, an `EpochJournal` writes the state there after every epoch; with `resume`
    (checked against `config` and the data: input `size`, `fit_set` and `val_set`), training
    continues after the state's epoch, and a
    state whose training had ended (all epochs, or stopped early) trains nothing: its weights
    come back, the best epoch's when early stopping keeps them.
    """
    fingerprint: dict[str, Any] = {}  # a digest of every image: only to write or check a state
    if journal is not None or resume is not None:
        fingerprint = data_fingerprint(
            size, fit_set.class_names,
            [(fit_set.images, fit_set.labels),
             None if val_set is None else (val_set.images, val_set.labels)])
    if resume is not None:
        check_state(resume, config, fingerprint)
    # Also without `journal` (a multi-worker task other than the chief): restores `resume`
    # and records the history, as the chief's does.
    recorder = EpochJournal(journal, config=config_to_dict(config), fingerprint=fingerprint,
                            early=early, plateau=plateau, resumed=resume)
    callbacks = [*callbacks, recorder]  # after early/plateau: restores, then records them
    first_epoch = 0 if resume is None else resume.epoch
    if resume is not None and (resume.stopped or first_epoch >= config.epochs):
        logger.info("the interrupted run had finished training (%d epochs): nothing to train",
                    first_epoch)
        recorder.set_model(model)
        recorder.on_train_begin()
        if early is not None and early.best_weights is not None:  # as its on_train_end does
            model.set_weights(early.best_weights)
        return recorder.history, resume.seconds
    fit(first_epoch, callbacks)
    return recorder.history, recorder.seconds
