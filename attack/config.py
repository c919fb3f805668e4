"""The frozen configs of the attacks, shared by each attack's CLI and its Python API.

A config is composed from parts, each declared once as a frozen dataclass mixin, so a field, its
default, its help text and its rule (metadata checked by `common.constraints.check_fields`) live
in one place; a part whose rules involve files or other fields adds a `_validate`:

* `ServerPart`: how to reach a TF Serving model (grpc, model, version, api_key, timeout,
  query_batch); the exact attacks (equation solving, FEE) use only this;
* `EndpointPart` (a `ServerPart`): plus what the learning attacks need to understand a victim
  they did not export (rest, signature, output, output_kind, input_range, in_flight);
* `SurrogatePart`: the surrogate network and its training;
* `TransferRecipePart` (a `SurrogatePart`): the training recipe of the natural-image attacks
  (Knockoff, Copycat): a weight average (``--ema 0.99``), a higher peak rate
  (``--learning-rate 0.002``) and no crop/flip (``--augment none``), measured in docs/attacks.md;
* `EvaluationPart`: the labelled test set and the fidelity images;
* `RunPart`: the run directory, ``--resume`` and the seed.

`AttackConfig` composes all five; `KnockoffConfig` (Knockoff Nets, Orekondy et al. 2019, with
the semi-supervised option of Jagielski et al. 2020), `CopycatConfig` (Copycat CNN, da Silva et
al. 2018) and `JBDAConfig` (Papernot et al. 2017, with Juuti et al.'s reservoir bound) add their
own fields; `attack.equation_solving` and `attack.fee` compose `ServerPart`, `EvaluationPart`
and `RunPart` with theirs. The field names stay flat (``--test-set``, not ``--evaluation.test-set``)
and config.json is the same flat mapping as before the parts existed, so old run directories
resume. Every field is validated before any side effect (no run directory created, no query
sent). `--resume` refuses a config that differs from the saved one (apart from the fields
`RESUME_CHANGES` declares, each with what the resume redoes: nothing, the final pass, or more
queries), so a journal is never continued under other settings; a run started
under an earlier default (`RUN_LEGACY`) keeps it on ``--resume`` (`keep_run_settings`).

No TensorFlow here: `--help` and a wrong flag answer before the heavy imports.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from common.backbone_specs import get_backbone_spec, parse_arch_args
from common.constraints import check_fields
from common.distribute import check_distribute
from common.errors import invalid

__all__ = [
    "INPUT_RANGES",
    "OUTPUT_KINDS",
    "RECIPE_LEGACY",
    "REDO_EXTEND",
    "REDO_FINAL_PASS",
    "REDO_NOTHING",
    "RESUME_CHANGES",
    "RESUME_NEUTRAL_FIELDS",
    "RUN_LEGACY",
    "SURROGATE_AUGMENTATIONS",
    "AttackConfig",
    "CopycatConfig",
    "DomainPart",
    "EndpointPart",
    "EvaluationPart",
    "ExactConfig",
    "ExactEvaluationPart",
    "JBDAConfig",
    "KnockoffConfig",
    "RunPart",
    "ServerPart",
    "SurrogatePart",
    "TransferPart",
    "TransferRecipePart",
    "changed_on_resume",
    "check_granularity_spelling",
    "keep_run_settings",
    "query_batch_field",
    "resume_fields",
    "run_dir_field",
    "same_setting",
    "saved_run_config",
    "validate_parts",
]

log = logging.getLogger(__name__)

_GRANULARITY = re.compile(r"^(probs|top1|topk:\d+)$")


def check_granularity_spelling(value: Any) -> None:
    """`UsageError` naming ``granularity`` unless `value` is written probs, top1 or topk:K
    (K >= 1): the rule of every config with a ``--granularity`` (Knockoff's, the synthetic
    thief's); whether K fits the victim is `attack.responses.check_granularity`'s, once its
    classes are known."""
    if not isinstance(value, str) or not _GRANULARITY.match(value) or value == "topk:0":
        raise invalid("granularity", value, "probs, top1 or topk:K with K >= 1")

OUTPUT_KINDS = ("auto", "probabilities", "logits", "labels", "topk")
"""How the victim's answers are read: ``auto`` decides from the signature and the first answers."""
INPUT_RANGES = ("auto", "0,255", "0,1", "-1,1")
"""The value range a float input expects: ``auto`` decides with a few probe queries."""

REDO_NOTHING, REDO_FINAL_PASS, REDO_EXTEND = "nothing", "final pass", "extend"
"""What a resume that changes a field must redo (the values of `RESUME_CHANGES`): nothing (the
same answers, read and trained on as before); the final pass (trained again from the journaled
answers, no query sent); or extend (more queries continue the run's stream, then the final pass
on every answer)."""

RESUME_CHANGES: Mapping[str, str] = MappingProxyType({
    # how to reach the victim (the same model over gRPC or REST), credentials and pacing
    **dict.fromkeys(("resume", "api_key", "timeout", "in_flight", "grpc", "rest", "distribute"),
                    REDO_NOTHING),
    # how its journaled answers are read (`--resume --output-kind logits` re-reads the same raw
    # answers the right way)
    "output_kind": REDO_NOTHING,
    # the data-free attack's final pass (`--resume --final-epochs N` trains after the budget)
    "final_epochs": REDO_FINAL_PASS,
})
"""The one declaration of the fields ``--resume`` may change, each with what the resumed run
must redo; `attack.pipeline.prepare_run_dir` compares every other field with the run's
config.json and refuses a difference. A config class extends it with its own (``resume_changes``,
a class attribute: `attack.synthetic.SyntheticConfig` adds ``epochs`` and ``budget``); the
attack that declares a field other than ``nothing`` carries out the redo itself (`changed_on_resume`
says what changes)."""

RESUME_NEUTRAL_FIELDS = tuple(RESUME_CHANGES)
"""The names of `RESUME_CHANGES` (the fields every config may change on ``--resume``)."""


RECIPE_LEGACY = {"target_temperature": 1.0, "mixup": 0.0, "label_smoothing": 0.0,
                 "warmup": 0.0, "ema": 0.0, "color_jitter": 0.0}
"""The surrogate training-recipe settings under which `SurrogateTrainer.fit` trains as it was first
written: plain soft cross-entropy, cosine decay from the peak rate, no mixing, no weight average,
no colour jitter."""

RUN_LEGACY = {**RECIPE_LEGACY, "augment": "crop+flip", "fit_batch_size": None,
              "learning_rate": 1e-3}
"""The surrogate settings of the trainer as first written, for runs started before a default
changed or a field existed: a saved config.json that lacks one of these fields ran with this
value (`attack.pipeline.prepare_run_dir` compares it so), and a run that saved this value keeps
it on ``--resume`` where the flag is left at today's default (`keep_run_settings`). Declared by
the configs whose runs keep them (``run_legacy``): Knockoff, Copycat, JBDA."""

SURROGATE_AUGMENTATIONS = ("none", "flip", "crop", "crop+flip")
"""The on-the-fly augmentations of the surrogate's training images (`SurrogateTrainer`'s)."""


def run_dir_field(default: str, holds: str = "config, journal, checkpoints, surrogate, "
                                              "report") -> Any:
    """The ``out`` field (``--out RUN_DIR``) every attack declares, with its default folder and
    what the run directory `holds`."""
    return field(default=default, metadata={"help": f"run directory ({holds})",
                                            "metavar": "RUN_DIR", "rule": "nonempty"})


def query_batch_field(default: int, what: str = "images") -> Any:
    """The ``query_batch`` field: `what` is sent per Predict request, `default` at a time."""
    return field(default=default, metadata={"help": f"{what} per Predict request", "min": 1})


def validate_parts(config) -> None:
    """Check every field's declared rule (`common.constraints.check_fields`), then run the
    `_validate` of every part `config` is composed of (the rules that involve files or several
    fields), endpoint first."""
    check_fields(config)
    for part in _PARTS:
        if isinstance(config, part):
            part._validate(config)


# -- the parts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerPart:
    """How to reach the victim on a TF Serving server: gRPC target, model, version, pacing."""

    grpc: str = field(default="localhost:8500", metadata={
        "help": "the victim's TF Serving gRPC endpoint HOST:PORT", "metavar": "HOST:PORT",
        "rule": "target"})
    model: str = field(default="default", metadata={
        "help": "model name on the server (TF Serving's default name is 'default')",
        "rule": "nonempty"})
    version: int | None = field(default=None, metadata={
        "help": "model version (default: latest)", "min": 0})
    api_key: str | None = field(default=None, metadata={
        "help": "API key sent as x-api-key metadata (for a gateway in front of TF Serving)"})
    timeout: float = field(default=60.0, metadata={
        "help": "deadline of one Predict, seconds", "gt": 0})
    query_batch: int = query_batch_field(64)



@dataclass(frozen=True)
class EndpointPart(ServerPart):
    """`ServerPart` plus how to read a victim we did not export: REST, signature, output kind,
    input value range (resolved by `attack.victim`)."""

    rest: str | None = field(default=None, metadata={
        "help": "the victim's TF Serving REST endpoint, e.g. http://host:8501 (when given, "
                "REST :predict is used instead of --grpc)", "metavar": "URL", "rule": "url"})
    signature: str | None = field(default=None, metadata={
        "help": "serving signature to query; none: serving_default", "metavar": "NAME",
        "rule": "nonempty"})
    output: str | None = field(default=None, metadata={
        "help": "output tensor to learn from; none: chosen from the signature and stated in "
                "the report", "metavar": "NAME", "rule": "nonempty"})
    output_kind: str = field(default="auto", metadata={
        "help": "what that output holds: probabilities, logits (softmax applied), labels "
                "(class ids, label-only), topk (scores+classes pairs), or auto (decided from "
                "the signature and the first answers)", "choices": OUTPUT_KINDS})
    input_range: str = field(default="auto", metadata={
        "help": "pixel value range a float input expects; auto spends at most 64 reported "
                "probe queries to decide (uint8 inputs take 0..255 as they are)",
        "choices": INPUT_RANGES, "metavar": "auto|0,255|0,1|-1,1"})
    num_classes: int | None = field(default=None, metadata={
        "help": "the victim's number of classes K, for outputs that do not tell it (class ids "
                "only, top-k pairs); none: read from the signature", "metavar": "K", "min": 2})
    in_flight: int = field(default=4, metadata={"help": "Predict requests in flight at once",
                                                "min": 1})



@dataclass(frozen=True)
class SurrogatePart:
    """The surrogate network and its training."""

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
        "metavar": "PX", "min": 8})
    epochs: int = field(default=10, metadata={"help": "surrogate training epochs", "min": 1})
    batch_size: int = field(default=64, metadata={
        "help": "surrogate batch size of the online updates (adaptive strategy) and the "
                "data-free rounds; the final training on the answers uses --fit-batch-size "
                "(none: this)", "min": 1})
    learning_rate: float = field(default=1e-3, metadata={"help": "surrogate learning rate",
                                                         "gt": 0})
    target_temperature: float = field(default=0.5, metadata={
        "help": "surrogate training: the victim's probability rows are raised to the power "
                "1/T and renormalised (T < 1 sharpens them towards the top-1; 1 keeps them, "
                "the trainer as first written)", "metavar": "T", "gt": 0})
    mixup: float = field(default=0.0, metadata={
        "help": "surrogate training: mixup Beta(a, a) parameter (images and targets mixed "
                "within a batch); 0: off", "metavar": "A", "min": 0})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "surrogate training: label smoothing of the cross-entropy", "min": 0, "lt": 1})
    warmup: float = field(default=0.0, metadata={
        "help": "surrogate training: fraction of the steps with a linear warm-up of the "
                "learning rate before the cosine decay", "metavar": "FRACTION", "min": 0,
        "lt": 1})
    ema: float = field(default=0.0, metadata={
        "help": "surrogate training: momentum of an exponential moving average of the "
                "weights, used as the final surrogate; 0: off", "metavar": "MOMENTUM", "min": 0,
        "lt": 1})
    color_jitter: float = field(default=0.0, metadata={
        "help": "surrogate training: strength S of a light random colour change of each "
                "training image, on the fly after the crop and flip (brightness +/- S x 255, "
                "contrast and saturation x (1 +/- S)); 0: off", "metavar": "S", "min": 0,
        "lt": 1})
    augment: str = field(default="crop+flip", metadata={
        "help": "surrogate training: on-the-fly augmentation of the training images (crop: "
                "zero-pad by 1/8 of the side, random crop; flip: horizontal)",
        "choices": SURROGATE_AUGMENTATIONS})
    fit_batch_size: int | None = field(default=32, metadata={
        "help": "surrogate training: batch size of the final training on the answers (with "
                "the epochs fixed, a smaller batch makes more steps); none: --batch-size (the "
                "trainer as first written; with --distribute, the global batch)",
        "metavar": "N|none", "min": 1})
    distribute: str = field(default="none", metadata={
        "help": "surrogate training strategy: none (one device) or mirrored (every GPU of "
                "this machine); --batch-size is the global batch, split evenly over the GPUs "
                "(docs/distributed.md)", "choices": ("none", "mirrored"),
        "check": False})  # multiworker gets its own message below

    run_legacy: ClassVar[dict] = {}  # a config whose older runs keep earlier defaults names them

    def _validate(self) -> None:
        if check_distribute(self.distribute) == "multiworker":
            raise invalid("distribute", self.distribute,
                          "none or mirrored for an attack (each worker would send the queries "
                          "again); train on a run's journal with SurrogateTrainer(distribute="
                          "'multiworker') instead")
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise invalid("weights", self.weights, "imagenet, none, or an existing weights file")
        get_backbone_spec(self.backbone, argument="backbone")
        parse_arch_args(self.arch_args)

    def arch_kwargs(self) -> dict:
        """`arch_args` as constructor keyword arguments: ``alpha=0.25`` -> ``{"alpha": 0.25}``."""
        return parse_arch_args(self.arch_args)

    def recipe_kwargs(self) -> dict:
        """The training-recipe keyword arguments of `attack.surrogate.SurrogateTrainer`."""
        return {"target_temperature": self.target_temperature, "mixup": self.mixup,
                "label_smoothing": self.label_smoothing, "warmup": self.warmup,
                "ema": self.ema, "color_jitter": self.color_jitter, "augment": self.augment,
                "fit_batch_size": self.fit_batch_size}


