"""The experiments of Atli et al.'s study as steps, shared by the cpu and the full plans.

Atli et al. ("Extraction of Complex DNN Models: Real Threat or Boogeyman?", 2020) reproduce
Knockoff Nets (Orekondy et al. 2019), measure their detector and a realistic adversary; the
toolkit adds PRADA, output policies, Copycat, JBDA, equation solving and functionally-equivalent
extraction. Each builder here returns a `benchmarks.harness.Step` whose commands are the
toolkit's own configs (`VictimConfig`, `KnockoffConfig`, `DetectorConfig`, ...); the cpu plan
(`benchmarks.reproduce`) and the full plan (`benchmarks.full_scale`) differ only in the data,
surrogates and sizes they pass (`benchmarks.scales`: the sizes of each plan).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from attack.config import CopycatConfig, JBDAConfig, KnockoffConfig
from attack.equation_solving import EquationSolvingConfig
from attack.fee import FeeConfig
from benchmarks.harness import SERVER, Command, Context, Step
from benchmarks.output_policies import PoliciesConfig
from benchmarks.prada_bench import PradaBenchConfig
from benchmarks.realistic_adversary import RealisticConfig
from benchmarks.scales import SCALES, Scale
from detector.evaluate import EvaluateConfig
from detector.ood import DetectorConfig
from victim_export.config import VictimConfig

__all__ = ["COPYCAT", "DEFENDED", "EXACT", "JBDA", "KNOCKOFF_RUNS", "POLICIES", "PRADA_TITLE",
           "REALISTIC_MAX_BUDGET", "SCALES", "Scale", "attack_step", "defended_step",
           "dense_victim_steps", "detector_step", "exact_step", "exact_steps", "jbda_values",
           "prada_step", "victim_step"]


# The attacks each step may run: module -> its config class and the title of its steps.
ATTACKS = {"attack.knockoff": KnockoffConfig, "attack.copycat": CopycatConfig,
           "attack.jbda": JBDAConfig}
EXACT = {"equation_solving": (EquationSolvingConfig, "Equation solving"),
         "fee": (FeeConfig, "Functionally-equivalent extraction")}
DEFENDED = {"realistic_adversary": (RealisticConfig,
                                    "Realistic adversary against the OOD detector"),
            "output_policies": (PoliciesConfig, "Output policies")}
PRADA_TITLE = "PRADA against JBDA and natural-image streams"
REALISTIC_MAX_BUDGET = 5000  # the realistic adversary owns half of CIFAR-10's test split
# Knockoff's runs: (step, title, victim, options); a plan runs those whose victim it trains.
KNOCKOFF_RUNS = (
    ("knockoff_cifar10_cnn_probs", "Knockoff, CIFAR-10 CNN, probabilities", "cifar10_cnn", {}),
    ("knockoff_cifar10_cnn_top1", "Knockoff, CIFAR-10 CNN, top-1 only", "cifar10_cnn",
     {"granularity": "top1"}),
    ("knockoff_cifar10_cnn_adaptive", "Knockoff adaptive, CIFAR-10 CNN", "cifar10_cnn",
     {"strategy": "adaptive"}),
    ("knockoff_cifar10_resnet34_probs", "Knockoff, CIFAR-10 ResNet-34, probabilities",
     "cifar10_resnet34", {}),
    # the victim's own architecture at its own input size, from scratch
    ("knockoff_cifar10_cnn_same_arch",
     "Knockoff, CIFAR-10 CNN, surrogate of the victim's architecture (cnn)", "cifar10_cnn",
     {"same_arch": True}),
    ("knockoff_gtsrb_resnet34_probs", "Knockoff, GTSRB ResNet-34, probabilities",
     "gtsrb_resnet34", {}),
    ("knockoff_caltech256_resnet34_probs", "Knockoff, Caltech256 ResNet-34, probabilities",
     "caltech256_resnet34", {}),
    ("knockoff_cubs200_resnet34_probs", "Knockoff, CUBS200 ResNet-34, probabilities",
     "cubs200_resnet34", {}),
)
COPYCAT = ("copycat_cifar10_cnn", "Copycat CNN (top-1 only, + 200 in-domain images), CIFAR-10 CNN")
JBDA = ("jbda_cifar10_cnn", "JBDA (Jacobian-based augmentation), CIFAR-10 CNN")
POLICIES = "identity,label_only,round:1,noise:0.2,reverse_sigmoid:0.7,0.4"


# -- figures read back from what the commands wrote ---------------------------------------------
def _read(ctx: Context, *parts: str) -> dict[str, Any]:
    return json.loads(ctx.path(*parts).read_text())


def victim_figures(ctx: Context, name: str, **extra: Any) -> dict[str, Any]:
    card = _read(ctx, "victims", name, "card.json")
    _, entry = max(card["versions"].items(), key=lambda kv: int(kv[0]))
    return {"test_accuracy": entry.get("test_accuracy"), "epochs": entry.get("epochs_run"),
            "seconds": entry.get("training_seconds"), **extra}


def attack_figures(ctx: Context, step: str) -> dict[str, Any]:
    e = (report := _read(ctx, step, "run", "report.json"))["evaluation"]
    out = {k: e.get(k) for k in ("victim_acc", "surrogate_acc", "ratio", "fidelity_test",
                                 "fidelity_transfer_heldout", "fidelity_noise", "n_queries")}
    if report.get("curve"):
        out["curve"] = report["curve"]
    out["per_class_surrogate"] = e.get("per_class_surrogate")
    out["per_class_victim"] = e.get("per_class_victim")
    # None in a report written before agreement was measured: the page shows "not measured"
    out["per_class_agreement"] = e.get("per_class_agreement") or None
    return out


def exact_figures(ctx: Context, step: str) -> dict[str, Any]:
    report = _read(ctx, step, "run", "report.json")
    e = report["evaluation"]
    errors = report.get("extra", {}).get("parameter_error") or {}
    worst = max((v for k, v in errors.items()
                 if k.startswith("max_abs_") and k != "max_abs_true_weight"
                 and isinstance(v, (int, float))), default=None)
    return {"queries": e.get("n_queries"), "fidelity_test": e.get("fidelity_test"),
            "fidelity_noise": e.get("fidelity_noise"), "max_parameter_error": worst}


def detector_figures(ctx: Context, step: str) -> dict[str, Any]:
    result = _read(ctx, step, "evaluation", "evaluation.json")
    return {"rows": result["rows"], "roc_auc": result.get("roc_auc"),
            "target_fpr": result.get("target_fpr")}


def rows_figures(ctx: Context, step: str) -> dict[str, Any]:
    return {"rows": _read(ctx, step, "run", "results.json")["rows"]}


def prada_figures(ctx: Context, step: str) -> dict[str, Any]:
    result = _read(ctx, step, "run", "results.json")
    config = result.get("config", {})
    return {"rows": result["rows"],
            **{k: config.get(k) for k in ("delta", "min_samples", "batch", "max_queries")}}


# -- the steps ------------------------------------------------------------------------------------
def victim_step(ctx: Context, name: str, *, needs: tuple[str, ...] = (),
                arch_args: Iterable[str] = (), figures: dict[str, Any] | None = None,
                **values: Any) -> Step:
    """Train and export victim `name` into `<out>/victims` (`victim_export`, `VictimConfig`)."""
    arch_args = tuple(arch_args)
    command = Command("victim_export", VictimConfig, {
        **values, "out": str(ctx.path("victims")), "name": name, "seed": ctx.seed,
        **({"arch_args": arch_args} if arch_args else {})})
    return Step(f"victim_{name}", f"victim {name}", needs, (command,),
                lambda c: victim_figures(c, name, **(figures or {})))


def dense_victim_steps(ctx: Context, scale: Scale, dataset: str,
                       needs: tuple[str, ...] = ()) -> list[Step]:
    """The exact attacks' victims on MNIST: a softmax regression and one-layer MLPs."""
    dense = [("mnist_softmax", "softmax", ())] + [
        (f"mnist_mlp{h}", "mlp", (f"hidden={h}",)) for h in scale.fee_hidden]
    return [victim_step(ctx, name, needs=needs, dataset=dataset, train_split="test",
                        test_split="test", arch=arch, export_logits=True, epochs=20,
                        arch_args=arch_args, figures={"architecture": arch})
            for name, arch, arch_args in dense]


