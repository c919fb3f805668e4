"""``python -m benchmarks.active_curves``: ActiveThief's strategies against random, as curves.

Each strategy (random, and ActiveThief's uncertainty, kcenter, dfal: `attack.strategies`) is ONE
run per seed against a victim served by the embedded TF Serving server over gRPC. The run spends
its queries in rounds; a round ends at every ``--checkpoints`` count (and every multiple of
``--round-size`` when given). At each round's end a fresh surrogate is trained from scratch on
every answer so far, with the same pinned settings for every strategy; the active strategies
plan the next round with it (the first round is a seeded random seed set), and at a checkpoint
its top-1 accuracy on labelled test images of the victim's task is the curve's point. Random is
trained and scored at the same checkpoints with the same settings, so the comparison is at equal
query counts and equal training.

Every query goes through `attack.pipeline.send_journaled` into the run's query journal
(``OUT/runs/<strategy>-s<seed>/journal.bin``) and the strategy's state is saved after each batch,
so a killed benchmark resumes without paying for an answered query twice; trained surrogates are
kept per round and reloaded, and finished points are read back from ``curve.json``.

Surrogates (``--surrogate``):

* ``finetune``: the attack's own `SurrogateTrainer` (the whole backbone trained), settings pinned
  here (``--epochs``, ``--batch-size``, ``--lr``, ``--augment``), not taken from the attack's
  defaults, so curves of one run stay comparable if those defaults change;
* ``frozen``: the same backbone and weights, frozen; the surrogate is the classifier's logits
  layer trained on the backbone's pooled features (computed once per image and cached in
  OUT/cache/; ``--head-epochs``). Cheap enough on a CPU for every strategy, budget and
  seed. DFAL then measures the DeepFool distance in that feature space (exact for the linear
  head), not in pixel space.

``--active-pool`` caps the unqueried images an active strategy scores per round (a seeded random
subset; 0: all of them), ``--dfal-pool`` the same for DFAL alone (DeepFool costs one backward
pass per class and step).

Output: OUT/results.json and OUT/results.md: strategy x checkpoint, mean +/- sample standard
deviation of the surrogate's accuracy over the seeds, and for each strategy the first checkpoint
whose mean reaches random's mean at the largest checkpoint.

Example (the README's figures)::

    python -m benchmarks.active_curves --victim /tmp/qs_quiet2/victims/cifar10_cnn \\
        --test-set ../shared/data/cifar10_jpeg_q75.zip \\
        --transfer-set ../shared/data/tinyimagenet200_val10k_train50pc.zip \\
        --exclude-classes ../shared/data/tinyimagenet_cifar10_overlap_wnids.txt \\
        --weights ../shared/data/mobilenet_2_5_224_tf_no_top.h5 --surrogate frozen \\
        --checkpoints 2000 4000 8000 16000 --seeds 0 1 2 --out results/active
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attack.journal import QueryJournal, release_unjournaled
from attack.pipeline import answers_as_probabilities, send_journaled
from attack.strategies import ACTIVE, ActiveStrategy, RandomStrategy
from benchmarks.harness.stats import spread
from common import cli
from common.constraints import check_fields
from common.data import load_dataset
from common.errors import invalid
from common.fileio import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

PROG = "python -m benchmarks.active_curves"
STRATEGIES = ("random", *ACTIVE)
SURROGATES = ("frozen", "finetune")


@dataclass(frozen=True)
class CurvesConfig:
    """Random and ActiveThief's strategies against one served victim, curves over seeds."""

    victim: str = field(metadata={
        "help": "the victim's model base path (<base>/<version>/saved_model.pb); it is served "
                "by the embedded TF Serving server under its folder's name", "metavar": "DIR"})
    test_set: str = field(metadata={"help": "labelled images of the victim's task (data spec)"})
    transfer_set: str = field(metadata={"help": "the thief's natural images (data spec)"})
    transfer_split: str = field(default="train+val", metadata={"help": "split(s) of it"})
    exclude_classes: str | None = field(default=None, metadata={
        "help": "class list dropped from the transfer set (the victim's own classes)"})
    surrogate: str = field(default="frozen", metadata={
        "help": "frozen (backbone frozen, logits layer trained on its features) or finetune "
                "(the attack's SurrogateTrainer, whole network)", "choices": SURROGATES})
    weights: str = field(default="imagenet", metadata={
        "help": "backbone weights: imagenet, none, or a file"})
    backbone: str = field(default="mobilenet", metadata={"help": "surrogate backbone"})
    alpha: float = field(default=0.25, metadata={
        "help": "MobileNet width (ignored by other backbones)", "gt": 0})
    input_size: int = field(default=96, metadata={"help": "surrogate input side", "min": 16})
    epochs: int = field(default=5, metadata={
        "help": "finetune: training epochs at every round's end", "min": 1})
    head_epochs: int = field(default=30, metadata={
        "help": "frozen: epochs of the logits layer at every round's end", "min": 1})
    batch_size: int = field(default=64, metadata={"help": "training batch", "min": 1})
    lr: float = field(default=1e-3, metadata={"help": "Adam's learning rate", "gt": 0})
    augment: str = field(default="crop+flip", metadata={
        "help": "finetune: training augmentation",
        "choices": ("none", "flip", "crop", "crop+flip")})
    checkpoints: tuple[int, ...] = field(default=(2000, 4000, 8000, 16000), metadata={
        "help": "query counts where the curve is measured (increasing)", "min": 1})
    round_size: int = field(default=0, metadata={
        "help": "also end a round at every multiple of this (0: rounds end at the checkpoints)",
        "min": 0})
    strategies: tuple[str, ...] = field(default=STRATEGIES, metadata={
        "help": "strategies to run", "choices": STRATEGIES})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "seeds", "min": 0})
    active_pool: int = field(default=0, metadata={
        "help": "unqueried images an active strategy scores per round (0: all)", "min": 0})
    dfal_pool: int = field(default=0, metadata={
        "help": "the same for dfal (0: --active-pool)", "min": 0})
    dfal_max_iter: int = field(default=20, metadata={"help": "DeepFool steps", "min": 1})
    test_limit: int = field(default=2000, metadata={
        "help": "test images scored (a seeded per-class choice)", "min": 1})
    query_batch: int = field(default=64, metadata={"help": "images per Predict", "min": 1})
    out: str = field(default="results/active", metadata={
        "help": "folder for runs/, results.json and results.md"})

    def __post_init__(self) -> None:
        check_fields(self)
        if list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise invalid("checkpoints", self.checkpoints, "distinct increasing query counts")
        if len(set(self.seeds)) != len(self.seeds):
            raise invalid("seeds", self.seeds, "distinct seeds")
        if len(set(self.strategies)) != len(self.strategies):
            raise invalid("strategies", self.strategies, "distinct strategies")
        root = Path(self.victim)
        if not root.is_dir() or not any(p.name.isdigit() and (p / "saved_model.pb").is_file()
                                        for p in root.iterdir()):
            raise invalid("victim", self.victim,
                          "a model base path holding <version>/saved_model.pb")

    def round_ends(self) -> list[int]:
        """Every query count where a round ends (checkpoints included)."""
        last = self.checkpoints[-1]
        steps = range(self.round_size, last, self.round_size) if self.round_size else ()
        return sorted(set(self.checkpoints) | set(steps))

    def arch_kwargs(self) -> dict[str, Any]:
        """``alpha`` for the MobileNets, nothing for the other backbones."""
        return {"alpha": self.alpha} if self.backbone.lower().startswith("mobilenet") else {}

    def pool_cap(self, strategy: str) -> int | None:
        cap = self.dfal_pool if strategy == "dfal" and self.dfal_pool else self.active_pool
        return cap or None

    def run_settings(self) -> dict[str, Any]:
        """What a run's points depend on besides strategy and seed: a run directory resumes
        only under the same (its later checkpoints may be added)."""
        return {"training": self.training(), "round_size": self.round_size,
                "active_pool": self.active_pool, "dfal_pool": self.dfal_pool,
                "dfal_max_iter": self.dfal_max_iter, "test_limit": self.test_limit,
                "transfer_set": Path(self.transfer_set).name,
                "exclude_classes": None if self.exclude_classes is None
                else Path(self.exclude_classes).name}

    def training(self) -> dict[str, Any]:
        """The pinned training settings (recorded with the results)."""
        common = {"surrogate": self.surrogate, "backbone": self.backbone, "alpha": self.alpha,
                  "input_size": self.input_size, "weights": Path(self.weights).name,
                  "batch_size": self.batch_size, "lr": self.lr, "optimizer": "adam"}
        if self.surrogate == "frozen":
            return {**common, "epochs": self.head_epochs, "trained": "logits layer only"}
        return {**common, "epochs": self.epochs, "augment": self.augment,
                "schedule": "cosine to 0", "dropout": 0.0, "trained": "whole network"}


