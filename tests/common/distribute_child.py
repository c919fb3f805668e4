"""The child process of the distributed-training tests (`test_distribute.py`).

A strategy over several devices has to be set up before TensorFlow initialises (logical CPU
devices) or runs its first operation (multi-worker collectives), so the tests run their
training here, in a fresh interpreter, and read the JSON this writes:

    python tests/common/distribute_child.py mirrored OUT.json WORK_DIR
        the CPU split into 2 logical devices; surrogate (none against mirrored, resume under
        mirrored, a batch that does not split), victim and detector training under mirrored,
        a victim killed and resumed (under mirrored, and on one device)
    python tests/common/distribute_child.py worker OUT.json WORK_DIR   (TF_CONFIG set)
        one task of a multi-worker run: surrogate, victim and detector training on WORK_DIR,
        which all tasks share; a victim killed and resumed, and one whose second worker
        resumes from a folder of its own
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TINY_CNN = {"filters": [8, 16], "block_dropout": [0.0, 0.0], "dense_units": 16,
            "dense_dropout": 0.0}
TINY_ARGS = ("filters=[8,16]", "block_dropout=[0,0]", "dense_units=16", "dense_dropout=0")


def colour_task(n: int, seed: int):
    """Images whose dominant colour channel is the class; soft targets 0.8 / 0.1 / 0.1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 70, (n, 16, 16, 3)).astype(np.uint8)
    for c in range(3):
        images[labels == c, :, :, c] += 160
    targets = np.full((n, 3), 0.1, np.float32)
    targets[np.arange(n), labels] = 0.8
    return images, targets, labels


def digest(model) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(w.tobytes())
    return h.hexdigest()


def surrogate(distribute: str, **kwargs):
    from attack.surrogate import SurrogateTrainer

    settings = dict(epochs=3, batch_size=32, lr=3e-3, seed=1, augment="flip",
                    arch_kwargs=TINY_CNN, distribute=distribute)
    settings.update(kwargs)
    return SurrogateTrainer("cnn", "none", 16, 3, **settings)


def victim_data():
    """(train, test): the tiny colour task as `ImageDataset`s, for the victims trained here."""
    import numpy as np

    from common.data import ImageDataset

    images, _, labels = colour_task(200, seed=2)
    test_images, _, test_labels = colour_task(60, seed=3)
    names = ("red", "green", "blue")
    return (ImageDataset(images, labels.astype(np.int64), names, "train"),
            ImageDataset(test_images, test_labels.astype(np.int64), names, "test"))


def victim_and_detector(distribute: str, work: Path, out: dict) -> None:
    import numpy as np

    from common.data import ImageDataset
    from detector.ood import DetectorConfig, train_detector
    from victim_export.config import VictimConfig
    from victim_export.train import run_victim_export

    config = VictimConfig(dataset="memory", arch="cnn", arch_args=TINY_ARGS, epochs=2,
                          batch_size=32, val_split=0.1, augment="none", out=str(work / "victims"),
                          name="tiny", container_base_path="local", distribute=distribute)
    train, test = victim_data()
    path, trained = run_victim_export(config, train=train, test=test)
    out["victim"] = {"path": None if path is None else str(path),
                     "accuracy": trained.test_accuracy, "epochs_run": trained.epochs_run}

    rng = np.random.default_rng(4)
    benign = rng.integers(0, 90, (160, 16, 16, 3)).astype(np.uint8)
    base = rng.integers(120, 255, (160, 1, 1, 3))
    attack = np.clip(base + rng.integers(-10, 10, (160, 16, 16, 3)), 0, 255).astype(np.uint8)
    dconfig = DetectorConfig(benign="b", attack="a", out=str(work / "detectors" / "ood" / "1"),
                             epochs=2, batch_size=32, arch_args=TINY_ARGS, jpeg_augment=0.0,
                             holdout=0.25, distribute=distribute)
    result = train_detector(
        dconfig, benign=ImageDataset(benign, np.zeros(160, np.int64), ("b",), "b"),
        attack=ImageDataset(attack, np.zeros(160, np.int64), ("a",), "a"))
    out["detector"] = {"path": None if result.path is None else str(result.path),
                       "auc": result.calibration["heldout_roc_auc"]}


