"""Adaptive Misinformation (Kariyappa & Qureshi, "Defending Against Model Stealing Attacks with
Adaptive Misinformation", CVPR 2020): the more out-of-distribution a query looks, the more its
answer comes from a misinformation function instead of the victim.

Per query the answer is ``y' = (1 - a) * y + a * m``, where ``y`` is the victim's probability
row, ``m`` the misinformation function's and ``a = 1 / (1 + exp(-nu * (s - tau)))`` a smooth
switch on the query's OOD score ``s`` (here the attack probability of Atli et al.'s detector,
`detector.ood`: high = out of distribution; the paper switches on the max-softmax confidence,
``a = 1 / (1 + exp(nu * (S - tau)))``, which is the same switch with the sign of the score
reversed). `tau` is where the switch is half-way, `nu` its steepness. A label-only answer is the
one-hot of the misinformation's top-1 where the switch is past half-way (``s >= tau``) and the
victim's top-1 elsewhere, so a thief who keeps only labels is misled too.

Two misinformation functions:

* ``reverse`` (the cheap default, no training): the victim's own probabilities given to the
  classes in reversed rank order (the least likely class gets the top probability, the top-1
  class the smallest). It needs nothing but the victim's answer, but it is a deterministic
  function of that answer, which a thief could in principle invert.
* a **misinformation model** (the paper's): a classifier trained on the victim's data to give
  the true class a low probability, loss ``-log(1 - p_true)``. ``python -m detector.misinformation
  --data SPEC --out DIR/<name>/<version>`` trains it and exports it like a victim or the OOD
  detector (uint8 ``images`` -> float32 ``probabilities``), so the gateway loads it in process
  (`MisinformationModel.load`) or asks the upstream TF Serving for it.

The core (`switch_weight`, `reverse_distribution`, `AdaptiveMisinformation`) is numpy only; the
serving gateway calls it with the victim's answer, the detector's scores and, for a model, the
model's answer. Training and loading import TensorFlow lazily.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import configure_logging, parse_config, run_cli
from common.constraints import check_choice, check_fields, check_number
from common.data import load_dataset
from common.errors import invalid
from detector.export import (
    check_new_version,
    check_version_path,
    fit_size,
    load_probabilities,
    resolve_version_dir,
)

__all__ = [
    "AdaptiveMisinformation",
    "MisinformationConfig",
    "MisinformationModel",
    "SwitchConfig",
    "main",
    "reverse_distribution",
    "switch_weight",
    "train_misinformation",
]

log = logging.getLogger(__name__)

FUNCTIONS = ("reverse", "model")


def _check_probs(probs: Any, name: str = "probs") -> np.ndarray:
    array = np.asarray(probs)
    if array.ndim != 2 or array.shape[1] < 2:
        raise invalid(name, f"array of shape {array.shape}", "probability rows [N, K >= 2]")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise invalid(name, f"{array.dtype} array", "float probability rows [N, K]")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise invalid(name, "rows with NaN or infinity", "finite probability rows [N, K]")
    return np.maximum(array, 0.0)


def switch_weight(scores: Any, tau: float, nu: float) -> np.ndarray:
    """The misinformation weight ``a = 1 / (1 + exp(-nu * (score - tau)))`` per query, float64.

    `scores`: OOD scores ``[N]`` (higher = more out of distribution). ``a`` is 0.5 at
    ``score == tau``, tends to 1 above it and to 0 below it; `nu` (> 0) is the steepness.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise invalid("scores", f"array of shape {s.shape}", "finite OOD scores [N]")
    z = np.clip(-float(nu) * (s - float(tau)), -700.0, 700.0)
    return 1.0 / (1.0 + np.exp(z))


def reverse_distribution(probs: Any) -> np.ndarray:
    """The cheap misinformation function: each row's probabilities in reversed rank order.

    The class the victim finds least likely gets the row's largest probability, the second least
    likely the second largest, ..., the victim's top-1 the smallest. The row keeps its values
    (so it still sums to 1 and looks as confident as the victim's answer).
    """
    p = _check_probs(probs)
    rows = np.arange(len(p))[:, None]
    ascending = np.argsort(p, axis=1, kind="stable")
    out = np.empty_like(p)
    out[rows, ascending] = p[rows, ascending[:, ::-1]]
    return out


def _normalise(values: np.ndarray) -> np.ndarray:
    sums = values.sum(axis=1, keepdims=True)
    sums[sums <= 0] = 1.0
    return values / sums


