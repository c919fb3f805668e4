"""``python -m benchmarks.verify_bench``: proof of theft on a real CIFAR-10 victim, both methods.

The victim is served (the embedded model server: `--victims`/`--victim-model`, e.g. the quick
start's CIFAR-10 CNN; without `--victims` a small CNN trained here on `--train-limit` images and
exported) behind a **served gateway** (`serving.gateway`, in-process) whose policy is DAWN's
``watermark`` (`--watermark-fraction`, a key file under OUT) with its SQLite state
(``OUT/gateway_state.db``). Every thief is a client with its own API key and queries through
that gateway (`--thief-budget` queries, `serving.client.ServingClient`); the gateway picks and
stores the watermark queries. Thieves (`--thieves`, one per seed in `--seeds`):

- ``knockoff-probs`` / ``knockoff-top1``: random Tiny-ImageNet images (the 176 classes outside
  CIFAR-10) at 32 px; the surrogate learns the probabilities / the one-hot of each answer;
- ``copycat``: Copycat's non-problem-domain images (Tiny-ImageNet) plus a tenth of the budget of
  problem-domain images (the attacker's half of the CIFAR-10 test split), one-hot targets;
- ``jpeg``: Knockoff with probabilities whose queries are JPEG-encoded (`--jpeg-quality`) before
  they are sent (the evasion of `detector.evasion.jpeg`);
- ``camouflage``: Knockoff with probabilities, half of its stream the attacker's in-domain images
  (`detector.evasion.camouflage`, share 0.5);
- ``realistic``: the realistic adversary, the budget from the attacker's half of the CIFAR-10
  test split, probabilities;
- each of them fine-tuned for `--finetune-epochs` on `--finetune-fraction` of the victim's own
  training data with true labels (the thief "launders" its copy).

Surrogates are trained by the attack's trainer (`attack.surrogate.SurrogateTrainer`, soft
cross-entropy), architectures alternating per seed. `--independents` models are trained on the
victim's training data (`--train-limit` images, seed 0, as the quick start's victim) with true
labels, other seeds and other architectures (small CNN variants, a narrow ResNet-34 and MobileNet
alpha 0.25 from the ImageNet weights in `--data-dir`); they never queried the victim and are
tested against every thief's watermark set. A thief's test reads its watermark set from the
gateway's state exactly as ``python -m detector.verify --watermarks sqlite:... --client NAME``
does and replays at most `--max-queries` of them (`detector.verify.verify_watermarks`).

`--fingerprint` also builds a set of conferrable adversarial examples from the victim
(`detector.fingerprint`, two surrogates distilled by the defender and one reference, its null
rate calibrated on two more independent models; none is among the tested models) and tests
every model with it. Results: ``OUT/results.json`` and ``OUT/results.md``; trained models are
kept under ``OUT/models``, each thief's answers under ``OUT/answers`` (a second run with the same
settings reuses both and sends no query); the suspects' and the victim's scores on the replayed
watermark images are kept in ``OUT/replayed.npz``. The victim (when trained here), one thief and
one independent model are exported under ``OUT/export`` for ``python -m detector.verify``.
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

# Architectures: (backbone, weights file in --data-dir or None, constructor arguments).
ARCHS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "cnn16": ("cnn", None, {"filters": [16, 32, 64], "block_dropout": [0.1, 0.2, 0.3],
                            "dense_units": 128}),
    "cnn12": ("cnn", None, {"filters": [12, 24, 48], "block_dropout": [0.1, 0.2, 0.3],
                            "dense_units": 96}),
    "cnn8": ("cnn", None, {"filters": [8, 16, 32], "block_dropout": [0.1, 0.2, 0.3],
                           "dense_units": 64}),
    "cnn2b": ("cnn", None, {"filters": [16, 32], "block_dropout": [0.2, 0.3],
                            "dense_units": 128}),
    "resnet34w8": ("resnet34", None, {"width": 8, "stem": "cifar"}),
    "mobilenet025": ("MobileNet", "mobilenet_2_5_224_tf_no_top.h5", {"alpha": 0.25}),
}
THIEF_ARCHS = ("cnn16", "cnn12", "cnn2b", "cnn8")
INDEPENDENT_ARCHS = ("cnn16", "cnn12", "resnet34w8", "cnn8", "mobilenet025", "cnn2b")
VICTIM_ARCH = "cnn16"
THIEVES = ("knockoff-probs", "knockoff-top1", "copycat", "jpeg", "camouflage", "realistic")
KEY = b"verify-bench-watermark-key-0123456789"


@dataclass(frozen=True)
class VerifyBenchConfig:
    """Stolen and independent models against DAWN (through a served gateway) and conferrable
    fingerprints."""

    data_dir: str = field(default="../shared/data", metadata={
        "help": "folder with cifar10_jpeg_q75.zip and the Tiny-ImageNet zip"})
    out: str = field(default="runs/verify_bench", metadata={"help": "output folder"})
    victims: str | None = field(default=None, metadata={
        "help": "a folder of exported victims (e.g. the quick start's victims/); default: "
                "train a small CNN victim here", "metavar": "DIR"})
    victim_model: str = field(default="cifar10_cnn", metadata={
        "help": "the victim's model folder in --victims (its served name)"})
    train_limit: int = field(default=8000, metadata={
        "help": "the victim's training images (CIFAR-10 train, stratified, seed 0); also the "
                "independent models' data and the thief's fine-tuning pool"})
    victim_epochs: int = field(default=8, metadata={"help": "victim training epochs"})
    model_epochs: int = field(default=3, metadata={
        "help": "epochs of the independent, reference and defender's surrogate models"})
    thief_budget: int = field(default=4000, metadata={"help": "queries per thief"})
    thief_epochs: int = field(default=6, metadata={"help": "thief surrogate epochs"})
    thief_augment: str = field(default="crop+flip", metadata={
        "help": "thief training augmentation (attack.surrogate: none, flip, crop, crop+flip)"})
    thieves: tuple[str, ...] = field(default=THIEVES, metadata={
        "help": "which thieves (" + ", ".join(THIEVES) + ")"})
    jpeg_quality: int = field(default=75, metadata={
        "help": "JPEG quality of the jpeg thief's queries"})
    seeds: tuple[int, ...] = field(default=(0, 1), metadata={"help": "thief seeds"})
    independents: int = field(default=10, metadata={"help": "independently trained models"})
    independent_limit: int | None = field(default=None, metadata={
        "help": "train the independent models on this many of the victim's training images "
                "(stratified; default: all --train-limit)"})
    fingerprint: bool = field(default=True, metadata={
        "help": "also build and test conferrable fingerprints (detector.fingerprint)"})
    fingerprint_seeds: int = field(default=600, metadata={
        "help": "candidate seed images for the fingerprints (CIFAR-10 test, defender's half)"})
    count: int = field(default=100, metadata={"help": "fingerprints kept"})
    eps: float = field(default=12.0, metadata={"help": "L-inf radius in pixels (0..255)"})
    steps: int = field(default=40, metadata={"help": "PGD steps"})
    watermark_fraction: float = field(default=0.02, metadata={
        "help": "DAWN fraction of each client's answers the gateway watermarks"})
    max_queries: int = field(default=100, metadata={"help": "queries per test to the suspect"})
    finetune_epochs: int = field(default=5, metadata={"help": "thief's fine-tuning epochs"})
    finetune_fraction: float = field(default=0.1, metadata={
        "help": "share of the victim's training data the thief fine-tunes on"})

    def __post_init__(self) -> None:
        for name in ("train_limit", "victim_epochs", "model_epochs", "thief_budget",
                     "thief_epochs", "independents", "fingerprint_seeds", "count", "steps",
                     "max_queries", "finetune_epochs", "independent_limit"):
            value = getattr(self, name)
            if name == "independent_limit" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid(name, value, "a positive integer")
        if self.independent_limit is not None and self.independent_limit > self.train_limit:
            raise invalid("independent_limit", self.independent_limit,
                          f"at most --train-limit ({self.train_limit})")
        if not 0 < self.watermark_fraction <= 0.5:
            raise invalid("watermark_fraction", self.watermark_fraction, "a number in (0, 0.5]")
        if not 0 < self.finetune_fraction <= 1:
            raise invalid("finetune_fraction", self.finetune_fraction, "a number in (0, 1]")
        if isinstance(self.jpeg_quality, bool) or not isinstance(self.jpeg_quality, int) \
                or not 1 <= self.jpeg_quality <= 100:
            raise invalid("jpeg_quality", self.jpeg_quality, "an integer in [1, 100]")
        if not self.seeds:
            raise invalid("seeds", self.seeds, "at least one seed")
        if not self.thieves or any(t not in THIEVES for t in self.thieves):
            raise invalid("thieves", ",".join(self.thieves), "some of " + ", ".join(THIEVES))
        cifar = Path(self.data_dir) / "cifar10_jpeg_q75.zip"
        if not cifar.is_file():
            raise invalid("data_dir", self.data_dir, "a folder holding cifar10_jpeg_q75.zip")
        if self.victims is not None and not (Path(self.victims) / self.victim_model).is_dir():
            raise invalid("victims", self.victims,
                          f"a folder holding the exported model {self.victim_model!r}")


class _Models:
    """Train (or reload) models with the attack's trainer, cached under OUT/models."""

    def __init__(self, root: Path, classes: int, data_dir: Path) -> None:
        self.root = root
        self.classes = classes
        self.data_dir = data_dir

    def train(self, name: str, arch: str, images: np.ndarray, targets: np.ndarray, *,
              seed: int, epochs: int, augment: str = "crop+flip") -> Any:
        from attack.surrogate import SurrogateTrainer

        started = time.perf_counter()
        if targets.ndim == 1:
            targets = np.eye(self.classes, dtype=np.float32)[targets]
        backbone, weights, kwargs = ARCHS[arch]
        trainer = SurrogateTrainer(backbone, str(self.data_dir / weights) if weights else "none",
                                   32, self.classes, epochs=epochs, batch_size=128, lr=2e-3,
                                   seed=seed, checkpoint_dir=self.root / name, augment=augment,
                                   arch_kwargs=kwargs)
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


