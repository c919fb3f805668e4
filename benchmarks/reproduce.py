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
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from common.cli import ArgumentParser, run_cli
from common.errors import UsageError, invalid
from common.fileio import check_writable, write_json_atomic

if TYPE_CHECKING:  # grpc and numpy: imported when a server starts, not for --help
    from serving import testing

__all__ = ["SCALES", "Scale", "Step", "StepUnavailable", "build_plan", "main"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]

# Atli et al. 2020, Table 2 (Knockoff with 100,000 ImageNet queries, probabilities) and Table 4
# (the detector: benign / anomalous accuracy).
PAPER_KNOCKOFF = {
    "Caltech256 (ResNet-34)": (0.87, 0.75, 0.86),
    "CUBS200 (ResNet-34)": (0.77, 0.51, 0.66),
    "CIFAR10 (ResNet-34)": (0.94, 0.73, 0.77),
    "CIFAR10 (CNN)": (0.87, 0.71, 0.81),
    "GTSRB (ResNet-34)": (0.98, 0.61, 0.62),
}
PAPER_DETECTOR = {
    "CIFAR10": (0.96, 0.96), "GTSRB": (0.99, 1.00), "CUBS200": (0.93, 0.93),
    "Diabetic5": (0.99, 0.99), "Caltech256": (0.63, 0.56),
}


@dataclass(frozen=True)
class Scale:
    """How big each experiment is at one scale."""

    name: str
    victim_epochs: dict[str, int]
    victim_limit: int | None
    budget: int
    heldout: int
    surrogate_size: int
    surrogate_epochs: int
    test_limit: int | None
    detector_limit: int | None
    detector_epochs: int
    policy_budget: int
    copycat_budget: int
    jbda_seeds: int
    jbda_rounds: int
    fee_hidden: tuple[int, ...]
    resnet_width: int = 64  # ResNet-34 victims' base width (He et al.: 64)
    imagenet: bool = False  # the full-scale plan (benchmarks.full_scale): ImageNet, tfds
    prada_queries: int = 2000  # queries per PRADA stream at most


SCALES = {
    "smoke": Scale("smoke", {"cifar10_cnn": 1, "cifar10_resnet34": 1, "gtsrb_resnet34": 1},
                   victim_limit=2000, budget=600, heldout=100, surrogate_size=64,
                   surrogate_epochs=1, test_limit=500, detector_limit=600, detector_epochs=1,
                   policy_budget=300, copycat_budget=300, jbda_seeds=20, jbda_rounds=2,
                   fee_hidden=(8,), resnet_width=16, prada_queries=300),
    # cpu: the CIFAR-10 ResNet-34 keeps its depth at a quarter of the width (16): at width 64
    # with the CIFAR stem one epoch costs about 15 minutes on 2 cores, at width 16 about 1.5
    # (GTSRB's ResNet-34 has the ImageNet stem, cheap at 32 px, and keeps width 64).
    "cpu": Scale("cpu", {"cifar10_cnn": 10, "cifar10_resnet34": 5, "gtsrb_resnet34": 4},
                 victim_limit=None, budget=8000, heldout=600, surrogate_size=96,
                 surrogate_epochs=8, test_limit=None, detector_limit=10000, detector_epochs=6,
                 policy_budget=6000, copycat_budget=8000, jbda_seeds=150, jbda_rounds=4,
                 fee_hidden=(16, 32, 64), resnet_width=16),
    "full": Scale("full", {"cifar10_cnn": 60, "cifar10_resnet34": 100, "gtsrb_resnet34": 60,
                           "caltech256_resnet34": 100, "cubs200_resnet34": 100},
                  victim_limit=None, budget=100000, heldout=2000, surrogate_size=224,
                  surrogate_epochs=100, test_limit=None, detector_limit=None, detector_epochs=20,
                  policy_budget=100000, copycat_budget=100000, jbda_seeds=500, jbda_rounds=6,
                  fee_hidden=(16, 32, 64, 128), imagenet=True),
}


