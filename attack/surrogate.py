"""The surrogate of a model-extraction attack: a backbone fine-tuned on the victim's answers.

Knockoff Nets (Orekondy et al. 2019) and Atli et al. 2020 train the attacker's copy of the victim
("knockoff", "surrogate") on the transfer images it queried, with the victim's answers as soft
targets: the cross-entropy between the victim's probability vector and the surrogate's softmax,
which differs from KL(victim || surrogate) by a constant. When the victim only returns its top-1
label the target rows are one-hot and this is ordinary cross-entropy.

`SurrogateTrainer` builds the network from the backbone registry
(`common.backbones.build_classifier`: raw float pixels in, logits out, preprocessing inside),
feeds it through the victim trainer's `tf.data` pipeline (`victim_export.train.make_dataset`:
resize to the surrogate's input size, seeded shuffle, crop/flip augmentation) and trains with
Adam under a cosine learning-rate schedule. Its recipe options (`RECIPE_DEFAULTS` leaves each
off) sharpen the victim's rows (a temperature), jitter each image's colour on the fly (light
brightness, contrast and saturation changes), mix images and targets (mixup), smooth the
labels, warm the rate up and keep an exponential moving average of the weights; the attacks'
`attack.Surrogate` chooses their values. With a `checkpoint_dir`, `fit` resumes a killed run
from its last finished epoch (`keras.callbacks.BackupAndRestore`, keeping the previous backup
until the new one is written) and remembers a finished run, so a resumed attack never trains
twice on the same data. `partial_fit` makes the cheap online updates of the adaptive strategy;
`export_surrogate` writes the result in the victim layout, so it can be served and attacked in
turn.

With ``distribute="mirrored"`` or ``"multiworker"`` (`common.distribute`), `fit` trains a copy of
the network built and compiled under the strategy's scope, with ``batch_size`` as the global
batch split over the replicas, and copies the trained weights back into `model`, the plain
single-device network that predicts, updates online, checkpoints and exports. In a multi-worker
run each worker keeps its own checkpoint files (the chief under the usual names, the others
suffixed ``.worker-<i>``), so no two processes write one file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from attack.config import RECIPE_LEGACY, SURROGATE_AUGMENTATIONS
from common.backbones import build_classifier
from common.constraints import check_choice, check_int, check_number
from common.distribute import (
    check_distribute,
    check_global_batch,
    make_strategy,
    scope,
    shard_by_data,
    synchronize_batch_norm,
    worker_suffix,
)
from common.errors import invalid
from common.fileio import write_json_atomic
from victim_export.export import export_classifier
from victim_export.models_config import write_models_config
from victim_export.train import make_dataset

__all__ = ["AUGMENTATIONS", "EMA_SPAN", "RECIPE_DEFAULTS", "SurrogateTrainer", "color_jitter",
           "ema_momentum", "export_surrogate", "log_softmax", "sharpen"]

logger = logging.getLogger(__name__)

AUGMENTATIONS = SURROGATE_AUGMENTATIONS

RECIPE_DEFAULTS = dict(RECIPE_LEGACY)
"""The training-recipe options of `fit` and the values that leave it as it was first written
(plain soft cross-entropy, cosine schedule from the peak rate, no mixing, no weight average)."""

EMA_SPAN = 5
"""The weight average of a short `fit` spans at most 1/EMA_SPAN of its steps (`ema_momentum`)."""

_MIXUP_SEED_OFFSET = 1_000_003  # mixup's random stream differs from the augmentation's
_JITTER_SEED_OFFSET = 2_000_003  # and so does the colour jitter's
_FIRST_RECIPE_KEYS = ("target_temperature", "mixup", "label_smoothing", "warmup", "ema")
"""The recipe options a fingerprint always names once the recipe differs from the defaults; an
option added later is named only when set, so runs trained before it existed still resume."""

BACKUP_DIR_NAME = "backup"
FINAL_WEIGHTS_NAME = "final.weights.h5"
FIT_STATE_NAME = "fit_state.json"

_PREDICT_BATCH = 256


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically safe log-softmax over the last axis (float32)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(np.float32)


def ema_momentum(ema: float, steps: int) -> float:
    """The momentum of `fit`'s weight average for a fit of `steps` optimizer steps: `ema`,
    capped at ``1 - EMA_SPAN / steps`` so that the average covers at most the last fifth of a
    short fit (with a momentum of 0.99, a fit of 80 steps would keep 45% of its first step's
    weights); 0 (off) below EMA_SPAN steps. A fit of 500 steps or more keeps 0.99 as it is."""
    if ema <= 0:
        return 0.0
    return max(0.0, min(float(ema), 1.0 - EMA_SPAN / max(1, steps)))


def sharpen(targets: np.ndarray, temperature: float) -> np.ndarray:
    """Probability rows raised to the power 1/`temperature` and renormalised (float32).

    T < 1 moves each row towards its top-1, T > 1 towards uniform; T = 1 and one-hot rows are
    returned unchanged. Computed in log space, so small probabilities do not underflow.
    """
    targets = np.asarray(targets, dtype=np.float32)
    if temperature == 1.0:
        return targets
    with np.errstate(divide="ignore"):
        logs = np.log(targets.astype(np.float64)) / temperature
    logs -= logs.max(axis=-1, keepdims=True)
    out = np.exp(logs)
    return (out / out.sum(axis=-1, keepdims=True)).astype(np.float32)


def _mixup(dataset: tf.data.Dataset, alpha: float, seed: int) -> tf.data.Dataset:
    """Batches mixed with themselves in reverse order by a Beta(alpha, alpha) weight per batch
    (images and soft targets alike), drawn from seeded stateless streams: reproducible."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    seeds = seeds.batch(2, drop_remainder=True)

    def mix(batch, seed):
        images, targets = batch
        first, second = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        a = tf.random.stateless_gamma([], first, alpha=alpha)
        b = tf.random.stateless_gamma([], second, alpha=alpha)
        weight = a / tf.maximum(a + b, 1e-12)
        return (weight * images + (1 - weight) * tf.reverse(images, [0]),
                weight * targets + (1 - weight) * tf.reverse(targets, [0]))

    return tf.data.Dataset.zip((dataset, seeds)).map(
        mix, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def color_jitter(dataset: tf.data.Dataset, strength: float, seed: int) -> tf.data.Dataset:
    """Batches of float pixels (0..255) with a light random colour change per image.

    Each image gets its own brightness shift (uniform in +/- `strength` x 255), contrast factor
    and saturation factor (both uniform in 1 +/- `strength`), applied in that order about the
    image's mean and per-pixel grey level, then clipped and rounded back to whole pixel values.
    The draws come from seeded stateless streams (one seed pair per batch), so the same seed
    gives the same images; `strength` 0 returns `dataset` unchanged. Targets pass through: a
    light change of colour does not change which class the victim saw.
    """
    if strength == 0:
        return dataset
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    seeds = seeds.batch(2, drop_remainder=True)

    def jitter(batch, seed):
        images, targets = batch
        images = tf.cast(images, tf.float32)
        shape = tf.stack([tf.shape(images)[0], 1, 1, 1])
        draws = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        shift, contrast, saturation = (
            tf.random.stateless_uniform(shape, draw, -strength, strength) for draw in draws)
        images = images + shift * 255.0
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = mean + (images - mean) * (1.0 + contrast)
        grey = tf.reduce_mean(images, axis=-1, keepdims=True)
        images = grey + (images - grey) * (1.0 + saturation)
        return tf.round(tf.clip_by_value(images, 0.0, 255.0)), targets

    return tf.data.Dataset.zip((dataset, seeds)).map(
        jitter, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _check_images(images: Any, argument: str = "images") -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", type(images).__name__)
        raise invalid(argument, f"shape {shape}", "a numpy array [N, H, W, 3] of RGB images")
    if images.dtype != np.uint8:
        raise invalid(argument, f"dtype {images.dtype}", "uint8 pixels (0..255)")
    return images


def _backup_readable(weights: Path, metadata: Path) -> bool:
    try:
        epoch = json.loads(metadata.read_text(encoding="utf-8"))["epoch"]
        with h5py.File(weights, "r"):
            pass
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(epoch, int)


def _repair_backup(backup: Path) -> None:
    """Make a torn `BackupAndRestore` backup (killed while writing) safe to resume from.

    Keras falls back on its previous backup only when the weights fail to open; a truncated
    metadata file would stop every resume. Use the previous backup when the latest one is
    unreadable, or start over when there is none.
    """
    weights, metadata = backup / "latest.weights.h5", backup / "training_metadata.json"
    if not weights.exists() and not metadata.exists():
        return
    if _backup_readable(weights, metadata):
        return
    previous = (backup / f"{weights.name}.bkp", backup / f"{metadata.name}.bkp")
    if _backup_readable(*previous):
        logger.warning("the latest training backup in %s is unreadable: using the previous "
                       "one", backup)
        os.replace(previous[0], weights)
        os.replace(previous[1], metadata)
    else:
        logger.warning("the training backup in %s is unreadable: training from the start",
                       backup)
        shutil.rmtree(backup)


class _EpochLog(keras.callbacks.Callback):
    """Log each finished epoch (library code never prints; Keras' own bar stays off)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self._epochs = epochs

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        logs = dict(logs or {})
        logger.info("surrogate epoch %d/%d: loss %.4f, agreement with targets %.3f",
                    epoch + 1, self._epochs, logs.get("loss", math.nan),
                    logs.get("agreement", math.nan))


class SurrogateTrainer:
    """Build, train (soft cross-entropy), resume and update one surrogate classifier.

    Args:
        backbone: a registered backbone name (`common.backbones.backbone_names()`).
        weights: "none", "imagenet" or a weights file for the backbone.
        input_size: the surrogate's square input side; the backbone's default when None.
            Images of other sizes are resized to it (as a client resizes for a victim).
        num_classes: the number of victim classes K.
        epochs: training epochs of `fit`.
        batch_size: mini-batch size of `fit` and `partial_fit`.
        lr: Adam's peak learning rate; `fit` decays it with a cosine schedule to 0.
        seed: seeds the initial head weights, the shuffling and the augmentation (building a
            trainer calls `keras.utils.set_random_seed(seed)`, Keras' global seed).
        checkpoint_dir: where `fit` keeps its resumable state (a folder only this trainer uses);
            None trains without checkpoints.
        augment: "none", "flip", "crop" or "crop+flip" (zero-pad by size/8, random crop).
        target_temperature: `fit` trains on the targets raised to the power 1/T and
            renormalised: T < 1 sharpens the victim's probability rows towards its top-1, T > 1
            softens them; 1 keeps them (one-hot rows are unchanged by any T).
        mixup: Beta(a, a) parameter of mixup in `fit` (Zhang et al. 2018): each batch is mixed
            with itself in reverse order, images and targets with the same weight; 0: off.
        label_smoothing: label smoothing of `fit`'s cross-entropy (0: none).
        warmup: the fraction of `fit`'s steps over which the rate rises linearly from 0 to `lr`
            before the cosine decay (0: none).
        ema: momentum of an exponential moving average of the weights kept during `fit` and
            written into the network at its end (Keras' ``use_ema``; capped for a short fit by
            `ema_momentum`); 0: off.
        color_jitter: strength s of a light random colour change of each training image in
            `fit`, after `augment` (`color_jitter`: brightness +/- s x 255, contrast and
            saturation x (1 +/- s)); 0: off.
        fit_batch_size: the mini-batch of `fit` when it differs from `batch_size` (which
            `partial_fit` keeps): with the epochs fixed, a smaller batch makes more steps.
        dropout: dropout rate before the final dense layer.
        online_lr: the constant learning rate of `partial_fit`; default `lr`.
        arch_kwargs: passed to the backbone constructor (``{"alpha": 0.25}`` for MobileNet).
        distribute: "none", "mirrored" or "multiworker": the `common.distribute` strategy `fit`
            trains under (`batch_size` is then the global batch, a multiple of the replicas).
            `partial_fit` and prediction stay on one device.

    Raises:
        UsageError: on a bad argument, before any file is written.
    """

    def __init__(
        self,
        backbone: str,
        weights: str | os.PathLike[str] | None,
        input_size: int | None,
        num_classes: int,
        *,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        augment: str = "crop+flip",
        target_temperature: float = 1.0,
        mixup: float = 0.0,
        label_smoothing: float = 0.0,
        warmup: float = 0.0,
        ema: float = 0.0,
        color_jitter: float = 0.0,
        fit_batch_size: int | None = None,
        dropout: float = 0.0,
        online_lr: float | None = None,
        arch_kwargs: Mapping[str, Any] | None = None,
        distribute: str = "none",
    ) -> None:
        self.epochs = int(check_int("epochs", epochs, min=1))
        self.batch_size = int(check_int("batch_size", batch_size, min=1))
        self.fit_batch_size = int(check_int("fit_batch_size", fit_batch_size, min=1,
                                            optional=True) or self.batch_size)
        for argument, rate in (("lr", lr), ("online_lr", lr if online_lr is None else online_lr)):
            check_number(argument, rate, gt=0, expected="a positive finite learning rate")
        check_int("seed", seed, min=0)
        check_choice("augment", augment, AUGMENTATIONS)
        check_number("target_temperature", target_temperature, gt=0)
        check_number("mixup", mixup, min=0)
        check_number("label_smoothing", label_smoothing, min=0, lt=1)
        check_number("warmup", warmup, min=0, lt=1)
        check_number("ema", ema, min=0, lt=1)
        check_number("color_jitter", color_jitter, min=0, lt=1)
        self.recipe = {"target_temperature": float(target_temperature), "mixup": float(mixup),
                       "label_smoothing": float(label_smoothing), "warmup": float(warmup),
                       "ema": float(ema), "color_jitter": float(color_jitter)}
        self.lr = float(lr)
        self.online_lr = float(lr if online_lr is None else online_lr)
        self.seed = int(seed)
        self.augment = augment
        self.backbone = backbone
        self.weights = None if weights is None else str(weights)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        if self.checkpoint_dir is not None and self.checkpoint_dir.exists() \
                and not self.checkpoint_dir.is_dir():
            raise invalid("checkpoint_dir", str(checkpoint_dir), "a directory")
        self._arch_kwargs = dict(arch_kwargs or {})
        self.distribute = check_distribute(distribute)
        self._strategy = make_strategy(self.distribute)
        check_global_batch(self.fit_batch_size, self._strategy,
                           "batch_size" if fit_batch_size is None else "fit_batch_size")
        self._build_args = dict(num_classes=num_classes, input_size=input_size, weights=weights,
                                dropout=dropout, **self._arch_kwargs)

        keras.utils.set_random_seed(self.seed)
        self.model: keras.Model = build_classifier(backbone, **self._build_args)
        self._fit_model: keras.Model | None = None  # built under the strategy's scope
        self.input_size = int(self.model.input_shape[1])
        self.num_classes = int(self.model.output_shape[-1])
        self._initial_weights = [np.array(w, copy=True) for w in self.model.get_weights()]
        self._mode: str | None = None  # what the model is compiled for: "fit" or "online"
        self.history: dict[str, list[float]] = {}
        self.epochs_run = 0
        self.initial_epoch = 0
        self.restored_final = False

    # ----------------------------------------------------------------------------------------
    # Inputs.

    def _check_targets(self, targets: Any, count: int) -> np.ndarray:
        targets = np.asarray(targets)
        if targets.ndim != 2 or targets.shape != (count, self.num_classes):
            raise invalid("targets", f"shape {targets.shape}",
                          f"[{count}, {self.num_classes}]: one probability row per image")
        targets = targets.astype(np.float32)
        sums = targets.sum(axis=1, keepdims=True)
        if not np.all(np.isfinite(targets)) or np.any(targets < 0) or np.any(sums <= 0):
            raise invalid("targets", "rows with negative, non-finite or all-zero entries",
                          "non-negative finite rows with a positive sum")
        # Rounded or truncated answers need not sum to 1: train on the distribution they imply.
        return targets / sums

    def _check_pair(self, images: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
        images = _check_images(images)
        if len(images) == 0:
            raise invalid("images", "0 images", "at least one image")
        return images, self._check_targets(targets, len(images))

    def _resize(self, images: np.ndarray) -> np.ndarray:
        """Float32 pixels at the input size, resized exactly as `make_dataset` does."""
        size = self.input_size
        if tuple(images.shape[1:3]) == (size, size):
            return images.astype(np.float32)
        resized = tf.image.resize(images, (size, size), antialias=True)
        return tf.clip_by_value(tf.round(resized), 0, 255).numpy().astype(np.float32)

    def _chunks(self, count: int, size: int) -> Iterator[slice]:
        for start in range(0, count, size):
            yield slice(start, min(count, start + size))

    # ----------------------------------------------------------------------------------------
    # Training.

    def _compile(self, mode: str, steps_per_epoch: int = 1) -> keras.Model:
        """Compile the network `mode` trains: `model` itself, or for a distributed `fit` its
        copy built and compiled under the strategy's scope (starting from the initial weights)."""
        recipe = self.recipe if mode == "fit" else RECIPE_DEFAULTS
        if mode == "fit":
            total = max(1, self.epochs * steps_per_epoch)
            warm = min(total - 1, round(recipe["warmup"] * total))
            if warm > 0:
                rate: Any = keras.optimizers.schedules.CosineDecay(
                    0.0, decay_steps=total - warm, warmup_target=self.lr, warmup_steps=warm)
            else:
                rate = keras.optimizers.schedules.CosineDecay(self.lr, decay_steps=total)
        else:
            rate = self.online_lr
        ema = recipe["ema"] if mode != "fit" else ema_momentum(recipe["ema"], total)
        model = self.model
        with scope(self._strategy if mode == "fit" else None):
            if mode == "fit" and self._strategy is not None:
                if self._fit_model is None:
                    self._fit_model = build_classifier(self.backbone, **self._build_args)
                    synchronize_batch_norm(self._fit_model)
                model = self._fit_model
                model.set_weights(self._initial_weights)
            model.compile(
                optimizer=keras.optimizers.Adam(rate, use_ema=ema > 0,
                                                ema_momentum=ema or 0.99),
                loss=keras.losses.CategoricalCrossentropy(
                    from_logits=True, label_smoothing=recipe["label_smoothing"]),
                metrics=[keras.metrics.CategoricalAccuracy(name="agreement")],
            )
        self._mode = mode
        return model

    def _fingerprint(self, images: np.ndarray, targets: np.ndarray) -> str:
        digest = hashlib.sha256()
        settings = {
            "backbone": self.backbone, "weights": self.weights, "input_size": self.input_size,
            "num_classes": self.num_classes, "epochs": self.epochs,
            "batch_size": self.fit_batch_size, "lr": self.lr, "seed": self.seed,
            "augment": self.augment, "arch_kwargs": self._arch_kwargs,
            "images_shape": list(images.shape),
        }  # not the strategy: the same settings train the same model on any number of devices
        if self.recipe != RECIPE_DEFAULTS:  # a run trained before these options existed resumes
            settings["recipe"] = {key: value for key, value in self.recipe.items()
                                  if key in _FIRST_RECIPE_KEYS or value != RECIPE_DEFAULTS[key]}
            steps = self.epochs * math.ceil(len(images) / self.fit_batch_size)
            if ema_momentum(self.recipe["ema"], steps) != self.recipe["ema"]:  # a short fit
                settings["ema_momentum"] = ema_momentum(self.recipe["ema"], steps)
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        digest.update(np.ascontiguousarray(images).data)
        digest.update(np.ascontiguousarray(targets).data)
        return digest.hexdigest()

    def _own(self, name: str) -> Path:
        """This process's file `name` in `checkpoint_dir` (suffixed on a non-chief worker)."""
        assert self.checkpoint_dir is not None
        suffix = worker_suffix(self._strategy)
        if not suffix:
            return self.checkpoint_dir / name
        stem, dot, ext = name.partition(".")
        return self.checkpoint_dir / f"{stem}{suffix}{dot}{ext}"

    def _read_fit_state(self) -> dict[str, Any]:
        assert self.checkpoint_dir is not None
        path = self._own(FIT_STATE_NAME)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return state if isinstance(state, dict) else {}

    def _restore_final(self, fingerprint: str) -> bool:
        """Load the weights of a finished `fit` on the same data and settings, if there are."""
        assert self.checkpoint_dir is not None
        state = self._read_fit_state()
        final = self._own(FINAL_WEIGHTS_NAME)
        if not (state.get("fingerprint") == fingerprint and state.get("completed")
                and final.is_file()):
            return False
        try:
            self.model.load_weights(final)
        except (OSError, ValueError) as err:
            logger.warning("cannot load the finished surrogate %s (%s): training again",
                           final, err)
            return False
        logger.info("surrogate already trained on these %s examples: loaded %s",
                    state.get("examples"), final)
        self.history = {k: list(v) for k, v in state.get("history", {}).items()}
        self.epochs_run, self.initial_epoch = 0, self.epochs
        return True

    def _prepare_checkpoints(self, fingerprint: str, count: int) -> Path:
        """Keep a backup of the same run; drop a stale one (other data or settings)."""
        assert self.checkpoint_dir is not None
        backup = self._own(BACKUP_DIR_NAME)
        state = self._read_fit_state()
        if backup.exists() and state.get("fingerprint") != fingerprint:
            logger.warning("discarding the training backup in %s: it was made with other data "
                           "or settings", backup)
            shutil.rmtree(backup)
        elif backup.exists():
            _repair_backup(backup)
            logger.info("resuming surrogate training from the backup in %s", backup)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._own(FIT_STATE_NAME),
                          {"fingerprint": fingerprint, "completed": False, "examples": count})
        return backup

    def _save_final(self, fingerprint: str, count: int) -> None:
        assert self.checkpoint_dir is not None
        final = self._own(FINAL_WEIGHTS_NAME)
        tmp = self.checkpoint_dir / f".tmp-{os.getpid()}-{final.name}"
        try:
            self.model.save_weights(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        write_json_atomic(self._own(FIT_STATE_NAME), {
            "fingerprint": fingerprint, "completed": True, "examples": count,
            "history": self.history,
        })

    def fit(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        *,
        callbacks: Sequence[keras.callbacks.Callback] = (),
    ) -> keras.Model:
        """Train on `images` (uint8 [N, H, W, 3]) against `targets` (float [N, K] rows).

        Training starts from the initial weights (pretrained backbone, seeded head), not from
        what `partial_fit` changed, so a resumed attack trains the same surrogate. With a
        `checkpoint_dir`, an interrupted run resumes from its last finished epoch and a
        finished run on the same data and settings is loaded instead of trained again.
        `history`, `epochs_run` and `initial_epoch` describe what this call did.

        Returns:
            The trained Keras model (raw float pixels in, logits out).
        """
        images, targets = self._check_pair(images, targets)
        count = len(images)
        fingerprint = self._fingerprint(images, targets) if self.checkpoint_dir else ""
        self.restored_final = False
        if self.checkpoint_dir is not None and self._restore_final(fingerprint):
            self.restored_final = True
            return self.model

        self.model.set_weights(self._initial_weights)
        targets = sharpen(targets, self.recipe["target_temperature"])
        steps = math.ceil(count / self.fit_batch_size)
        model = self._compile("fit", steps)
        # Keras leaves a restored epoch on the model after a resumed fit; start from scratch.
        model._initial_epoch = None
        all_callbacks: list[keras.callbacks.Callback] = []
        if self.checkpoint_dir is not None:
            backup = self._prepare_checkpoints(fingerprint, count)
            all_callbacks.append(keras.callbacks.BackupAndRestore(
                backup_dir=str(backup), double_checkpoint=True))
        all_callbacks.append(_EpochLog(self.epochs))
        all_callbacks.extend(callbacks)
        dataset = make_dataset(images, targets, size=self.input_size,
                               num_classes=self.num_classes, batch_size=self.fit_batch_size,
                               shuffle_seed=self.seed, augment=self.augment)
        dataset = color_jitter(dataset, self.recipe["color_jitter"],
                               self.seed + _JITTER_SEED_OFFSET)
        if self.recipe["mixup"] > 0:
            dataset = _mixup(dataset, self.recipe["mixup"], self.seed + _MIXUP_SEED_OFFSET)
        history = model.fit(shard_by_data(dataset, self._strategy), epochs=self.epochs,
                            callbacks=all_callbacks, shuffle=False, verbose=0)
        model._initial_epoch = None
        if model is not self.model:
            self.model.set_weights(model.get_weights())
        self.history = {k: [float(v) for v in values] for k, values in history.history.items()}
        self.epochs_run = len(history.epoch)
        self.initial_epoch = history.epoch[0] if history.epoch else self.epochs
        logger.info("surrogate trained on %d examples: %d epochs run from epoch %d",
                    count, self.epochs_run, self.initial_epoch)
        if self.checkpoint_dir is not None:
            self._save_final(fingerprint, count)
        return self.model

    def partial_fit(self, images: np.ndarray, targets: np.ndarray, steps: int = 1) -> float:
        """Online update (adaptive strategy): `steps` passes over this small batch.

        Each pass makes ceil(N / batch_size) gradient steps with Adam at `online_lr`.
        Returns the mean soft cross-entropy of the last pass (before its updates).
        """
        steps = int(check_int("steps", steps, min=1))
        images, targets = self._check_pair(images, targets)
        if self._mode != "online":
            self._compile("online")
        inputs = self._resize(images)
        losses: list[float] = []
        for _ in range(steps):
            losses = []
            for part in self._chunks(len(inputs), self.batch_size):
                logs = self.model.train_on_batch(inputs[part], targets[part], return_dict=True)
                losses.append(float(logs["loss"]) * (part.stop - part.start))
        return float(sum(losses) / len(inputs))

    # ----------------------------------------------------------------------------------------
    # Inference.

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """Logits float32 [N, K] of uint8 images [N, H, W, 3] (resized to the input size)."""
        images = _check_images(images)
        if len(images) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        parts = [np.asarray(self.model.predict_on_batch(self._resize(images[part])))
                 for part in self._chunks(len(images), _PREDICT_BATCH)]
        return np.concatenate(parts).astype(np.float32)

    def predict_log_probs(self, images: np.ndarray) -> np.ndarray:
        """Log-probabilities float32 [N, K] (log-softmax of the logits: never log(0))."""
        return log_softmax(self.predict_logits(images))

    def predict_probs(self, images: np.ndarray) -> np.ndarray:
        """Probabilities float32 [N, K] (what the exported surrogate would answer)."""
        return np.exp(self.predict_log_probs(images))


class _ResizePixels(keras.layers.Layer):
    """Resize raw pixels as the training pipeline does (antialiased, rounded to 0..255)."""

    def __init__(self, size: tuple[int, int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = tuple(size)

    def call(self, images):
        resized = tf.image.resize(images, self.size, antialias=True)
        return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def _with_input_resize(model: keras.Model, input_shape: tuple[int, ...]) -> keras.Model:
    """`model` behind a resize from `input_shape` (the victim's) to its own input size, so the
    exported surrogate takes the same images as the victim it copies."""
    inputs = keras.Input(input_shape)
    resized = _ResizePixels(tuple(model.input_shape[1:3]), name="resize_to_surrogate")(inputs)
    return keras.Model(inputs, model(resized), name=f"{model.name}_at_{input_shape[0]}px")


def export_surrogate(
    model: keras.Model,
    run_dir: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    *,
    name: str = "surrogate",
    version: int | None = None,
    card: Mapping[str, Any] | None = None,
) -> Path:
    """Export `model` in the victim layout: ``RUN_DIR/surrogate/<name>/<version>/``.

    The same signature as a victim (uint8 ``images`` -> float32 ``probabilities``), a card
    entry and ``RUN_DIR/surrogate/models.config``, so the surrogate can be served by TF Serving
    or the embedded server and attacked in turn. `class_names` default to "0".."K-1";
    `input_shape` to the model's; another shape (the victim's) puts a resize to the model's
    size in front, as in training. Returns the version directory.
    """
    base = Path(run_dir) / "surrogate"
    if input_shape is not None and tuple(input_shape) != tuple(model.input_shape[1:]):
        model = _with_input_resize(model, tuple(input_shape))
    path = export_classifier(model, base, name, version=version, input_shape=input_shape,
                             class_names=class_names, card=card)
    write_models_config(base, name)
    return path
