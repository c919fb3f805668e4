"""Does OOD detection survive cheap evasion? The old detector against the augmented one, the
victim's own confidence and a Mahalanobis score, per query and per client, side by side.

    python -m benchmarks.evasion_bench --victim victims/cifar10_cnn --data-dir ../shared/data \\
        --seeds 0,1,2 --out runs/evasion

Per seed, two detectors are trained with `detector.ood.train_detector` on the same images
(`--train-limit` CIFAR-10 *train* images against as many Tiny-ImageNet *train* images of the
176 classes that do not overlap CIFAR-10; MobileNet alpha 0.25 from the ImageNet weights in
`--data-dir`): **old** as shipped (half of the images JPEG re-encoded, `jpeg_augment=0.5`) and
**new**, whose benign *and* attack training images went through `detector.evasion.augment`
(`--augment` 0.9: 90% of them get a random JPEG/resize/blur/noise, so the transform is never
the signal; `DetectorConfig.augment`). The
scores compared (`detector.robust`): each detector's attack probability, the victim's
max-softmax (``1 - max p`` of its answer, what the gateway sees), the Mahalanobis distance on
the new detector's penultimate features (class means of the benign training images), and their
combination (the smallest benign tail probability). Every threshold is calibrated for
`--fpr` on 1,000 held-out CIFAR-10 *test* images (clean: what benign clients send).

Measured on data no detector was trained on: the attack is Tiny-ImageNet *val* (non-overlap
classes, `--eval-limit` images), benign clients are CIFAR-10 *test* images.

* per-query anomalous accuracy at the calibrated threshold for the attack under none / JPEG
  95, 75, 50 / resize 0.5 / blur 1 / noise 8, with the benign accuracy of clean and transformed
  benign images beside it;
* the query at which one client is flagged, sending that stream in batches of
  `--query-batch`: the old per-client window (`SlidingWindow`, 256 queries, level 0.5, min 64)
  and the binomial window on the OOD share (`BinomialWindow`, `--window`, `--fpr`, `--alpha`,
  `--min-queries`); camouflage streams mix 25/50/75% CIFAR-10 images into the attack (and 50%
  into a JPEG-75 attack);
* benign clients: `--benign-clients` clients of `--client-queries` clean CIFAR-10 test images
  each (and the same clients JPEG-encoding at quality 50), how many are flagged by each; and
  the first `--eval-limit` / `--client-queries` of them sending their images under each
  transform (a benign user's resized, blurred or noisy photos).

With `--gateway-detector DIR` (an exported detector), the evading clients (1,000 attack images:
plain, JPEG 75 and 50, camouflage 50% and 75%, camouflage 50% + JPEG 75) and three benign
clients also go through the real gateway (in process, gRPC, SQLite state) in front of the
embedded model server serving `--victim`: once with the policy's default window and once with
a `detector.monitor.Monitor` whose watch is that detector with `BinomialWindow` at its
calibrated rate; each client stops at its flag. `--gateway-only` runs just that part.

With `--detectors DIR ...` (exported detectors, e.g. ``python -m detector.train --jpeg-augment 1
--augment 0.8 --smooth 1``), nothing is trained: each detector is measured as above at two
thresholds, **clean** (calibrated for `--fpr` on the clean calibration images, as
``detector.train`` does) and **transformed** (the lowest threshold at which the calibration images
clean AND under each of `detector.evasion.CALIBRATION_TRANSFORMS` stay within `--fpr`, as
``detector.calibrate --transforms evasions`` does), and at its **own** calibrated threshold
(what the gateway uses), one OUT/detector_<i>.json each.

Output: OUT/results.{json,md} and one OUT/seed_<n>.json per seed (a re-run reuses finished
seeds), OUT/gateway.{json,md}.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.defended import (
    TRANSFER,
    WEIGHTS,
    BenchConfig,
    Served,
    benchmark_main,
    check_run_dir,
    client_key,
    knockoff_config,
    markdown_table,
    run_knockoff_through,
)
from benchmarks.harness.stats import spread
from common.constraints import check_fields
from common.data import load_dataset
from common.errors import invalid
from common.fileio import write_json_atomic
from detector import evasion
from detector.aggregate import BinomialWindow, SlidingWindow, first_flag
from detector.robust import (
    CombinedScore,
    DetectorScore,
    MahalanobisScore,
    threshold_at_fpr,
    threshold_over_views,
)
from detector.suspects import saved_model_predict

__all__ = ["EvasionConfig", "main", "run_evasion", "summarise", "tables"]

log = logging.getLogger(__name__)

BENIGN = "cifar10_jpeg_q75.zip"
OVERLAP = "tinyimagenet_cifar10_overlap_wnids.txt"
TRANSFORMS = (("none", 0), ("jpeg", 95), ("jpeg", 75), ("jpeg", 50), ("resize", 0.5),
              ("blur", 1.0), ("noise", 8.0))
CAMOUFLAGE = ((0.25, None), (0.5, None), (0.75, None), (0.5, ("jpeg", 75)))
SCORES = ("old", "new", "max_softmax", "mahalanobis", "combined")
# An exported detector's score at three thresholds: calibrated on clean benign images, on the
# worst of the clean and transformed views of them (`threshold_over_views`), and its own
# (``calibration.json``: what the gateway uses).
EXPORTED_SCORES = ("clean", "transformed", "own")
CALIBRATION_IMAGES = 1000
POOL_IMAGES = 1000


@dataclass(frozen=True)
class EvasionConfig:
    """The OOD detector and the per-client windows under cheap evasions, old against new."""

    victim: str = field(default="victims/cifar10_cnn", metadata={
        "help": "exported CIFAR-10 victim (version folder or model folder)", "metavar": "DIR"})
    data_dir: str = field(default="../shared/data", metadata={
        "help": "folder with the datasets and MobileNet weights (see DATA.md)"})
    out: str = field(default="runs/evasion", metadata={
        "help": "output folder (a re-run reuses finished seeds)", "metavar": "DIR"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={
        "help": "detector training seeds", "min": 0})
    train_limit: int = field(default=3000, metadata={
        "help": "training images per set (benign and attack) for each detector", "min": 20})
    eval_limit: int = field(default=1000, metadata={
        "help": "Tiny-ImageNet val images (attack) per measurement", "min": 64})
    input_size: int = field(default=96, metadata={
        "help": "detector backbone input side, px", "min": 32})
    epochs: int = field(default=2, metadata={"help": "detector training epochs", "min": 1})
    augment: float = field(default=0.9, metadata={
        "help": "share of the new detector's training images (both sets) given a random evasion",
        "gt": 0, "max": 1})
    fpr: float = field(default=0.02, metadata={
        "help": "benign false-positive rate every threshold is calibrated for", "gt": 0, "lt": 1})
    window: int = field(default=256, metadata={"help": "binomial window, queries", "min": 1})
    alpha: float = field(default=1e-6, metadata={
        "help": "binomial window's significance per test", "gt": 0, "lt": 1})
    min_queries: int = field(default=32, metadata={
        "help": "queries before the binomial window may flag", "min": 1})
    benign_clients: int = field(default=10, metadata={"help": "benign clients", "min": 1})
    client_queries: int = field(default=500, metadata={
        "help": "queries per benign client", "min": 1})
    query_batch: int = field(default=64, metadata={"help": "images per request", "min": 1})
    gateway_detector: str | None = field(default=None, metadata={
        "help": "an exported detector (python -m detector.train): also stream the evading "
                "clients through the real gateway in front of the served victim, with the "
                "policy's window and with the binomial window (fpr = the detector's calibrated "
                "rate)", "metavar": "DIR"})
    thief_budget: int = field(default=0, metadata={
        "help": "with --gateway-detector: also run Knockoff thieves (JPEG-75 queries; 50%% "
                "camouflage) of this many queries through both gateways (0: not run)",
        "min": 0})
    detectors: tuple[str, ...] = field(default=(), metadata={
        "help": "exported detectors (python -m detector.train) to measure instead of training "
                "the old and new pair per seed: each is thresholded for --fpr on clean benign "
                "images, on every transform of them (the worst view sets it) and at its own "
                "calibrated threshold",
        "metavar": "DIR", "rule": "nonempty"})
    gateway_only: bool = field(default=False, metadata={
        "help": "only the gateway part (needs --gateway-detector); no detector training"})

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.seeds:
            raise invalid("seeds", self.seeds, "at least one seed")
        if self.min_queries > self.window:
            raise invalid("min_queries", self.min_queries, f"at most --window ({self.window})")
        needed = CALIBRATION_IMAGES + POOL_IMAGES + self.benign_clients * self.client_queries
        if needed > 10000:
            most = (10000 - CALIBRATION_IMAGES - POOL_IMAGES) // self.benign_clients
            raise invalid("client_queries", self.client_queries,
                          f"at most {most} with {self.benign_clients} clients (CIFAR-10 has "
                          "10,000 test images)")
        for name in (BENIGN, TRANSFER, OVERLAP, WEIGHTS):
            if not (Path(self.data_dir) / name).is_file():
                raise invalid("data_dir", self.data_dir, f"a folder holding {name} (DATA.md)")
        if not Path(self.victim).is_dir():
            raise invalid("victim", self.victim, "an exported victim folder")
        if self.gateway_detector is not None and not Path(self.gateway_detector).is_dir():
            raise invalid("gateway_detector", self.gateway_detector, "an exported detector "
                          "folder (detectors/<name>/<version>)")
        for path in self.detectors:
            if not Path(path).is_dir():
                raise invalid("detectors", path, "an exported detector folder "
                              "(detectors/<name>/<version>)")
        if self.gateway_only and self.gateway_detector is None:
            raise invalid("gateway_only", True, "--gateway-detector as well")


# -- models ------------------------------------------------------------------------------------
def _train(config: EvasionConfig, seed: int, kind: str, benign, attack, out: Path):
    """(keras model, result) of the `kind` ("old" or "new") detector for `seed`."""
    from detector.ood import DetectorConfig, train_detector

    data = Path(config.data_dir)
    dconfig = DetectorConfig(
        benign=str(data / BENIGN), attack=str(data / TRANSFER), out=str(out / f"{kind}_s{seed}"
                                                                        / "1"),
        exclude_classes=str(data / OVERLAP), backbone="MobileNet", arch_args=("alpha=0.25",),
        weights=str(data / WEIGHTS), input_size=config.input_size, epochs=config.epochs,
        target_fpr=config.fpr, seed=seed, jpeg_augment=0.5 if kind == "old" else 0.0,
        augment=0.0 if kind == "old" else config.augment)
    result = train_detector(dconfig, benign=benign, attack=attack, export=False)
    log.info("seed %d %s detector: held-out %s, %.0f s", seed, kind,
             result.calibration["heldout_at_threshold"], result.training_seconds)
    return result.model, result.training_seconds


def _two_outputs(model):
    """The detector as images -> (attack probability, penultimate features)."""
    import keras

    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    both = keras.Model(inner.inputs, [inner.output, inner.get_layer("logits").input])
    x = y = model.inputs[0]
    for layer in model.layers[1:]:
        if layer is inner:
            logits, features = both(y)
        else:
            y = layer(y)
    model2 = keras.Model(x, [keras.ops.softmax(logits, axis=-1)[:, 1], features])

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, feats = model2.predict(images.astype(np.float32), batch_size=256, verbose=0)
        return np.asarray(score, np.float64), np.asarray(feats, np.float64)

    return run


# -- one seed ------------------------------------------------------------------------------------
def _views(config: EvasionConfig, attack: np.ndarray, clients: np.ndarray, pool: np.ndarray
           ) -> dict[str, np.ndarray]:
    """Every image set that gets scored, by name."""
    benign_eval = clients[:config.eval_limit]
    views: dict[str, np.ndarray] = {"pool": pool}
    for name, level in TRANSFORMS:
        tag = "none" if name == "none" else f"{name}:{level:g}"
        views[f"attack/{tag}"] = attack if name == "none" else \
            evasion.apply(name, attack, level, seed=1)
        views[f"benign/{tag}"] = benign_eval if name == "none" else \
            evasion.apply(name, benign_eval, level, seed=2)
    views["clients/none"] = clients
    views["clients/jpeg:50"] = evasion.jpeg(clients, 50)
    return views


def run_seed(config: EvasionConfig, seed: int, data: dict[str, Any], victim) -> dict:
    out = Path(config.out)
    models = {}
    seconds = {}
    for kind in ("old", "new"):
        model, seconds[kind] = _train(config, seed, kind, data["train_benign"],
                                      data["train_attack"], out)
        models[kind] = _two_outputs(model)
    views = dict(data["views"])
    views["calibration"] = data["calibration"]
    # The Mahalanobis class means: the benign training images, augmented as the new
    # detector's were.
    new_benign = data["train_benign"]
    views["train_benign_new"] = evasion.augment(new_benign.images, seed=seed + 5,
                                                share=config.augment)
    raw: dict[str, dict[str, np.ndarray]] = {}
    for name, images in views.items():
        old_score, _ = models["old"](images)
        new_score, features = models["new"](images)
        probs = victim(images) if name != "train_benign_new" else None
        raw[name] = {"old": old_score, "new": new_score, "features": features,
                     "max_softmax": None if probs is None else 1.0 - probs.max(axis=1)}
    mahalanobis = MahalanobisScore()  # on the new detector's features, computed above
    mahalanobis.fit_features(raw["train_benign_new"]["features"], new_benign.labels)
    for name in raw:
        raw[name]["mahalanobis"] = mahalanobis.distances(raw[name]["features"])
    parts = ("new", "max_softmax", "mahalanobis")
    combined = CombinedScore([_Named(p) for p in parts])
    calib = raw["calibration"]
    combined.fit_scores([calib[p] for p in parts])
    for name in raw:
        if name != "train_benign_new":
            raw[name]["combined"] = combined.combine([raw[name][p] for p in parts])
    thresholds = {s: threshold_at_fpr(calib[s], config.fpr) for s in SCORES}
    return {"seed": seed, "thresholds": thresholds, "training_seconds": seconds,
            **_evaluate(config, raw, thresholds, SCORES, "old")}


def _evaluate(config: EvasionConfig, raw: dict[str, dict[str, np.ndarray]],
              thresholds: dict[str, float], scores: Sequence[str], level_score: str) -> dict:
    """The per-query, per-client and benign-client rows of `scores` (each thresholded at its
    `thresholds` entry) from every view's precomputed `raw` scores; the old window
    (`SlidingWindow` 256, 0.5, 64) watches `level_score`."""
    binomial = BinomialWindow(config.window, config.fpr, config.alpha, config.min_queries)
    old_window = SlidingWindow(256, 0.5, 64)

    rows = []
    for name, strength in TRANSFORMS:
        tag = "none" if name == "none" else f"{name}:{strength:g}"
        a, b = raw[f"attack/{tag}"], raw[f"benign/{tag}"]
        row: dict[str, Any] = {"evasion": tag}
        for s in scores:
            flags = a[s] >= thresholds[s]
            row[f"{s}_anomalous"] = float(flags.mean())
            row[f"{s}_benign"] = float(np.mean(b[s] < thresholds[s]))
            row[f"{s}_flagged_at"] = first_flag(binomial, flags, config.query_batch)
        level = a[level_score] >= thresholds[level_score]
        row["old_level_flagged_at"] = first_flag(old_window, level, config.query_batch)
        rows.append(row)
    rng_seed = 3
    for share, transform in CAMOUFLAGE:
        tag = "none" if transform is None else f"{transform[0]}:{transform[1]:g}"
        a = raw[f"attack/{tag}"]
        index = np.arange(len(a[level_score]))
        # As `detector.evasion.camouflage` mixes images, on the images' precomputed scores.
        rng = np.random.default_rng(rng_seed)
        extra = int(round(len(index) * share / (1.0 - share)))
        picked = rng.choice(POOL_IMAGES, size=extra, replace=extra > POOL_IMAGES)
        order = rng.permutation(len(index) + extra)
        row = {"evasion": f"camouflage:{share:g}" + ("" if transform is None else f"+{tag}")}
        for s in scores:
            stream = np.r_[a[s], raw["pool"][s][picked]][order]
            flags = stream >= thresholds[s]
            row[f"{s}_stream_share"] = float(flags.mean())
            row[f"{s}_flagged_at"] = first_flag(binomial, flags, config.query_batch)
        stream = np.r_[a[level_score], raw["pool"][level_score][picked]][order]
        row["old_level_flagged_at"] = first_flag(old_window, stream >= thresholds[level_score],
                                                 config.query_batch)
        rows.append(row)
    clients = []
    for view in ("clients/none", "clients/jpeg:50"):
        c = raw[view]
        row = {"clients": view.split("/")[1]}
        for s in scores:
            flags = (c[s] >= thresholds[s]).reshape(config.benign_clients, -1)
            row[f"{s}_flagged"] = int(sum(first_flag(binomial, f, config.query_batch)
                                          is not None for f in flags))
            row[f"{s}_query_fpr"] = float(flags.mean())
        flags = (c[level_score] >= thresholds[level_score]).reshape(config.benign_clients, -1)
        row["old_level_flagged"] = int(sum(first_flag(old_window, f, config.query_batch)
                                           is not None for f in flags))
        clients.append(row)
    # The first clients again, each image under a transform (the benign evaluation views).
    per_client = config.client_queries
    shown = config.eval_limit // per_client
    for name, strength in TRANSFORMS[1:]:
        tag = f"{name}:{strength:g}"
        c = raw[f"benign/{tag}"]
        row = {"clients": f"{tag} ({shown} clients)"}
        for s in scores:
            flags = (c[s][:shown * per_client] >= thresholds[s]).reshape(shown, -1)
            row[f"{s}_flagged"] = int(sum(first_flag(binomial, f, config.query_batch)
                                          is not None for f in flags))
            row[f"{s}_query_fpr"] = float(flags.mean())
        flags = (c[level_score][:shown * per_client] >= thresholds[level_score]
                 ).reshape(shown, -1)
        row["old_level_flagged"] = int(sum(first_flag(old_window, f, config.query_batch)
                                           is not None for f in flags))
        clients.append(row)
    return {"binomial_critical": {str(n): int(binomial.critical[n])
                                  for n in (32, 64, 128, config.window)
                                  if n <= config.window},
            "evasion": rows, "clients": clients}


def run_exported(config: EvasionConfig, path: str, data: dict[str, Any]) -> dict:
    """The rows of `_evaluate` for one exported detector at its three thresholds."""
    from detector.ood import OODDetector

    detector = OODDetector.load(path)
    views = dict(data["views"])
    calibration = evasion.transformed_views(data["calibration"], seed=4)
    views.update({f"calibration/{tag}": images for tag, images in calibration.items()})
    raw = {}
    for name, images in views.items():
        score = detector.score(images).astype(np.float64)
        raw[name] = {s: score for s in EXPORTED_SCORES}
    worst, rates = threshold_over_views({tag: raw[f"calibration/{tag}"]["clean"]
                                         for tag in calibration}, config.fpr)
    thresholds = {"clean": threshold_at_fpr(raw["calibration/none"]["clean"], config.fpr),
                  "transformed": worst, "own": float(detector.threshold)}
    log.info("detector %s: thresholds %s; calibration FPR per view at the transformed one %s",
             path, thresholds, rates)
    return {"detector": str(path), "thresholds": thresholds, "calibration_fpr": rates,
            "training_seconds": detector.calibration.get("training_seconds"),
            **_evaluate(config, raw, thresholds, EXPORTED_SCORES, "clean")}


class _Named:
    """A placeholder component of `CombinedScore` when the scores are precomputed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.threshold = float("inf")

    def score(self, images: Any, probabilities: Any) -> np.ndarray:
        raise invalid("score", self.name, "precomputed component scores (use combine())")