@dataclass
class Context:
    """What the steps share: paths, the scale, the servers started for them."""

    data: Path
    out: Path
    scale: Scale
    seed: int
    servers: dict[str, testing.Running] = field(default_factory=dict)
    dry_run: bool = False  # build the commands only: no server is started

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def file(self, name: str) -> str:
        return str(self.data / name)

    # -- the embedded model server over the exported victims ---------------------------------
    def server(self) -> str:
        """Start (once) the embedded model server over `<out>/victims/models.config`."""
        if self.dry_run:
            return "127.0.0.1:<port>"
        if "victims" not in self.servers:
            from serving import testing

            self.servers["victims"] = testing.model_server(
                config_file=self.path("victims", "models.config"), process=True)
        return self.servers["victims"].target

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()


@dataclass(frozen=True)
class Step:
    """One experiment: the commands it runs and how its figures are read back."""

    name: str
    title: str
    needs: tuple[str, ...]
    commands: Callable[[Context], list[list[str]]]
    summarize: Callable[[Context], dict[str, Any]]
    serve: bool = False  # needs the model server over the victims


class StepUnavailable(RuntimeError):
    """A step that cannot run on this machine (missing data); `str(err)` is the one-line reason."""


# -- figures read back from what the commands wrote ---------------------------------------------
def _victim_figures(ctx: Context, name: str, **extra: Any) -> dict[str, Any]:
    card = json.loads(ctx.path("victims", name, "card.json").read_text())
    _, entry = max(card["versions"].items(), key=lambda kv: int(kv[0]))
    return {"test_accuracy": entry.get("test_accuracy"), "epochs": entry.get("epochs_run"),
            "seconds": entry.get("training_seconds"), **extra}


def _detector_figures(ctx: Context, step: str) -> dict[str, Any]:
    result = json.loads(ctx.path(step, "evaluation", "evaluation.json").read_text())
    return {"rows": result["rows"], "roc_auc": result.get("roc_auc"),
            "target_fpr": result.get("target_fpr")}


def _exact_figures(ctx: Context, step: str) -> dict[str, Any]:
    report = json.loads(ctx.path(step, "run", "report.json").read_text())
    e = report["evaluation"]
    extra = report.get("extra", {})
    errors = extra.get("parameter_error") or {}
    worst = max((v for k, v in errors.items()
                 if k.startswith("max_abs_") and k != "max_abs_true_weight"
                 and isinstance(v, (int, float))), default=None)
    return {"queries": e.get("n_queries"), "fidelity_test": e.get("fidelity_test"),
            "fidelity_noise": e.get("fidelity_noise"), "max_parameter_error": worst}


def _rows_figures(ctx: Context, step: str) -> dict[str, Any]:
    result = json.loads(ctx.path(step, "run", "results.json").read_text())
    return {"rows": result["rows"]}


def _prada_figures(ctx: Context, step: str) -> dict[str, Any]:
    result = json.loads(ctx.path(step, "run", "results.json").read_text())
    config = result.get("config", {})
    return {"rows": result["rows"],
            **{k: config.get(k) for k in ("delta", "min_samples", "batch", "max_queries")}}


EXACT_TITLES = {"equation_solving": "Equation solving", "fee": "Functionally-equivalent extraction"}
DEFENDED_TITLES = {"realistic_adversary": "Realistic adversary against the OOD detector",
                   "output_policies": "Output policies"}


# -- victims -----------------------------------------------------------------------------------
VICTIMS = {
    # name: (dataset file, arch, arch args, augment, extra flags)
    "cifar10_cnn": ("cifar10_jpeg_q75.zip", "cnn", [], "crop+flip", []),
    "cifar10_resnet34": ("cifar10_jpeg_q75.zip", "resnet34", ["stem=cifar", "width={width}"],
                         "crop+flip", []),
    "gtsrb_resnet34": ("gtsrb32_uint8_npy.tar.xz", "resnet34", ["stem=imagenet"], "crop", []),
}


