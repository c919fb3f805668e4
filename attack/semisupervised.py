"""Semi-supervised surrogate training: learn from the transfer images the attacker never paid for.

Jagielski et al., "High Accuracy and High Fidelity Extraction of Neural Networks" (USENIX
Security 2020), Sec. 4: the learning-based attack gains fidelity at a fixed query budget by
also training on unlabelled images from the attacker's pool (they use MixMatch and a rotation
loss). This module is the FixMatch flavour of that idea (Sohn et al. 2020), kept small: each
step takes a batch of queried images with the victim's answers (soft cross-entropy, as
`attack.surrogate`) and a batch of unqueried images; the surrogate's prediction on a weakly
augmented view (flip, pad-and-crop) becomes a one-hot pseudo-label when its confidence reaches
a threshold, and the surrogate is trained to give that label on a strongly augmented view
(plus brightness, contrast, saturation jitter and cutout), a consistency loss weighted by
`weight`. No extra query is sent.

`fit_semi_supervised` trains the network of a `SurrogateTrainer` in place (its initial weights,
its input size, epochs, batch size, learning rate and seed) and, with the trainer's
`checkpoint_dir`, remembers a finished run on the same data so a resumed attack does not train
twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os

import keras
import numpy as np
import tensorflow as tf

from common.constraints import check_int, check_number
from common.errors import invalid
from common.fileio import write_json_atomic

__all__ = ["fit_semi_supervised", "strong_augment", "weak_augment"]

logger = logging.getLogger(__name__)

STATE_NAME = "semi_state.json"
WEIGHTS_NAME = "semi_final.weights.h5"
MAX_RATIO = 4  # unlabelled images per labelled image in a step, at most


def _check_uint8(argument: str, images) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 \
            or images.dtype != np.uint8 or not len(images):
        shape = getattr(images, "shape", type(images).__name__)
        raise invalid(argument, f"{getattr(images, 'dtype', '?')} array of shape {shape}",
                      "a non-empty uint8 array [N, H, W, 3]")
    return images


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images at size x size, resized as the surrogate's training pipeline does."""
    if tuple(images.shape[1:3]) == (size, size):
        return images
    out = []
    for start in range(0, len(images), 512):
        part = tf.image.resize(images[start:start + 512], (size, size), antialias=True)
        out.append(tf.cast(tf.clip_by_value(tf.round(part), 0, 255), tf.uint8).numpy())
    return np.concatenate(out)