# -- through the real gateway -----------------------------------------------------------------
GATEWAY_STREAMS = (("none", None, 0.0), ("jpeg:75", ("jpeg", 75), 0.0),
                   ("jpeg:50", ("jpeg", 50), 0.0), ("camouflage:0.5", None, 0.5),
                   ("camouflage:0.75", None, 0.75), ("camouflage:0.5+jpeg:75", ("jpeg", 75), 0.5))
GATEWAY_BENIGN_CLIENTS = 3


def _served_victim(path: str) -> tuple[Path, str]:
    """(victims folder, model name) of an exported victim's model or version folder."""
    folder = Path(path).resolve()
    if (folder / "saved_model.pb").is_file():
        folder = folder.parent
    return folder.parent, folder.name


def _stream(store, target: str, model: str, name: str, images: np.ndarray, batch: int
            ) -> tuple[int | None, np.ndarray]:
    """Send `images` as client `name` until it is flagged; (flagged_at, answers)."""
    from serving.client import ServingClient

    answers = []
    with ServingClient(target, model, api_key=client_key(store, name),
                       batch_size=batch) as client:
        for start in range(0, len(images), batch):
            answers.append(np.asarray(client.predict(images[start:start + batch]), np.float32))
            ood = store.load_detectors(name).ood or {}
            if ood.get("flagged_at") is not None:
                return int(ood["flagged_at"]), np.concatenate(answers)
    return None, np.concatenate(answers)


