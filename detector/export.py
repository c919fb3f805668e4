"""An exported detector on disk: the victim's layout (``<base>/<name>/<version>/saved_model.pb``
with a ``serving_default`` signature: uint8 ``images`` [batch, H, W, 3] -> float32
``probabilities`` [batch, K]) plus, for Atli et al.'s OOD detector, its calibration in
``<version>/assets.extra/calibration.json`` (threshold, held-out accuracies, training config).

The OOD detector's columns are `BENIGN_CLASS` (0) and `ATTACK_CLASS` (1). `export_detector`
writes a version, `resolve_version_dir` and `read_calibration` find and read one,
`load_probabilities` turns a version folder into a numpy function (the OOD detector and the
misinformation model both load this way), `fit_size` resizes images to a signature's size as a
client adapting to it would, and `check_version_path` / `check_new_version` validate an output
version folder before anything is written. TensorFlow is imported only to load or export.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import invalid
from common.fileio import write_json_atomic

__all__ = [
    "ATTACK_CLASS",
    "BENIGN_CLASS",
    "CALIBRATION_NAME",
    "CALIBRATION_RATES",
    "CLASS_NAMES",
    "check_new_version",
    "check_version_path",
    "describe_calibration",
    "export_detector",
    "fit_size",
    "load_probabilities",
    "load_signature",
    "read_calibration",
    "resolve_version_dir",
    "write_calibration",
]

logger = logging.getLogger(__name__)

BENIGN_CLASS = 0
ATTACK_CLASS = 1
CLASS_NAMES = ("benign", "attack")
CALIBRATION_NAME = "assets.extra/calibration.json"
# Benign false-positive rates whose thresholds are also recorded in the calibration (the
# gateway's policy may pick another than the default without retraining).
CALIBRATION_RATES = (0.001, 0.01, 0.05)


def check_version_path(name: str, value: Any, example: str) -> Path:
    """`value` as a path if it names a version folder ``<base>/<name>/<positive integer>``."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, value, "a non-empty string")
    out = Path(value)
    if not out.name.isdigit() or int(out.name) < 1:
        raise invalid(name, value, f"a version folder <base>/<name>/<positive integer>, e.g. "
                      f"{example}")
    if not out.parent.name or out.parent.name in (".", ".."):
        raise invalid(name, value, "a version folder <base>/<name>/<version>")
    return out


def check_new_version(name: str, value: Any) -> Path:
    """`value` as a path if that version folder does not exist yet and its parents are folders
    (TF Serving versions are immutable: one is never overwritten)."""
    out = Path(value)
    if out.exists():
        raise invalid(name, value, "a version folder that does not exist yet (versions are "
                      "never overwritten)")
    for parent in (out.parent, out.parent.parent):
        if parent.exists() and not parent.is_dir():
            raise invalid(name, value, f"a path under directories ({parent} is a file)")
    return out