@dataclass(frozen=True)
class EvaluationPart:
    """The labelled test set and the fidelity images (evaluation only, never queried for the
    attack's own learning)."""

    test_set: str | None = field(default=None, metadata={
        "help": "labelled test data of the victim's task (evaluation only)", "metavar": "SPEC"})
    test_split: str = field(default="test", metadata={"help": "split of --test-set"})
    test_limit: int | None = field(default=None, metadata={
        "help": "evaluate on at most this many test images", "min": 1})
    noise: int = field(default=1000, metadata={
        "help": "uniform-noise images to measure fidelity on (Jagielski et al.)", "min": 0})



@dataclass(frozen=True)
class RunPart:
    """The run directory, resumption and the seed."""

    out: str = run_dir_field("runs/attack")
    resume: bool = field(default=False, metadata={
        "help": "continue the run in RUN_DIR without re-sending answered queries",
        "check": True})
    seed: int = field(default=0, metadata={"help": "random seed", "check": True})
    resume_changes: ClassVar[Mapping[str, str]] = RESUME_CHANGES  # may change on --resume



@dataclass(frozen=True)
class ExactEvaluationPart(EvaluationPart):
    """`EvaluationPart` for the exact attacks (equation solving, FEE), which send points in
    [low, high] rather than images: test pixels are mapped there, and noise is that range."""

    test_set: str | None = field(default=None, metadata={
        "help": "labelled images of the victim's task, for fidelity (evaluation only; pixels "
                "mapped to [low, high])", "metavar": "SPEC"})
    noise: int = field(default=10_000, metadata={
        "help": "uniform random inputs in [low, high] to measure fidelity on (evaluation only)",
        "min": 0})
    reference: str | None = field(default=None, metadata={
        "help": "the victim's SavedModel version folder, to measure the parameter error "
                "(evaluation only; the attack never reads it)", "metavar": "DIR"})

    def _validate(self) -> None:
        if self.reference is not None and not Path(self.reference).is_dir():
            raise invalid("reference", self.reference, "an existing SavedModel version folder")