def _stratified(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` of `labels`, the same share of every class (seed 0)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    share = limit / len(labels)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:int(round(share * np.sum(
        labels == c)))] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def _accuracy(predict, images, labels) -> float:
    return float(np.mean(predict(images).argmax(1) == labels))


def thief_queries(kind: str, *, tiny: np.ndarray, in_domain: np.ndarray, budget: int,
                  seed: int, jpeg_quality: int = 75) -> np.ndarray:
    """The images thief `kind` sends (uint8 [budget', 32, 32, 3]), seeded: see the module
    docstring. `tiny`: the out-of-domain pool; `in_domain`: the attacker's victim-domain pool."""
    from detector.evasion import camouflage, jpeg

    if kind not in THIEVES:
        raise invalid("thief", kind, "one of " + ", ".join(THIEVES))
    rng = np.random.default_rng([seed, 1])

    def draw(pool: np.ndarray, n: int) -> np.ndarray:
        return pool[rng.choice(len(pool), min(n, len(pool)), replace=False)]

    if kind == "realistic":
        return draw(in_domain, budget)
    if kind == "copycat":
        pd = max(1, budget // 10)
        return np.concatenate([draw(tiny, budget - pd), draw(in_domain, pd)])
    if kind == "camouflage":
        stream, _ = camouflage(draw(tiny, budget - budget // 2), in_domain, 0.5, seed=seed)
        return stream
    images = draw(tiny, budget)
    return jpeg(images, jpeg_quality) if kind == "jpeg" else images


def thief_targets(kind: str, answers: np.ndarray) -> np.ndarray:
    """What thief `kind` trains on: the answers, or their one-hot top-1 (Knockoff top-1,
    Copycat)."""
    if kind in ("knockoff-top1", "copycat"):
        return np.eye(answers.shape[1], dtype=np.float32)[answers.argmax(1)]
    return np.asarray(answers, dtype=np.float32)


def _query_through(gateway_target: str, model: str, api_key: str, images: np.ndarray
                   ) -> np.ndarray:
    from serving.client import ServingClient

    with ServingClient(gateway_target, model, api_key=api_key, batch_size=100) as client:
        return np.asarray(client.predict(images), dtype=np.float32)


def _victim_export(config: VerifyBenchConfig, out: Path, models: _Models, train: Any
                   ) -> tuple[Path, str]:
    """(model base folder, served name): the given victim, or one trained and exported here."""
    if config.victims is not None:
        return Path(config.victims) / config.victim_model, config.victim_model
    from victim_export.export import export_classifier

    folder = out / "export" / "victim"
    if not folder.exists():
        model = models.train("victim", VICTIM_ARCH, train.images, train.labels, seed=0,
                             epochs=config.victim_epochs)
        export_classifier(model, out / "export", "victim", version=1)
    return folder, "victim"


def run(config: VerifyBenchConfig) -> dict[str, Any]:
    from common.data import load_dataset
    from detector.fingerprint import keras_predict
    from detector.verify import verify_watermarks
    from serving import testing
    from serving.client import ServingClient
    from serving.gateway.store import SQLiteStore

    from .harness.defended import client_key

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
    in_domain = test.images[attacker_half]
    models = _Models(out / "models", classes, data)
    victim_base, victim_name = _victim_export(config, out, models, train)
    key_file = out / "watermark.key"
    if not key_file.is_file():
        key_file.write_bytes(KEY)
    policy = {"limits": {"budget": None, "rate_per_second": 1e9, "burst": 1e9},
              "watermark": {"key_file": str(key_file), "fraction": config.watermark_fraction}}
    db = out / "gateway_state.db"
    answers_dir = out / "answers"
    answers_dir.mkdir(exist_ok=True)

    with testing.model_server(base_path=victim_base, name=victim_name) as server, \
            ServingClient(server.target, victim_name, batch_size=256) as direct:
        def victim(images: np.ndarray) -> np.ndarray:
            return np.asarray(direct.predict(images), dtype=np.float32)

        accuracy = {"victim": _accuracy(victim, eval_x, eval_y)}
        log.info("victim %s accuracy %.4f on the defender's half", victim_name,
                 accuracy["victim"])

        # -- thieves query through the watermarking gateway --------------------------------
        store = SQLiteStore(db)
        queried: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
        with testing.gateway(server.target, policy=policy, state=db, store=store) as gw:
            for s in config.seeds:
                for kind in config.thieves:
                    client = f"{kind}-{s}"
                    cache = answers_dir / f"{client}.npz"
                    if cache.is_file():
                        with np.load(cache) as z:
                            images, answers = z["images"], z["answers"]
                    else:
                        images = thief_queries(kind, tiny=tiny.images, in_domain=in_domain,
                                               budget=config.thief_budget, seed=s,
                                               jpeg_quality=config.jpeg_quality)
                        answers = _query_through(gw.target, victim_name,
                                                 client_key(store, client), images)
                        np.savez(cache, images=images, answers=answers)
                    queried[client] = (kind, images, answers)
                    log.info("%s: %d queries through the gateway, %d watermarked", client,
                             len(images), len(store.watermarks(client)))
        watermarks = {client: store.watermarks(client) for client in queried}
        store.close()

        # -- thieves' surrogates and their fine-tuned copies --------------------------------
        ft_count = max(1, int(round(config.finetune_fraction * len(train))))
        thieves: dict[str, tuple[str, Any]] = {}
        for client, (kind, images, answers) in queried.items():
            s = int(client.rsplit("-", 1)[1])
            arch = THIEF_ARCHS[s % len(THIEF_ARCHS)]
            model = models.train(client, arch, images, thief_targets(kind, answers), seed=s,
                                 epochs=config.thief_epochs, augment=config.thief_augment)
            thieves[client] = (client, model)
            ft_idx = np.random.default_rng([s, 2]).choice(len(train), ft_count, replace=False)
            thieves[f"{client}+finetune"] = (client, models.finetune(
                f"{client}+finetune", model, train.images[ft_idx], train.labels[ft_idx],
                seed=s, epochs=config.finetune_epochs))

        # -- independent models (the victim's data, true labels, never queried it) ----------
        own = _stratified(train.labels, config.independent_limit)
        independents = {}
        for i in range(config.independents):
            arch = INDEPENDENT_ARCHS[i % len(INDEPENDENT_ARCHS)]
            independents[f"independent-{i}-{arch}"] = models.train(
                f"independent-{i}", arch, train.images[own], train.labels[own], seed=100 + i,
                epochs=config.model_epochs)

        fingerprints = _fingerprints(config, out, models, train, eval_x, victim) \
            if config.fingerprint else None

        # -- tests -------------------------------------------------------------------------
        rows = []
        replayed: dict[str, np.ndarray] = {}
        victim_eval = victim(eval_x).argmax(1)
        everyone = {**{k: ("stolen", owner, m) for k, (owner, m) in thieves.items()},
                    **{k: ("independent", None, m) for k, m in independents.items()}}
        for name, (kind, owner, model) in everyone.items():
            predict = keras_predict(model)
            accuracy[name] = _accuracy(predict, eval_x, eval_y)
            fidelity = float(np.mean(predict(eval_x).argmax(1) == victim_eval))
            row: dict[str, Any] = {"model": name, "kind": kind, "accuracy": accuracy[name],
                                   "fidelity": fidelity}
            if fingerprints is not None:
                from detector.fingerprint import verify_fingerprints

                fp = verify_fingerprints(predict, fingerprints, victim=victim,
                                         max_queries=config.max_queries)
                row.update(fingerprint_agreeing=fp.agreeing, fingerprint_compared=fp.compared,
                           fingerprint_p=fp.p_value, fingerprint_identified=fp.stolen)
            # a thief's own set first; then every other client's: a surrogate of the same
            # victim that never received those answers must not be identified by them
            sets = {owner: watermarks[owner], **watermarks} if kind == "stolen" else watermarks
            dawn = []
            for set_owner, records in sets.items():
                r = verify_watermarks(predict, records, victim=victim,
                                      max_queries=config.max_queries)
                dawn.append({"watermarks_of": set_owner, "p": r.p_value,
                             "top1_p": r.top1_p_value, "agreeing": r.agreeing,
                             "compared": r.compared, "queries": r.suspect_queries,
                             "mean_rank": r.mean_rank, "identified": r.stolen})
                chosen = sorted(records, key=lambda r: (r.time, r.digest))[:config.max_queries]
                images = np.stack([r.image for r in chosen])
                replayed[f"{name}|{set_owner}|suspect"] = predict(images)
                replayed.setdefault(f"{set_owner}|victim", victim(images))
                replayed.setdefault(f"{set_owner}|wrong", np.array([r.label for r in chosen]))
                replayed.setdefault(f"{set_owner}|answered",
                                    np.array([r.true_label for r in chosen]))
            row["dawn"] = dawn
            rows.append(row)
            log.info("%s: acc %.3f fid %.3f; DAWN p %s", name, accuracy[name], fidelity,
                     [f"{d['p']:.3g}" for d in dawn][:3])
        np.savez(out / "replayed.npz", **replayed)

    # -- exports for the command line --------------------------------------------------------
    from victim_export.export import export_classifier

    exports = {"victim": str(victim_base)}
    first = f"{config.thieves[0]}-{config.seeds[0]}"
    for name, model in (("stolen", thieves[first][1]),
                        ("independent", next(iter(independents.values())))):
        folder = out / "export" / name
        if not folder.exists():
            export_classifier(model, out / "export", name, version=1)
        exports[name] = str(folder)

    results = {"config": asdict(config), "seconds": time.time() - started,
               "victim": str(victim_base), "victim_accuracy": accuracy["victim"],
               "gateway_state": f"sqlite:{db}", "exported_thief_client": first,
               "queries_per_thief": {c: int(len(q[1])) for c, q in queried.items()},
               "watermarks_per_thief": {k: len(v) for k, v in watermarks.items()},
               "rows": rows, "exports": exports, "load": os.getloadavg()}
    if fingerprints is not None:
        results.update(fingerprints=str(out / "fingerprints.npz"),
                       fingerprint_null_rate=fingerprints.null_rate)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "results.md").write_text(_markdown(results))
    return results


def _fingerprints(config: VerifyBenchConfig, out: Path, models: _Models, train: Any,
                  eval_x: np.ndarray, victim: Any) -> Any:
    """The conferrable fingerprint set of the victim (built once, saved under OUT)."""
    from detector.fingerprint import (
        build_fingerprints,
        keras_predict,
        load_fingerprints,
        save_fingerprints,
    )

    path = out / "fingerprints.npz"
    if path.is_file():
        return load_fingerprints(path)
    victim_train_probs = victim(train.images)
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
    fingerprints = build_fingerprints(victim, eval_x[: config.fingerprint_seeds], surrogates,
                                      references, calibration, count=config.count,
                                      eps=config.eps, steps=config.steps,
                                      info={"victim": "verify_bench victim"})
    save_fingerprints(path, fingerprints)
    return fingerprints


def _markdown(results: dict[str, Any]) -> str:
    fp = "fingerprint_null_rate" in results
    head = ["suspect", "kind", "accuracy", "fidelity", "queries to the suspect",
            "DAWN top-1 hits", "DAWN mean rank", "DAWN p (rank)", "DAWN p (top-1)", "decision"]
    if fp:
        head += ["fingerprints agree", "fingerprint p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["rows"]:
        if row["kind"] == "stolen":
            d = row["dawn"][0]
            cells = [str(d["queries"]), f"{d['agreeing']}/{d['compared']}",
                     f"{d['mean_rank']:.2f}", f"{d['p']:.3g}", f"{d['top1_p']:.3g}",
                     "STOLEN" if d["identified"] else "not identified"]
        else:
            ps = [d["p"] for d in row["dawn"]]
            cells = [f"{row['dawn'][0]['queries']} per set x {len(ps)} sets", "-", "-",
                     f"min {min(ps):.3g} of {len(ps)}",
                     f"min {min(d['top1_p'] for d in row['dawn']):.3g}",
                     f"{sum(d['identified'] for d in row['dawn'])} of {len(ps)} sets STOLEN"]
        line = [row["model"], row["kind"], f"{row['accuracy']:.4f}", f"{row['fidelity']:.4f}",
                *cells]
        if fp:
            line += [f"{row['fingerprint_agreeing']}/{row['fingerprint_compared']}",
                     f"{row['fingerprint_p']:.3g}"]
        lines.append("| " + " | ".join(line) + " |")
    stolen = [r for r in results["rows"] if r["kind"] == "stolen"]
    indep = [r for r in results["rows"] if r["kind"] == "independent"]
    dawn_indep = [d for r in indep for d in r["dawn"]]
    lines += ["",
              f"victim {results['victim']} accuracy {results['victim_accuracy']:.4f} (the "
              f"defender's half of the test split); watermarks per thief (through the gateway, "
              f"fraction {results['config']['watermark_fraction']}) "
              f"{results['watermarks_per_thief']}",
              f"DAWN (rank test): stolen identified at p < 0.01: "
              f"{sum(r['dawn'][0]['p'] < 0.01 for r in stolen)} of {len(stolen)} (top-1 test: "
              f"{sum(r['dawn'][0]['top1_p'] < 0.01 for r in stolen)}); independent tests with "
              f"p > 0.05: {sum(d['p'] > 0.05 for d in dawn_indep)} of {len(dawn_indep)} "
              f"({len(indep)} models)"]
    cross = [d for r in stolen for d in r["dawn"][1:]
             if d["watermarks_of"] != r["dawn"][0]["watermarks_of"]]
    if cross:
        lines.append(f"DAWN, each thief's surrogate against the other thieves' watermark sets "
                     f"(answers it never received): p > 0.05 in "
                     f"{sum(d['p'] > 0.05 for d in cross)} of {len(cross)} tests, identified "
                     f"(p < 0.01) in {sum(d['identified'] for d in cross)}")
    if fp:
        lines.append(f"fingerprints (null rate {results['fingerprint_null_rate']:.4f}): stolen "
                     f"identified at p < 0.01: {sum(r['fingerprint_p'] < 0.01 for r in stolen)} "
                     f"of {len(stolen)}; independent with p > 0.05: "
                     f"{sum(r['fingerprint_p'] > 0.05 for r in indep)} of {len(indep)}")
    lines.append(f"{results['seconds']:.0f} s; load average at the end {results['load']}")
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
