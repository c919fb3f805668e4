"""The OOD detector's training config (`DetectorConfig`, the flags of ``python -m detector.train``)
and the fields the detector's commands share (`spec_field`, `limit_field`, `exclude_field`,
`detector_field`): each field declares its rule in its metadata (`common.constraints`), so the
flag, its help and its check cannot drift apart. TensorFlow-free: ``--help`` and a bad flag
answer before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.constraints import check_fields, check_int
from common.distribute import check_distribute, distribute_field
from common.errors import invalid
from detector.export import CALIBRATION_RATES, check_version_path

__all__ = ["DetectorConfig", "detector_field", "exclude_field", "limit_field", "spec_field"]

_TEXT = {"rule": "nonempty"}


def spec_field(help: str, **kwargs: Any) -> Any:
    """A dataset spec (`common.data.load_dataset`), required unless `kwargs` give a default."""
    return field(**kwargs, metadata={"help": help, "metavar": "SPEC", **_TEXT})


def limit_field(role: str, minimum: int = 1) -> Any:
    """At most this many `role` images, or all of them (None)."""
    return field(default=None, metadata={
        "help": f"use at most this many {role} images (seeded, class-stratified)",
        "metavar": "N", "min": minimum})


def exclude_field(help: str) -> Any:
    """A file of class names to drop (checked to exist by `check_exclude`)."""
    return field(default=None, metadata={"help": help, "metavar": "FILE", **_TEXT})


def detector_field() -> Any:
    """An exported detector: a version folder or its model folder."""
    return field(metadata={
        "help": "exported detector: a version folder (detectors/cifar10_ood/1) or its model "
                "folder (the highest version)", "metavar": "DIR", **_TEXT})


def check_exclude(value: str | None) -> None:
    """`UsageError` unless `value` (``exclude_classes``) is None or an existing file."""
    if value is not None and not Path(value).is_file():
        raise invalid("exclude_classes", value, "an existing file with one class name per line")


@dataclass(frozen=True)
class DetectorConfig:
    """Train Atli et al.'s OOD query detector (benign = the victim's data, attack = natural
    images outside the task), calibrate its threshold and export it like a victim."""

    benign: str = spec_field("dataset spec of the victim's training distribution (benign "
                             "queries)")
    attack: str = spec_field("dataset spec of natural images outside the task (the attacker's "
                             "transfer set)")
    out: str = field(metadata={
        "help": "export folder <base>/<name>/<version>, e.g. detectors/cifar10_ood/1 (must not "
                "exist yet)", "metavar": "DIR", **_TEXT})
    benign_split: str = field(default="train", metadata={"help": "split(s) of --benign", **_TEXT})
    attack_split: str = field(default="train", metadata={
        "help": "split(s) of --attack, e.g. train (keep val for python -m detector.evaluate)",
        **_TEXT})
    exclude_classes: str | None = exclude_field(
        "file of --attack class names to drop (classes that overlap the victim's task)")
    benign_limit: int | None = limit_field("benign", 4)
    attack_limit: int | None = limit_field("attack", 4)
    image_size: int | None = field(default=None, metadata={
        "help": "the victim's input side: every image is resized to it first (the detector sees "
                "what the victim sees); default the benign images' size", "metavar": "PX",
        "min": 8})
    backbone: str = field(default="cnn", metadata={
        "help": "backbone: cnn, resnet34 or a Keras Applications name (MobileNet, ...)",
        **_TEXT})
    arch_args: tuple[str, ...] = field(default=(), metadata={
        "help": "backbone constructor arguments KEY=VALUE, e.g. alpha=0.25 for MobileNet",
        "metavar": "KEY=VALUE"})
    weights: str = field(default="none", metadata={
        "help": "backbone weights: none, imagenet (needs internet) or a weights file",
        "metavar": "none|imagenet|PATH", **_TEXT})
    input_size: int | None = field(default=None, metadata={
        "help": "backbone input side (images are upsampled to it inside the model); default "
                "--image-size for cnn/resnet34, 96 for pre-trained backbones", "metavar": "PX"})
    epochs: int = field(default=5, metadata={"help": "training epochs", "min": 1})
    batch_size: int = field(default=64, metadata={"help": "training batch size", "min": 1})
    learning_rate: float = field(default=1e-3, metadata={
        "help": "Adam learning rate (cosine decay)", "gt": 0})
    holdout: float = field(default=0.15, metadata={
        "help": "fraction of each set held out: benign for the threshold, attack for the "
                "reported validation accuracy", "min": 0.01, "lt": 0.9})
    target_fpr: float = field(default=0.01, metadata={
        "help": "benign false-positive rate the threshold is calibrated for (held-out benign "
                "images); the thresholds for "
                + ", ".join(f"{rate:g}" for rate in CALIBRATION_RATES)
                + " are recorded as well", "min": 0, "lt": 1})
    jpeg_augment: float = field(default=0.5, metadata={
        "help": "share of the training images (both sets, and the held-out attack images) "
                "re-encoded as JPEG at a random quality in [50, 95], so the detector cannot tell "
                "the sets apart by their codec (0: off)", "min": 0, "max": 1})
    augment: float = field(default=0.0, metadata={
        "help": "share of the training images of both sets given a random evasion (JPEG 50-95, "
                "resize, blur or noise, then JPEG half the time: detector.evasion.augment), so "
                "a thief's transform is never what the detector learns (0: off; "
                "benchmarks.evasion_bench measures 0.9)", "min": 0, "max": 1})
    augment_jpeg: float = field(default=0.5, metadata={
        "help": "with --augment: probability that an image given a resize, blur or noise is "
                "JPEG re-encoded afterwards (quality 50-95); 1 leaves no augmented attack image "
                "without JPEG artefacts, so the codec of JPEG-stored benign data is never the "
                "signal", "min": 0, "max": 1})
    smooth: float = field(default=0.0, metadata={
        "help": "Gaussian blur of this sigma (pixels of the victim's input) applied inside the "
                "detector before the backbone, in training and in use: JPEG blocks and pixel "
                "noise, what cheap evasions change, are gone before the detector looks "
                "(0: off)", "min": 0, "max": 4})
    seed: int = field(default=0, metadata={
        "help": "random seed (subsets, split, shuffling, init)", "min": 0})
    work_dir: str | None = field(default=None, metadata={
        "help": "checkpoint folder to resume from after a crash; default <out>/../.train-<version>",
        "metavar": "DIR", **_TEXT})
    distribute: str = distribute_field()

    def __post_init__(self) -> None:
        from common.backbones import get_backbone, parse_arch_args, resolve_weights

        # The strategy first: its message lists the names as `check_distribute` words them.
        check_distribute(self.distribute)
        check_fields(self)
        check_exclude(self.exclude_classes)
        backbone = get_backbone(self.backbone)
        object.__setattr__(self, "backbone", backbone.name)
        if not isinstance(self.arch_args, tuple):
            raise invalid("arch_args", self.arch_args, "a tuple of KEY=VALUE strings")
        parse_arch_args(self.arch_args)
        resolve_weights(self.weights, backbone=backbone)
        check_int("input_size", self.input_size, min=backbone.min_size, optional=True)
        check_version_path("out", self.out, "detectors/cifar10_ood/1")

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        from common.backbones import parse_arch_args

        return parse_arch_args(self.arch_args)

    @property
    def work_path(self) -> Path:
        out = Path(self.out)
        return Path(self.work_dir) if self.work_dir else out.parent / f".train-{out.name}"