@dataclass(frozen=True)
class DomainPart:
    """The exact attacks' input domain [input_low, input_high] (line origins, random points;
    test pixels are mapped there)."""

    input_low: float = field(default=0.0, metadata={
        "help": "lowest input value of the victim's domain (victim_export dense victims: 0)",
        "check": True})
    input_high: float = field(default=1.0, metadata={
        "help": "highest input value of the victim's domain (victim_export dense victims: 1)",
        "check": True})

    def _validate(self) -> None:
        if not self.input_high > self.input_low:
            raise invalid("input_high", self.input_high, f"a number above input_low="
                                                         f"{self.input_low}")


def _default(part: type, name: str, default: Any) -> Any:
    """`part`'s field `name` (help, rule) with another default."""
    return field(default=default, metadata=part.__dataclass_fields__[name].metadata)


@dataclass(frozen=True)
class TransferRecipePart(SurrogatePart):
    """`SurrogatePart` with the training recipe of the attacks that learn from natural images
    (Knockoff, Copycat): an exponential moving average of the weights (0.99), a peak rate of
    0.002 and no crop/flip of the training images. Against the CIFAR-10 and GTSRB victims at
    5,000 queries it beat the generic defaults on every seed (docs/attacks.md, "The training
    recipe"); `attack.datafree`, `attack.synthetic` and `attack.jbda` keep `SurrogatePart`'s."""

    learning_rate: float = _default(SurrogatePart, "learning_rate", 2e-3)
    ema: float = _default(SurrogatePart, "ema", 0.99)
    augment: str = _default(SurrogatePart, "augment", "none")
    run_legacy: ClassVar[dict] = RUN_LEGACY  # the earlier defaults its older runs resume with