def _gateway_windows(config: EvasionConfig, out: Path) -> tuple[Any, dict[str, Any]]:
    """The loaded detector and the two windows compared (None: the policy's own)."""
    from detector.ood import OODDetector

    out.mkdir(parents=True, exist_ok=True)
    detector = OODDetector.load(config.gateway_detector)
    fpr = float(detector.calibration.get("target_fpr", config.fpr))
    return detector, {
        "policy window (256, 0.5, 64)": None,
        f"binomial (256, fpr {fpr:g}, alpha {config.alpha:g}, min {config.min_queries})":
            BinomialWindow(config.window, fpr, config.alpha, config.min_queries)}


def _gateway(served, path: str, detector, window, model: str, db: Path):
    """A started in-process gateway (flagged clients get labels only) watching with
    `detector`: through the policy's window when `window` is None, else a `Monitor` with it."""
    from detector.monitor import Monitor, Watch
    from serving.gateway.config import GatewayConfig, policy_from_dict
    from serving.gateway.server import Gateway
    from serving.gateway.store import SQLiteStore

    for stale in db.parent.glob(db.name + "*"):
        stale.unlink()
    policy = {"on_flag": {"action": "degrade", "policy": "label_only"}, "models": [model]}
    monitor = None
    if window is None:
        policy["detectors"] = {"ood": {"path": str(path)}}
    else:
        monitor = Monitor([Watch("ood", DetectorScore(detector), window)])
    store = SQLiteStore(db)
    gw = Gateway(GatewayConfig(upstream=served.upstream, port=0, host="127.0.0.1",
                               metrics_port=0, state=f"sqlite:{db}"),
                 policy=policy_from_dict(policy), store=store,
                 ood_detector=detector if window is None else None, monitor=monitor).start()
    return gw, store