# -- surrogates ---------------------------------------------------------------------------------
class FrozenHead:
    """The classifier's logits layer on a frozen backbone's pooled features: trained from a
    seeded initialisation by Adam on soft targets, saved to `path` (an .npz) after a fit and
    loaded instead of trained when it is there. `model` maps features to logits (what
    `deepfool_distances` needs for dfal)."""

    def __init__(self, dim: int, num_classes: int, *, epochs: int, batch_size: int, lr: float,
                 seed: int, path: Path | None = None) -> None:
        import keras

        keras.utils.set_random_seed(seed)
        self.model = keras.Sequential([keras.Input((dim,)),
                                       keras.layers.Dense(num_classes, name="logits")])
        self._initial = self.model.get_weights()
        self.epochs, self.batch_size, self.lr, self.seed = epochs, batch_size, lr, seed
        self.path = path

    def fit(self, features: np.ndarray, targets: np.ndarray) -> None:
        import keras

        if self.path is not None and self.path.is_file():
            with np.load(self.path) as saved:
                if int(saved["count"]) == len(features):
                    self.model.set_weights([saved["kernel"], saved["bias"]])
                    return
        keras.utils.set_random_seed(self.seed)
        self.model.set_weights(self._initial)
        self.model.compile(optimizer=keras.optimizers.Adam(self.lr),
                           loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        self.model.fit(features.astype(np.float32), targets.astype(np.float32),
                       epochs=self.epochs, batch_size=self.batch_size, shuffle=True, verbose=0)
        if self.path is not None:
            kernel, bias = self.model.get_weights()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp.npz")
            np.savez(tmp, kernel=kernel, bias=bias, count=len(features))
            os.replace(tmp, self.path)

    def predict_probs(self, features: np.ndarray) -> np.ndarray:
        logits = self.model.predict(features.astype(np.float32), batch_size=1024, verbose=0)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def backbone_features(config: CurvesConfig, images: np.ndarray, num_classes: int,
                      cache: Path) -> np.ndarray:
    """The frozen backbone's pooled features of uint8 `images` (resized to the input side as
    the surrogate trainer resizes them), computed once and kept in `cache`."""
    key = _fingerprint(images)
    if cache.is_file():
        with np.load(cache) as saved:
            if str(saved["key"]) == key:
                return saved["features"]
    import keras
    import tensorflow as tf

    from common.backbones import build_classifier

    model = build_classifier(config.backbone, num_classes, input_size=config.input_size,
                             weights=config.weights, **config.arch_kwargs())
    pooled = keras.Model(model.input, model.get_layer("logits").input)
    side = config.input_size
    parts = []
    started = time.perf_counter()
    for start in range(0, len(images), 256):
        batch = images[start:start + 256]
        if batch.shape[1:3] != (side, side):
            batch = tf.clip_by_value(tf.round(tf.image.resize(batch, (side, side),
                                                              antialias=True)), 0, 255)
        parts.append(np.asarray(pooled(tf.cast(batch, tf.float32), training=False)))
    features = np.concatenate(parts).astype(np.float32)
    log.info("features of %d images in %.0f s", len(images), time.perf_counter() - started)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, features=features, key=key)
    os.replace(tmp, cache)
    return features