def saved_run_config(config: Any) -> dict | None:
    """On ``resume``, the settings RUN_DIR/config.json holds (its flat mapping); None without
    ``resume``, without a readable mapping there (`attack.pipeline.prepare_run_dir` says what is
    wrong with it)."""
    path = Path(config.out) / "config.json"
    if not getattr(config, "resume", False) or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return saved if isinstance(saved, dict) else None


def resume_fields(config: Any, redo: str) -> tuple[str, ...]:
    """The fields of `config` (an instance or a config class) that ``--resume`` may change
    with `redo` (`REDO_NOTHING`, `REDO_FINAL_PASS`, `REDO_EXTEND`) to do."""
    names = {f.name for f in dataclasses.fields(config)}
    changes = getattr(config, "resume_changes", RESUME_CHANGES)
    return tuple(name for name, what in changes.items() if what == redo and name in names)


def same_setting(saved: Any, current: Any) -> bool:
    """Whether a saved config value and the current one are the same setting: equal, or paths
    naming the same file or folder (relative or absolute, trailing slash, symlinks)."""

    if saved == current:
        return True
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        return len(saved) == len(current) and all(map(same_setting, saved, current))
    if not isinstance(saved, str) or not isinstance(current, str) or not saved or not current:
        return False
    a, b = os.path.expanduser(saved), os.path.expanduser(current)
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them names nothing here: not a path, or not the same one
        return False


