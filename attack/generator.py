"""The TensorFlow half of the data-free attacks (`attack.datafree`): generator, losses, steps.

A DFME/MAZE-style generator (Truong et al. 2021, Kariyappa et al. 2021: a dense layer to a
small feature map, two nearest-neighbour upsamplings with 3x3 convolutions, batch norm and
leaky ReLU, tanh) maps a latent vector to an image in pixel units (0..255 floats) at the
victim's size. The per-image losses compare the surrogate with the victim's answers:

* ``l1`` (DFME): mean absolute difference of logits, the victim's logits approximated from its
  probabilities as log p minus its mean (DFME's "mean" logit correction); the surrogate's logits
  are centred the same way, since logits are defined up to a shift;
* ``kl`` (MAZE): KL(victim || surrogate) on the probabilities;
* ``ce`` (the label-only variant): cross-entropy with the victim's top-1 label.

`class_diversity` is DFMS-HL's class-diversity loss (Sanyal et al. 2022): the negative entropy
of the batch-mean prediction plus log K, 0 when the batch's predictions average to uniform and
log K when they all name one class. dfms-hl's generator loss adds it on the surrogate's
predictions (no query needed); dfme and maze spread the victim's answers instead
(`attack.datafree.victim_spread`), or the surrogate's with ``--diversity-of surrogate``.

Imported only after a data-free run's flags have been checked (it imports TensorFlow).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

__all__ = ["LOSSES", "SurrogateView", "build_generator", "class_diversity", "generator_pixels",
           "loss_per_image", "victim_targets"]

LOSSES = ("l1", "kl", "ce")
_LOG_FLOOR = 1e-8  # probabilities below this are read as this before taking the log (DFME)


def build_generator(latent_dim: int, size: tuple[int, int], width: int, seed: int
                    ) -> keras.Model:
    """The generator: latent [B, latent_dim] -> tanh images [B, H, W, 3] in [-1, 1]."""
    keras.utils.set_random_seed(seed)
    height, wide = int(size[0]), int(size[1])
    h0, w0 = math.ceil(height / 4), math.ceil(wide / 4)
    z = keras.Input((latent_dim,))
    x = keras.layers.Dense(2 * width * h0 * w0)(z)
    x = keras.layers.Reshape((h0, w0, 2 * width))(x)
    x = keras.layers.BatchNormalization()(x)
    for channels in (2 * width, width):
        x = keras.layers.UpSampling2D()(x)
        x = keras.layers.Conv2D(channels, 3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.Conv2D(3, 3, padding="same")(x)
    if (4 * h0, 4 * w0) != (height, wide):
        x = keras.layers.Resizing(height, wide, interpolation="bilinear")(x)
    out = keras.layers.Activation("tanh")(x)
    return keras.Model(z, out, name="generator")


def generator_pixels(generator: keras.Model, z, training: bool = True):
    """The generator's images in pixel units (float 0..255), as a tensor."""
    return (generator(z, training=training) + 1.0) * 127.5


class SurrogateView:
    """The surrogate as the data-free loop uses it: pixels (0..255 floats at the victim's size)
    -> logits, resized to the surrogate's own input size inside the graph."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.size = tuple(int(d) for d in model.input_shape[1:3])

    def logits(self, pixels, training: bool = False):
        x = tf.convert_to_tensor(pixels, tf.float32)
        if tuple(x.shape[1:3]) != self.size:
            x = tf.image.resize(x, self.size, antialias=True)
        return self.model(x, training=training)


def victim_targets(probs: np.ndarray, loss: str) -> np.ndarray:
    """What a loss compares with: centred log-probabilities (l1), probabilities (kl) or one-hot
    top-1 labels (ce), float32 [n, K]."""
    probs = np.asarray(probs, np.float32)
    if loss == "l1":
        logp = np.log(np.maximum(probs, _LOG_FLOOR))
        return (logp - logp.mean(axis=1, keepdims=True)).astype(np.float32)
    if loss == "kl":
        return probs
    if loss == "ce":
        return np.eye(probs.shape[1], dtype=np.float32)[np.argmax(probs, axis=1)]
    raise ValueError(f"unknown loss {loss!r}")


def loss_per_image(logits, targets, loss: str):
    """The per-image loss [n] of surrogate `logits` against `victim_targets(...)`."""
    targets = tf.convert_to_tensor(targets, tf.float32)
    if loss == "l1":
        centred = logits - tf.reduce_mean(logits, axis=1, keepdims=True)
        return tf.reduce_mean(tf.abs(centred - targets), axis=1)
    log_q = tf.nn.log_softmax(logits, axis=1)
    if loss == "kl":
        log_p = tf.math.log(tf.maximum(targets, _LOG_FLOOR))
        return tf.reduce_sum(targets * (log_p - log_q), axis=1)
    return -tf.reduce_sum(targets * log_q, axis=1)


def class_diversity(probs):
    """DFMS-HL's class-diversity loss of a batch of predictions `probs` [n, K]: the negative
    entropy of their mean plus log K (0 for a uniform mean, log K for one class), a tensor."""
    probs = tf.convert_to_tensor(probs, tf.float32)
    mean = tf.reduce_mean(probs, axis=0)
    k = tf.cast(tf.shape(probs)[1], tf.float32)
    return tf.reduce_sum(mean * tf.math.log(mean + 1e-8)) + tf.math.log(k)