def victim_resume(distribute: str, work: Path, name: str, *, resume_with: str | None = None,
                  resume_out: Path | None = None) -> dict:
    """A tiny victim killed after its first epoch of 3 (the journal raises once it wrote the
    state), then the same command (under `resume_with`, from `resume_out`) and, for
    comparison, an uninterrupted run: the epochs each trained, the state files the kill left,
    the weights' digests. The resumed run's `UsageError`, if any, is returned as text."""
    from common.errors import UsageError
    from victim_export.config import VictimConfig
    from victim_export.train import run_victim_export
    from victim_export.training_state import EpochJournal

    train, test = victim_data()

    def config(out: Path, how: str, model: str) -> VictimConfig:
        return VictimConfig(dataset="memory", arch="cnn", arch_args=TINY_ARGS, epochs=3,
                            batch_size=32, val_split=0.1, augment="crop", out=str(out),
                            name=model, container_base_path="local", distribute=how)

    class Killed(Exception):
        pass

    original, trained_epochs = EpochJournal.on_epoch_end, []

    def recording(self, epoch, logs=None):
        original(self, epoch, logs)
        trained_epochs.append(epoch)
        if kill_after is not None and epoch + 1 == kill_after:
            raise Killed

    EpochJournal.on_epoch_end = recording
    result: dict = {}
    try:
        kill_after = 1
        try:
            run_victim_export(config(work / "victims", distribute, name), train=train, test=test)
        except Killed:
            state = work / "victims" / name / ".training"
            # As after a real crash, every worker restarts once the chief's last write is done
            # (here the chief may still be writing when another worker's fit raises).
            deadline = time.monotonic() + 120
            while not (state / "state-1.npz").is_file() and time.monotonic() < deadline:
                time.sleep(0.2)
            result["left"] = sorted(p.name for p in state.iterdir()) if state.is_dir() else []
        kill_after, trained_epochs[:] = None, []
        try:
            path, resumed = run_victim_export(
                config(resume_out or work / "victims", resume_with or distribute, name),
                train=train, test=test)
        except UsageError as err:
            result["error"] = str(err)
            return result
        result.update(resumed_epochs=list(trained_epochs), resumed=digest(resumed.model),
                      accuracy=resumed.test_accuracy, exported=path is not None)
        trained_epochs[:] = []
        _, whole = run_victim_export(config(work / "whole", distribute, name), train=train,
                                     test=test)
        result.update(whole_epochs=list(trained_epochs), whole=digest(whole.model))
    finally:
        EpochJournal.on_epoch_end = original
    return result


def mirrored(work: Path) -> dict:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras

    from common.errors import UsageError

    out: dict = {}
    images, targets, _ = colour_task(200, seed=0)  # 200 = 6 batches of 32 and one of 8
    held, _, held_labels = colour_task(90, seed=1)
    for name in ("none", "mirrored"):
        t = surrogate(name)
        t.fit(images, targets)
        out[name] = {"replicas": 1 if t._strategy is None else t._strategy.num_replicas_in_sync,
                     "agreement": float((t.predict_logits(held).argmax(1) == held_labels).mean()),
                     "loss": t.history["loss"]}
    try:
        surrogate("mirrored", batch_size=33)
    except UsageError as err:
        out["odd_batch_error"] = str(err)

    class Interrupt(keras.callbacks.Callback):
        def __init__(self, fail_at=None):
            super().__init__()
            self.epochs, self.fail_at = [], fail_at

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == self.fail_at:
                raise KeyboardInterrupt
            self.epochs.append(epoch)

    checkpoints = work / "checkpoints"
    try:
        surrogate("mirrored", checkpoint_dir=checkpoints).fit(
            images, targets, callbacks=[Interrupt(fail_at=1)])
    except KeyboardInterrupt:
        out["backup_after_interrupt"] = sorted(p.name for p in checkpoints.iterdir())
    resumed, seen = surrogate("mirrored", checkpoint_dir=checkpoints), Interrupt()
    resumed.fit(images, targets, callbacks=[seen])
    again = surrogate("none", checkpoint_dir=checkpoints)  # a finished run loads on one device
    again.fit(images, targets)
    out["resume"] = {"epochs": seen.epochs, "initial_epoch": resumed.initial_epoch,
                     "restored_final_on_none": again.restored_final,
                     "same_weights": digest(again.model) == digest(resumed.model)}
    victim_and_detector("mirrored", work, out)
    out["victim_resume"] = victim_resume("mirrored", work, "resumed")
    out["victim_resume_on_one"] = victim_resume("mirrored", work, "moved", resume_with="none")
    return out


def worker(work: Path) -> dict:
    from common.distribute import is_chief, make_strategy

    strategy = make_strategy("multiworker")  # first, before any TensorFlow operation
    out: dict = {"chief": is_chief(strategy), "replicas": strategy.num_replicas_in_sync}
    images, targets, _ = colour_task(200, seed=0)
    held, _, held_labels = colour_task(90, seed=1)
    t = surrogate("multiworker", checkpoint_dir=work / "checkpoints")
    t.fit(images, targets)
    out["surrogate"] = {"loss": t.history["loss"], "weights": digest(t.model),
                        "agreement": float((t.predict_logits(held).argmax(1)
                                            == held_labels).mean())}
    victim_and_detector("multiworker", work, out)
    out["victim_resume"] = victim_resume("multiworker", work, "resumed")
    # the second worker resumes from a folder of its own, where the chief's state is not
    own = None if out["chief"] else work / "private"
    out["victim_unshared"] = victim_resume("multiworker", work, "unshared", resume_out=own)
    return out


def main() -> int:
    mode, result, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    out = mirrored(work) if mode == "mirrored" else worker(work)
    result.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
