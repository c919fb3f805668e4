"""``python -m detector.calibrate``: move an exported OOD detector's operating point, no retraining.

`detector.train` calibrates the threshold of Atli et al.'s detector on a held-out split of the
benign training images for one benign false-positive rate. `recalibrate_detector` picks another
rate later: it re-creates exactly that held-out split from the training config stored in the
source version's ``assets.extra/calibration.json`` (same loader, limit, class exclusion, seeded
per-class split and, for the held-out attack images, the same seeded JPEG re-encoding; none of
these images was trained on), scores it with the exported SavedModel, calibrates the threshold
for the new rate with `calibrate_threshold`, and writes a NEW version folder: a copy of the
SavedModel with the updated calibration (TF Serving versions are immutable; the source is never
touched). `OODDetector.load`, the gateway (``detectors.ood.path``) and ``detector.evaluate`` read
the threshold from the version they are given, so pointing them at the new version is enough.

``--transforms evasions`` calibrates on the held-out benign images AND on a JPEG-encoded,
resized, blurred and noisy copy of them (`detector.evasion.CALIBRATION_TRANSFORMS`): the
threshold is the lowest at which no view exceeds the rate, so a benign user whose photos are
all, say, blurred is not flagged by a binomial window (`detector.aggregate.BinomialWindow`) that
assumes the calibrated rate; each view's rate is stored
(``heldout_benign_fpr_by_transform``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import config_to_dict, configure_logging, parse_config, run_cli
from common.constraints import check_fields
from common.data import ImageDataset, load_dataset
from common.errors import UsageError, invalid
from common.fileio import write_json_atomic
from detector.config import check_exclude, detector_field, exclude_field
from detector.evasion import CALIBRATION_TRANSFORMS, transformed_views
from detector.export import (
    CALIBRATION_NAME,
    CALIBRATION_RATES,
    check_new_version,
    check_version_path,
    describe_calibration,
    read_calibration,
    resolve_version_dir,
    write_calibration,
)
from detector.metrics import calibrate_threshold, detection_metrics, roc_auc
from detector.ood import OODDetector
from detector.splits import training_split

__all__ = ["CalibrateConfig", "RecalibrationResult", "heldout_sets", "main",
           "recalibrate_detector"]

logger = logging.getLogger(__name__)

PROG = "python -m detector.calibrate"

EPILOG = """\
example (the CIFAR-10 detector trained for benign FPR 1%, moved to 4%):
  python -m detector.calibrate --detector detectors/cifar10_ood/1 --target-fpr 0.04 \\
      --out detectors/cifar10_ood/2
  # -> detectors/cifar10_ood/2/ (the same SavedModel, assets.extra/calibration.json with the
  #    new threshold); the training data paths come from 1's calibration.json (relative to where
  #    it was trained): pass --benign/--attack/--exclude-classes when they moved.