def exact_steps(ctx: Context, scale: Scale, test_set: str,
                needs: tuple[str, ...] = ()) -> list[Step]:
    """Equation solving of the softmax victim, functionally-equivalent extraction of the MLPs."""
    return [exact_step(ctx, module, model, test_set=test_set, needs=(f"victim_{model}", *needs))
            for module, model in [("equation_solving", "mnist_softmax"),
                                  *[("fee", f"mnist_mlp{h}") for h in scale.fee_hidden]]]


def attack_step(ctx: Context, scale: Scale, module: str, name: str, title: str, model: str, *,
                needs: tuple[str, ...], **values: Any) -> Step:
    """A learning attack (Knockoff, Copycat, JBDA) on the plan's model server, resumable."""
    run = ctx.path(name, "run")
    if scale.test_limit:
        values["test_limit"] = scale.test_limit
    command = Command(module, ATTACKS[module], {
        "grpc": SERVER, "model": model, **values, "seed": ctx.seed, "out": str(run)},
        resume_in=run)
    return Step(name, title, needs, (command,), lambda c: attack_figures(c, name))


def exact_step(ctx: Context, module: str, model: str, *, test_set: str,
               needs: tuple[str, ...]) -> Step:
    """Equation solving or functionally-equivalent extraction of dense victim `model`."""
    name = f"{module}_{model}"
    config_class, title = EXACT[module]
    run = ctx.path(name, "run")
    command = Command(f"attack.{module}", config_class, {
        "grpc": SERVER, "model": model, "test_set": test_set,
        "reference": str(ctx.path("victims", model, "1")), "seed": ctx.seed, "out": str(run)},
        resume_in=run)
    return Step(name, f"{title}, {model}", needs, (command,),
                lambda c: exact_figures(c, name))


