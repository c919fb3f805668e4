"""Attacks as objects: hyper-parameters in the constructor, one verb, `extract`.

Foolbox's shape (``foolbox/attacks/base.py``) for model extraction: an attack object holds only
its hyper-parameters (keyword-only, validated at once by the attack's config dataclass, the same
one its CLI builds) and never a victim; the victim and the attacker's images are given at call
time::

    from attack import Knockoff, KerasVictim, Surrogate

    result = Knockoff(budget=2000).extract(
        KerasVictim(model), transfer,
        surrogate=Surrogate(backbone="cnn", weights="none", input_size=32),
        test=test_set)
    result.surrogate        # the trained keras.Model
    result.headline         # victim/surrogate accuracy, ratio, fidelities
    result.report           # RUN_DIR/report.md

`victim` is any `attack.victim.Victim` (`ServingVictim` over gRPC, `RestVictim`, `KerasVictim`
in-process). `transfer` is a `common.data.ImageDataset` or a uint8 numpy array [N, H, W, 3].
The base class owns what every learning attack shares (`attack.pipeline`): the run directory
(config.json, the journal of every raw answer, resume), understanding the victim before paying
for it (`Victim.understand`, evidence in ``victim.json``), the first paid batch checked before
the rest of the budget (`AnswerCheck`), the surrogate's training, the evaluation through the
same victim path and the report. Subclasses say which images they send (Knockoff Nets, Copycat
CNN, JBDA) or, for the exact attacks, how they solve (`attack.equation_solving`, `attack.fee`).

``run_dir=None`` runs in a new temporary directory (``tempfile.mkdtemp``, prefix
``mext-<attack>-``), which is kept so that `ExtractionResult`'s paths stay valid: delete it when
done. With a `run_dir`, ``resume=True`` continues an interrupted run there without paying for an
answered query again (as ``--resume`` does).
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from attack.config import EndpointPart, ServerPart, SurrogatePart
from attack.pipeline import ExtractionResult
from common.data import ImageDataset
from common.errors import invalid

__all__ = ["Attack", "ExactAttack", "ExtractionResult", "Surrogate", "as_transfer",
           "dataset_source", "exact_client"]

log = logging.getLogger(__name__)

Surrogate = SurrogatePart
"""The surrogate to train: backbone, initial weights, arch_args, input size, epochs, batch size,
learning rate (the ``--backbone``... flags); ``Surrogate()`` is the generic trainer's default
(MobileNet, ImageNet weights). ``surrogate=None`` or a mapping of some fields takes the rest
from the attack's own defaults (Knockoff, Copycat: `attack.config.TransferRecipePart`)."""

ProgressFn = Callable[[int, int], None]

_NOT_HYPER = frozenset(
    {f.name for part in (ServerPart, SurrogatePart) for f in dataclasses.fields(part)}
    | {"out", "resume", "test_set", "test_split", "test_limit"})
_ENDPOINT = frozenset(f.name for f in dataclasses.fields(EndpointPart))


def as_transfer(transfer: Any, argument: str = "transfer"):
    """`transfer` as a `common.data.ImageDataset`: a dataset as it is, a uint8 array
    [N, H, W, 3] with every label 0 (the attacks never read transfer labels, except the
    adaptive strategy's hierarchy, which needs a real dataset)."""
    if isinstance(transfer, ImageDataset):
        return transfer
    if isinstance(transfer, np.ndarray):
        if transfer.dtype != np.uint8 or transfer.ndim != 4 or transfer.shape[-1] != 3 \
                or not len(transfer):
            raise invalid(argument, f"{transfer.dtype} array of shape {transfer.shape}",
                          "a common.data.ImageDataset or a non-empty uint8 array [N, H, W, 3]")
        return ImageDataset(transfer, np.zeros(len(transfer), np.int64), ("unlabelled",),
                            f"array[{len(transfer)}x{transfer.shape[1]}x{transfer.shape[2]}x3]")
    raise invalid(argument, type(transfer).__name__,
                  "a common.data.ImageDataset or a uint8 numpy array [N, H, W, 3]")