"""

# The keys of the stored training config the held-out split depends on.
_REQUIRED_KEYS = ("benign", "benign_split", "holdout", "seed")
# Relative tolerance for "the stored threshold is reproduced" (SavedModel vs Keras scoring).
_REPRODUCE_RTOL = 1e-4


def _stored(help: str, **metadata: Any) -> Any:
    """A value of the stored training config the user may replace (None: the stored one)."""
    return field(default=None, metadata={"help": help, "rule": "nonempty", **metadata})


@dataclass(frozen=True)
class CalibrateConfig:
    """Recalibrate an exported OOD query detector for another benign false-positive rate on its
    own held-out training split, into a new version folder."""

    detector: str = detector_field()
    target_fpr: float = field(metadata={
        "help": "benign false-positive rate the new threshold is calibrated for",
        "metavar": "RATE", "min": 0, "lt": 1})
    out: str = field(metadata={
        "help": "new version folder <base>/<name>/<version>, e.g. detectors/cifar10_ood/2 (must "
                "not exist yet)", "metavar": "DIR"})
    benign: str | None = _stored("dataset spec of the benign training data; default the one in "
                                 "the training config (pass it when that path is not found from "
                                 "here)", metavar="SPEC")
    benign_split: str | None = _stored("split(s) of --benign; default the training config's")
    attack: str | None = _stored("dataset spec of the attack training data, for the held-out "
                                 "anomalous accuracy; default the one in the training config",
                                 metavar="SPEC")
    attack_split: str | None = _stored("split(s) of --attack; default the training config's")
    exclude_classes: str | None = exclude_field(
        "file of --attack class names to drop; default the training config's")
    transforms: str = field(default="none", metadata={
        "help": "none: calibrate on the held-out benign images as they are; evasions: on them "
                "and on a JPEG 95/75/50, resize 0.5, blur 1 and noise 8 copy of them "
                "(detector.evasion.CALIBRATION_TRANSFORMS), at the lowest threshold where no "
                "view exceeds --target-fpr, so benign users who send such images stay at the "
                "rate the binomial window assumes", "choices": ("none", "evasions")})
    heldout_attack: bool = field(default=True, metadata={
        "help": "also score the held-out attack images (anomalous accuracy, ROC AUC); "
                "--no-heldout-attack calibrates from the benign data alone",
        "choices": (True, False)})

    def __post_init__(self) -> None:
        check_fields(self)
        if not Path(self.detector).is_dir():
            raise invalid("detector", self.detector, "an existing detector folder")
        check_exclude(self.exclude_classes)
        check_version_path("out", self.out, "detectors/cifar10_ood/2")
        check_new_version("out", self.out)


@dataclass(frozen=True)
class RecalibrationResult:
    """What `recalibrate_detector` produced: the new version folder and its calibration."""

    path: Path
    source: Path
    threshold: float
    calibration: dict[str, Any]


def _training_config(calibration: Mapping[str, Any], version_dir: Path) -> dict[str, Any]:
    stored = calibration.get("config")
    if not isinstance(stored, dict) or any(key not in stored for key in _REQUIRED_KEYS):
        raise invalid("detector", str(version_dir), f"a {CALIBRATION_NAME} with the training "
                      f"`config` ({', '.join(_REQUIRED_KEYS)}; written by python -m "
                      "detector.train)")
    return dict(stored)


def _load(argument: str, spec: str, split: str, where: Path, **kwargs: Any) -> ImageDataset:
    """`load_dataset`, with an error naming the flag that replaces a training path not found."""
    try:
        return load_dataset(spec, split, channels=3, **kwargs)
    except UsageError as err:
        raise invalid(argument, spec, f"the {argument} data the detector was trained on "
                      f"(from {where / CALIBRATION_NAME}), loadable from {os.getcwd()}: pass "
                      f"--{argument.replace('_', '-')} where it lives now ({err})") from None


def heldout_sets(
    training: Mapping[str, Any],
    *,
    benign: ImageDataset,
    attack: ImageDataset | None = None,
) -> tuple[ImageDataset, ImageDataset | None]:
    """The held-out (benign, attack) images `train_detector` calibrated on, from the loaded
    training sets and the training config: the same seeded per-class splits and the same seeded
    JPEG re-encoding of the held-out attack images."""
    holdout, seed = float(training["holdout"]), int(training["seed"])
    benign_held = training_split(benign, "benign", holdout, seed)[1]
    if attack is None:
        return benign_held, None
    share = float(training.get("jpeg_augment") or 0.0)
    return benign_held, training_split(attack, "attack", holdout, seed, share)[1]


def _load_heldout(config: CalibrateConfig, training: Mapping[str, Any], source: Path,
                  expected: Mapping[str, Any]) -> tuple[ImageDataset, ImageDataset | None,
                                                        dict[str, Any]]:
    """Load the training sets as `detector.ood.load_training_sets` does and split them."""
    data = {
        "benign": config.benign or training["benign"],
        "benign_split": config.benign_split or training["benign_split"],
        "attack": config.attack or training.get("attack"),
        "attack_split": config.attack_split or training.get("attack_split") or "train",
        "exclude_classes": config.exclude_classes or training.get("exclude_classes"),
    }
    seed = int(training["seed"])
    size = training.get("image_size")
    benign = _load("benign", data["benign"], data["benign_split"], source, image_size=size,
                   limit=training.get("benign_limit"), seed=seed)
    attack = None
    if config.heldout_attack:
        if not data["attack"]:
            raise invalid("attack", None, f"the attack data spec (none in "
                          f"{source / CALIBRATION_NAME}), or --no-heldout-attack")
        exclude = data["exclude_classes"]
        if exclude is not None and not Path(exclude).is_file():
            raise invalid("exclude_classes", exclude, f"the class list the detector was trained "
                          f"with (from {source / CALIBRATION_NAME}), found from {os.getcwd()}: "
                          "pass --exclude-classes where it lives now")
        attack = _load("attack", data["attack"], data["attack_split"], source,
                       image_size=size if size is not None else benign.image_shape[0],
                       exclude_classes=exclude, limit=training.get("attack_limit"), seed=seed)
    benign_held, attack_held = heldout_sets(training, benign=benign, attack=attack)
    for name, held in (("benign", benign_held), ("attack", attack_held)):
        count = expected.get(name)
        if held is not None and isinstance(count, int) and len(held) != count:
            raise invalid(name, data[name], f"the data the detector was trained on (its held-out "
                          f"split had {count} {name} images, this data gives {len(held)})")
    return benign_held, attack_held, data


def _metrics(benign: np.ndarray, attack: np.ndarray | None, threshold: float) -> dict[str, Any]:
    row = detection_metrics(benign, np.zeros(0) if attack is None else attack, threshold)
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _write_version(source: Path, out: Path, calibration: Mapping[str, Any]) -> Path:
    """Copy `source` into a hidden temp folder beside `out` (a name TF Serving skips), write the
    calibration there and rename it to `out`: a polling server never sees half a version."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(source, tmp)
        write_calibration(tmp, calibration)
        try:
            os.rename(tmp, out)
        except OSError as err:
            raise invalid("out", str(out), f"a version folder that does not exist yet (written "
                          f"concurrently: {err.strerror})") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _update_card(source: Path, out: Path, calibration: Mapping[str, Any]) -> None:
    """Add the new version to its model card, from the source version's entry."""
    from victim_export.export import CARD_NAME, read_card

    try:
        entry = dict(read_card(source.parent).get("versions", {}).get(source.name) or {})
    except UsageError as err:
        logger.warning("source model card unreadable (%s): the new entry starts empty", err)
        entry = {}
    entry.update({key: calibration[key] for key in (
        "threshold", "target_fpr", "heldout_at_threshold", "heldout_roc_auc",
        "recalibrated_from", "created") if key in calibration})
    entry.setdefault("kind", "ood_query_detector")
    entry["version"] = int(out.name)
    card = read_card(out.parent)
    versions = dict(card.get("versions", {}))
    versions[out.name] = entry
    card.update({"name": card.get("name", out.parent.name), "versions": dict(sorted(
        versions.items(), key=lambda kv: (int(kv[0]), "") if kv[0].isdigit() else (1 << 62,
                                                                                    kv[0])))})
    write_json_atomic(out.parent / CARD_NAME, card)