def detector_step(ctx: Context, scale: Scale, name: str, title: str, *,
                  needs: tuple[str, ...], train: dict[str, Any],
                  evaluate: dict[str, Any]) -> Step:
    """Train (once) and evaluate the OOD query detector (`detector.train`, `detector.evaluate`)."""
    step = f"detector_{name}"
    export = ctx.path(step, "detector", "1")
    limit = {"benign_limit": scale.detector_limit} if scale.detector_limit else {}
    commands = (
        Command("detector.train", DetectorConfig, {
            **train, "epochs": scale.detector_epochs, "seed": ctx.seed,
            "work_dir": str(ctx.path(step, "work")), "out": str(export), **limit},
            skip_if=export / "saved_model.pb"),
        Command("detector.evaluate", EvaluateConfig, {
            "detector": str(export), **evaluate, "out": str(ctx.path(step, "evaluation"))}),
    )
    return Step(step, title, needs, commands, lambda c: detector_figures(c, step))


def defended_step(ctx: Context, scale: Scale, name: str, module: str, model: str, *,
                  needs: tuple[str, ...], **values: Any) -> Step:
    """The realistic adversary or the output policies, through the gateway (benchmarks.*)."""
    config_class, title = DEFENDED[module]
    command = Command(f"benchmarks.{module}", config_class, {
        "victims": str(ctx.path("victims")), "model": model, "data_dir": str(ctx.data),
        **values, "input_size": scale.surrogate_size, "epochs": scale.surrogate_epochs,
        "seed": ctx.seed, "out": str(ctx.path(name, "run"))})
    return Step(name, f"{title}, {model}", needs, (command,),
                lambda c: rows_figures(c, name))


def prada_step(ctx: Context, scale: Scale, model: str, *, needs: tuple[str, ...],
               **values: Any) -> Step:
    """PRADA (Juuti et al.) in the gateway: a JBDA stream against natural-image streams."""
    name = f"prada_{model}"
    command = Command("benchmarks.prada_bench", PradaBenchConfig, {
        "victims": str(ctx.path("victims")), "model": model, "data_dir": str(ctx.data),
        **values, "max_queries": scale.prada_queries, "seed": ctx.seed,
        "out": str(ctx.path(name, "run"))})
    return Step(name, f"{PRADA_TITLE}, {model}", needs, (command,),
                lambda c: prada_figures(c, name))


def jbda_values(scale: Scale) -> dict[str, Any]:
    """JBDA's rounds at `scale`: the seeds, then rounds of twice as many queries."""
    per_round = 2 * scale.jbda_seeds
    return {"seeds": scale.jbda_seeds, "rounds": scale.jbda_rounds, "per_round": per_round,
            "budget": scale.jbda_seeds + scale.jbda_rounds * per_round}