THIEVES = (("jpeg:75", ("jpeg", 75), 0.0), ("camouflage:0.5", None, 0.5))


def run_thieves(config: EvasionConfig, data: dict[str, Any]) -> list[dict]:
    """Knockoff thieves (JPEG-75 queries; 50% camouflage) through both gateways: the
    surrogate / victim accuracy ratio on CIFAR-10 test images no client sent."""

    out = Path(config.out) / "thieves"
    detector, windows = _gateway_windows(config, out)
    victims, model = _served_victim(config.victim)
    views = data["views"]
    # CIFAR-10 test images no client of this benchmark sends (the benign clients send the
    # first ones), with their true labels.
    evaluation = views["clients/none"][-2000:]
    test_file = out / "evaluation.npz"
    np.savez(test_file, x_test=evaluation, y_test=data["client_labels"][-2000:])
    transfer = data["thief_pool"]
    bench = BenchConfig(victims=str(victims), model=model, data_dir=config.data_dir,
                        budget=config.thief_budget, out=str(out), input_size=64, epochs=3,
                        noise=0, query_batch=config.query_batch, seed=0)
    rows = []
    with Served(str(victims), model) as served:
        for thief, transform, share in THIEVES:
            images = transfer if transform is None else \
                evasion.apply(transform[0], transfer, transform[1])
            if share:
                images, _ = evasion.camouflage(images, views["pool"], share, seed=3)
            pool_file = out / f"pool_{thief.replace(':', '_')}.npz"
            np.savez(pool_file, x_train=images, y_train=np.zeros(len(images), np.int64))
            for index, (label, window) in enumerate(windows.items()):
                run_dir = out / f"{thief.replace(':', '_')}_{index}"
                gw, store = _gateway(served, config.gateway_detector, detector, window, model,
                                     out / f"gateway_{thief.replace(':', '_')}_{index}.db")
                try:
                    kconfig = knockoff_config(
                        bench, out=run_dir, grpc=f"127.0.0.1:{gw.port}",
                        api_key=client_key(store, "thief"), transfer_set=str(pool_file),
                        transfer_split="train", exclude_classes=None,
                        test_set=str(test_file), test_split="test")
                    report = run_knockoff_through(served, kconfig)
                    ood = store.load_detectors("thief").ood or {}
                finally:
                    gw.stop()
                    store.close()
                ev = report.get("evaluation") or {}
                rows.append({"thief": thief, "window": label, "flagged_at":
                             ood.get("flagged_at"), "ratio": ev.get("ratio"),
                             "surrogate_acc": ev.get("surrogate_acc"),
                             "victim_acc": ev.get("victim_acc")})
                log.info("thief %s, %s: %s", thief, label, rows[-1])
    return rows


