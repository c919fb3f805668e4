"""``python -m benchmarks.verify_bench``: proof of theft on a real CIFAR-10 victim, both methods.

A small CIFAR-10 CNN victim (32 px, `--train-limit` training images) answers thieves whose
answers are DAWN-watermarked by `detector.watermark.Watermarker` (the function the gateway calls
per client; applied in-process here, one client name per thief, `--watermark-fraction`):

- Knockoff with probabilities and Knockoff top-1 (one-hot of each answer): `--thief-budget`
  random Tiny-ImageNet images (the 176 classes outside CIFAR-10) at 32 px;
- the realistic adversary: the same budget of CIFAR-10 *test* images (the attacker's half);
- each of those fine-tuned for `--finetune-epochs` on `--finetune-fraction` of the victim's own
  training data with true labels (the thief "launders" its copy).

Every thief's surrogate is trained by the attack's trainer (`attack.surrogate.SurrogateTrainer`,
soft cross-entropy, crop+flip), one per seed in `--seeds`, alternating architectures.
`--independents` models are trained on the victim's training data with true labels, other
seeds and architectures (never queried the victim). The fingerprint set (conferrable adversarial
examples, `detector.fingerprint`) is built from the victim with two surrogates distilled by the
defender and one reference, its null rate calibrated on two more independent models; none of
these is among the tested models.

Each model is then tested with at most `--max-queries` queries: DAWN (`verify_watermarks` with
the thief's own watermark set; the independents against every thief's set) and the fingerprints
(`verify_fingerprints`). Results: ``OUT/results.json`` and ``OUT/results.md``; trained models are
kept under ``OUT/models`` and reused by a second run with the same settings; the fingerprint set
is ``OUT/fingerprints.npz``, the victim, one thief and one independent model are exported under
``OUT/export`` for ``python -m detector.verify``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import invalid

log = logging.getLogger("benchmarks.verify_bench")
PROG = "python -m benchmarks.verify_bench"

# Architectures (all `common.backbones` "cnn" variants: widths, depth, head).
ARCHS: dict[str, dict[str, Any]] = {
    "cnn16": {"filters": [16, 32, 64], "block_dropout": [0.1, 0.2, 0.3], "dense_units": 128},
    "cnn12": {"filters": [12, 24, 48], "block_dropout": [0.1, 0.2, 0.3], "dense_units": 96},
    "cnn8": {"filters": [8, 16, 32], "block_dropout": [0.1, 0.2, 0.3], "dense_units": 64},
    "cnn2b": {"filters": [16, 32], "block_dropout": [0.2, 0.3], "dense_units": 128},
}
VICTIM_ARCH = "cnn16"
KEY = b"verify-bench-watermark-key-0123456789"


@dataclass(frozen=True)
class VerifyBenchConfig:
    """Stolen and independent models against DAWN and conferrable fingerprints."""

    data_dir: str = field(default="../shared/data", metadata={
        "help": "folder with cifar10_jpeg_q75.zip and the Tiny-ImageNet zip"})
    out: str = field(default="runs/verify_bench", metadata={"help": "output folder"})
    train_limit: int = field(default=8000, metadata={
        "help": "victim training images (CIFAR-10 train, stratified)"})
    victim_epochs: int = field(default=8, metadata={"help": "victim training epochs"})
    model_epochs: int = field(default=3, metadata={
        "help": "epochs of the independent, reference and defender's surrogate models"})
    thief_budget: int = field(default=4000, metadata={"help": "queries per thief"})
    thief_epochs: int = field(default=6, metadata={"help": "thief surrogate epochs"})
    thief_augment: str = field(default="crop+flip", metadata={
        "help": "thief training augmentation (attack.surrogate: none, flip, crop, crop+flip)"})
    seeds: tuple[int, ...] = field(default=(0, 1), metadata={"help": "thief seeds"})
    independents: int = field(default=10, metadata={"help": "independently trained models"})
    fingerprint_seeds: int = field(default=600, metadata={
        "help": "candidate seed images for the fingerprints (CIFAR-10 test, defender's half)"})
    count: int = field(default=100, metadata={"help": "fingerprints kept"})
    eps: float = field(default=12.0, metadata={"help": "L-inf radius in pixels (0..255)"})
    steps: int = field(default=40, metadata={"help": "PGD steps"})
    watermark_fraction: float = field(default=0.02, metadata={
        "help": "DAWN fraction of each thief's answers watermarked"})
    max_queries: int = field(default=100, metadata={"help": "queries per test to the suspect"})
    finetune_epochs: int = field(default=5, metadata={"help": "thief's fine-tuning epochs"})
    finetune_fraction: float = field(default=0.1, metadata={
        "help": "share of the victim's training data the thief fine-tunes on"})

    def __post_init__(self) -> None:
        for name in ("train_limit", "victim_epochs", "model_epochs", "thief_budget",
                     "thief_epochs", "independents", "fingerprint_seeds", "count", "steps",
                     "max_queries", "finetune_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid(name, value, "a positive integer")
        if not 0 < self.watermark_fraction <= 0.5:
            raise invalid("watermark_fraction", self.watermark_fraction, "a number in (0, 0.5]")
        if not 0 < self.finetune_fraction <= 1:
            raise invalid("finetune_fraction", self.finetune_fraction, "a number in (0, 1]")
        if not self.seeds:
            raise invalid("seeds", self.seeds, "at least one seed")
        cifar = Path(self.data_dir) / "cifar10_jpeg_q75.zip"
        if not cifar.is_file():
            raise invalid("data_dir", self.data_dir, "a folder holding cifar10_jpeg_q75.zip")


class _Models:
    """Train (or reload) models with the attack's trainer, cached under OUT/models."""

    def __init__(self, root: Path, classes: int) -> None:
        self.root = root
        self.classes = classes

    def train(self, name: str, arch: str, images: np.ndarray, targets: np.ndarray, *,
              seed: int, epochs: int, augment: str = "crop+flip") -> Any:
        from attack.surrogate import SurrogateTrainer

        started = time.perf_counter()
        if targets.ndim == 1:
            targets = np.eye(self.classes, dtype=np.float32)[targets]
        trainer = SurrogateTrainer("cnn", "none", 32, self.classes, epochs=epochs,
                                   batch_size=128, lr=2e-3, seed=seed,
                                   checkpoint_dir=self.root / name, augment=augment,
                                   arch_kwargs=ARCHS[arch])
        model = trainer.fit(images, targets)
        log.info("%s (%s): %s in %.0f s", name, arch,
                 "reloaded" if trainer.restored_final else "trained",
                 time.perf_counter() - started)
        return model

    def finetune(self, name: str, stolen: Any, images: np.ndarray, labels: np.ndarray, *,
                 seed: int, epochs: int) -> Any:
        """A copy of `stolen` trained further on true labels (Adam 1e-3), cached as weights."""
        import keras

        path = self.root / f"{name}.weights.h5"
        keras.utils.set_random_seed(seed)
        model = keras.models.clone_model(stolen)
        model.set_weights(stolen.get_weights())
        if path.is_file():
            model.load_weights(path)
            return model
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(images.astype(np.float32), labels, batch_size=64, epochs=epochs, verbose=0)
        model.save_weights(path)
        return model


