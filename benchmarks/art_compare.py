"""``python -m benchmarks.art_compare``: our Knockoff and Copycat beside IBM ART's, same victim.

The best-known public library for model extraction is the Adversarial Robustness Toolbox (ART,
`art.attacks.extraction.KnockoffNets` and `CopycatCNN`). This benchmark runs both libraries'
attacks against ONE victim served by the embedded TF Serving server over gRPC, with the same
query budget, the same transfer images (one random sample per seed, shared by every method), the
same surrogate architecture and initial weights (`common.backbones.build_classifier`), the same
number of epochs and by default the same training batch (32), and scores every surrogate on the
same held-out labelled images:

* ``ours-knockoff``: `attack.Knockoff` (random sampling, probability targets, our trainer with
  the natural-image attacks' defaults, `attack.config.TransferRecipePart`: targets sharpened at
  temperature 0.5, a weight average (EMA 0.99), peak rate 0.002 decayed by a cosine, no
  crop/flip);
* ``art-knockoff``: ART `KnockoffNets(sampling_strategy="random", use_probability=...)` through
  a `BlackBoxClassifierNeuralNetwork` whose ``predict_fn`` is our gRPC client, training a
  `TensorFlowV2Classifier` around the same Keras network (Adam, ART's own fit loop);
* ``ours-copycat`` / ``art-copycat``: Copycat CNN (da Silva et al. 2018), top-1 labels of
  non-problem-domain images, phase 1 only on both sides.

``--recipes`` runs our attacks under several training recipes (e.g. ``default``, Knockoff's
and Copycat's defaults; ``ema=0,learning_rate=0.001,augment=crop+flip``, their defaults before
the weight average; ``target_temperature=1,batch_size=64,ema=0,learning_rate=0.001,
augment=crop+flip``, the trainer as first written; ``mixup=0.2`` or ``label_smoothing=0.1`` on
top of the defaults; ``color_jitter=0.1`` adds a light colour change of each image) beside one
ART run; rows are named by what differs from that first trainer (and ART at batch 64 with Adam
at 0.001; ``--art-learning-rate`` gives ART another constant rate, so a gain of ours that is only
its rate shows).
Every row is kept in OUT/rows.json with the settings it was measured under; a later run with
the same settings keeps those rows instead of training (and paying the victim) again, so
recipes can be added one invocation at a time beside the ART rows already measured. Our
attacks' run folders (RUNS/<row>-<budget>-<seed>-<digest>) are named by a digest of those
settings and of the transfer images sent: an interrupted row resumes its journal, a row under
other settings (another victim served under the same folder name) never reuses its answers.

Every figure is the surrogate's top-1 accuracy on the test images and its ratio to the victim's
accuracy on the same images measured through the same gRPC path; per method and budget the mean
and the sample standard deviation over the seeds. ART is a benchmark dependency only
(``pip install -r requirements-bench.txt``); the toolkit never imports it.

Example (the README's numbers; the victim is the quick start's CIFAR-10 CNN)::

    python -m benchmarks.art_compare --victim out/quickstart/victims/cifar10_cnn \\
        --test-set ../shared/data/cifar10_jpeg_q75.zip \\
        --transfer-set ../shared/data/tinyimagenet200_val10k_train50pc.zip \\
        --exclude-classes ../shared/data/tinyimagenet_cifar10_overlap_wnids.txt \\
        --weights ../shared/data/mobilenet_2_5_224_tf_no_top.h5 --budgets 5000 --seeds 0 1 2 \\
        --out results/art_compare
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attack.config import RECIPE_LEGACY
from attack.config import TransferRecipePart as Surrogate
from benchmarks.harness.stats import spread
from common import cli
from common.constraints import check_fields
from common.data import load_dataset
from common.errors import UsageError, invalid
from common.fileio import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

PROG = "python -m benchmarks.art_compare"
METHODS = ("ours-knockoff", "art-knockoff", "ours-copycat", "art-copycat")
LEGACY_BATCH = 64  # the batch of the first comparison (both libraries), named in no label
RECIPE_KEYS = ("target_temperature", "mixup", "label_smoothing", "warmup", "ema",
               "color_jitter", "augment", "learning_rate", "batch_size")
LEGACY_AUGMENT = "crop+flip"  # our trainer's augmentation as first written


@dataclass(frozen=True)
class CompareConfig:
    """Our attacks and ART's against one served victim, side by side, several seeds."""

    victim: str = field(metadata={
        "help": "the victim's model base path (<base>/<version>/saved_model.pb); it is served "
                "by the embedded TF Serving server under its folder's name", "metavar": "DIR"})
    test_set: str = field(metadata={"help": "labelled images of the victim's task (data spec)"})
    transfer_set: str = field(metadata={"help": "the thieves' natural images (data spec)"})
    transfer_split: str = field(default="train+val", metadata={"help": "split(s) of it"})
    exclude_classes: str | None = field(default=None, metadata={
        "help": "class list dropped from the transfer set (the victim's own classes)"})
    weights: str = field(default="imagenet", metadata={
        "help": "backbone weights: imagenet, none, or a file"})
    backbone: str = field(default="mobilenet", metadata={"help": "surrogate backbone"})
    alpha: float = field(default=0.25, metadata={"help": "MobileNet width", "gt": 0})
    input_size: int = field(default=96, metadata={"help": "surrogate input side", "min": 32})
    epochs: int = field(default=5, metadata={"help": "training epochs, every method", "min": 1})
    batch_size: int = field(default=32, metadata={
        "help": "ART's training batch (ours: the recipe's, the attacks' default of 32 "
                "unless the recipe sets batch_size)", "min": 1})
    art_learning_rate: float = field(default=1e-3, metadata={
        "help": "the constant Adam learning rate of ART's training (ours: the recipe's peak "
                "rate, decayed by a cosine); ART's rows name it when it is not 0.001",
        "gt": 0})
    budgets: tuple[int, ...] = field(default=(5000,), metadata={
        "help": "query budgets", "min": 1})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "seeds", "min": 0})
    methods: tuple[str, ...] = field(default=METHODS, metadata={
        "help": "methods to run", "choices": METHODS})
    test_limit: int = field(default=5000, metadata={
        "help": "test images scored (the first of a seeded per-class choice)", "min": 1})
    recipes: tuple[str, ...] = field(default=("default",), metadata={
        "help": "our surrogate training recipes to run, each 'default' (the defaults of "
                "attack.knockoff and attack.copycat) or comma-separated KEY=VALUE over them, "
                "KEY one of " + ", ".join(RECIPE_KEYS)
                + " (e.g. target_temperature=1,mixup=0); ART runs once whatever they are",
        "metavar": "RECIPE"})
    out: str = field(default="results/art_compare", metadata={
        "help": "folder for rows.json, results.json and results.md; rows already in its "
                "rows.json with the same settings are kept, not run again"})
    runs: str | None = field(default=None, metadata={
        "help": "folder for our attacks' run directories (journals, checkpoints); "
                "default: OUT/runs", "metavar": "DIR"})

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise invalid("seeds", self.seeds, "distinct seeds")
        version_dirs = [p for p in Path(self.victim).glob("*") if p.name.isdigit()
                        and (p / "saved_model.pb").is_file()] if Path(self.victim).is_dir() else []
        if not version_dirs:
            raise invalid("victim", self.victim,
                          "a model base path holding <version>/saved_model.pb")
        for recipe in self.recipes:
            parse_recipe(recipe)