def _victim_step(name: str) -> Step:
    dataset, arch, arch_args, augment, extra = VICTIMS[name]

    def commands(ctx: Context) -> list[list[str]]:
        cmd = ["-m", "victim_export", "--dataset", ctx.file(dataset), "--arch", arch,
               "--epochs", str(ctx.scale.victim_epochs[name]), "--augment", augment,
               "--out", str(ctx.path("victims")), "--name", name, "--seed", str(ctx.seed)]
        if arch_args:
            cmd += ["--arch-args", *(a.format(width=ctx.scale.resnet_width) for a in arch_args)]
        if ctx.scale.victim_limit:
            cmd += ["--limit", str(ctx.scale.victim_limit)]
        return [cmd + extra]

    return Step(f"victim_{name}", f"victim {name}", (), commands,
                lambda ctx: _victim_figures(ctx, name, architecture=arch, dataset=dataset))


# -- Knockoff ------------------------------------------------------------------------------------
def _finish_attack_cmd(ctx: Context, cmd: list[str], run: str, *,
                       test_limit: bool = True) -> list[str]:
    """An attack command with the scale's test limit, resumed when its run directory exists."""
    if test_limit and ctx.scale.test_limit:
        cmd += ["--test-limit", str(ctx.scale.test_limit)]
    if ctx.path(run, "run", "config.json").is_file():
        cmd.append("--resume")
    return cmd


def _knockoff_cmd(ctx: Context, model: str, run: str, *, granularity: str = "probs",
                  strategy: str = "random", budget: int | None = None,
                  backbone: tuple[str, ...] | None = None, test_set: str | None = None,
                  transfer: tuple[str, ...] | None = None, extra: tuple[str, ...] = (),
                  input_size: int | None = None) -> list[str]:
    s = ctx.scale
    test_set = test_set or ("cifar10_jpeg_q75.zip" if model.startswith("cifar10")
                            else "gtsrb32_uint8_npy.tar.xz")
    transfer = transfer or (
        "--transfer-set", ctx.file("tinyimagenet200_val10k_train50pc.zip"),
        "--transfer-split", "train+val",
        *(("--exclude-classes", ctx.file("tinyimagenet_cifar10_overlap_wnids.txt"))
          if model.startswith("cifar10") else ()))
    backbone = backbone or ("--backbone", "mobilenet", "--arch-args", "alpha=0.25",
                            "--weights", ctx.file("mobilenet_2_5_224_tf_no_top.h5"))
    cmd = ["-m", "attack.knockoff", "--grpc", ctx.server(), "--model", model, *transfer,
           "--budget", str(budget or s.budget), "--heldout", str(s.heldout),
           "--strategy", strategy, "--granularity", granularity, *backbone,
           "--input-size", str(input_size or s.surrogate_size),
           "--epochs", str(s.surrogate_epochs),
           "--test-set", ctx.file(test_set), "--seed", str(ctx.seed),
           "--curve-points", "4" if granularity == "probs" and model == "cifar10_cnn"
           and "arch" not in run else "1",
           "--out", str(ctx.path(run, "run")), *extra]
    return _finish_attack_cmd(ctx, cmd, run)


def _report(ctx: Context, run: str) -> dict[str, Any]:
    report = json.loads(ctx.path(run, "run", "report.json").read_text())
    e = report["evaluation"]
    out = {k: e.get(k) for k in ("victim_acc", "surrogate_acc", "ratio", "fidelity_test",
                                 "fidelity_transfer_heldout", "fidelity_noise", "n_queries")}
    if report.get("curve"):
        out["curve"] = report["curve"]
    out["per_class_surrogate"] = e.get("per_class_surrogate")
    out["per_class_victim"] = e.get("per_class_victim")
    return out