def _accuracy(predict, images, labels) -> float:
    return float(np.mean(predict(images).argmax(1) == labels))


def run(config: VerifyBenchConfig) -> dict[str, Any]:
    from common.data import load_dataset
    from detector.fingerprint import (
        build_fingerprints,
        keras_predict,
        save_fingerprints,
        verify_fingerprints,
    )
    from detector.verify import verify_watermarks
    from detector.watermark import Watermarker

    started = time.time()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(config.data_dir)
    cifar = str(data / "cifar10_jpeg_q75.zip")
    train = load_dataset(cifar, "train", limit=config.train_limit, seed=0)
    test = load_dataset(cifar, "test")
    tiny = load_dataset(str(data / "tinyimagenet200_val10k_train50pc.zip"), "train",
                        image_size=32,
                        exclude_classes=str(data / "tinyimagenet_cifar10_overlap_wnids.txt"))
    classes = train.num_classes
    order = np.random.default_rng(0).permutation(len(test))
    attacker_half, defender_half = order[: len(test) // 2], order[len(test) // 2:]
    eval_x, eval_y = test.images[defender_half], test.labels[defender_half]
    models = _Models(out / "models", classes)

    victim_model = models.train("victim", VICTIM_ARCH, train.images, train.labels, seed=0,
                                epochs=config.victim_epochs)
    victim = keras_predict(victim_model)
    victim_train_probs = victim(train.images)
    accuracy = {"victim": _accuracy(victim, eval_x, eval_y)}
    log.info("victim accuracy %.4f", accuracy["victim"])

    # -- thieves (DAWN-watermarked answers) --------------------------------------------------
    marker = Watermarker(KEY, config.watermark_fraction)
    ft_count = max(1, int(round(config.finetune_fraction * len(train))))
    thieves: dict[str, Any] = {}
    watermarks: dict[str, list] = {}
    kinds = {"knockoff-probs": "tiny", "knockoff-top1": "tiny", "realistic": "cifar"}
    for s in config.seeds:
        rng = np.random.default_rng([s, 1])
        pools = {"tiny": tiny.images[rng.choice(len(tiny), config.thief_budget,
                                                replace=False)],
                 "cifar": test.images[attacker_half[rng.choice(
                     len(attacker_half), min(config.thief_budget, len(attacker_half)),
                     replace=False)]]}
        arch = ("cnn16", "cnn12", "cnn2b", "cnn8")[s % 4]
        for kind, pool in kinds.items():
            client = f"{kind}-{s}"
            answers, records = marker.apply(client, pools[pool], victim(pools[pool]),
                                            model="victim")
            watermarks[client] = records
            targets = answers if kind != "knockoff-top1" else \
                np.eye(classes, dtype=np.float32)[answers.argmax(1)]
            thieves[client] = models.train(client, arch, pools[pool], targets, seed=s,
                                           epochs=config.thief_epochs,
                                           augment=config.thief_augment)
        ft_idx = np.random.default_rng([s, 2]).choice(len(train), ft_count, replace=False)
        for kind in ("knockoff-probs", "realistic"):
            client = f"{kind}-{s}"
            thieves[f"{client}+finetune"] = models.finetune(
                f"{client}+finetune", thieves[client], train.images[ft_idx],
                train.labels[ft_idx], seed=s, epochs=config.finetune_epochs)
            watermarks[f"{client}+finetune"] = watermarks[client]

    # -- the defender's own models and the fingerprints ------------------------------------
    surrogates = [models.train(f"fp-surrogate-{i}", arch, train.images, victim_train_probs,
                               seed=200 + i, epochs=config.model_epochs)
                  for i, arch in enumerate(("cnn12", "cnn8"))]
    references = [models.train(f"fp-reference-{i}", arch, train.images, train.labels,
                               seed=300 + i, epochs=config.model_epochs)
                  for i, arch in enumerate(("cnn12",))]
    calibration = [keras_predict(models.train(f"fp-calibration-{i}", arch, train.images,
                                              train.labels, seed=400 + i,
                                              epochs=config.model_epochs))
                   for i, arch in enumerate(("cnn16", "cnn8"))]
    built = time.time()
    seeds_x = eval_x[: config.fingerprint_seeds]
    fingerprints = build_fingerprints(victim, seeds_x, surrogates, references, calibration,
                                      count=config.count, eps=config.eps, steps=config.steps,
                                      info={"victim": "verify_bench victim"})
    fp_path = save_fingerprints(out / "fingerprints.npz", fingerprints)
    fp_seconds = time.time() - built

    for name, model in thieves.items():
        r = verify_fingerprints(keras_predict(model), fingerprints, max_queries=config.max_queries)
        log.info("fingerprints vs %s: %d/%d p=%.3g", name, r.agreeing, r.compared, r.p_value)

    # -- independent models ----------------------------------------------------------------
    arch_cycle = list(ARCHS)
    independents = {f"independent-{i}-{arch_cycle[i % 4]}": models.train(
        f"independent-{i}", arch_cycle[i % 4], train.images, train.labels, seed=100 + i,
        epochs=config.model_epochs) for i in range(config.independents)}

    # -- tests ---------------------------------------------------------------------------------
    rows = []
    everyone = {**{k: ("stolen", m) for k, m in thieves.items()},
                **{k: ("independent", m) for k, m in independents.items()}}
    for name, (kind, model) in everyone.items():
        predict = keras_predict(model)
        accuracy[name] = _accuracy(predict, eval_x, eval_y)
        fidelity = float(np.mean(predict(eval_x).argmax(1) == victim(eval_x).argmax(1)))
        fp = verify_fingerprints(predict, fingerprints, victim=victim,
                                 max_queries=config.max_queries)
        row = {"model": name, "kind": kind, "accuracy": accuracy[name], "fidelity": fidelity,
               "fingerprint_agreeing": fp.agreeing, "fingerprint_compared": fp.compared,
               "fingerprint_p": fp.p_value, "fingerprint_identified": fp.stolen}
        sets = {name: watermarks[name]} if kind == "stolen" else \
            {k: v for k, v in watermarks.items() if "+finetune" not in k}
        dawn = []
        for owner, records in sets.items():
            r = verify_watermarks(predict, records, victim=victim,
                                  max_queries=config.max_queries)
            dawn.append({"watermarks_of": owner, "p": r.p_value, "top1_p": r.top1_p_value,
                         "agreeing": r.agreeing, "compared": r.compared,
                         "mean_rank": r.mean_rank, "identified": r.stolen})
        row["dawn"] = dawn
        rows.append(row)
        log.info("%s: acc %.3f fid %.3f; fingerprints %d/%d p=%.3g; DAWN %s", name,
                 accuracy[name], fidelity, fp.agreeing, fp.compared, fp.p_value,
                 [f"{d['p']:.3g}" for d in dawn][:3])
    victim_fp = verify_fingerprints(victim, fingerprints, max_queries=config.max_queries)

    # -- exports for the command line ----------------------------------------------------------
    from victim_export.export import export_classifier

    exports = {}
    for name, model in (("victim", victim_model), ("stolen", thieves[f"knockoff-probs-"
                                                                   f"{config.seeds[0]}"]),
                        ("independent", next(iter(independents.values())))):
        base = out / "export"
        folder = base / name
        if not folder.exists():
            export_classifier(model, base, name, version=1)
        exports[name] = str(folder)

    results = {"config": asdict(config), "seconds": time.time() - started,
               "fingerprint_build_seconds": fp_seconds, "fingerprints": str(fp_path),
               "fingerprint_null_rate": fingerprints.null_rate,
               "fingerprint_info": {k: v for k, v in fingerprints.info.items()
                                    if k != "conferrability"},
               "victim_accuracy": accuracy["victim"], "victim_self_fingerprint": {
                   "agreeing": victim_fp.agreeing, "compared": victim_fp.compared},
               "watermarks_per_thief": {k: len(v) for k, v in watermarks.items()},
               "rows": rows, "exports": exports, "load": os.getloadavg()}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "results.md").write_text(_markdown(results))
    return results