def run_gateway(config: EvasionConfig, data: dict[str, Any]) -> list[dict]:
    """Evading clients through two gateways in front of the served victim: the detector with
    the policy's default window, and with `BinomialWindow` at its calibrated rate."""

    out = Path(config.out) / "gateway"
    detector, windows = _gateway_windows(config, out)
    victims, model = _served_victim(config.victim)
    views = data["views"]
    attack, pool = views["attack/none"], views["pool"]
    benign = views["clients/none"]
    streams = {}
    for tag, transform, share in GATEWAY_STREAMS:
        images = attack if transform is None else views[f"attack/{transform[0]}:"
                                                        f"{transform[1]:g}"]
        if share:
            images, _ = evasion.camouflage(images, pool, share, seed=3)
        streams[tag] = images
    per_client = config.client_queries
    for i in range(GATEWAY_BENIGN_CLIENTS):
        streams[f"benign_{i + 1}"] = benign[i * per_client:(i + 1) * per_client]
    rows = []
    with Served(str(victims), model) as served:
        truth = served.direct(benign[:GATEWAY_BENIGN_CLIENTS * per_client]).argmax(axis=1)
        for index, (label, window) in enumerate(windows.items()):
            gw, store = _gateway(served, config.gateway_detector, detector, window, model,
                                 out / f"gateway_{index}.db")
            try:
                target = f"127.0.0.1:{gw.port}"
                row: dict[str, Any] = {"window": label}
                changed = 0
                for name, images in streams.items():
                    flagged_at, answers = _stream(store, target, model, name, images,
                                                  config.query_batch)
                    row[name] = flagged_at
                    if name.startswith("benign"):
                        i = int(name.split("_")[1]) - 1
                        own = truth[i * per_client:(i + 1) * per_client][:len(answers)]
                        changed += int((answers.argmax(axis=1) != own).sum())
                row["benign_top1_changed"] = changed
                rows.append(row)
                log.info("gateway %s: %s", label, row)
            finally:
                gw.stop()
                store.close()
    return rows