def weak_augment(images: tf.Tensor, rng: tf.random.Generator) -> tf.Tensor:
    """Random horizontal flip and zero-pad-by-size/8 random crop (float pixels 0..255)."""
    size = images.shape[1]
    pad = max(1, size // 8)
    flip = rng.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.5
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    dy = rng.uniform([], 0, 2 * pad + 1, dtype=tf.int32)
    dx = rng.uniform([], 0, 2 * pad + 1, dtype=tf.int32)
    return tf.ensure_shape(padded[:, dy:dy + size, dx:dx + size, :], images.shape)


def strong_augment(images: tf.Tensor, rng: tf.random.Generator) -> tf.Tensor:
    """`weak_augment` plus per-image brightness, contrast and saturation jitter and a cutout
    of a quarter of the side (filled with mid-grey), clipped to 0..255."""
    images = weak_augment(images, rng)
    n = tf.shape(images)[0]
    size = images.shape[1]
    brightness = rng.uniform([n, 1, 1, 1], -40.0, 40.0)
    contrast = rng.uniform([n, 1, 1, 1], 0.6, 1.4)
    saturation = rng.uniform([n, 1, 1, 1], 0.5, 1.5)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * contrast + mean + brightness
    grey = tf.reduce_mean(images, axis=3, keepdims=True)
    images = grey + (images - grey) * saturation
    cut = max(1, size // 4)
    cy = rng.uniform([n], 0, size, dtype=tf.int32)
    cx = rng.uniform([n], 0, size, dtype=tf.int32)
    ys = tf.range(size)[None, :, None]
    xs = tf.range(size)[None, None, :]
    inside = ((tf.abs(ys - cy[:, None, None]) <= cut // 2)
              & (tf.abs(xs - cx[:, None, None]) <= cut // 2))
    images = tf.where(inside[..., None], 127.5, images)
    return tf.clip_by_value(images, 0.0, 255.0)


def _fingerprint(trainer, images, targets, unlabelled, settings: dict) -> str:
    digest = hashlib.sha256()
    described = {"backbone": trainer.backbone, "weights": trainer.weights,
                 "input_size": trainer.input_size, "num_classes": trainer.num_classes,
                 "epochs": trainer.epochs, "batch_size": trainer.fit_batch_size, "lr": trainer.lr,
                 "seed": trainer.seed, **settings}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    for array in (images, targets, unlabelled):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def fit_semi_supervised(trainer, images: np.ndarray, targets: np.ndarray,
                        unlabelled: np.ndarray, *, confidence: float = 0.9,
                        weight: float = 1.0, ratio: int | None = None) -> keras.Model:
    """Train `trainer.model` on labelled (`images`, `targets`) and `unlabelled` images.

    Args:
        trainer: a freshly built `attack.surrogate.SurrogateTrainer` (its network, input size,
            epochs, batch size, learning rate and seed are used).
        images: uint8 [N, H, W, 3], the queried images.
        targets: float [N, K], the victim's answers (rows are renormalised).
        unlabelled: uint8 [M, H, W, 3], images never queried.
        confidence: a pseudo-label is used when the surrogate's top probability on the weak
            view reaches this.
        weight: weight of the unlabelled (consistency) loss.
        ratio: unlabelled images per labelled image in each step; default
            min(4, ceil(M / N)), so an epoch over the labelled images sees about every
            unlabelled one.

    Returns:
        The trained Keras model. `trainer.history` holds per-epoch ``loss``,
        ``labelled_loss``, ``unlabelled_loss`` and ``mask_rate`` (share of unlabelled images
        above the threshold).
    """
    images = _check_uint8("images", images)
    unlabelled = _check_uint8("unlabelled", unlabelled)
    targets = np.asarray(targets, dtype=np.float32)
    if targets.shape != (len(images), trainer.num_classes) or not np.isfinite(targets).all() \
            or (targets < 0).any() or (targets.sum(axis=1) <= 0).any():
        raise invalid("targets", f"array of shape {targets.shape}",
                      f"non-negative rows [{len(images)}, {trainer.num_classes}]")
    targets = targets / targets.sum(axis=1, keepdims=True)
    check_number("confidence", confidence, gt=0, lt=1, expected="a probability in (0, 1)")
    check_number("weight", weight, min=0, expected="a number >= 0")
    if ratio is None:
        ratio = min(MAX_RATIO, math.ceil(len(unlabelled) / len(images)))
    check_int("ratio", ratio, min=1, expected="a positive integer or None")

    settings = {"confidence": confidence, "weight": weight, "ratio": ratio,
                "method": "fixmatch-lite-1"}
    checkpoint = trainer.checkpoint_dir
    fingerprint = ""
    if checkpoint is not None:
        fingerprint = _fingerprint(trainer, images, targets, unlabelled, settings)
        state_path, weights_path = checkpoint / STATE_NAME, checkpoint / WEIGHTS_NAME
        try:
            state = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        if state.get("fingerprint") == fingerprint and weights_path.is_file():
            trainer.model.load_weights(weights_path)
            trainer.history = state.get("history", {})
            logger.info("semi-supervised surrogate already trained on these data: loaded %s",
                        weights_path)
            return trainer.model

    size = trainer.input_size
    labelled_px = _resized(images, size)
    unlabelled_px = _resized(unlabelled, size)
    model = trainer.model
    batch = trainer.fit_batch_size
    u_batch = batch * ratio
    steps = math.ceil(len(images) / batch)
    schedule = keras.optimizers.schedules.CosineDecay(trainer.lr, decay_steps=trainer.epochs
                                                      * steps)
    optimizer = keras.optimizers.Adam(schedule)
    rng = tf.random.Generator.from_seed(trainer.seed)
    order_rng = np.random.default_rng(trainer.seed)
    threshold = tf.constant(confidence, tf.float32)
    u_weight = tf.constant(weight, tf.float32)

    pixels = tf.TensorSpec([None, size, size, 3], tf.uint8)

    @tf.function(input_signature=[pixels, tf.TensorSpec([None, trainer.num_classes], tf.float32),
                                  pixels])
    def train_step(x_l, y_l, x_u):
        x_l = weak_augment(tf.cast(x_l, tf.float32), rng)
        x_u = tf.cast(x_u, tf.float32)
        pseudo = tf.nn.softmax(model(weak_augment(x_u, rng), training=False))
        top = tf.reduce_max(pseudo, axis=1)
        mask = tf.cast(top >= threshold, tf.float32)
        labels = tf.one_hot(tf.argmax(pseudo, axis=1), tf.shape(pseudo)[1])
        x_s = strong_augment(x_u, rng)
        n_l = tf.shape(x_l)[0]
        with tf.GradientTape() as tape:
            logits = model(tf.concat([x_l, x_s], axis=0), training=True)
            loss_l = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y_l, logits[:n_l]))
            per_u = tf.nn.softmax_cross_entropy_with_logits(tf.stop_gradient(labels),
                                                            logits[n_l:])
            loss_u = tf.reduce_mean(per_u * mask)
            loss = loss_l + u_weight * loss_u
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, loss_l, loss_u, tf.reduce_mean(mask)

    history: dict[str, list[float]] = {"loss": [], "labelled_loss": [], "unlabelled_loss": [],
                                       "mask_rate": []}
    u_order = order_rng.permutation(len(unlabelled_px))
    u_pos = 0
    for epoch in range(trainer.epochs):
        order = order_rng.permutation(len(labelled_px))
        sums = np.zeros(4)
        for step in range(steps):
            rows = order[step * batch:(step + 1) * batch]
            if u_pos + u_batch > len(u_order):
                u_order, u_pos = order_rng.permutation(len(unlabelled_px)), 0
            u_rows = u_order[u_pos:u_pos + u_batch]
            u_pos += u_batch
            values = train_step(labelled_px[rows], targets[rows], unlabelled_px[u_rows])
            sums += np.array([float(v) for v in values])
        means = sums / steps
        for key, value in zip(history, means):
            history[key].append(float(value))
        logger.info("semi-supervised epoch %d/%d: loss %.4f (labelled %.4f, unlabelled %.4f), "
                    "pseudo-labelled %.1f%%", epoch + 1, trainer.epochs, means[0], means[1],
                    means[2], 100 * means[3])
    trainer.history = history
    trainer.epochs_run, trainer.initial_epoch = trainer.epochs, 0
    if checkpoint is not None:
        checkpoint.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint / f".tmp-{os.getpid()}-{WEIGHTS_NAME}"
        try:
            model.save_weights(tmp)
            os.replace(tmp, checkpoint / WEIGHTS_NAME)
        finally:
            tmp.unlink(missing_ok=True)
        write_json_atomic(checkpoint / STATE_NAME, {"fingerprint": fingerprint,
                                                    "history": history})
    return model