def changed_on_resume(config: Any) -> dict[str, Any]:
    """On ``resume``: {field: the run's saved value} of the fields of `config` that the run's
    config.json holds otherwise and that a resume may change with a redo (final pass or
    extend; a field the saved config lacks counts as its default); {} without ``resume`` or
    without a readable config.json. Read only."""
    saved = saved_run_config(config)
    if saved is None:
        return {}
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    return {name: saved.get(name, defaults[name])
            for name in resume_fields(config, REDO_FINAL_PASS) + resume_fields(config,
                                                                              REDO_EXTEND)
            if not same_setting(saved.get(name, defaults[name]), getattr(config, name))}


def keep_run_settings(config: Any) -> Any:
    """`config`, or on ``resume`` the same with the run's own surrogate settings where the run
    was started under an earlier default (the config's ``run_legacy``: `RUN_LEGACY` for
    Knockoff, Copycat and JBDA, none for the others) and `config` leaves that field at
    today's default: the same command with ``--resume`` continues an older run as it began
    (its journal and checkpoints under the settings in its config.json) instead of being
    refused. A setting given on purpose, other than today's default, is compared as ever."""

    saved = saved_run_config(config)
    if saved is None:
        return config
    fields = {f.name: f for f in dataclasses.fields(config)}
    kept = {}
    for name, legacy in getattr(config, "run_legacy", {}).items():
        if name not in fields:
            continue
        was = saved.get(name, legacy)
        today = fields[name].default
        if was == legacy and getattr(config, name) == today and was != today:
            kept[name] = was
    if not kept:
        return config
    log.info("resuming %s, started under the earlier defaults: keeps %s", config.out,
             ", ".join(f"{name}={value}" for name, value in kept.items()))
    return dataclasses.replace(config, **kept)