def resolve_version_dir(path: str | os.PathLike[str], *, argument: str = "detector",
                        expected: str = "an exported detector version folder (with "
                        "saved_model.pb) or a model folder holding integer versions") -> Path:
    """`path` itself when it holds ``saved_model.pb``, else its highest integer version."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((int(p.name) for p in path.iterdir() if p.name.isdigit()
                       and (p / "saved_model.pb").is_file())) if path.is_dir() else []
    if not versions:
        raise invalid(argument, str(path), expected)
    return path / str(versions[-1])


def read_calibration(version_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The calibration of an exported detector (``assets.extra/calibration.json``)."""
    path = Path(version_dir) / CALIBRATION_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise invalid("detector", str(version_dir), f"a detector export with {CALIBRATION_NAME} "
                      "(written by python -m detector.train)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise invalid("detector", str(version_dir), f"a readable {CALIBRATION_NAME} ({err})") \
            from err
    if not isinstance(data, dict) or not isinstance(data.get("threshold"), (int, float)):
        raise invalid("detector", str(version_dir), f"a {CALIBRATION_NAME} with a numeric "
                      "`threshold`")
    return data


def describe_calibration(calibration: Mapping[str, Any]) -> str:
    """One line of a calibration: the threshold, its target rate and the held-out accuracies
    (the anomalous accuracy and ROC AUC only where attack images were held out)."""
    held = calibration["heldout_at_threshold"]
    text = (f"threshold {calibration['threshold']:.4g} (benign FPR target "
            f"{calibration['target_fpr']:g}); held-out benign accuracy "
            f"{held['benign_accuracy']:.4f}")
    if held.get("anomalous_accuracy") is not None:
        text += (f", anomalous accuracy {held['anomalous_accuracy']:.4f}, ROC AUC "
                 f"{calibration['heldout_roc_auc']:.4f}")
    return text


def write_calibration(version_dir: str | os.PathLike[str], calibration: Mapping[str, Any]
                      ) -> Path:
    """Write `calibration` into `version_dir` (atomically); return the file."""
    target = Path(version_dir) / CALIBRATION_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, dict(calibration))
    return target


def load_signature(version_dir: Path, *, argument: str, shown: str | None = None) -> Any:
    """The ``serving_default`` signature of the SavedModel in `version_dir` (a concrete
    function; it keeps the loaded model alive). `UsageError` naming `argument` (the setting,
    e.g. ``detector``), with the path as the user gave it (`shown`), when it cannot be loaded."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(version_dir))
        signature = loaded.signatures["serving_default"]
    except (OSError, KeyError, ValueError) as err:
        raise invalid(argument, str(version_dir) if shown is None else shown,
                      f"a SavedModel with a serving_default signature ({err})") from err
    signature.keepalive = loaded  # a signature alone does not keep its variables alive
    return signature


def load_probabilities(version_dir: Path, *, argument: str, shown: str | None = None
                       ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, int, int]]:
    """(uint8 images -> float32 probabilities, the signature's image shape) of an export.

    `argument` names the setting in errors (``detector``, ``misinformation.path``), `shown`
    the path as the user gave it (default `version_dir`).
    """
    import tensorflow as tf

    signature = load_signature(version_dir, argument=argument, shown=shown)
    spec = signature.structured_input_signature[1].get("images")
    if spec is None or spec.shape.rank != 4:
        raise invalid(argument, str(version_dir) if shown is None else shown,
                      "a signature with an `images` [batch, H, W, 3] input")
    shape = tuple(int(v) for v in spec.shape[1:])

    def probabilities(images: np.ndarray) -> np.ndarray:
        out = signature(images=tf.constant(images, dtype=tf.uint8))
        return np.asarray(out["probabilities"], dtype=np.float32)

    probabilities.keepalive = signature  # type: ignore[attr-defined]
    return probabilities, shape  # type: ignore[return-value]


def fit_size(images: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """`images` (uint8 [N, H, W, 3]) resized to `input_shape`'s side (bilinear, antialiased,
    rounded to uint8) as a client adapting to the signature would; unchanged when they fit."""
    if images.shape[1:3] == tuple(input_shape[:2]):
        return images
    import tensorflow as tf

    resized = tf.image.resize(images, input_shape[:2], antialias=True)
    return np.asarray(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8))


def export_detector(model: Any, out: str | os.PathLike[str], calibration: Mapping[str, Any]
                    ) -> Path:
    """Export `model` to the version folder `out` (victim layout) with its calibration."""
    from victim_export.export import export_classifier

    out = Path(out)
    card = {key: calibration[key] for key in ("threshold", "target_fpr", "benign", "attack",
                                               "heldout_at_threshold", "heldout_roc_auc")
            if key in calibration}
    card["kind"] = "ood_query_detector"
    path = export_classifier(model, out.parent.parent, out.parent.name, version=int(out.name),
                             class_names=CLASS_NAMES, card=card)
    write_calibration(path, calibration)
    return path