# -- the run -----------------------------------------------------------------------------------
def _data(config: EvasionConfig) -> dict[str, Any]:

    data = Path(config.data_dir)
    train_benign = load_dataset(str(data / BENIGN), "train", channels=3,
                                limit=config.train_limit, seed=0)
    size = train_benign.image_shape[0]
    train_attack = load_dataset(str(data / TRANSFER), "train", image_size=size, channels=3,
                                exclude_classes=str(data / OVERLAP), limit=config.train_limit,
                                seed=0)
    attack = load_dataset(str(data / TRANSFER), "val", image_size=size, channels=3,
                          exclude_classes=str(data / OVERLAP), limit=config.eval_limit,
                          seed=0).images
    test_set = load_dataset(str(data / BENIGN), "test", channels=3)
    test = test_set.images
    order = np.random.default_rng(0).permutation(len(test))
    calibration = test[order[:CALIBRATION_IMAGES]]
    pool = test[order[CALIBRATION_IMAGES:CALIBRATION_IMAGES + POOL_IMAGES]]
    start = CALIBRATION_IMAGES + POOL_IMAGES
    client_rows = order[start:start + config.benign_clients * config.client_queries]
    clients = test[client_rows]
    if len(clients) < config.eval_limit:
        raise invalid("eval_limit", config.eval_limit,
                      f"at most the benign clients' {len(clients)} images")
    thief_pool = None
    if config.thief_budget:
        thief_pool = load_dataset(str(data / TRANSFER), "train", image_size=size, channels=3,
                                  exclude_classes=str(data / OVERLAP),
                                  limit=config.thief_budget, seed=7).images
    return {"train_benign": train_benign, "train_attack": train_attack, "calibration":
            calibration, "views": _views(config, attack, clients, pool),
            "client_labels": test_set.labels[client_rows], "thief_pool": thief_pool}