def parse_recipe(spec: str) -> dict:
    """Our trainer's settings named by a recipe spec: {} for 'default', else KEY=VALUE pairs
    over `RECIPE_KEYS` (floats; batch_size, our final training's batch, an int; augment a
    name such as none or crop+flip), each replacing Knockoff's and Copycat's default."""
    if spec == "default":
        return {}
    out: dict = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in RECIPE_KEYS or key in out:
            raise invalid("recipes", spec, "'default' or distinct KEY=VALUE pairs joined by "
                          "commas, KEY one of " + ", ".join(RECIPE_KEYS))
        try:
            out[key] = (int(value) if key == "batch_size" else value.strip()
                        if key == "augment" else float(value))
        except ValueError:
            raise invalid("recipes", spec, f"a number for {key}") from None
    if "batch_size" in out:
        out["fit_batch_size"] = out.pop("batch_size")
    try:
        check_fields(Surrogate(**out))  # the field rules (ranges) of the surrogate part
    except UsageError as err:
        raise invalid("recipes", spec, f"values the attacks accept ({err})") from None
    return out


def _settings(config: CompareConfig, victim_accuracy: float) -> dict:
    """What every method's row depends on, apart from its own recipe: a row measured under the
    same settings is reused instead of run (and paid) again."""
    return {"victim": Path(config.victim).resolve().name, "victim_accuracy": victim_accuracy,
            "test_set": Path(config.test_set).name, "test_limit": config.test_limit,
            "transfer_set": Path(config.transfer_set).name,
            "transfer_split": config.transfer_split,
            "exclude_classes": config.exclude_classes and Path(config.exclude_classes).name,
            "weights": Path(config.weights).name, "backbone": config.backbone,
            "alpha": config.alpha, "input_size": config.input_size, "epochs": config.epochs}