def _as_test(test: Any):
    if test is None:
        return None
    if not isinstance(test, ImageDataset):
        raise invalid("test", type(test).__name__,
                      "a labelled common.data.ImageDataset (common.data.load_dataset) or None")
    return test


def _surrogate_fields(surrogate: Any, config_class: type = SurrogatePart) -> dict:
    """The surrogate fields of a run: a `Surrogate` as it is; None or a mapping of some fields
    over the defaults of `config_class` (Knockoff and Copycat: `TransferRecipePart`'s)."""
    if surrogate is None or isinstance(surrogate, Mapping):
        defaults = {f.name: f.default for f in dataclasses.fields(config_class)
                    if f.name in SurrogatePart.__dataclass_fields__}
        surrogate = Surrogate(**{**defaults, **(surrogate or {})})
    if not isinstance(surrogate, SurrogatePart):
        raise invalid("surrogate", type(surrogate).__name__,
                      "an attack.Surrogate(backbone=..., weights=..., ...), a mapping of its "
                      "fields, or None")
    return {f.name: getattr(surrogate, f.name) for f in dataclasses.fields(SurrogatePart)}


def _endpoint_fields(victim: Any, config_class: type) -> dict:
    """The endpoint part of config.json for an API run: what the victim object was given."""
    names = {f.name for f in dataclasses.fields(config_class)}
    out: dict[str, Any] = {}
    interface = getattr(victim, "interface", None)
    target = victim.target() if callable(getattr(victim, "target", None)) else None
    model = getattr(victim, "model_name", None)
    model = model() if callable(model) else None
    # an in-process keras.Model's name is made up per process (functional_3): not recorded,
    # so the same model built again resumes; a SavedModel path's folder name is
    if model and not (interface == "keras" and target == "in-process"):
        out["model"] = str(model)
    if interface == "grpc" and target:
        out["grpc"] = target
    if interface == "rest" and target and "rest" in names:
        out["rest"] = target
    mapped = [("query_batch", "batch_size")]
    if issubclass(config_class, EndpointPart):  # the exact attacks' `output` means another thing
        mapped += [("output", "output"), ("output_kind", "output_kind_flag"),
                   ("input_range", "input_range_flag")]
    for field_name, attribute in mapped:
        value = getattr(victim, attribute, None)
        if field_name in names and value is not None:
            out[field_name] = value
    if issubclass(config_class, EndpointPart) and callable(getattr(victim, "metadata", None)):
        name = getattr(victim.metadata(), "name", None)  # GetModelMetadata: no paid query
        out["signature"] = None if name in (None, "serving_default") else name
    return out