@dataclass
class Setting:
    """What every run shares: the inputs the surrogate sees (pool and test), labels, victim."""

    config: CurvesConfig
    victim: Any
    pool_images: np.ndarray      # uint8, what the victim is asked
    pool_inputs: np.ndarray      # what the surrogate takes: images or features
    test_inputs: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    def surrogate(self, seed: int, path: Path):
        config = self.config
        if config.surrogate == "frozen":
            return FrozenHead(self.pool_inputs.shape[1], self.num_classes,
                              epochs=config.head_epochs, batch_size=config.batch_size,
                              lr=config.lr, seed=seed, path=path.with_suffix(".npz"))
        from attack.surrogate import SurrogateTrainer

        return SurrogateTrainer(config.backbone, config.weights, config.input_size,
                                self.num_classes, epochs=config.epochs,
                                batch_size=config.batch_size, lr=config.lr, seed=seed,
                                augment=config.augment, dropout=0.0,
                                arch_kwargs=config.arch_kwargs(), checkpoint_dir=path)

    def accuracy(self, surrogate) -> float:
        predicted = surrogate.predict_probs(self.test_inputs).argmax(axis=1)
        return float((predicted == self.test_labels).mean())


# -- one run: one strategy, one seed ------------------------------------------------------------
def _strategy(name: str, config: CurvesConfig, size: int, seed: int, answered: np.ndarray):
    if name == "random":
        return RandomStrategy(size, seed=seed, exclude=answered)
    return ActiveStrategy(name, size, seed=seed, exclude=answered,
                          candidates=config.pool_cap(name), max_iter=config.dfal_max_iter)