def resolved_recipe(config: CompareConfig, spec: str) -> dict:
    """Every setting of our trainer's recipe that `spec` leaves in force (defaults included)."""
    surrogate = Surrogate(**parse_recipe(spec))
    recipe = {key: getattr(surrogate, key) for key in RECIPE_KEYS if key != "batch_size"}
    return {**recipe, "batch_size": surrogate.fit_batch_size or surrogate.batch_size}


def label(method: str, recipe: dict) -> str:
    """The row's name: ``ours-knockoff`` for our trainer as first written (`RECIPE_LEGACY`,
    Adam 1e-3, batch 64) and ``art-knockoff`` for ART at batch 64, else the method with what
    differs: ``ours-knockoff[target_temperature=0.5,batch_size=32]``."""
    legacy = {**RECIPE_LEGACY, "augment": LEGACY_AUGMENT, "learning_rate": 1e-3,
              "batch_size": LEGACY_BATCH}
    diff = [f"{key}={recipe[key]}" if isinstance(recipe[key], str) else f"{key}={recipe[key]:g}"
            for key in RECIPE_KEYS if key in recipe and recipe[key] != legacy[key]]
    return f"{method}[{','.join(diff)}]" if diff else method


def run_folder(row_label: str, budget: int, seed: int, settings: dict,
               transfer: np.ndarray) -> str:
    """The folder of one of our rows' runs (journal, checkpoints) under RUNS: its label, budget
    and seed, and a digest of the settings and of the transfer images sent. An interrupted row
    resumes its journal; a run under other settings (another victim served under the same
    folder name, another transfer file) never does, so no row is trained on another victim's
    answers."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(transfer).tobytes())
    slug = re.sub(r"[^\w.=,-]+", "_", row_label)
    return f"{slug}-{budget}-{seed}-{digest.hexdigest()[:12]}"


def _art():
    try:
        import art  # noqa: F401
    except ImportError:
        raise UsageError("ART is not installed: pip install -r requirements-bench.txt "
                         "(adversarial-robustness-toolbox)") from None
    from art.attacks.extraction import CopycatCNN, KnockoffNets
    from art.estimators.classification import (
        BlackBoxClassifierNeuralNetwork,
        TensorFlowV2Classifier,
    )
    return KnockoffNets, CopycatCNN, BlackBoxClassifierNeuralNetwork, TensorFlowV2Classifier


def _network(config: CompareConfig, num_classes: int, image_shape, seed: int):
    """The surrogate both libraries train: raw pixels of the victim's size in, logits out."""
    import keras

    from common.backbones import build_classifier

    keras.utils.set_random_seed(seed)
    core = build_classifier(config.backbone, num_classes, input_size=config.input_size,
                            weights=config.weights, alpha=config.alpha)
    inputs = keras.Input(image_shape)
    resized = keras.layers.Resizing(config.input_size, config.input_size)(inputs)
    return keras.Model(inputs, core(resized))


def _accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    import tensorflow as tf

    size = tuple(model.input_shape[1:3])
    if tuple(images.shape[1:3]) != size:  # our trainer's resize (antialiased, rounded to pixels)
        images = tf.clip_by_value(tf.round(tf.image.resize(images, size, antialias=True)),
                                  0, 255).numpy()
    logits = model.predict(images.astype("float32"), batch_size=256, verbose=0)
    return float((np.argmax(logits, 1) == labels).mean())


