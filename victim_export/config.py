"""The one config of `python -m victim_export`: what victim to train and where to export it.

`VictimConfig` is shared by the CLI (flags are derived from its fields by `common.cli`) and the
Python API (`run_victim_export(VictimConfig(...))`). It validates every field in
``__post_init__`` and raises `UsageError` before anything is loaded, trained or written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.backbone_specs import get_backbone_spec, parse_arch_args, resolve_weights
from common.constraints import check_choice, check_fields, check_int
from common.distribute import check_distribute, distribute_field
from common.errors import invalid
from victim_export.dense_archs import check_dense_args, is_dense_arch

__all__ = [
    "AUGMENTATIONS",
    "AUGMENTATION_PARTS",
    "INPUT_DTYPES",
    "OPTIMIZERS",
    "SCHEDULES",
    "VictimConfig",
    "augmentation_parts",
    "default_model_name",
]

INPUT_DTYPES = ("uint8", "float32", "float64")
AUGMENTATION_PARTS = ("rotate", "crop", "flip", "color")
# "none" or any non-empty combination of the parts, joined by "+" in AUGMENTATION_PARTS' order
# (the order they are applied in): "crop", "crop+flip", "rotate+crop+color", ...
AUGMENTATIONS = ("none", *(
    "+".join(part for bit, part in enumerate(AUGMENTATION_PARTS) if mask >> bit & 1)
    for mask in range(1, 2 ** len(AUGMENTATION_PARTS))
))
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "plateau", "constant")

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tar.bz2", ".tgz", ".tar", ".zip", ".npz", ".npy")


def augmentation_parts(augment: str) -> frozenset[str]:
    """The parts of an `AUGMENTATIONS` value (``"rotate+crop"`` -> {"rotate", "crop"}; "none":
    none); `UsageError` naming `augment` for anything else."""
    check_choice("augment", augment, AUGMENTATIONS)
    return frozenset() if augment == "none" else frozenset(augment.split("+"))


def default_model_name(dataset: str, arch: str) -> str:
    """``<dataset stem>_<arch>``, e.g. ``data/cifar10_q75.zip`` + cnn -> ``cifar10_q75_cnn``."""
    stem = Path(dataset.rstrip("/\\")).name
    for suffix in _ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-") or "dataset"
    return f"{stem}_{arch.lower()}"


@dataclass(frozen=True)
class VictimConfig:
    """Train a Keras image classifier (the victim) and export it as TensorFlow Serving loads it."""

    dataset: str = field(metadata={
        "help": "dataset spec: a tensorflow-datasets name (cifar10), an image folder or .zip "
                "(class per sub-folder), a Tiny-ImageNet folder, or .npz/.npy arrays",
        "metavar": "SPEC", "rule": "nonempty"})
    train_split: str = field(default="train", metadata={"help": "split to train (and validate) on",
                                                        "rule": "nonempty"})
    test_split: str = field(default="test", metadata={"help": "split to report accuracy on",
                                                      "rule": "nonempty"})
    data_dir: str | None = field(default=None, metadata={
        "help": "tensorflow-datasets data directory (tfds names only)", "metavar": "DIR",
        "rule": "nonempty"})
    arch: str = field(default="cnn", metadata={
        "help": "architecture: cnn, resnet34 or a Keras Applications name (ResNet50, MobileNet, "
                "EfficientNetB0, ...); or a dense victim of the exact attacks on pixels in "
                "[0, 1]: softmax (multinomial logistic regression), logreg (binary; "
                "--arch-args positive=N for class N vs rest), mlp (--arch-args hidden=H, one "
                "ReLU layer); case-insensitive"})
    arch_args: tuple[str, ...] = field(default=(), metadata={
        "help": "extra constructor arguments of the architecture as KEY=VALUE (values read as "
                "JSON when they parse, else as text), e.g. alpha=0.25 for MobileNet, "
                "stem=cifar or width=32 for resnet34", "metavar": "KEY=VALUE"})
    weights: str = field(default="none", metadata={
        "help": "initial weights: none, imagenet (needs internet) or a weights file",
        "metavar": "none|imagenet|PATH"})
    input_size: int | None = field(default=None, metadata={
        "help": "square input side the victim is served at; default: the dataset's image size "
                "for cnn/resnet34, the architecture's default size otherwise", "metavar": "PX"})
    epochs: int = field(default=30, metadata={"help": "maximum number of training epochs",
                                              "min": 1})
    batch_size: int = field(default=128, metadata={"help": "training batch size", "min": 1})
    learning_rate: float = field(default=1e-3, metadata={"help": "initial learning rate",
                                                         "gt": 0})
    optimizer: str = field(default="adam", metadata={
        "help": "optimizer (sgd: momentum 0.9, Nesterov)", "choices": OPTIMIZERS})
    weight_decay: float = field(default=0.0, metadata={
        "help": "decoupled weight decay of the optimizer (0: none)", "min": 0})
    schedule: str = field(default="cosine", metadata={
        "help": "learning-rate schedule: cosine decay over all epochs, reduce on plateau of the "
                "validation loss, or constant", "choices": SCHEDULES})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing in [0, 1)",
                                                          "min": 0, "lt": 1})
    dropout: float = field(default=0.0, metadata={
        "help": "dropout rate before the final dense layer", "min": 0, "lt": 1})
    augment: str = field(default="crop+flip", metadata={
        "help": "training augmentation: none, or parts joined by '+' in this order: rotate "
                "(+/-15 degrees), crop (random crop after zero padding by 1/8 of the side), "
                "flip (horizontal), color (brightness +/-0.25 of full scale, contrast "
                "x0.6-1.4); e.g. crop+flip for natural images, rotate+crop+color for traffic "
                "signs (never flip)", "metavar": "none|PART+PART",
        "choices": AUGMENTATIONS})
    val_split: float = field(default=0.1, metadata={
        "help": "fraction of the training split held out for early stopping (0: none)",
        "min": 0, "lt": 0.5})
    patience: int = field(default=5, metadata={
        "help": "epochs without validation-accuracy gain before stopping (0: never stop early; "
                "the best epoch's weights are kept either way)", "min": 0})
    limit: int | None = field(default=None, metadata={
        "help": "use at most this many training images (a seeded random subset), for quick runs",
        "metavar": "N", "min": 2})
    seed: int = field(default=0, metadata={"help": "random seed (data split, shuffling, init)",
                                           "min": 0})
    out: str = field(default="victims", metadata={
        "help": "model base directory: receives <name>/<version>/, <name>/card.json and "
                "models.config", "metavar": "DIR", "rule": "nonempty"})
    name: str | None = field(default=None, metadata={
        "help": "model name (TF Serving's model_spec.name); default <dataset>_<arch>"})
    version: int | None = field(default=None, metadata={
        "help": "version number to export; default: the next free integer", "min": 1})
    export_logits: bool = field(default=False, metadata={
        "help": "also export a `logits` output beside `probabilities`", "check": True})
    input_dtype: str | None = field(default=None, metadata={
        "help": "dtype of the serving input: uint8 (raw pixels 0..255), float32 or float64 "
                "(image backbones: pixels 0..255; dense archs: pixels in [0, 1]; float64 also "
                "makes the outputs and, for dense archs, the whole graph float64); default "
                "uint8 for image backbones, float64 for softmax/logreg/mlp",
        "metavar": "uint8|float32|float64"})
    flatten: bool = field(default=False, metadata={
        "help": "serve a flat input [batch, H*W*C] (reshaped inside the graph) instead of "
                "[batch, H, W, C]; float input dtypes only", "check": True})
    test_fraction: float = field(default=0.2, metadata={
        "help": "when --train-split equals --test-split (a dataset with one split, e.g. the "
                "MNIST test set), hold out this seeded fraction of it as the test set "
                "(0: train and test on the whole split)", "min": 0, "max": 0.9})
    container_base_path: str = field(default="/models", metadata={
        "help": "where the out directory is mounted in the TF Serving container; models.config "
                "gets base_path <this>/<name>. '' or 'local': the local absolute path",
        "metavar": "PATH"})
    distribute: str = distribute_field()
    fresh: bool = field(default=False, metadata={
        "help": "discard the training state an interrupted run of this model left in "
                "<out>/<name>/.training and train from the start (without it, the same command "
                "resumes after the last finished epoch)", "check": True})

    def __post_init__(self) -> None:
        check_fields(self)
        if not isinstance(self.arch_args, tuple):
            raise invalid("arch_args", self.arch_args, "a tuple of KEY=VALUE strings")
        if not isinstance(self.weights, str):
            raise invalid("weights", self.weights, "'none', 'imagenet' or a weights file")
        check_distribute(self.distribute)
        if is_dense_arch(self.arch):
            object.__setattr__(self, "arch", self.arch.strip().lower())
            if self.distribute != "none":
                raise invalid("distribute", self.distribute,
                              f"none for the dense arch {self.arch} (trained on one device)")
            check_dense_args(self.arch, self.arch_kwargs)
            if self.weights.strip().lower() not in ("none", ""):
                raise invalid("weights", self.weights, f"'none' for the dense arch {self.arch}")
            object.__setattr__(self, "weights", "none")
            if self.input_size is not None:
                raise invalid("input_size", self.input_size,
                              f"None for the dense arch {self.arch} (it takes the images' size)")
            if self.input_dtype is None:
                object.__setattr__(self, "input_dtype", "float64")
            elif self.input_dtype == "uint8":
                raise invalid("input_dtype", self.input_dtype,
                              f"float32 or float64 for the dense arch {self.arch} (pixels in "
                              "[0, 1])")
        else:
            backbone = get_backbone_spec(self.arch, argument="arch")
            object.__setattr__(self, "arch", backbone.name)
            self.arch_kwargs  # validates the KEY=VALUE pairs
            resolve_weights(self.weights, backbone=backbone)
            if self.weights.strip().lower() in ("none", "imagenet", ""):
                object.__setattr__(self, "weights", self.weights.strip().lower() or "none")
            check_int("input_size", self.input_size, min=backbone.min_size, optional=True,
                      expected=f"an integer of at least {backbone.min_size} (the minimum of "
                               f"{backbone.name})")
            if self.input_dtype is None:
                object.__setattr__(self, "input_dtype", "uint8")
        check_choice("input_dtype", self.input_dtype, INPUT_DTYPES)
        if self.flatten and self.input_dtype == "uint8":
            raise invalid("flatten", self.flatten,
                          "false with a uint8 input (flat inputs are float32/float64)")
        if self.name is not None and (not isinstance(self.name, str)
                                      or not MODEL_NAME_RE.match(self.name)):
            raise invalid("name", self.name,
                          "a model name of letters, digits, '_', '.' or '-' (not starting "
                          "with '.', '_' or '-')")
        if not isinstance(self.container_base_path, str) or not (
            self.container_base_path in ("", "local")
            or self.container_base_path.startswith("/")
            or "://" in self.container_base_path
        ):
            raise invalid("container_base_path", self.container_base_path,
                          "an absolute path in the container (/models), a URL (gs://...), "
                          "'' or 'local'")

    @property
    def model_name(self) -> str:
        """The TF Serving model name: `name`, or ``<dataset stem>_<arch>``."""
        return self.name or default_model_name(self.dataset, self.arch)

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        """`arch_args` as keyword arguments: ``("alpha=0.25",)`` -> ``{"alpha": 0.25}``."""
        return parse_arch_args(self.arch_args)

    @property
    def model_dir(self) -> Path:
        """``<out>/<model_name>``: holds the integer version folders and card.json."""
        return Path(self.out) / self.model_name
