"""The plan of `python -m benchmarks.reproduce --scale full`: Atli et al.'s study at its own scale.

Atli et al. ("Extraction of Complex DNN Models: Real Threat or Boogeyman?", 2020) attack
ResNet-34 victims on Caltech256, CUBS200, CIFAR-10 and GTSRB (and a CNN on CIFAR-10) with Knockoff
Nets (Orekondy et al. 2019): 100,000 ImageNet queries, a surrogate fine-tuned from ImageNet
weights (theirs a torchvision ResNet-34; Keras Applications has no ResNet-34, so the surrogate
here is the Keras Applications ResNet50 with `weights="imagenet"`, at 224 px). Their detector
table covers CUBS200, GTSRB, CIFAR-10, Diabetic5 and Caltech256, with ImageNet as the attack
distribution. This plan runs those experiments and the rest of the cpu plan (top-1 answers, the
adaptive strategy, a surrogate of the victim's architecture, Copycat, JBDA, equation solving,
functionally-equivalent extraction, PRADA, the realistic adversary, output policies) at full size.

Each dataset is first a `data_<name>` step (`benchmarks.full_data`): it resolves the dataset to a
local copy in `--data-dir` or its tensorflow-datasets name, and writes it once as a fixed-size
`.npz` that every later step reads. A dataset this machine cannot provide fails its data step
with a one-line reason (the folder to provide, the manual download to do), and only the steps
that need it are skipped.

The victims train from scratch: Keras has no ImageNet weights for ResNet-34, whereas Atli et
al.'s Caltech256 and CUBS200 victims were fine-tuned from them, so expect those two below the
paper's accuracy. ImageNet weights for the surrogate are downloaded by Keras, or read from
`<data-dir>/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` (Keras' own file) if present.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.full_data import DATASETS, DatasetUnavailable, check_available, resolve
from benchmarks.reproduce import (
    DEFENDED_TITLES,
    EXACT_TITLES,
    PRADA_TITLE,
    Context,
    Scale,
    Step,
    StepUnavailable,
    _detector_figures,
    _exact_figures,
    _finish_attack_cmd,
    _prada_figures,
    _report,
    _rows_figures,
    _victim_figures,
)

__all__ = ["DETECTORS", "RESNET50_WEIGHTS", "SURROGATE", "VICTIMS", "build_full_plan",
           "data_file"]

SURROGATE = "ResNet50"  # Keras Applications, ImageNet weights, at its 224 px
RESNET50_WEIGHTS = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
DETECTOR_SIZE = 224
# The realistic adversary owns half of CIFAR-10's test split (benchmarks.realistic_adversary).
REALISTIC_BUDGET = 5000
VICTIM_PATIENCE = 20  # epochs without validation gain before a victim stops early

VICTIMS = {
    # name: (dataset, arch, arch args, augment)
    "cifar10_cnn": ("cifar10", "cnn", (), "crop+flip"),
    "cifar10_resnet34": ("cifar10", "resnet34", ("stem=cifar", "width={width}"), "crop+flip"),
    "gtsrb_resnet34": ("gtsrb", "resnet34", ("stem=imagenet", "width={width}"), "crop"),
    "caltech256_resnet34": ("caltech256", "resnet34", ("stem=imagenet", "width={width}"),
                            "crop+flip"),
    "cubs200_resnet34": ("cubs200", "resnet34", ("stem=imagenet", "width={width}"), "crop+flip"),
}

DETECTORS = {
    # name: target benign FPR of the calibrated threshold. Natural photos (CIFAR-10, CUBS200,
    # Caltech256) sit close to ImageNet and get an operating point near 5%, traffic signs and
    # retina scans far from it 1%.
    "cubs200": 0.05, "gtsrb": 0.01, "cifar10": 0.04, "diabetic5": 0.01, "caltech256": 0.05,
}


def data_file(ctx: Context, key: str) -> str:
    """The prepared copy of dataset `key` that the steps after `data_<key>` read."""
    return str(ctx.path(f"data_{key}", f"{key}.npz"))


def _surrogate(ctx: Context) -> list[str]:
    local = ctx.data / RESNET50_WEIGHTS
    return ["--backbone", SURROGATE, "--weights", str(local) if local.is_file() else "imagenet"]


# -- data -----------------------------------------------------------------------------------------
def _data_step(key: str) -> Step:
    ds = DATASETS[key]

    def commands(ctx: Context) -> list[list[str]]:
        try:
            spec = resolve(key, ctx.data)
            check_available(key, spec, ctx.data)
        except DatasetUnavailable as err:
            raise StepUnavailable(str(err)) from None
        cmd = ["-m", "benchmarks.full_data", "--dataset", key, "--source", spec,
               "--out", data_file(ctx, key), "--seed", str(ctx.seed)]
        if ds.samples:
            cmd += ["--train-count", str(ctx.scale.budget + ctx.scale.heldout)]
        return [cmd]

    def summarize(ctx: Context) -> dict[str, Any]:
        return json.loads(ctx.path(f"data_{key}", f"{key}.json").read_text())

    return Step(f"data_{key}", f"dataset {ds.title}", (), commands, summarize)


# -- victims --------------------------------------------------------------------------------------
def _victim_step(name: str) -> Step:
    dataset, arch, arch_args, augment = VICTIMS[name]

    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        cmd = ["-m", "victim_export", "--dataset", data_file(ctx, dataset), "--arch", arch,
               "--epochs", str(s.victim_epochs[name]), "--patience", str(VICTIM_PATIENCE),
               "--augment", augment, "--out", str(ctx.path("victims")), "--name", name,
               "--seed", str(ctx.seed)]
        if arch_args:
            cmd += ["--arch-args", *(a.format(width=s.resnet_width) for a in arch_args)]
        return [cmd]

    return Step(f"victim_{name}", f"victim {name}", (f"data_{dataset}",), commands,
                lambda ctx: _victim_figures(ctx, name, architecture=arch, dataset=dataset))


def _dense_victim_step(name: str, arch: str, hidden: int | None) -> Step:
    def commands(ctx: Context) -> list[list[str]]:
        cmd = ["-m", "victim_export", "--dataset", data_file(ctx, "mnist"),
               "--train-split", "test", "--test-split", "test", "--arch", arch,
               "--export-logits", "--epochs", "20", "--out", str(ctx.path("victims")),
               "--name", name, "--seed", str(ctx.seed)]
        return [cmd + (["--arch-args", f"hidden={hidden}"] if hidden else [])]

    return Step(f"victim_{name}", f"victim {name}", ("data_mnist",), commands,
                lambda ctx: _victim_figures(ctx, name, architecture=arch))


# -- Knockoff, Copycat, JBDA --------------------------------------------------------------------
def _knockoff_step(name: str, title: str, model: str, *, granularity: str = "probs",
                   strategy: str = "random", same_arch: bool = False) -> Step:
    dataset = VICTIMS[model][0]

    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        surrogate = (["--backbone", VICTIMS[model][1], "--weights", "none", "--input-size",
                      str(DATASETS[dataset].size)] if same_arch
                     else [*_surrogate(ctx), "--input-size", str(s.surrogate_size)])
        curve = "4" if model == "cifar10_cnn" and granularity == "probs" \
            and strategy == "random" and not same_arch else "1"
        cmd = ["-m", "attack.knockoff", "--grpc", ctx.server(), "--model", model,
               "--transfer-set", data_file(ctx, "imagenet"), "--transfer-split", "train",
               "--budget", str(s.budget), "--heldout", str(s.heldout), "--strategy", strategy,
               "--granularity", granularity, *surrogate, "--epochs", str(s.surrogate_epochs),
               "--test-set", data_file(ctx, dataset), "--seed", str(ctx.seed),
               "--curve-points", curve, "--out", str(ctx.path(name, "run"))]
        return [_finish_attack_cmd(ctx, cmd, name)]

    return Step(name, title, (f"victim_{model}", "data_imagenet", f"data_{dataset}"), commands,
                lambda ctx: _report(ctx, name), serve=True)


def _copycat_step() -> Step:
    name = "copycat_cifar10_cnn"

    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        cmd = ["-m", "attack.copycat", "--grpc", ctx.server(), "--model", "cifar10_cnn",
               "--transfer-set", data_file(ctx, "imagenet"), "--transfer-split", "train",
               "--budget", str(s.copycat_budget), "--heldout", str(s.heldout),
               "--pd-set", data_file(ctx, "cifar10"), "--pd-split", "train",
               "--pd-budget", "200", *_surrogate(ctx), "--input-size", str(s.surrogate_size),
               "--epochs", str(s.surrogate_epochs), "--test-set", data_file(ctx, "cifar10"),
               "--seed", str(ctx.seed), "--out", str(ctx.path(name, "run"))]
        return [_finish_attack_cmd(ctx, cmd, name)]

    return Step(name, "Copycat CNN (top-1 only, + 200 in-domain images), CIFAR-10 CNN",
                ("victim_cifar10_cnn", "data_imagenet", "data_cifar10"), commands,
                lambda ctx: _report(ctx, name), serve=True)


def _jbda_step() -> Step:
    name = "jbda_cifar10_cnn"

    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        per_round = 2 * s.jbda_seeds
        cmd = ["-m", "attack.jbda", "--grpc", ctx.server(), "--model", "cifar10_cnn",
               "--seed-set", data_file(ctx, "cifar10"), "--seed-split", "train",
               "--seeds", str(s.jbda_seeds), "--rounds", str(s.jbda_rounds),
               "--per-round", str(per_round),
               "--budget", str(s.jbda_seeds + s.jbda_rounds * per_round), *_surrogate(ctx),
               "--input-size", str(s.surrogate_size), "--epochs", str(s.surrogate_epochs),
               "--test-set", data_file(ctx, "cifar10"), "--seed", str(ctx.seed),
               "--out", str(ctx.path(name, "run"))]
        return [_finish_attack_cmd(ctx, cmd, name)]

    return Step(name, "JBDA (Jacobian-based augmentation), CIFAR-10 CNN",
                ("victim_cifar10_cnn", "data_cifar10"), commands,
                lambda ctx: _report(ctx, name), serve=True)


# -- exact extraction ------------------------------------------------------------------------------
def _exact_step(module: str, model: str) -> Step:
    name = f"{module}_{model}"

    def commands(ctx: Context) -> list[list[str]]:
        cmd = ["-m", f"attack.{module}", "--grpc", ctx.server(), "--model", model,
               "--test-set", data_file(ctx, "mnist"),
               "--reference", str(ctx.path("victims", model, "1")),
               "--seed", str(ctx.seed), "--out", str(ctx.path(name, "run"))]
        return [_finish_attack_cmd(ctx, cmd, name, test_limit=False)]

    return Step(name, f"{EXACT_TITLES[module]}, {model}", (f"victim_{model}", "data_mnist"),
                commands, lambda ctx: _exact_figures(ctx, name), serve=True)


# -- the detector: each task against ImageNet ----------------------------------------------------
def _detector_step(name: str) -> Step:
    step = f"detector_{name}"

    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        export = ctx.path(step, "detector", "1")
        train = ["-m", "detector.train", "--benign", data_file(ctx, name),
                 "--attack", data_file(ctx, "imagenet"), "--attack-split", "val",
                 *_surrogate(ctx), "--input-size", str(DETECTOR_SIZE),
                 "--epochs", str(s.detector_epochs), "--target-fpr", str(DETECTORS[name]),
                 "--seed", str(ctx.seed), "--work-dir", str(ctx.path(step, "work")),
                 "--out", str(export)]
        if s.detector_limit:
            train += ["--benign-limit", str(s.detector_limit)]
        evaluate = ["-m", "detector.evaluate", "--detector", str(export),
                    "--benign", data_file(ctx, name), "--benign-split", "test",
                    "--attack", data_file(ctx, "imagenet"), "--attack-split", "test",
                    "--out", str(ctx.path(step, "evaluation"))]
        return ([] if (export / "saved_model.pb").is_file() else [train]) + [evaluate]

    return Step(step, f"OOD query detector, {name} against ImageNet",
                (f"data_{name}", "data_imagenet"), commands,
                lambda ctx: _detector_figures(ctx, step))


# -- the defended deployment and PRADA -------------------------------------------------------------
def _defended_step(name: str, module: str, *, budget: int | None, split: str,
                   extra: tuple[str, ...], needs: tuple[str, ...]) -> Step:
    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        cmd = ["-m", f"benchmarks.{module}", "--victims", str(ctx.path("victims")),
               "--model", "cifar10_cnn", "--data-dir", str(ctx.data),
               "--benign-set", data_file(ctx, "cifar10"),
               "--transfer-set", data_file(ctx, "imagenet"), "--transfer-split", split,
               *_surrogate(ctx), "--arch-args", "--budget", str(budget or s.policy_budget),
               "--input-size", str(s.surrogate_size), "--epochs", str(s.surrogate_epochs),
               "--seed", str(ctx.seed), "--out", str(ctx.path(name, "run"))]
        return [cmd + [part.format(out=ctx.out) for part in extra]]

    return Step(name, f"{DEFENDED_TITLES[module]}, cifar10_cnn",
                ("victim_cifar10_cnn", "data_cifar10", "data_imagenet", *needs), commands,
                lambda ctx: _rows_figures(ctx, name))


def _prada_step() -> Step:
    name = "prada_cifar10_cnn"

    def commands(ctx: Context) -> list[list[str]]:
        return [["-m", "benchmarks.prada_bench", "--victims", str(ctx.path("victims")),
                 "--model", "cifar10_cnn", "--data-dir", str(ctx.data),
                 "--benign-set", data_file(ctx, "cifar10"),
                 "--transfer-set", data_file(ctx, "imagenet"), "--transfer-split", "test",
                 "--max-queries", str(ctx.scale.prada_queries), "--seed", str(ctx.seed),
                 "--out", str(ctx.path(name, "run"))]]

    return Step(name, f"{PRADA_TITLE}, cifar10_cnn",
                ("victim_cifar10_cnn", "data_cifar10", "data_imagenet"), commands,
                lambda ctx: _prada_figures(ctx, name))


def build_full_plan(scale: Scale) -> list[Step]:
    """The full-scale experiments in the order they run (each after the steps it needs)."""
    steps = [_data_step(key) for key in DATASETS]
    steps += [_victim_step(name) for name in VICTIMS]
    steps.append(_dense_victim_step("mnist_softmax", "softmax", None))
    steps += [_dense_victim_step(f"mnist_mlp{h}", "mlp", h) for h in scale.fee_hidden]
    steps += [
        _knockoff_step("knockoff_cifar10_cnn_probs", "Knockoff, CIFAR-10 CNN, probabilities",
                       "cifar10_cnn"),
        _knockoff_step("knockoff_cifar10_cnn_top1", "Knockoff, CIFAR-10 CNN, top-1 only",
                       "cifar10_cnn", granularity="top1"),
        _knockoff_step("knockoff_cifar10_cnn_adaptive", "Knockoff adaptive, CIFAR-10 CNN",
                       "cifar10_cnn", strategy="adaptive"),
        _knockoff_step("knockoff_cifar10_resnet34_probs",
                       "Knockoff, CIFAR-10 ResNet-34, probabilities", "cifar10_resnet34"),
        _knockoff_step("knockoff_cifar10_cnn_same_arch",
                       "Knockoff, CIFAR-10 CNN, surrogate of the victim's architecture (cnn)",
                       "cifar10_cnn", same_arch=True),
        _knockoff_step("knockoff_gtsrb_resnet34_probs", "Knockoff, GTSRB ResNet-34, probabilities",
                       "gtsrb_resnet34"),
        _knockoff_step("knockoff_caltech256_resnet34_probs",
                       "Knockoff, Caltech256 ResNet-34, probabilities", "caltech256_resnet34"),
        _knockoff_step("knockoff_cubs200_resnet34_probs",
                       "Knockoff, CUBS200 ResNet-34, probabilities", "cubs200_resnet34"),
        _copycat_step(),
        _jbda_step(),
        _exact_step("equation_solving", "mnist_softmax"),
        *[_exact_step("fee", f"mnist_mlp{h}") for h in scale.fee_hidden],
        *[_detector_step(name) for name in DETECTORS],
        _prada_step(),
        _defended_step("realistic_cifar10_cnn", "realistic_adversary",
                       budget=min(REALISTIC_BUDGET, scale.policy_budget), split="test",
                       extra=("--detector", "{out}/detector_cifar10/detector/1"),
                       needs=("detector_cifar10",)),
        _defended_step("policies_cifar10_cnn", "output_policies", budget=None, split="train",
                       extra=("--policies",
                              "identity,label_only,round:1,noise:0.2,reverse_sigmoid:0.7,0.4"),
                       needs=()),
    ]
    return steps