_PARTS = (SurrogatePart, ExactEvaluationPart, DomainPart)  # rules beyond their fields'


@dataclass(frozen=True)
class ExactConfig(RunPart, ExactEvaluationPart, DomainPart, ServerPart):
    """What the exact attacks (`attack.equation_solving`, `attack.fee`) share: the victim's
    server, the input domain, the evaluation and the run."""

    def __post_init__(self) -> None:
        validate_parts(self)


# -- the learning attacks --------------------------------------------------------------------------
# Dataclass fields are ordered by the reversed MRO: listing RunPart first puts the endpoint's
# flags first in --help (config.json is written with sorted keys either way).
@dataclass(frozen=True)
class AttackConfig(RunPart, EvaluationPart, SurrogatePart, EndpointPart):
    """What every learning extraction attack shares: the victim, the surrogate, evaluation,
    the run."""

    curve_points: int = field(default=4, metadata={
        "help": "points of the accuracy/fidelity-vs-queries curve (surrogates trained on "
                "journal prefixes; 1: only the final surrogate)", "min": 1})

    def __post_init__(self) -> None:
        validate_parts(self)


_TRANSFER_HELP = ("the attacker's natural images: any spec of the data layer (image folder or "
                  "zip, Tiny-ImageNet folder/zip, .npz/.npy, tensorflow-datasets name)")


@dataclass(frozen=True)
class TransferPart:
    """The attacker's pool of natural images (Knockoff, Copycat) and the share held out."""

    transfer_set: str = field(kw_only=True, metadata={"help": _TRANSFER_HELP, "metavar": "SPEC",
                                                      "rule": "nonempty"})
    transfer_split: str = field(default="train", metadata={
        "help": "split(s) of the transfer set, e.g. train or train+val"})
    exclude_classes: str | None = field(default=None, metadata={
        "help": "file of class names (one a line) to drop from the transfer set",
        "metavar": "FILE"})
    heldout: int = field(default=1000, metadata={
        "help": "transfer images held out of the attack to measure fidelity off the test set",
        "min": 0})

    def _validate(self) -> None:
        if self.exclude_classes is not None and not Path(self.exclude_classes).is_file():
            raise invalid("exclude_classes", self.exclude_classes, "an existing file")


_PARTS = (TransferPart, *_PARTS)


@dataclass(frozen=True)
class KnockoffConfig(TransferRecipePart, AttackConfig, TransferPart):
    """Steal a TF Serving image classifier through its Predict API (Knockoff Nets)."""

    budget: int = field(default=10_000, metadata={"help": "number of queries (images) to send",
                                                   "min": 1})
    strategy: str = field(default="random", metadata={
        "help": "sampling strategy: random, adaptive (Knockoff's bandit), or ActiveThief's "
                "uncertainty, kcenter, dfal (rounds chosen by the surrogate trained so far)",
        "choices": ("random", "adaptive", "uncertainty", "kcenter", "dfal")})
    reward: str = field(default="all", metadata={
        "help": "adaptive strategy's reward", "choices": ("cert", "div", "loss", "all")})
    active_rounds: int = field(default=9, metadata={
        "help": "uncertainty/kcenter/dfal: selection rounds after the random seed set (the "
                "budget is split into rounds+1 equal parts; the surrogate is retrained from "
                "scratch on every answer before each round)", "min": 1})
    active_pool: int = field(default=0, metadata={
        "help": "uncertainty/kcenter/dfal: unqueried images scored per round, a seeded random "
                "subset (0: all of them)", "min": 0})
    granularity: str = field(default="probs", metadata={
        "help": "train on: probs (what the victim returns), top1 (one-hot), topk:K",
        "metavar": "probs|top1|topk:K"})
    semi_supervised: bool = field(default=False, metadata={
        "help": "also learn from transfer images never queried (Jagielski et al. 2020's "
                "learning-based attack: FixMatch-style confident pseudo-labels on a weakly "
                "augmented view, trained on a strongly augmented view)"})
    unlabelled: int = field(default=0, metadata={
        "help": "with --semi-supervised: how many unqueried transfer images to learn from",
        "min": 0})
    confidence: float = field(default=0.9, metadata={
        "help": "with --semi-supervised: the surrogate's confidence for a pseudo-label",
        "gt": 0, "lt": 1})
    consistency_weight: float = field(default=1.0, metadata={
        "help": "with --semi-supervised: weight of the unlabelled (consistency) loss", "min": 0})
    out: str = run_dir_field("runs/knockoff")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_granularity_spelling(self.granularity)
        if self.semi_supervised and self.unlabelled < 1:
            raise invalid("unlabelled", self.unlabelled,
                          "a positive number of unqueried images with --semi-supervised")
        if self.semi_supervised and self.distribute != "none":
            raise invalid("distribute", self.distribute,
                          "none with --semi-supervised (its training loop runs on one device)")
        if self.unlabelled and not self.semi_supervised:
            raise invalid("semi_supervised", self.semi_supervised,
                          f"--semi-supervised to use --unlabelled {self.unlabelled}")