def our_surrogate(config: CompareConfig, recipe: dict) -> Surrogate:
    """Our attacks' surrogate part under `recipe` (`resolved_recipe`): the network of
    `_network` (same backbone, width, input size and initial weights for a seed), its epochs."""
    return Surrogate(backbone=config.backbone, weights=config.weights,
                     arch_args=(f"alpha={config.alpha}",), input_size=config.input_size,
                     epochs=config.epochs, fit_batch_size=recipe["batch_size"],
                     **{k: v for k, v in recipe.items() if k != "batch_size"})


def _ours(config: CompareConfig, victim, transfer: np.ndarray, budget: int, seed: int,
          run_dir: Path, method: str, recipe: dict):
    from attack import Copycat, Knockoff

    surrogate = our_surrogate(config, recipe)
    attack = (Knockoff if method == "ours-knockoff" else Copycat)(
        budget=budget, heldout=0, noise=0, seed=seed, curve_points=1)
    result = attack.extract(victim, transfer, surrogate=surrogate, run_dir=run_dir,
                            resume=(run_dir / "config.json").is_file())
    return result.surrogate


def _art_attack(method: str, config: CompareConfig, victim, transfer: np.ndarray, budget: int,
                seed: int, num_classes: int):
    import keras
    import tensorflow as tf

    knockoff_cls, copycat_cls, blackbox_cls, tf2_cls = _art()

    def predict_fn(images: np.ndarray) -> np.ndarray:
        return victim.predict(np.clip(np.rint(images), 0, 255).astype(np.uint8))

    blackbox = blackbox_cls(predict_fn, input_shape=transfer.shape[1:], nb_classes=num_classes,
                            channels_first=False, clip_values=(0, 255))
    network = _network(config, num_classes, transfer.shape[1:], seed)
    optimizer = keras.optimizers.Adam(config.art_learning_rate)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(model, x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    thief = tf2_cls(network, nb_classes=num_classes, input_shape=transfer.shape[1:],
                    loss_object=loss, optimizer=optimizer, train_step=train_step,
                    clip_values=(0, 255))
    np.random.seed(seed)  # ART samples with the global numpy generator
    if method == "art-knockoff":
        attack = knockoff_cls(blackbox, batch_size_fit=config.batch_size, batch_size_query=64,
                              nb_epochs=config.epochs, nb_stolen=budget,
                              sampling_strategy="random", use_probability=True)
    else:
        attack = copycat_cls(blackbox, batch_size_fit=config.batch_size, batch_size_query=64,
                             nb_epochs=config.epochs, nb_stolen=budget, use_probability=False)
    attack.extract(transfer.astype("float32"), thieved_classifier=thief)
    return network


def _summary(rows: list[dict]) -> dict:
    """Mean and sample sd per method label and budget, with the per-seed accuracies."""
    groups: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["budget"], r["seed"])):
        groups.setdefault(f"{row['label']}@{row['budget']}", []).append(row)
    out = {}
    for key, group in groups.items():
        acc = spread(r["accuracy"] for r in group)
        ratio = spread(r["ratio"] for r in group)
        out[key] = {"seeds": acc.n, "accuracy_mean": acc.mean, "accuracy_sd": acc.sd or 0.0,
                    "ratio_mean": ratio.mean, "ratio_sd": ratio.sd or 0.0,
                    "per_seed": {str(r["seed"]): r["accuracy"] for r in group}}
    return out


def _machine(rows: list[dict]) -> str:
    """The CPUs and the load the rows were measured under (1-minute load average as each row
    finished; the first rows recorded none)."""
    loads = [r["load"] for r in rows if r.get("load") is not None]
    text = f"{os.cpu_count()} CPUs"
    if loads:
        text += f", load {min(loads):.1f}-{max(loads):.1f} as the rows finished"
    return text + f", {os.getloadavg()[0]:.1f} at the end"


def _markdown(result: dict) -> str:
    lines = [f"# Ours against IBM ART {result['art_version']}", "",
             f"Victim `{result['victim']}`: {result['victim_accuracy']:.4f} on "
             f"{result['test_images']} test images through gRPC. Surrogate {result['surrogate']}."
             f" Seeds {result['seeds']}. Machine: {result['machine']}.", "",
             "| method @ budget | seeds | surrogate accuracy | ratio | per seed |",
             "|---|---|---|---|---|"]
    for key, s in result["summary"].items():
        seeds = ", ".join(f"{seed}: {acc:.4f}" for seed, acc in s["per_seed"].items())
        lines.append(f"| {key} | {s['seeds']} | {s['accuracy_mean']:.4f} +/- "
                     f"{s['accuracy_sd']:.4f} | {s['ratio_mean']:.3f} +/- {s['ratio_sd']:.3f} "
                     f"| {seeds} |")
    return "\n".join(lines) + "\n"