def _knockoff_step(name: str, title: str, model: str, **kwargs: Any) -> Step:
    return Step(name, title, (f"victim_{model}",),
                lambda ctx: [_knockoff_cmd(ctx, model, name, **kwargs)],
                lambda ctx: _report(ctx, name), serve=True)


# -- the detector (Atli et al.'s table) ---------------------------------------------------------
DETECTORS = {
    # name: (benign data, victim, exclude the overlapping Tiny-ImageNet classes, target benign
    # FPR of the calibrated threshold: the operating point ops would pick for each; CIFAR-10's
    # classes are close to Tiny-ImageNet's, so its 95%/95% point sits near 4-5% FPR)
    "cifar10": ("cifar10_jpeg_q75.zip", "cifar10_cnn", True, 0.04),
    "gtsrb": ("gtsrb32_uint8_npy.tar.xz", "gtsrb_resnet34", False, 0.01),
}


def _detector_step(name: str) -> Step:
    benign, _, exclude, target_fpr = DETECTORS[name]

    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        excl = ["--exclude-classes", ctx.file("tinyimagenet_cifar10_overlap_wnids.txt")] \
            if exclude else []
        export = ctx.path(f"detector_{name}", "detector", "1")
        train = ["-m", "detector.train", "--benign", ctx.file(benign), "--attack",
                 ctx.file("tinyimagenet200_val10k_train50pc.zip"), "--attack-split", "train",
                 *excl, "--backbone", "MobileNet", "--arch-args", "alpha=0.25",
                 "--weights", ctx.file("mobilenet_2_5_224_tf_no_top.h5"), "--input-size", "96",
                 "--epochs", str(s.detector_epochs), "--target-fpr", str(target_fpr),
                 "--seed", str(ctx.seed),
                 "--work-dir", str(ctx.path(f"detector_{name}", "work")), "--out", str(export)]
        if s.detector_limit:
            train += ["--benign-limit", str(s.detector_limit)]
        evaluate = ["-m", "detector.evaluate", "--detector", str(export),
                    "--benign", ctx.file(benign), "--benign-split", "test",
                    "--attack", ctx.file("tinyimagenet200_val10k_train50pc.zip"),
                    "--attack-split", "val", *excl,
                    "--out", str(ctx.path(f"detector_{name}", "evaluation"))]
        return ([] if (export / "saved_model.pb").is_file() else [train]) + [evaluate]

    return Step(f"detector_{name}", f"OOD query detector, {name}", (), commands,
                lambda ctx: _detector_figures(ctx, f"detector_{name}"))


# -- Copycat and JBDA ------------------------------------------------------------------------------
def _copycat_step() -> Step:
    name = "copycat_cifar10_cnn"

    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        cmd = ["-m", "attack.copycat", "--grpc", ctx.server(), "--model", "cifar10_cnn",
               "--transfer-set", ctx.file("tinyimagenet200_val10k_train50pc.zip"),
               "--transfer-split", "train+val",
               "--exclude-classes", ctx.file("tinyimagenet_cifar10_overlap_wnids.txt"),
               "--budget", str(s.copycat_budget), "--heldout", str(s.heldout),
               "--pd-set", ctx.file("cifar10_jpeg_q75.zip"), "--pd-split", "train",
               "--pd-budget", "200", "--backbone", "mobilenet", "--arch-args", "alpha=0.25",
               "--weights", ctx.file("mobilenet_2_5_224_tf_no_top.h5"),
               "--input-size", str(s.surrogate_size), "--epochs", str(s.surrogate_epochs),
               "--test-set", ctx.file("cifar10_jpeg_q75.zip"), "--seed", str(ctx.seed),
               "--out", str(ctx.path(name, "run"))]
        return [_finish_attack_cmd(ctx, cmd, name)]

    return Step(name, "Copycat CNN (top-1 only, + 200 in-domain images), CIFAR-10 CNN",
                ("victim_cifar10_cnn",), commands, lambda ctx: _report(ctx, name), serve=True)