def recalibrate_detector(config: CalibrateConfig) -> RecalibrationResult:
    """Recalibrate the detector of `config` on its held-out training split; export a new version.

    Raises `UsageError` before writing anything when an argument, the source calibration or the
    training data is bad (or the data gives another held-out split than the training's).
    """
    source = resolve_version_dir(config.detector)
    old = read_calibration(source)
    training = _training_config(old, source)
    benign_held, attack_held, data = _load_heldout(config, training, source,
                                                   old.get("heldout_examples") or {})
    detector = OODDetector.load(source)
    if tuple(benign_held.image_shape) != detector.input_shape:
        raise invalid("benign", data["benign"], f"images of {detector.input_shape} (the "
                      f"detector's input), not {benign_held.image_shape}")
    benign_scores = detector.score(benign_held.images)
    attack_scores = None if attack_held is None else detector.score(attack_held.images)

    views = {"none": benign_scores}
    if config.transforms == "evasions":
        transformed = transformed_views(benign_held.images, CALIBRATION_TRANSFORMS, seed=0)
        views.update({tag: detector.score(images) for tag, images in transformed.items()
                      if tag != "none"})

    def calibrated(rate: float) -> float:
        """The lowest threshold at which no view's benign FPR exceeds `rate`."""
        return max(calibrate_threshold(scores, rate) for scores in views.values())

    target = float(config.target_fpr)
    threshold = calibrated(target)
    rates = {*CALIBRATION_RATES, target}
    rates.update(float(r) for r in (old.get("thresholds") or {}))
    thresholds = {f"{rate:g}": calibrated(rate) for rate in sorted(rates)}
    # The held-out split is the training's when the stored threshold comes back.
    old_fpr, old_threshold = old.get("target_fpr"), float(old["threshold"])
    recomputed = calibrate_threshold(benign_scores, float(old_fpr)) \
        if isinstance(old_fpr, (int, float)) else None
    reproduced = recomputed is not None and math.isclose(recomputed, old_threshold,
                                                         rel_tol=_REPRODUCE_RTOL)
    if not reproduced:
        logger.warning("the recomputed threshold for the source's benign FPR %s (%r) differs "
                       "from the stored one (%r): the data is not the held-out split the "
                       "detector was calibrated on", old_fpr, recomputed, old_threshold)
    auc = roc_auc(benign_scores, attack_scores) if attack_scores is not None else None
    calibration = dict(old)
    calibration.update({
        "threshold": threshold,
        "target_fpr": target,
        "heldout_examples": {"benign": len(benign_held),
                             "attack": None if attack_held is None else len(attack_held)},
        "thresholds": thresholds,
        "heldout_at_threshold": _metrics(benign_scores, attack_scores, threshold),
        "heldout_by_target_fpr": {rate: _metrics(benign_scores, attack_scores, t)
                                  for rate, t in thresholds.items()},
        "heldout_at_0.5": _metrics(benign_scores, attack_scores, 0.5),
        "heldout_roc_auc": None if auc is None or math.isnan(auc) else auc,
        "calibration_transforms": config.transforms,
        "heldout_benign_fpr_by_transform": {
            tag: float(np.mean(np.asarray(scores, np.float64) >= threshold))
            for tag, scores in views.items()},
        "recalibrated_from": str(source),
        "recalibration": {
            "source_threshold": old_threshold,
            "source_target_fpr": old_fpr,
            "source_threshold_recomputed": recomputed,
            "source_threshold_reproduced": reproduced,
            "data": data,
            "config": config_to_dict(config),
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    held = calibration["heldout_at_threshold"]
    anomalous = held["anomalous_accuracy"]
    logger.info("recalibrated threshold %.4g for benign FPR %.3g (was %.4g for %s): held-out "
                "benign accuracy %.4f, anomalous accuracy %s", threshold, target, old_threshold,
                old_fpr, held["benign_accuracy"],
                "not measured" if anomalous is None else f"{anomalous:.4f}")
    path = _write_version(source, Path(config.out), calibration)
    _update_card(source, path, calibration)
    logger.info("wrote %s (copy of %s)", path, source)
    return RecalibrationResult(path=path, source=source, threshold=threshold,
                               calibration=calibration)


def _main(argv: Sequence[str] | None) -> int:
    config = parse_config(CalibrateConfig, argv, prog=PROG, epilog=EPILOG)
    configure_logging()
    result = recalibrate_detector(config)
    recalibration = result.calibration["recalibration"]
    note = "" if recalibration["source_threshold_reproduced"] else \
        " WARNING: the source's threshold was not reproduced (other data?)"
    print(f"{result.path}: {describe_calibration(result.calibration)} on "
          f"{result.calibration['heldout_examples']['benign']} benign held-out images "
          f"(recalibrated from {result.source} at {recalibration['source_threshold']:.4g})"
          f"{note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (default ``sys.argv[1:]``); return the exit code."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