def run_curve(setting: Setting, name: str, seed: int, run_dir: Path) -> list[dict]:
    """One strategy's run for one seed: its points at the checkpoints (resumed from run_dir)."""
    config = setting.config
    run_dir.mkdir(parents=True, exist_ok=True)
    settings_path = run_dir / "run.json"
    settings = json.loads(json.dumps(config.run_settings()))
    if settings_path.is_file():
        before = json.loads(settings_path.read_text())
        if before != settings:
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise invalid("out", str(run_dir),
                          f"a run directory of the same settings (it was run with other "
                          f"{', '.join(changed)}; use another --out)")
    else:
        write_json_atomic(settings_path, settings)
    curve_path = run_dir / "curve.json"
    points = json.loads(curve_path.read_text()) if curve_path.is_file() else []
    done = {p["queries"] for p in points}
    state_path = run_dir / "strategy.json"
    lock = threading.Lock()
    trained: dict[int, Any] = {}

    def surrogate_at(journal: QueryJournal, count: int):
        if count not in trained:
            probs = answers_as_probabilities(setting.victim, journal.responses()[:count])
            indices = journal.answered_indices()[:count]
            surrogate = setting.surrogate(seed, run_dir / "surrogates" / f"q{count}")
            surrogate.fit(setting.pool_inputs[indices], probs)
            trained.clear()  # one kept: the next round plans with the latest
            trained[count] = surrogate
        return trained[count]

    with QueryJournal.open(run_dir, durable=False) as journal:
        answered, pending = journal.answered_indices(), journal.pending()
        strategy = _strategy(name, config, len(setting.pool_images), seed, answered)
        if state_path.is_file():
            state, _ = release_unjournaled(json.loads(state_path.read_text()), journal)
            strategy.load_state(state)
        strategy.exclude(answered)
        strategy.exclude(pending)
        if len(pending):
            log.warning("%s seed %d: %d queries in flight at the stop are sent again", name,
                        seed, len(pending))
        previous = 0
        for end in config.round_ends():
            started = time.perf_counter()
            while journal.num_answered < end:
                want = min(config.query_batch * 16, end - journal.num_answered)
                if len(pending):
                    indices, pending = pending[:want], pending[want:]
                elif name == "random":
                    indices = strategy.select(want)
                else:
                    if not strategy.queued:
                        surrogate = surrogate_at(journal, previous) if previous else None
                        strategy.plan(end - journal.num_answered, surrogate,
                                      setting.pool_inputs)
                        write_json_atomic(state_path, strategy.state())  # the planned round
                    indices = strategy.select(min(want, strategy.queued))
                send_journaled(setting.victim, journal, setting.pool_images[indices], indices,
                               lock=lock, budget=end)
                write_json_atomic(state_path, strategy.state())
            if end in config.checkpoints and end not in done:
                accuracy = setting.accuracy(surrogate_at(journal, end))
                points.append({"strategy": name, "seed": seed, "queries": end,
                               "accuracy": accuracy,
                               "seconds": round(time.perf_counter() - started, 1)})
                done.add(end)
                write_json_atomic(curve_path, points)
                log.info("%s seed %d at %d queries: %.4f", name, seed, end, accuracy)
            previous = end
    return sorted(points, key=lambda p: p["queries"])