def _markdown(results: dict[str, Any]) -> str:
    lines = ["| model | kind | accuracy | fidelity | fingerprints agree | fingerprint p | "
             "DAWN top-1 hits | DAWN mean rank | DAWN p (rank) | DAWN p (top-1) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        if row["kind"] == "stolen":
            d = row["dawn"][0]
            dawn = (f"{d['agreeing']}/{d['compared']}", f"{d['mean_rank']:.2f}",
                    f"{d['p']:.3g}", f"{d['top1_p']:.3g}")
        else:
            ps = [d["p"] for d in row["dawn"]]
            dawn = ("-", "-", f"min {min(ps):.3g} of {len(ps)}",
                    f"min {min(d['top1_p'] for d in row['dawn']):.3g}")
        lines.append(f"| {row['model']} | {row['kind']} | {row['accuracy']:.4f} | "
                     f"{row['fidelity']:.4f} | {row['fingerprint_agreeing']}/"
                     f"{row['fingerprint_compared']} | {row['fingerprint_p']:.3g} | "
                     + " | ".join(dawn) + " |")
    stolen = [r for r in results["rows"] if r["kind"] == "stolen"]
    indep = [r for r in results["rows"] if r["kind"] == "independent"]
    dawn_indep = [d for r in indep for d in r["dawn"]]
    lines += ["",
              f"victim accuracy {results['victim_accuracy']:.4f}; fingerprint null rate "
              f"{results['fingerprint_null_rate']:.4f}; watermarks per thief "
              f"{results['watermarks_per_thief']}",
              f"fingerprints: stolen identified at p < 0.01: "
              f"{sum(r['fingerprint_p'] < 0.01 for r in stolen)} of {len(stolen)}; "
              f"independent with p > 0.05: {sum(r['fingerprint_p'] > 0.05 for r in indep)} of "
              f"{len(indep)}",
              f"DAWN (rank test): stolen identified at p < 0.01: "
              f"{sum(r['dawn'][0]['p'] < 0.01 for r in stolen)} of {len(stolen)} (top-1 test: "
              f"{sum(r['dawn'][0]['top1_p'] < 0.01 for r in stolen)}); independent tests with "
              f"p > 0.05: {sum(d['p'] > 0.05 for d in dawn_indep)} of {len(dawn_indep)}",
              f"{results['seconds']:.0f} s; load average at the end {results['load']}"]
    return "\n".join(lines) + "\n"


def _main(argv: Sequence[str] | None) -> int:
    from common.cli import configure_logging, parse_config

    config = parse_config(VerifyBenchConfig, argv, prog=PROG,
                          description=__doc__.split("\n\n")[0])
    configure_logging()
    results = run(config)
    print((Path(config.out) / "results.md").read_text(), end="")
    return 0 if results["rows"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    from common.cli import run_cli

    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