@dataclass(frozen=True)
class SwitchConfig:
    """Adaptive Misinformation in use (the gateway policy's ``misinformation`` section): the
    switch's `tau` (None: the OOD detector's threshold) and `nu`, and the misinformation
    function: "reverse" (the victim's probabilities in reversed rank order, no model) or "model"
    (`path`: an export of ``python -m detector.misinformation`` loaded in process, or
    `upstream_model`: the same SavedModel served by the upstream)."""

    tau: float | None = field(default=None, metadata={
        "help": "OOD score at which answers are half misinformation (None: the detector's "
                "threshold)"})
    nu: float = field(default=50.0, metadata={"help": "steepness of the switch", "gt": 0})
    function: str = field(default="reverse", metadata={
        "help": "misinformation function", "choices": FUNCTIONS})
    path: str | None = field(default=None, metadata={
        "help": "misinformation model export (function 'model')", "rule": "nonempty"})
    upstream_model: str | None = field(default=None, metadata={
        "help": "misinformation model served by the upstream (function 'model')",
        "rule": "nonempty"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_number("tau", self.tau, optional=True)
        if self.function == "model" and (self.path is None) == (self.upstream_model is None):
            raise invalid("path", self.path, "exactly one of `path` and `upstream_model` with "
                          f"function 'model' (received upstream_model={self.upstream_model!r})")
        if self.function == "reverse" and (self.path is not None
                                           or self.upstream_model is not None):
            raise invalid("function", self.function,
                          "'model' when `path` or `upstream_model` is given")


class AdaptiveMisinformation:
    """Kariyappa & Qureshi's switch: blend the victim's answer with misinformation per query.

    `tau`: OOD score at which the answer is half misinformation; `nu` (> 0): steepness;
    `function`: "reverse" (`reverse_distribution` of the victim's answer) or "model" (the
    caller passes the misinformation model's probabilities to each call).
    """

    def __init__(self, *, tau: float, nu: float = 50.0, function: str = "reverse") -> None:
        self.tau = float(check_number("tau", tau))
        self.nu = float(check_number("nu", nu, gt=0))
        self.function = check_choice("function", function, FUNCTIONS)

    @property
    def spec(self) -> str:
        return f"misinform:{self.tau!r},{self.nu!r},{self.function}"

    def __repr__(self) -> str:
        return f"AdaptiveMisinformation(tau={self.tau}, nu={self.nu}, function={self.function!r})"

    def weights(self, scores: Any) -> np.ndarray:
        """The misinformation weight per query (see `switch_weight`)."""
        return switch_weight(scores, self.tau, self.nu)

    def misinformation(self, probs: Any, misinformation: Any = None) -> np.ndarray:
        """The misinformation rows for `probs` (given, for "model"; computed, for "reverse")."""
        p = _check_probs(probs)
        if misinformation is None:
            if self.function != "reverse":
                raise invalid("misinformation", None, "the misinformation model's probabilities "
                              "[N, K] (function='model')")
            return reverse_distribution(p)
        m = _check_probs(misinformation, "misinformation")
        if m.shape != p.shape:
            raise invalid("misinformation", f"array of shape {m.shape}",
                          f"the victim's answer shape {p.shape}")
        return _normalise(m)

    def __call__(self, probs: Any, scores: Any, misinformation: Any = None, *,
                 label_only: bool = False) -> np.ndarray:
        """The answers, float32 ``[N, K]``: blended rows, or one-hot rows with `label_only`."""
        p = _normalise(_check_probs(probs))
        a = self.weights(scores)
        if a.shape != (len(p),):
            raise invalid("scores", f"{a.shape[0]} scores", f"one per answer row ({len(p)})")
        m = self.misinformation(p, misinformation)
        if label_only:
            top = np.where(a >= 0.5, np.argmax(m, axis=1), np.argmax(p, axis=1))
            out = np.zeros_like(p)
            out[np.arange(len(p)), top] = 1.0
            return out.astype(np.float32)
        return _normalise((1.0 - a)[:, None] * p + a[:, None] * m).astype(np.float32)


# -- the misinformation model ------------------------------------------------------------------

class MisinformationModel:
    """A served misinformation model: uint8 images ``[N, H, W, 3]`` -> probabilities ``[N, K]``.

    `MisinformationModel.load(path)` reads an export of `train_misinformation` (a version folder,
    or the model folder holding integer versions: the highest is taken).
    """

    def __init__(self, probabilities: Callable[[np.ndarray], np.ndarray], *,
                 input_shape: tuple[int, int, int], path: Path | None = None) -> None:
        self._probabilities = probabilities
        self.input_shape = tuple(int(v) for v in input_shape)
        self.path = path

    def __repr__(self) -> str:
        return f"MisinformationModel(path={str(self.path) if self.path else None!r})"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MisinformationModel:
        version_dir = resolve_version_dir(path, argument="misinformation.path", expected=(
            "an exported misinformation model (a version folder with saved_model.pb)"))
        probabilities, shape = load_probabilities(version_dir, argument="misinformation.path",
                                                  shown=str(path))
        return cls(probabilities, input_shape=shape, path=version_dir)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        array = np.asarray(images)
        if array.ndim != 4 or array.shape[-1] != 3:
            raise invalid("images", f"array of shape {array.shape}", "RGB images [N, H, W, 3]")
        array = fit_size(array, self.input_shape)
        if not len(array):
            return np.zeros((0, 0), np.float32)
        return np.concatenate([self._probabilities(array[i:i + 256].astype(np.uint8))
                               for i in range(0, len(array), 256)])


@dataclass(frozen=True)
class MisinformationConfig:
    """Train Kariyappa & Qureshi's misinformation model on the victim's labelled data."""

    data: str = field(metadata={"help": "dataset spec of the victim's labelled data",
                                "metavar": "SPEC"})
    out: str = field(metadata={"help": "export folder <base>/<name>/<version> (must not exist)",
                               "metavar": "DIR"})
    split: str = field(default="train", metadata={"help": "split to train on"})
    test_split: str | None = field(default="test", metadata={
        "help": "split on which the export's card reports how often the true class is avoided "
                "(none: skip)"})
    limit: int | None = field(default=None, metadata={
        "help": "use at most this many training images (seeded, class-stratified)",
        "metavar": "N", "min": 10})
    arch: str = field(default="cnn", metadata={"help": "architecture (common.backbones)"})
    arch_args: tuple[str, ...] = field(default=(), metadata={
        "help": "architecture arguments KEY=VALUE", "metavar": "KEY=VALUE"})
    weights: str = field(default="none", metadata={"help": "initial weights: none, imagenet or "
                                                           "a weights file"})
    input_size: int | None = field(default=None, metadata={
        "help": "backbone input side; default the data's image size", "metavar": "PX"})
    epochs: int = field(default=3, metadata={"help": "training epochs", "min": 1})
    batch_size: int = field(default=128, metadata={"help": "training batch size", "min": 1})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate", "gt": 0})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_version_path("out", self.out, "misinformation/cifar10/1")
        check_new_version("out", self.out)


def train_misinformation(config: MisinformationConfig) -> dict:
    """Train with loss ``-log(1 - p_true)``, export to `config.out`; return the card facts."""
    import keras
    import tensorflow as tf

    from common.backbones import build_classifier, parse_arch_args
    from victim_export.export import export_classifier
    from victim_export.train import make_dataset

    data = load_dataset(config.data, config.split, channels=3, limit=config.limit,
                        seed=config.seed)
    size = data.image_shape[0]
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(config.arch, data.num_classes, input_size=config.input_size or size,
                             weights=None if config.weights == "none" else config.weights,
                             **parse_arch_args(config.arch_args))
    if (config.input_size or size) != size:
        inputs = keras.Input((size, size, 3), dtype="float32", name="images")
        x = keras.layers.Resizing(config.input_size, config.input_size)(inputs)
        model = keras.Model(inputs, model(x))

    def avoid_true_class(y_true, logits):
        p_true = tf.reduce_sum(y_true * tf.nn.softmax(logits, axis=-1), axis=-1)
        return -tf.math.log(tf.maximum(1.0 - p_true, 1e-7))

    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=avoid_true_class)
    fit = make_dataset(data.images, data.labels, size=size, num_classes=data.num_classes,
                       batch_size=config.batch_size, shuffle_seed=config.seed)
    history = model.fit(fit, epochs=config.epochs, verbose=0)
    card: dict[str, Any] = {"kind": "misinformation_model",
                            "paper": "Kariyappa & Qureshi, CVPR 2020",
                            "loss": "-log(1 - p_true)", "data": f"{config.data}:{config.split}",
                            "train_images": len(data),
                            "final_loss": float(history.history["loss"][-1])}
    if config.test_split:
        test = load_dataset(config.data, config.test_split, image_size=size, channels=3)
        logits = model.predict(test.images.astype(np.float32), batch_size=256, verbose=0)
        probs = np.asarray(tf.nn.softmax(logits, axis=-1))
        card["test_images"] = len(test)
        card["test_true_class_prob_mean"] = float(probs[np.arange(len(test)),
                                                        test.labels].mean())
        card["test_top1_is_true"] = float(np.mean(probs.argmax(1) == test.labels))
    out = Path(config.out)
    path = export_classifier(model, out.parent.parent, out.parent.name, version=int(out.name),
                             class_names=list(data.class_names), card=card)
    card["path"] = str(path)
    log.info("misinformation model exported to %s: %s", path, card)
    return card


PROG = "python -m detector.misinformation"


def _main(argv: Sequence[str] | None) -> int:
    config = parse_config(MisinformationConfig, argv, prog=PROG,
                          description=__doc__.split("\n\n")[0])
    configure_logging()
    card = train_misinformation(config)
    line = f"{card['path']}: trained on {card['train_images']} images"
    if "test_images" in card:
        line += (f"; on {card['test_images']} test images the true class gets "
                 f"{card['test_true_class_prob_mean']:.4f} probability on average and is the "
                 f"top-1 for {card['test_top1_is_true']:.2%}")
    print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Train and export a misinformation model; exit code 2 on bad input."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