class Attack(abc.ABC):
    """An extraction attack: hyper-parameters in, `extract(victim, transfer)` out.

    Subclasses set `config_class` (the attack's frozen config: its fields are the accepted
    hyper-parameters, less the endpoint, surrogate, test-set and run-directory fields, which
    `extract` takes) and implement `_run(victim, config, data, on_progress)`.
    """

    config_class: ClassVar[type]
    data_fields: ClassVar[tuple[str, ...]] = ()
    """Config fields that name data (specs) rather than hyper-parameters."""
    name: ClassVar[str] = "attack"

    def __init__(self, **hyper: Any) -> None:
        allowed = self.hyper_parameters()
        unknown = sorted(set(hyper) - set(allowed))
        if unknown:
            raise invalid(unknown[0], hyper[unknown[0]],
                          f"a hyper-parameter of {type(self).__name__}: "
                          + ", ".join(sorted(allowed)))
        self.params = dict(hyper)
        # validated now, with the data fields filled in, so a bad value fails here
        self._config(**self._placeholders())

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            defaults = cls.hyper_parameters()
            cls.__signature__ = inspect.Signature(
                [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                 for name, default in defaults.items()])

    @classmethod
    def hyper_parameters(cls) -> dict[str, Any]:
        """The constructor's keyword arguments and their defaults."""
        skip = _NOT_HYPER | set(cls.data_fields)
        if issubclass(cls.config_class, EndpointPart):  # the victim's settings, not the attack's
            skip |= _ENDPOINT
        return {f.name: f.default for f in dataclasses.fields(cls.config_class)
                if f.init and f.name not in skip and f.metadata.get("cli", True)
                and f.default is not dataclasses.MISSING}

    @classmethod
    def from_config(cls, config: Any) -> Attack:
        """The attack object of a CLI config (its hyper-parameter fields)."""
        return cls(**{name: getattr(config, name) for name in cls.hyper_parameters()})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def _placeholders(self) -> dict:
        """Required data fields filled for validation (overridden per attack)."""
        return {name: "<given to extract>" for name in self.data_fields
                if self._required(name)}

    def _required(self, name: str) -> bool:
        field = {f.name: f for f in dataclasses.fields(self.config_class)}[name]
        return field.default is dataclasses.MISSING and \
            field.default_factory is dataclasses.MISSING  # type: ignore[misc]

    def _config(self, **fields: Any):
        return self.config_class(**{**self.params, **fields})

    # -- the verb ----------------------------------------------------------------------------------
    def extract(self, victim, transfer=None, *, surrogate=None, run_dir=None, test=None,
                resume: bool = False, on_progress: ProgressFn | None = None,
                **data: Any) -> ExtractionResult:
        """Steal `victim` with the images of `transfer`; return the `ExtractionResult`.

        Args:
            victim: an `attack.victim.Victim` (`ServingVictim`, `RestVictim`, `KerasVictim`).
            transfer: the attacker's images: a `common.data.ImageDataset` or a uint8 array
                [N, H, W, 3] (JBDA: its seed pool).
            surrogate: an `attack.Surrogate` (or a mapping of its fields); None: the CLI's
                default (MobileNet with ImageNet weights).
            run_dir: the run directory; None: a new temporary one (kept: see the module doc).
            test: a labelled `common.data.ImageDataset` of the victim's task for the
                evaluation (victim and surrogate accuracy, fidelity); None: no evaluation.
            resume: continue the run in `run_dir` without re-sending answered queries.
            on_progress: ``on_progress(answered, budget)`` as answers are journaled.
            data: attack-specific data (Copycat: ``problem_domain``).
        """
        self._check_victim(victim)
        if run_dir is None and resume:
            raise invalid("resume", True, "a run_dir to resume (run_dir=None starts a new "
                                          "temporary one)")
        self._check_data(data)
        prepared = self._prepare_data(transfer, self._check_test(test), **data)
        fields = {**_surrogate_fields(surrogate, self.config_class),
                  **_endpoint_fields(victim, self.config_class),
                  **prepared.pop("fields"), "resume": bool(resume)}
        temporary = run_dir is None
        if temporary:
            self._config(**fields, out="<temporary>")  # every check before the folder exists
            run_dir = tempfile.mkdtemp(prefix=f"mext-{self.name}-")
            log.info("%s: run directory %s (temporary, kept)", type(self).__name__, run_dir)
        config = self._config(**fields, out=str(run_dir))
        try:
            return self._run(victim, config, prepared, on_progress)
        except BaseException:
            if temporary and not any(Path(run_dir).iterdir()):
                Path(run_dir).rmdir()  # refused before anything was written: leave nothing
            raise

    def _check_data(self, data: Mapping[str, Any]) -> None:
        """Refuse a data argument of `extract` that `_prepare_data` does not name."""
        params = inspect.signature(self._prepare_data).parameters.values()
        known = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        unknown = sorted(set(data) - known)
        if unknown:
            raise invalid(unknown[0], data[unknown[0]],
                          f"no such data argument of {type(self).__name__}")

    def _check_test(self, test: Any) -> Any:
        """The `test` argument of `extract`, checked (a labelled dataset or None)."""
        return _as_test(test)

    def _check_victim(self, victim: Any) -> None:
        """`UsageError` when `victim` is not a victim (`metadata()` and `predict(images)`)."""
        if not callable(getattr(victim, "metadata", None)) \
                or not callable(getattr(victim, "predict", None)):
            raise invalid("victim", type(victim).__name__,
                          "an attack.victim.Victim (ServingVictim, RestVictim, KerasVictim) or "
                          "anything with metadata() and predict(images)")

    @abc.abstractmethod
    def _prepare_data(self, transfer: Any, test: Any, **data: Any) -> dict:
        """Check the data given to `extract`; return a dict with ``fields`` (the config's data
        fields describing it) and whatever `_run` needs."""

    @abc.abstractmethod
    def _run(self, victim, config: Any, data: dict, on_progress: ProgressFn | None
             ) -> ExtractionResult:
        """The attack against `victim` under `config` with the checked `data`."""