def _load_rows(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as err:
        raise invalid("out", str(path.parent), f"a readable rows.json or none ({err})") from None
    return [r for r in rows if isinstance(r, dict) and "settings" in r] \
        if isinstance(rows, list) else []


def run(config: CompareConfig) -> dict:
    from attack import ServingVictim
    from serving.testing import model_server

    if any(m.startswith("art-") for m in config.methods):
        _art()  # before any query or training
    test = load_dataset(config.test_set, "test", limit=config.test_limit, seed=0)
    pool = load_dataset(config.transfer_set, config.transfer_split,
                        image_size=test.images.shape[1:3], channels=3,
                        exclude_classes=config.exclude_classes)
    num_classes = int(test.labels.max()) + 1
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(config.victim).resolve().name
    runs = Path(config.runs) if config.runs else out / "runs"
    rows = _load_rows(out / "rows.json")
    with model_server(base_path=config.victim, name=name) as server:
        victim = ServingVictim(server.target, name, input_range="0,255",
                               output_kind="probabilities")
        victim_acc = float((victim.predict(test.images).argmax(1) == test.labels).mean())
        settings = _settings(config, victim_acc)
        jobs = [(method, recipe) for method in config.methods
                for recipe in (config.recipes if method.startswith("ours-") else (None,))]
        for seed in config.seeds:
            order = np.random.default_rng(seed).permutation(len(pool.images))
            for budget in config.budgets:
                if budget > len(order):
                    raise invalid("budgets", budget, f"at most {len(order)} (the transfer set)")
                transfer = pool.images[order[:budget]]
                for method, spec in jobs:
                    recipe = ({"batch_size": config.batch_size,
                               "learning_rate": config.art_learning_rate} if spec is None
                              else resolved_recipe(config, spec))
                    row_label = label(method, recipe)
                    def same(r: dict) -> bool:
                        return (r["label"], r["budget"], r["seed"], r["settings"]) == (
                            row_label, budget, seed, settings)

                    if any(same(r) for r in rows):
                        log.info("%s budget %d seed %d: measured before, kept", row_label, budget,
                                 seed)
                        continue
                    start = time.perf_counter()
                    if method.startswith("ours-"):
                        folder = run_folder(row_label, budget, seed, settings, transfer)
                        model = _ours(config, victim, transfer, budget, seed, runs / folder,
                                      method, recipe)
                    else:
                        model = _art_attack(method, config, victim, transfer, budget, seed,
                                            num_classes)
                    acc = _accuracy(model, test.images, test.labels)
                    rows = [r for r in rows if not same(r)]
                    rows.append({"method": method, "recipe": recipe, "label": row_label,
                                 "budget": budget, "seed": seed, "accuracy": acc,
                                 "ratio": acc / victim_acc,
                                 "seconds": round(time.perf_counter() - start, 1),
                                 "load": round(os.getloadavg()[0], 2), "settings": settings})
                    log.info("%s budget %d seed %d: %.4f (%.3fx)", row_label, budget, seed, acc,
                             acc / victim_acc)
                    write_json_atomic(out / "rows.json", rows)
    import art

    rows = [r for r in rows if r["settings"] == settings]
    result = {"victim": name, "victim_accuracy": victim_acc, "test_images": len(test.labels),
              "surrogate": f"{config.backbone} alpha {config.alpha} at {config.input_size} px, "
                           f"weights {Path(config.weights).name}, {config.epochs} epochs",
              "seeds": sorted({r["seed"] for r in rows}), "art_version": art.__version__,
              "machine": _machine(rows),
              "rows": rows, "summary": _summary(rows)}
    write_json_atomic(out / "results.json", result)
    write_text_atomic(out / "results.md", _markdown(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    def body(args):
        config = cli.parse_config(CompareConfig, args, prog=PROG, description=__doc__)
        cli.configure_logging()
        result = run(config)
        print(_markdown(result))
        return 0

    return cli.run_cli(body, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
