"""`python -m benchmarks.reproduce`: one command that reproduces Atli et al.'s study.

Atli et al. ("Extraction of Complex DNN Models: Real Threat or Boogeyman?", 2020) reproduce
Knockoff Nets (Orekondy et al., CVPR 2019) against ResNet-34 and CNN victims, find its limits
(top-1 answers, different architectures, rare classes of GTSRB), propose a detector that tells
the victim's own distribution from attack queries, and show a realistic adversary who evades it.
This command runs every experiment of that study, and the surrounding literature the toolkit
implements (PRADA, output policies, Copycat, JBDA, equation solving, functionally-equivalent
extraction), through the real gRPC path: victims exported for TF Serving, served by the embedded
model server, attacked with the project's commands, defended by the gateway where a defence is
measured. It then writes one results page (Markdown tables, PNG plots, the exact commands, seeds,
versions and machine) side by side with the papers' figures.

    python -m benchmarks.reproduce --scale cpu --data-dir ../shared/data --out results/cpu

The run is resumable: each experiment is a step that writes `<out>/<step>/` and, when it has
finished, `<out>/<step>/done.json`; a step with its `done.json` is not run again (delete the file
to run it again), an interrupted attack resumes from its journal. `--only` runs some steps (and
the steps they need), `--list` prints the plan without running it, `--dry-run` the exact commands
each step would run. A step that fails is recorded with its one-line reason and the steps that
need it are skipped; the others still run.

`--scale cpu` fits a 2-core CPU machine in about two hours with `../shared/data`; `--scale full`
is the paper's setting (`benchmarks.full_scale`: ResNet-34 victims on Caltech256, CUBS200,
CIFAR-10 and GTSRB, 100,000 ImageNet queries, a Keras Applications ResNet50 with ImageNet weights
as the surrogate; datasets from `--data-dir` or tensorflow-datasets; a GPU machine with
internet). `--scale smoke` is a minutes-long run on small subsets that checks the whole pipeline
(it is what the slow test runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from attack.papers import PAPER_DETECTOR, PAPER_KNOCKOFF
from benchmarks import harness
from benchmarks.harness import Context, Step
from benchmarks.results_page import write_results_page
from benchmarks.scales import SCALES, Scale
from common.cli import ArgumentParser, run_cli
from common.errors import UsageError, invalid
from common.fileio import check_writable

__all__ = ["SCALES", "Scale", "build_plan", "main"]

log = logging.getLogger(__name__)

DEFAULT_DATA = os.environ.get("MEXT_SHARED_DATA", "../shared/data")
TRANSFER = "tinyimagenet200_val10k_train50pc.zip"
OVERLAP = "tinyimagenet_cifar10_overlap_wnids.txt"  # Tiny-ImageNet classes that are CIFAR-10's
MOBILENET = "mobilenet_2_5_224_tf_no_top.h5"
CIFAR10 = "cifar10_jpeg_q75.zip"
GTSRB = "gtsrb32_uint8_npy.tar.xz"
MNIST = "mnist_test10k_uint8.npz"

VICTIMS = {
    # name: (dataset file, arch, arch args, augment)
    "cifar10_cnn": (CIFAR10, "cnn", (), "crop+flip"),
    "cifar10_resnet34": (CIFAR10, "resnet34", ("stem=cifar", "width={width}"), "crop+flip"),
    "gtsrb_resnet34": (GTSRB, "resnet34", ("stem=imagenet",), "crop"),
}

DETECTORS = {
    # name: (benign data, exclude the overlapping Tiny-ImageNet classes, target benign FPR of
    # the calibrated threshold: the operating point ops would pick for each; CIFAR-10's classes
    # are close to Tiny-ImageNet's, so its 95%/95% point sits near 4-5% FPR)
    "cifar10": (CIFAR10, True, 0.04),
    "gtsrb": (GTSRB, False, 0.01),
}


# the runs whose surrogate accuracy is also measured at four points of the budget
CURVES = ("knockoff_cifar10_cnn_probs", "knockoff_cifar10_cnn_adaptive")


def default_context(scale: Scale) -> Context:
    """Where a plan reads and writes when the command line does not say."""
    return Context(data=Path(DEFAULT_DATA), out=Path(f"results/{scale.name}"))


def _cpu_plan(scale: Scale, ctx: Context) -> list[Step]:
    """The cpu and smoke plans: the shared data's CIFAR-10, GTSRB, MNIST and Tiny-ImageNet."""
    from benchmarks import study  # the packages' configs (numpy, grpc): after the flags

    f = ctx.file
    mobilenet = {"arch_args": ("alpha=0.25",), "weights": f(MOBILENET)}
    tiny = {"transfer_set": f(TRANSFER), "transfer_split": "train+val"}
    cifar_tiny = {**tiny, "exclude_classes": f(OVERLAP)}
    surrogate = {"backbone": "mobilenet", **mobilenet, "input_size": scale.surrogate_size,
                 "epochs": scale.surrogate_epochs}
    steps = []
    for name, (dataset, arch, arch_args, augment) in VICTIMS.items():
        limit = {"limit": scale.victim_limit} if scale.victim_limit else {}
        steps.append(study.victim_step(
            ctx, name, dataset=f(dataset), arch=arch, epochs=scale.victim_epochs[name],
            augment=augment, arch_args=(a.format(width=scale.resnet_width) for a in arch_args),
            **limit,
            figures={"architecture": arch, "dataset": dataset}))
    steps += study.dense_victim_steps(ctx, scale, f(MNIST))

    def knockoff(name: str, title: str, model: str, *, same_arch: bool = False,
                 **values: Any) -> Step:
        cifar = model.startswith("cifar10")
        network = ({"backbone": "cnn", "weights": "none", "input_size": 32,
                    "epochs": scale.surrogate_epochs} if same_arch else surrogate)
        values = {**(cifar_tiny if cifar else tiny), "budget": scale.budget,
                  "heldout": scale.heldout, "strategy": "random", "granularity": "probs",
                  **network, "test_set": f(CIFAR10 if cifar else GTSRB),
                  "curve_points": 4 if name in CURVES else 1, **values}
        return study.attack_step(ctx, scale, "attack.knockoff", name, title, model,
                                 needs=(f"victim_{model}",), **values)

    steps += [knockoff(name, title, model, **options)
              for name, title, model, options in study.KNOCKOFF_RUNS if model in VICTIMS]
    steps += [
        study.attack_step(ctx, scale, "attack.copycat", *study.COPYCAT, "cifar10_cnn",
                          needs=("victim_cifar10_cnn",), **cifar_tiny,
                          budget=scale.copycat_budget, heldout=scale.heldout, pd_set=f(CIFAR10),
                          pd_split="train", pd_budget=200, **surrogate, test_set=f(CIFAR10)),
        study.attack_step(ctx, scale, "attack.jbda", *study.JBDA, "cifar10_cnn",
                          needs=("victim_cifar10_cnn",), seed_set=f(CIFAR10), seed_split="train",
                          **study.jbda_values(scale), **surrogate, test_set=f(CIFAR10)),
    ]
    steps += study.exact_steps(ctx, scale, f(MNIST))
    for name, (benign, exclude, target_fpr) in DETECTORS.items():
        excluded = {"exclude_classes": f(OVERLAP)} if exclude else {}
        steps.append(study.detector_step(
            ctx, scale, name, f"OOD query detector, {name}", needs=(),
            train={"benign": f(benign), "attack": f(TRANSFER), "attack_split": "train",
                   **excluded, "backbone": "MobileNet", **mobilenet, "input_size": 96,
                   "target_fpr": target_fpr},
            evaluate={"benign": f(benign), "benign_split": "test", "attack": f(TRANSFER),
                      "attack_split": "val", **excluded}))
    steps += [
        study.prada_step(ctx, scale, "cifar10_cnn", needs=("victim_cifar10_cnn",)),
        study.defended_step(ctx, scale, "realistic_cifar10_cnn", "realistic_adversary",
                            "cifar10_cnn", needs=("victim_cifar10_cnn", "detector_cifar10"),
                            budget=min(scale.policy_budget, study.REALISTIC_MAX_BUDGET),
                            detector=str(ctx.path("detector_cifar10", "detector", "1"))),
        study.defended_step(ctx, scale, "policies_cifar10_cnn", "output_policies", "cifar10_cnn",
                            needs=("victim_cifar10_cnn",), budget=scale.policy_budget,
                            policies=study.POLICIES),
    ]
    return steps