class ExactAttack(Attack):
    """An attack that solves for the victim's parameters from float query points it chooses
    itself (equation solving, FEE): no transfer set and no surrogate to train. `victim` must
    reach a served model (`ServingVictim` or a `serving.client.ServingClient`: the points go
    on the wire as float64 through ``predict_raw``); `test` is a data spec (its pixels mapped
    to [input_low, input_high]); ``reference=`` a SavedModel version folder of the victim, for
    the parameter error only."""

    data_fields = ("reference",)

    def _check_test(self, test: Any) -> Any:
        if test is not None and (not isinstance(test, str) or not test):
            raise invalid("test", type(test).__name__,
                          "a data spec (path or tensorflow-datasets name) or None")
        return test

    def _prepare_data(self, transfer, test, *, reference=None) -> dict:
        if transfer is not None:
            raise invalid("transfer", type(transfer).__name__,
                          f"None: {type(self).__name__} chooses its own query points")
        return {"fields": {"test_set": test, "reference": reference}}

    def _check_victim(self, victim: Any) -> None:
        exact_client(victim)

    def extract(self, victim, transfer=None, *, surrogate=None, run_dir=None, test=None,
                resume: bool = False, on_progress: ProgressFn | None = None, **data: Any):
        if surrogate is not None:
            raise invalid("surrogate", type(surrogate).__name__,
                          f"None: {type(self).__name__} recovers the model, it trains none")
        return super().extract(victim, transfer, run_dir=run_dir, test=test, resume=resume,
                               on_progress=on_progress, **data)

    def _config(self, **fields: Any):
        surrogate = {f.name for f in dataclasses.fields(SurrogatePart)}
        return super()._config(**{k: v for k, v in fields.items() if k not in surrogate})

    @classmethod
    def run_config(cls, config: Any) -> ExtractionResult:
        """The CLI's attack: open the config's victim over gRPC and run the attack on it."""
        from serving.client import ServingClient  # gRPC and TensorFlow: after the flags

        attack = cls.from_config(config)
        with ServingClient(config.grpc, config.model, version=config.version,
                           api_key=config.api_key, timeout=config.timeout) as client:
            return attack._run(client, config, {})


def exact_client(victim: Any):
    """The `ServingClient` an exact attack sends float64 points through."""
    client = getattr(victim, "client", victim)
    if not callable(getattr(client, "predict_raw", None)) \
            or not callable(getattr(client, "signature", None)):
        raise invalid("victim", type(victim).__name__,
                      "a ServingVictim or serving.client.ServingClient: exact attacks send "
                      "float64 points through predict_raw")
    return client


def dataset_source(dataset: Any) -> str | None:
    """How a dataset is named in config.json (its source spec and split; None for None)."""
    return None if dataset is None else str(getattr(dataset, "source", "") or "<array>")