def earlier_points(config: CurvesConfig, out: Path) -> list[dict]:
    """Points of the other strategies' runs in OUT/runs for this invocation's seeds, made
    earlier under the same settings (e.g. random and the best strategy extended to a larger
    checkpoint by a later invocation): the table shows every strategy measured."""
    rows = []
    settings = json.loads(json.dumps(config.run_settings()))
    for name in STRATEGIES:
        if name in config.strategies:
            continue
        for seed in config.seeds:
            run_dir = out / "runs" / f"{name}-s{seed}"
            if (run_dir / "curve.json").is_file() and (run_dir / "run.json").is_file() \
                    and json.loads((run_dir / "run.json").read_text()) == settings:
                rows += [p for p in json.loads((run_dir / "curve.json").read_text())
                         if p["queries"] in config.checkpoints]
    return rows


# -- summary ------------------------------------------------------------------------------------
def summarise(rows: list[dict], strategies: Sequence[str], checkpoints: Sequence[int]) -> dict:
    """Mean and sample standard deviation per strategy and checkpoint, and the first checkpoint
    where each strategy's mean reaches random's mean at the largest checkpoint."""
    table: dict[str, dict[str, dict]] = {}
    for name in strategies:
        for count in checkpoints:
            acc = [r["accuracy"] for r in rows if r["strategy"] == name and r["queries"] == count]
            if acc:
                s = spread(acc)
                table.setdefault(name, {})[str(count)] = {"seeds": s.n, "mean": s.mean,
                                                          "sd": s.sd}
    target_count = str(checkpoints[-1])
    target = table.get("random", {}).get(target_count)
    reach: dict[str, int | None] = {}
    if target is not None:
        for name, cells in table.items():
            hits = [int(c) for c, cell in cells.items() if cell["mean"] >= target["mean"]]
            reach[name] = min(hits) if hits else None
    return {"table": table, "target": None if target is None else
            {"strategy": "random", "queries": int(target_count), "mean": target["mean"]},
            "reach": reach}


def _cell(cell: dict | None) -> str:
    if cell is None:
        return "not run"
    sd = "" if cell["sd"] is None else f" +/- {100 * cell['sd']:.1f}"
    return f"{100 * cell['mean']:.1f}{sd} (n={cell['seeds']})"