def build_plan(scale: Scale, ctx: Context | None = None) -> list[Step]:
    """The experiments in the order they run (each after the steps it needs); every command's
    config values are checked against its command line here, before anything runs."""
    ctx = ctx or default_context(scale)
    if scale.imagenet:
        from benchmarks.full_scale import build_full_plan  # as `study`: after the flags

        return build_full_plan(scale, ctx)
    return _cpu_plan(scale, ctx)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks.reproduce",
                            description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="cpu", help="smoke, cpu or full (default: cpu)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument("--out", default=None, help="results folder (default: results/<scale>)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these steps")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the exact commands of each step without running them")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the plan; one line and exit 2 on bad input, 130/143 on Ctrl-C/SIGTERM (finished
    steps are kept: the same command continues)."""
    return run_cli(_main, argv, prog="python -m benchmarks.reproduce",
                   resume_hint="finished steps are kept (<out>/<step>/done.json); the same "
                               "command continues with the next one")


def _run(ctx: Context, plan: list[Step]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Run the steps in order; a step whose needs failed is skipped and recorded as failed."""
    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    try:
        for step in plan:
            failed = [need for need in step.needs if need in failures]
            if failed:
                reason = f"skipped: needs {', '.join(failed)}, which failed"
                print(f"[{step.name}] {reason}", file=sys.stderr, flush=True)
                ctx.path(step.name).mkdir(parents=True, exist_ok=True)
                with open(ctx.path(step.name, "log.txt"), "a") as logfile:
                    logfile.write(reason + "\n")
                failures.append(step.name)
                continue
            try:
                results[step.name] = harness.run_step(ctx, step)
                print(f"[{step.name}] done in {results[step.name]['seconds']} s", flush=True)
            except RuntimeError as err:
                print(f"[{step.name}] {err}", file=sys.stderr, flush=True)
                failures.append(step.name)
    finally:
        ctx.stop()
    return results, failures


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        if ns.scale not in SCALES:
            raise invalid("--scale", ns.scale, "one of " + ", ".join(SCALES))
        scale = SCALES[ns.scale]
        data, out = Path(ns.data_dir), Path(ns.out or f"results/{scale.name}")
        ctx = Context(data=data.resolve(), out=out.resolve(), seed=ns.seed)
        full_plan = plan = build_plan(scale, ctx)
        names = [s.name for s in plan]
        if ns.only:
            unknown = [n for n in ns.only if n not in names]
            if unknown:
                raise invalid("--only", " ".join(unknown), "step names from --list")
            plan = harness.closure(plan, ns.only)
        if not ns.list and not data.is_dir():
            raise invalid("--data-dir", ns.data_dir, "the folder holding the shared data "
                          "(cifar10_jpeg_q75.zip, ...)")
        if not ns.list and not ns.dry_run:  # before any step trains or queries anything
            check_writable(out, "--out")
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if ns.list:
        for step in plan:
            needs = f"  (after {', '.join(step.needs)})" if step.needs else ""
            print(f"{step.name}: {step.title}{needs}")
        return 0
    if ns.dry_run:
        harness.print_commands(ctx, plan)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results, failures = _run(ctx, plan)
    # the page shows every finished step of the whole plan, not only this invocation's
    for step in full_plan:
        done = ctx.path(step.name, "done.json")
        if step.name not in results and done.is_file():
            results[step.name] = json.loads(done.read_text())
    results = {name: results[name] for name in names if name in results}
    page = write_results_page(out, scale.name, results, failures,
                              versions=harness.versions(), machine=harness.machine(),
                              wall_seconds=time.time() - started,
                              paper_knockoff=PAPER_KNOCKOFF, paper_detector=PAPER_DETECTOR)
    print(f"results page: {page}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