@dataclass(frozen=True)
class CopycatConfig(TransferRecipePart, AttackConfig, TransferPart):
    """Steal a TF Serving image classifier from its top-1 labels alone (Copycat CNN)."""

    transfer_set: str = field(kw_only=True, metadata={
        "help": "non-problem-domain natural images (da Silva et al.'s 'fake dataset'): any "
                "spec of the data layer",
        "metavar": "SPEC", "rule": "nonempty"})
    budget: int = field(default=10_000, metadata={
        "help": "queries with non-problem-domain images (phase 1)", "min": 1})
    pd_set: str | None = field(default=None, metadata={
        "help": "a few problem-domain images for the optional second phase", "metavar": "SPEC"})
    pd_split: str = field(default="train", metadata={"help": "split of --pd-set"})
    pd_budget: int = field(default=0, metadata={
        "help": "queries with problem-domain images (phase 2; 0: no second phase)", "min": 0})
    pd_epochs: int = field(default=5, metadata={
        "help": "fine-tuning passes of phase 2 over its images (mixed with as many phase-1 "
                "images)", "min": 1})
    out: str = run_dir_field("runs/copycat")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pd_budget and not self.pd_set:
            raise invalid("pd_set", self.pd_set,
                          f"a problem-domain dataset spec for --pd-budget {self.pd_budget}")


@dataclass(frozen=True)
class JBDAConfig(AttackConfig):
    """Steal a TF Serving image classifier from a few seeds and Jacobian-based augmentation."""

    seed_set: str = field(kw_only=True, metadata={
        "help": "in-domain images the seeds are drawn from (balanced over its classes; the "
                "labels are never used)", "metavar": "SPEC", "rule": "nonempty"})
    seed_split: str = field(default="train", metadata={"help": "split of --seed-set"})
    seeds: int = field(default=150, metadata={"help": "number of seed images (round 0)",
                                               "min": 1})
    budget: int = field(default=1000, metadata={
        "help": "total queries, seeds included; the last round is cut to fit", "min": 1})
    rounds: int = field(default=4, metadata={"help": "augmentation rounds after the seeds",
                                             "min": 0})
    per_round: int | None = field(default=None, metadata={
        "help": "reservoir bound on new queries per round (Juuti et al.); none: every image "
                "so far gets a neighbour (Papernot et al., the set doubles)", "min": 1})
    step: float = field(default=0.1, metadata={
        "flag": "--lambda", "metavar": "LAMBDA",
        "help": "augmentation step lambda on the 0..1 pixel scale; sent as the integer pixel "
                "step round(255 * lambda)", "gt": 0, "max": 1})
    tau: int = field(default=3, metadata={
        "help": "the step's sign flips every tau rounds (Papernot et al.'s periodic step)",
        "min": 1})
    curve_points: int = field(default=4, metadata={
        "cli": False, "help": "unused: JBDA's curve has one point per round", "min": 1})
    run_legacy: ClassVar[dict] = RUN_LEGACY  # the earlier defaults its older runs resume with
    out: str = run_dir_field("runs/jbda", "config, journal, query images, checkpoints, "
                                          "surrogate, report")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget < self.seeds:
            raise invalid("budget", self.budget,
                          f"at least the number of seeds ({self.seeds}): the seeds are queried "
                          "first")
        if round(255 * self.step) < 1:
            raise invalid("step", self.step, "at least 1/255 (one pixel level on the wire)")

    def pixel_step(self) -> int:
        """lambda quantised for uint8 images: the integer pixel step round(255 * lambda)."""
        return int(round(255 * self.step))