def markdown(result: dict) -> str:
    summary = result["summary"]
    counts = [str(c) for c in result["checkpoints"]]
    target = summary["target"]
    lines = [f"# ActiveThief strategies against random ({result['surrogate_kind']} surrogate)",
             "",
             f"Victim `{result['victim']}`: {100 * result['victim_accuracy']:.1f}% on "
             f"{result['test_images']} test images through gRPC. Transfer set: "
             f"{result['pool_images']} images. Training at every round's end: "
             f"{json.dumps(result['training'])}. Round ends: {result['round_ends']}. "
             f"Machine: {result['machine']}.", "",
             "Surrogate accuracy (%) on the test images, mean +/- sample sd over seeds:", "",
             "| strategy | " + " | ".join(counts) + " | reaches random@"
             f"{counts[-1]} at |", "|---|" + "---|" * (len(counts) + 1)]
    for name, cells in summary["table"].items():
        reach = summary["reach"].get(name) if target else None
        reached = "n/a (random not run)" if target is None else (
            f"{reach}" if reach is not None else f"not within {counts[-1]}")
        lines.append(f"| {name} | " + " | ".join(_cell(cells.get(c)) for c in counts)
                     + f" | {reached} |")
    if target:
        lines += ["", f"Target: random's mean at {target['queries']} queries, "
                      f"{100 * target['mean']:.1f}%."]
    lines += ["", f"Wall time of this invocation: {result['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


# -- the benchmark ------------------------------------------------------------------------------
def run(config: CurvesConfig) -> dict:
    from attack import ServingVictim
    from serving.testing import model_server

    began = time.perf_counter()
    test = load_dataset(config.test_set, "test", limit=config.test_limit, seed=0)
    pool = load_dataset(config.transfer_set, config.transfer_split,
                        image_size=test.images.shape[1:3], channels=3,
                        exclude_classes=config.exclude_classes)
    if config.checkpoints[-1] > len(pool.images):
        raise invalid("checkpoints", config.checkpoints[-1],
                      f"at most {len(pool.images)} (the transfer set's images)")
    num_classes = int(test.labels.max()) + 1
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.surrogate == "frozen":
        tag = f"{config.backbone}-{config.alpha}-{config.input_size}-{Path(config.weights).stem}"
        pool_inputs = backbone_features(config, pool.images, num_classes,
                                        out / "cache" / f"features-pool-{tag}.npz")
        test_inputs = backbone_features(config, test.images, num_classes,
                                        out / "cache" / f"features-test-{tag}.npz")
    else:
        pool_inputs, test_inputs = pool.images, test.images
    name = Path(config.victim).resolve().name
    rows: list[dict] = []
    with model_server(base_path=config.victim, name=name) as server:
        victim = ServingVictim(server.target, name, input_range="0,255",
                               output_kind="probabilities", batch_size=config.query_batch)
        victim_path = out / "cache" / "victim.json"
        if victim_path.is_file():
            victim_acc = json.loads(victim_path.read_text())["accuracy"]
        else:
            victim_acc = float((victim.predict(test.images).argmax(1) == test.labels).mean())
            victim_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(victim_path, {"accuracy": victim_acc,
                                            "test_images": len(test.labels)})
        setting = Setting(config, victim, pool.images, pool_inputs, test_inputs, test.labels,
                          num_classes)
        for seed in config.seeds:
            for strategy in config.strategies:
                rows += run_curve(setting, strategy, seed,
                                  out / "runs" / f"{strategy}-s{seed}")
    rows += earlier_points(config, out)
    result = {"victim": name, "victim_accuracy": victim_acc, "test_images": len(test.labels),
              "pool_images": len(pool.images), "surrogate_kind": config.surrogate,
              "training": config.training(), "checkpoints": list(config.checkpoints),
              "round_ends": config.round_ends(), "seeds": list(config.seeds),
              "active_pool": config.active_pool, "dfal_pool": config.dfal_pool,
              "machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end",
              "seconds": round(time.perf_counter() - began, 1), "rows": rows,
              "summary": summarise(rows, STRATEGIES, config.checkpoints)}
    write_json_atomic(out / "results.json", result)
    write_text_atomic(out / "results.md", markdown(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    def body(args):
        config = cli.parse_config(CurvesConfig, args, prog=PROG, description=__doc__)
        cli.configure_logging()
        print(markdown(run(config)))
        return 0

    return cli.run_cli(body, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
