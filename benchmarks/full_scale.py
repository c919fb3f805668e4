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

from benchmarks import study
from benchmarks.full_data import (
    DATASETS,
    DatasetUnavailable,
    PrepareConfig,
    check_available,
    resolve,
)
from benchmarks.harness import Command, Context, Step, StepUnavailable

__all__ = ["DETECTORS", "RESNET50_WEIGHTS", "SURROGATE", "VICTIMS", "build_full_plan",
           "data_file"]

SURROGATE = "ResNet50"  # Keras Applications, ImageNet weights, at its 224 px
RESNET50_WEIGHTS = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
DETECTOR_SIZE = 224
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


def _surrogate(ctx: Context) -> dict[str, Any]:
    local = ctx.data / RESNET50_WEIGHTS
    return {"backbone": SURROGATE, "weights": str(local) if local.is_file() else "imagenet"}


def _data_step(ctx: Context, scale: study.Scale, key: str) -> Step:
    """Resolve dataset `key` on this machine (a local copy or tensorflow-datasets) and write
    its fixed-size copy (`benchmarks.full_data`, `PrepareConfig`)."""
    ds = DATASETS[key]
    count = {"train_count": scale.budget + scale.heldout} if ds.samples else {}

    def prepare() -> tuple[Command, ...]:
        try:
            spec = resolve(key, ctx.data)
            check_available(key, spec, ctx.data)
        except DatasetUnavailable as err:
            raise StepUnavailable(str(err)) from None
        return (Command("benchmarks.full_data", PrepareConfig, {
            "dataset": key, "source": spec, "out": data_file(ctx, key), "seed": ctx.seed,
            **count}),)

    def summarize(c: Context) -> dict[str, Any]:
        return json.loads(c.path(f"data_{key}", f"{key}.json").read_text())

    return Step(f"data_{key}", f"dataset {ds.title}", (), (), summarize, prepare=prepare)


def build_full_plan(scale: study.Scale, ctx: Context) -> list[Step]:
    """The full-scale experiments in the order they run (each after the steps it needs)."""
    imagenet = data_file(ctx, "imagenet")
    surrogate = {**_surrogate(ctx), "input_size": scale.surrogate_size,
                 "epochs": scale.surrogate_epochs}
    steps = [_data_step(ctx, scale, key) for key in DATASETS]
    for name, (dataset, arch, arch_args, augment) in VICTIMS.items():
        steps.append(study.victim_step(
            ctx, name, needs=(f"data_{dataset}",), dataset=data_file(ctx, dataset), arch=arch,
            epochs=scale.victim_epochs[name], patience=VICTIM_PATIENCE, augment=augment,
            arch_args=(a.format(width=scale.resnet_width) for a in arch_args),
            figures={"architecture": arch, "dataset": dataset}))
    steps += study.dense_victim_steps(ctx, scale, data_file(ctx, "mnist"), needs=("data_mnist",))

    def knockoff(name: str, title: str, model: str, *, same_arch: bool = False,
                 **values: Any) -> Step:
        dataset, arch = VICTIMS[model][:2]
        network = ({"backbone": arch, "weights": "none", "input_size": DATASETS[dataset].size,
                    "epochs": scale.surrogate_epochs} if same_arch else surrogate)
        values = {"transfer_set": imagenet, "transfer_split": "train", "budget": scale.budget,
                  "heldout": scale.heldout, "strategy": "random", "granularity": "probs",
                  **network, "test_set": data_file(ctx, dataset),
                  "curve_points": 4 if name == "knockoff_cifar10_cnn_probs" else 1, **values}
        return study.attack_step(ctx, scale, "attack.knockoff", name, title, model,
                                 needs=(f"victim_{model}", "data_imagenet", f"data_{dataset}"),
                                 **values)

    cifar10 = data_file(ctx, "cifar10")
    steps += [knockoff(name, title, model, **options)
              for name, title, model, options in study.KNOCKOFF_RUNS if model in VICTIMS]
    steps += [
        study.attack_step(ctx, scale, "attack.copycat", *study.COPYCAT, "cifar10_cnn",
                          needs=("victim_cifar10_cnn", "data_imagenet", "data_cifar10"),
                          transfer_set=imagenet, transfer_split="train",
                          budget=scale.copycat_budget, heldout=scale.heldout, pd_set=cifar10,
                          pd_split="train", pd_budget=200, **surrogate, test_set=cifar10),
        study.attack_step(ctx, scale, "attack.jbda", *study.JBDA, "cifar10_cnn",
                          needs=("victim_cifar10_cnn", "data_cifar10"), seed_set=cifar10,
                          seed_split="train", **study.jbda_values(scale), **surrogate,
                          test_set=cifar10),
    ]
    steps += study.exact_steps(ctx, scale, data_file(ctx, "mnist"), needs=("data_mnist",))
    steps += [study.detector_step(
        ctx, scale, name, f"OOD query detector, {name} against ImageNet",
        needs=(f"data_{name}", "data_imagenet"),
        train={"benign": data_file(ctx, name), "attack": imagenet, "attack_split": "val",
               **_surrogate(ctx), "input_size": DETECTOR_SIZE, "target_fpr": target_fpr},
        evaluate={"benign": data_file(ctx, name), "benign_split": "test", "attack": imagenet,
                  "attack_split": "test"})
        for name, target_fpr in DETECTORS.items()]
    # the defended deployment: ImageNet as the naive attacker's pool, the ResNet50 surrogate
    defended = {"benign_set": cifar10, "transfer_set": imagenet, **_surrogate(ctx),
                "arch_args": ()}
    steps += [
        study.prada_step(ctx, scale, "cifar10_cnn",
                         needs=("victim_cifar10_cnn", "data_cifar10", "data_imagenet"),
                         benign_set=cifar10, transfer_set=imagenet, transfer_split="test"),
        study.defended_step(ctx, scale, "realistic_cifar10_cnn", "realistic_adversary",
                            "cifar10_cnn", needs=("victim_cifar10_cnn", "data_cifar10",
                                                  "data_imagenet", "detector_cifar10"),
                            **defended, transfer_split="test",
                            budget=min(study.REALISTIC_MAX_BUDGET, scale.policy_budget),
                            detector=str(ctx.path("detector_cifar10", "detector", "1"))),
        study.defended_step(ctx, scale, "policies_cifar10_cnn", "output_policies", "cifar10_cnn",
                            needs=("victim_cifar10_cnn", "data_cifar10", "data_imagenet"),
                            **defended, transfer_split="train", budget=scale.policy_budget,
                            policies=study.POLICIES),
    ]
    return steps