def _jbda_step() -> Step:
    name = "jbda_cifar10_cnn"

    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        per_round = 2 * s.jbda_seeds
        cmd = ["-m", "attack.jbda", "--grpc", ctx.server(), "--model", "cifar10_cnn",
               "--seed-set", ctx.file("cifar10_jpeg_q75.zip"), "--seed-split", "train",
               "--seeds", str(s.jbda_seeds), "--rounds", str(s.jbda_rounds),
               "--per-round", str(per_round),
               "--budget", str(s.jbda_seeds + s.jbda_rounds * per_round),
               "--backbone", "mobilenet", "--arch-args", "alpha=0.25",
               "--weights", ctx.file("mobilenet_2_5_224_tf_no_top.h5"),
               "--input-size", str(s.surrogate_size), "--epochs", str(s.surrogate_epochs),
               "--test-set", ctx.file("cifar10_jpeg_q75.zip"), "--seed", str(ctx.seed),
               "--out", str(ctx.path(name, "run"))]
        return [_finish_attack_cmd(ctx, cmd, name)]

    return Step(name, "JBDA (Jacobian-based augmentation), CIFAR-10 CNN",
                ("victim_cifar10_cnn",), commands, lambda ctx: _report(ctx, name), serve=True)


# -- exact extraction: equation solving and functionally-equivalent extraction ---------------------
def _dense_victim_step(name: str, arch: str, hidden: int | None) -> Step:
    def commands(ctx: Context) -> list[list[str]]:
        cmd = ["-m", "victim_export", "--dataset", ctx.file("mnist_test10k_uint8.npz"),
               "--train-split", "test", "--test-split", "test", "--arch", arch,
               "--export-logits", "--epochs", "20", "--out", str(ctx.path("victims")),
               "--name", name, "--seed", str(ctx.seed)]
        if hidden:
            cmd += ["--arch-args", f"hidden={hidden}"]
        return [cmd]

    return Step(f"victim_{name}", f"victim {name}", (), commands,
                lambda ctx: _victim_figures(ctx, name, architecture=arch))


def _exact_step(module: str, model: str) -> Step:
    name = f"{module}_{model}"

    def commands(ctx: Context) -> list[list[str]]:
        cmd = ["-m", f"attack.{module}", "--grpc", ctx.server(), "--model", model,
               "--test-set", ctx.file("mnist_test10k_uint8.npz"),
               "--reference", str(ctx.path("victims", model, "1")),
               "--seed", str(ctx.seed), "--out", str(ctx.path(name, "run"))]
        return [_finish_attack_cmd(ctx, cmd, name, test_limit=False)]

    return Step(name, f"{EXACT_TITLES[module]}, {model}", (f"victim_{model}",), commands,
                lambda ctx: _exact_figures(ctx, name), serve=True)


# -- the defended deployment: realistic adversary and output policies (through the gateway) -------
REALISTIC_MAX_BUDGET = 5000
def _defended_step(name: str, module: str, model: str, extra: list[str],
                   needs: tuple[str, ...]) -> Step:
    def commands(ctx: Context) -> list[list[str]]:
        s = ctx.scale
        budget = s.policy_budget
        if module == "realistic_adversary":  # it owns half of CIFAR-10's test split: 5,000
            budget = min(budget, REALISTIC_MAX_BUDGET)
        cmd = ["-m", f"benchmarks.{module}", "--victims", str(ctx.path("victims")),
               "--model", model, "--data-dir", str(ctx.data), "--budget", str(budget),
               "--input-size", str(s.surrogate_size), "--epochs", str(s.surrogate_epochs),
               "--seed", str(ctx.seed), "--out", str(ctx.path(name, "run"))]
        return [cmd + [part.format(out=ctx.out) for part in extra]]

    return Step(name, f"{DEFENDED_TITLES[module]}, {model}", needs, commands,
                lambda ctx: _rows_figures(ctx, name))