def _victim(path: str):
    predict = saved_model_predict(path, "victim")

    def probabilities(images: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(predict(images[i:i + 512]), np.float64)
                               for i in range(0, len(images), 512)])

    return probabilities


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    """The results file's form of `spread`: mean, std (0 for one seed), min, max and values;
    the values alone when a seed has none (a client never flagged)."""
    s = spread(values)
    if s.missing or not s.n:
        return {"values": list(values)}
    return {"mean": s.mean, "std": s.sd if s.sd is not None else 0.0, "min": s.min,
            "max": s.max, "values": list(values)}


def _cell(stats: dict[str, Any], digits: int = 3) -> str:
    if "mean" in stats:
        return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return "/".join("never" if v is None else f"{v:g}" for v in stats["values"])


def summarise(seeds: list[dict]) -> dict[str, list[dict]]:
    """Per-row statistics over seeds (mean ± std; flag queries per seed)."""
    out: dict[str, list[dict]] = {}
    for part, label in (("evasion", "evasion"), ("clients", "clients")):
        out[part] = []
        for i, row in enumerate(seeds[0][part]):
            summary = {label: row[label]}
            for key in row:
                if key != label:
                    summary[key] = _stats([s[part][i][key] for s in seeds])
            out[part].append(summary)
    return out


def tables(summary: dict[str, list[dict]], scores: Sequence[str] = SCORES,
           level: str = "old + level 0.5") -> str:
    """The Markdown tables of `summarise`'s output, for the `scores` compared (`level`: the
    header of the default window's column)."""
    per_query = [r for r in summary["evasion"] if f"{scores[0]}_anomalous" in r]
    camo = [r for r in summary["evasion"] if f"{scores[0]}_stream_share" in r]
    t1 = markdown_table([{"evasion": r["evasion"], **{s: _cell(r[f"{s}_anomalous"])
                                                      for s in scores}} for r in per_query],
                        [("evasion", "evasion")] + [(s, s) for s in scores])
    t2 = markdown_table([{"evasion": r["evasion"], **{s: _cell(r[f"{s}_benign"])
                                                      for s in scores}} for r in per_query],
                        [("evasion", "benign images under")] + [(s, s) for s in scores])
    t3 = markdown_table([{"evasion": r["evasion"], "old_level": _cell(r["old_level_flagged_at"]),
                          **{s: _cell(r[f"{s}_flagged_at"]) for s in scores}}
                         for r in per_query + camo],
                        [("evasion", "client's stream"), ("old_level", level)]
                        + [(s, f"{s} + binomial") for s in scores])
    t4 = markdown_table([{"clients": r["clients"],
                          "old_level": _cell(r["old_level_flagged"]),
                          **{s: f"{_cell(r[f'{s}_flagged'], 1)} (FPR "
                                f"{_cell(r[f'{s}_query_fpr'])})" for s in scores}}
                         for r in summary["clients"]],
                        [("clients", "benign clients send"), ("old_level", level)]
                        + [(s, f"{s} + binomial") for s in scores])
    return "\n\n".join([
        "## Anomalous accuracy at the calibrated threshold (attack images flagged)", t1,
        "## Benign accuracy under the same transform (benign images not flagged)", t2,
        "## Query at which one client is flagged (per seed; never = not within the stream)",
        t3, "## Benign clients flagged (mean ± std over seeds; per-query FPR)", t4])


