"""`KnockoffConfig`: the one frozen config of a Knockoff Nets run, shared by the CLI and the API.

Every field is validated here, before any side effect (no run directory created, no query
sent). The config is written into the run directory as `config.json`; `--resume` refuses a
config that differs from it (apart from `resume` itself), so a journal is never continued under
other settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from common.backbones import get_backbone, parse_arch_args
from common.errors import invalid

__all__ = ["KnockoffConfig", "RESUME_NEUTRAL_FIELDS"]

_TARGET = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d{1,5})$|^(unix|dns|unix-abstract):.+$")
_GRANULARITY = re.compile(r"^(probs|top1|topk:\d+)$")

# Fields that may change between a run and its resumption.
RESUME_NEUTRAL_FIELDS = ("resume", "api_key", "timeout", "in_flight", "grpc")


@dataclass(frozen=True)
class KnockoffConfig:
    """Steal a TF Serving image classifier through its gRPC Predict API (Knockoff Nets)."""

    transfer_set: str = field(metadata={
        "help": "the attacker's natural images: any spec of the data layer (image folder or zip, "
                "Tiny-ImageNet folder/zip, .npz/.npy, tensorflow-datasets name)",
        "metavar": "SPEC"})
    grpc: str = field(default="localhost:8500", metadata={
        "help": "the victim's TF Serving gRPC endpoint HOST:PORT", "metavar": "HOST:PORT"})
    model: str = field(default="default", metadata={
        "help": "model name on the server (TF Serving's default name is 'default')"})
    version: int | None = field(default=None, metadata={"help": "model version (default: latest)"})
    api_key: str | None = field(default=None, metadata={
        "help": "API key sent as x-api-key metadata (for a gateway in front of TF Serving)"})
    transfer_split: str = field(default="train", metadata={
        "help": "split(s) of the transfer set, e.g. train or train+val"})
    exclude_classes: str | None = field(default=None, metadata={
        "help": "file of class names (one a line) to drop from the transfer set",
        "metavar": "FILE"})
    budget: int = field(default=10_000, metadata={"help": "number of queries (images) to send"})
    strategy: str = field(default="random", metadata={
        "help": "sampling strategy", "choices": ("random", "adaptive")})
    reward: str = field(default="all", metadata={
        "help": "adaptive strategy's reward", "choices": ("cert", "div", "loss", "all")})
    backbone: str = field(default="mobilenet", metadata={
        "help": "surrogate architecture: a Keras Applications name, cnn or resnet34"})
    weights: str = field(default="imagenet", metadata={
        "help": "surrogate initial weights: imagenet (needs internet), none, or a file",
        "metavar": "imagenet|none|PATH"})
    arch_args: tuple[str, ...] = field(default=(), metadata={
        "help": "extra backbone arguments KEY=VALUE, e.g. alpha=0.25 for MobileNet",
        "metavar": "KEY=VALUE"})
    input_size: int | None = field(default=None, metadata={
        "help": "surrogate input side in pixels (default: the backbone's default)",
        "metavar": "PX"})
    epochs: int = field(default=10, metadata={"help": "surrogate training epochs"})
    batch_size: int = field(default=64, metadata={"help": "surrogate training batch size"})
    learning_rate: float = field(default=1e-3, metadata={"help": "surrogate learning rate"})
    granularity: str = field(default="probs", metadata={
        "help": "train on: probs (what the victim returns), top1 (one-hot), topk:K",
        "metavar": "probs|top1|topk:K"})
    query_batch: int = field(default=64, metadata={"help": "images per Predict request"})
    in_flight: int = field(default=4, metadata={"help": "Predict requests in flight at once"})
    timeout: float = field(default=60.0, metadata={"help": "deadline of one Predict, seconds"})
    test_set: str | None = field(default=None, metadata={
        "help": "labelled test data of the victim's task (evaluation only)", "metavar": "SPEC"})
    test_split: str = field(default="test", metadata={"help": "split of --test-set"})
    test_limit: int | None = field(default=None, metadata={
        "help": "evaluate on at most this many test images"})
    heldout: int = field(default=1000, metadata={
        "help": "transfer images held out of the attack to measure fidelity off the test set"})
    noise: int = field(default=1000, metadata={
        "help": "uniform-noise images to measure fidelity on (Jagielski et al.)"})
    curve_points: int = field(default=4, metadata={
        "help": "points of the accuracy/fidelity-vs-queries curve (surrogates trained on "
                "journal prefixes; 1: only the final surrogate)"})
    out: str = field(default="runs/knockoff", metadata={
        "help": "run directory (config, journal, checkpoints, surrogate, report)",
        "metavar": "RUN_DIR"})
    resume: bool = field(default=False, metadata={
        "help": "continue the run in RUN_DIR without re-sending answered queries"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        if not self.transfer_set:
            raise invalid("transfer_set", self.transfer_set, "a dataset spec")
        if not _TARGET.match(self.grpc):
            raise invalid("grpc", self.grpc, "HOST:PORT (e.g. localhost:8500)")
        if not self.model:
            raise invalid("model", self.model, "a model name")
        for name in ("budget", "epochs", "batch_size", "query_batch", "in_flight",
                     "curve_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid(name, value, "a positive integer")
        for name in ("heldout", "noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise invalid(name, value, "a non-negative integer")
        if self.version is not None and self.version < 0:
            raise invalid("version", self.version, "a non-negative integer or None")
        if self.strategy not in ("random", "adaptive"):
            raise invalid("strategy", self.strategy, "'random' or 'adaptive'")
        if self.reward not in ("cert", "div", "loss", "all"):
            raise invalid("reward", self.reward, "one of 'cert', 'div', 'loss', 'all'")
        if not _GRANULARITY.match(self.granularity) or self.granularity == "topk:0":
            raise invalid("granularity", self.granularity, "probs, top1 or topk:K with K >= 1")
        if self.input_size is not None and self.input_size < 8:
            raise invalid("input_size", self.input_size, "at least 8 pixels, or None")
        if not self.learning_rate > 0:
            raise invalid("learning_rate", self.learning_rate, "a positive number")
        if not self.timeout > 0:
            raise invalid("timeout", self.timeout, "a positive number of seconds")
        if self.exclude_classes is not None and not Path(self.exclude_classes).is_file():
            raise invalid("exclude_classes", self.exclude_classes, "an existing file")
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise invalid("weights", self.weights, "imagenet, none, or an existing weights file")
        get_backbone(self.backbone, argument="backbone")
        parse_arch_args(self.arch_args)

    def arch_kwargs(self) -> dict:
        """`arch_args` as constructor keyword arguments: ``alpha=0.25`` -> ``{"alpha": 0.25}``."""
        return parse_arch_args(self.arch_args)