# -- PRADA (Juuti et al.) in the gateway: a JBDA stream against natural-image streams -----------
PRADA_TITLE = "PRADA against JBDA and natural-image streams"


def _prada_step(model: str) -> Step:
    name = f"prada_{model}"

    def commands(ctx: Context) -> list[list[str]]:
        return [["-m", "benchmarks.prada_bench", "--victims", str(ctx.path("victims")),
                 "--model", model, "--data-dir", str(ctx.data),
                 "--max-queries", str(ctx.scale.prada_queries), "--seed", str(ctx.seed),
                 "--out", str(ctx.path(name, "run"))]]

    return Step(name, f"{PRADA_TITLE}, {model}", (f"victim_{model}",), commands,
                lambda ctx: _prada_figures(ctx, name))


def build_plan(scale: Scale) -> list[Step]:
    """The experiments in the order they run (each after the steps it needs)."""
    if scale.imagenet:
        from benchmarks.full_scale import build_full_plan

        return build_full_plan(scale)
    steps = [_victim_step(name) for name in VICTIMS]
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
                       "cifar10_cnn", backbone=("--backbone", "cnn", "--weights", "none"),
                       input_size=32),  # the victim's own input: same architecture, same size
        _knockoff_step("knockoff_gtsrb_resnet34_probs", "Knockoff, GTSRB ResNet-34, probabilities",
                       "gtsrb_resnet34"),
        _copycat_step(),
        _jbda_step(),
        _exact_step("equation_solving", "mnist_softmax"),
        *[_exact_step("fee", f"mnist_mlp{h}") for h in scale.fee_hidden],
        *[_detector_step(name) for name in DETECTORS],
        _prada_step("cifar10_cnn"),
        _defended_step("realistic_cifar10_cnn", "realistic_adversary", "cifar10_cnn",
                       ["--detector", "{out}/detector_cifar10/detector/1"],
                       ("victim_cifar10_cnn", "detector_cifar10")),
        _defended_step("policies_cifar10_cnn", "output_policies", "cifar10_cnn",
                       ["--policies",
                        "identity,label_only,round:1,noise:0.2,reverse_sigmoid:0.7,0.4"],
                       ("victim_cifar10_cnn",)),
    ]
    return steps


# -- running -------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "tensorflow-serving-api", "grpcio", "numpy", "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _machine() -> str:
    gpus = "no GPU"
    try:
        import tensorflow as tf

        found = tf.config.list_physical_devices("GPU")
        if found:
            gpus = f"{len(found)} GPU(s)"
    except Exception:  # noqa: BLE001 - the page says what it could find
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpus}, {platform.platform()}"


def _closure(plan: list[Step], only: list[str]) -> list[Step]:
    by_name = {s.name: s for s in plan}
    wanted: set[str] = set()
    stack = list(only)
    while stack:
        name = stack.pop()
        if name in wanted:
            continue
        wanted.add(name)
        stack.extend(by_name[name].needs)
    return [s for s in plan if s.name in wanted]