def run_evasion(config: EvasionConfig) -> dict:
    out = check_run_dir(config)
    data = None
    victim = None
    seeds = []
    if config.gateway_only:
        data = _data(config)
        result = _write_gateway(out, run_gateway(config, data))
        if config.thief_budget:
            thieves = _write_thieves(out, run_thieves(config, data))
            result["table"] += "\n\n" + thieves["table"]
        return result
    if config.detectors:
        for index, detector in enumerate(config.detectors):
            path = out / f"detector_{index}.json"
            if not path.is_file():
                data = data or _data(config)
                write_json_atomic(path, run_exported(config, detector, data))
            seeds.append(json.loads(path.read_text()))
        summary = summarise(seeds)
        table = tables(summary, EXPORTED_SCORES, "clean + level 0.5")
    else:
        for seed in config.seeds:
            path = out / f"seed_{seed}.json"
            if path.is_file():
                seeds.append(json.loads(path.read_text()))
                continue
            if data is None:
                data = _data(config)
                victim = _victim(config.victim)
            result = run_seed(config, seed, data, victim)
            write_json_atomic(path, result)
            seeds.append(result)
        summary = summarise(seeds)
        table = tables(summary)

    meta = {"victim": config.victim, "seeds": list(config.seeds), "fpr": config.fpr,
            "detectors": list(config.detectors),
            "window": config.window, "alpha": config.alpha, "min_queries": config.min_queries,
            "train_limit": config.train_limit, "eval_limit": config.eval_limit,
            "epochs": config.epochs, "input_size": config.input_size,
            "thresholds": [s["thresholds"] for s in seeds],
            "training_seconds": [s["training_seconds"] for s in seeds],
            "binomial_critical": seeds[0]["binomial_critical"]}
    write_json_atomic(out / "results.json", {**meta, "summary": summary, "seeds": seeds})
    (out / "results.md").write_text(f"# Evasion benchmark\n\n{table}\n\n```json\n"
                                    f"{json.dumps(meta, indent=1)}\n```\n")
    if config.gateway_detector is not None:
        data = data or _data(config)
        table += "\n\n" + _write_gateway(out, run_gateway(config, data))["table"]
        if config.thief_budget:
            table += "\n\n" + _write_thieves(out, run_thieves(config, data))["table"]
    return {"table": table, "summary": summary}


def _write_thieves(out: Path, rows: list[dict]) -> dict:
    """OUT/thieves.{json,md}: each Knockoff thief's flag and surrogate / victim ratio."""

    table = markdown_table([{k: ("never" if v is None and k == "flagged_at" else v)
                             for k, v in r.items()} for r in rows],
                           [("thief", "thief"), ("window", "gateway window"),
                            ("flagged_at", "flagged at query"), ("victim_acc", "victim acc"),
                            ("surrogate_acc", "surrogate acc"), ("ratio", "ratio")])
    write_json_atomic(out / "thieves.json", {"rows": rows})
    text = "## Knockoff thieves through the real gateway (flagged: labels only)\n\n" + table
    (out / "thieves.md").write_text(text + "\n")
    return {"table": text, "rows": rows}


def _write_gateway(out: Path, rows: list[dict]) -> dict:
    """OUT/gateway.{json,md}: the query at which each client was flagged, per gateway."""

    names = [k for k in rows[0] if k not in ("window", "benign_top1_changed")]
    table = markdown_table(
        [{k: ("never" if v is None else v) for k, v in r.items()} for r in rows],
        [("window", "gateway window")] + [(n, n) for n in names]
        + [("benign_top1_changed", "benign answers with another top-1")])
    write_json_atomic(out / "gateway.json", {"rows": rows})
    text = "## Clients through the real gateway: query at which each was flagged\n\n" + table
    (out / "gateway.md").write_text(text + "\n")
    return {"table": text, "rows": rows}


PROG = "python -m benchmarks.evasion_bench"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    return benchmark_main(EvasionConfig, run_evasion, argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