def _shown(cmd: list[str]) -> str:
    return "python " + " ".join(shlex.quote(c) for c in cmd)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (a command's one-line error), shortened."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    last = next((line for line in reversed(lines) if line), "")
    return last if len(last) <= 300 else last[:297] + "..."


def run_step(ctx: Context, step: Step) -> dict[str, Any]:
    """Run one step unless its `done.json` exists; return its recorded result.

    Raises `RuntimeError`: `StepUnavailable` when the step cannot run here, otherwise a failed
    command, with the last line of its log (a command's one-line error).
    """
    folder = ctx.path(step.name)
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    started = time.time()
    try:
        commands = step.commands(ctx)
    except StepUnavailable as err:
        with open(folder / "log.txt", "a") as logfile:
            logfile.write(f"unavailable: {err}\n")
        raise
    shown = []
    for cmd in commands:
        full = [sys.executable, *cmd]
        shown.append(_shown(cmd))
        print(f"[{step.name}] $ {shown[-1]}", flush=True)
        log_file = folder / "log.txt"
        with open(log_file, "a") as logfile:
            code = subprocess.run(full, env=env, cwd=REPO, stdout=logfile,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            last = _last_line(log_file)
            raise RuntimeError(f"step {step.name} failed (exit {code})"
                               + (f": {last}" if last else "") + f"; see {log_file}")
    result = {"name": step.name, "title": step.title, "commands": shown,
              "seconds": round(time.time() - started, 1), "figures": step.summarize(ctx)}
    write_json_atomic(done, result)
    return result


def print_commands(ctx: Context, plan: list[Step]) -> None:
    """Print each step's commands as `run_step` would run them (nothing is run or written)."""
    for step in plan:
        needs = f"  (after {', '.join(step.needs)})" if step.needs else ""
        print(f"# {step.name}: {step.title}{needs}")
        if ctx.path(step.name, "done.json").is_file():
            print("#   done: not run again")
            continue
        try:
            commands = step.commands(ctx)
        except StepUnavailable as err:
            print(f"#   cannot run here: {err}")
            continue
        for cmd in commands:
            print(_shown(cmd))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks.reproduce",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="cpu", help="smoke, cpu or full (default: cpu)")
    parser.add_argument("--data-dir", default=os.environ.get("MEXT_SHARED_DATA",
                                                             "../shared/data"))
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


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        if ns.scale not in SCALES:
            raise invalid("--scale", ns.scale, "one of " + ", ".join(SCALES))
        scale = SCALES[ns.scale]
        full_plan = plan = build_plan(scale)
        names = [s.name for s in plan]
        if ns.only:
            unknown = [n for n in ns.only if n not in names]
            if unknown:
                raise invalid("--only", " ".join(unknown), "step names from --list")
            plan = _closure(plan, ns.only)
        data = Path(ns.data_dir)
        if not ns.list and not data.is_dir():
            raise invalid("--data-dir", ns.data_dir, "the folder holding the shared data "
                          "(cifar10_jpeg_q75.zip, ...)")
        if not ns.list and not ns.dry_run:  # before any step trains or queries anything
            check_writable(ns.out or f"results/{scale.name}", "--out")
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if ns.list:
        for step in plan:
            needs = f"  (after {', '.join(step.needs)})" if step.needs else ""
            print(f"{step.name}: {step.title}{needs}")
        return 0
    out = Path(ns.out or f"results/{scale.name}")
    if ns.dry_run:
        dry = Context(data=data.resolve(), out=out.resolve(), scale=scale, seed=ns.seed,
                      dry_run=True)
        print_commands(dry, plan)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(data=data.resolve(), out=out.resolve(), scale=scale, seed=ns.seed)
    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    started = time.time()
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
                results[step.name] = run_step(ctx, step)
                print(f"[{step.name}] done in {results[step.name]['seconds']} s", flush=True)
            except RuntimeError as err:
                print(f"[{step.name}] {err}", file=sys.stderr, flush=True)
                failures.append(step.name)
    finally:
        ctx.stop()
    # the page shows every finished step of the whole plan, not only this invocation's
    for step in full_plan:
        done = ctx.path(step.name, "done.json")
        if step.name not in results and done.is_file():
            results[step.name] = json.loads(done.read_text())
    results = {name: results[name] for name in names if name in results}
    from benchmarks.results_page import write_results_page

    page = write_results_page(out, scale.name, results, failures,
                              versions=_versions(), machine=_machine(),
                              wall_seconds=time.time() - started,
                              paper_knockoff=PAPER_KNOCKOFF, paper_detector=PAPER_DETECTOR)
    print(f"results page: {page}")
    return 1 if failures else 0


if __name__ == "__main__":
    # run the module the plans import (benchmarks.full_scale), not this __main__ copy of it
    from benchmarks import reproduce

    sys.exit(reproduce.main())
