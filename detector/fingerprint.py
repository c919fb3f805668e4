"""Fingerprints that prove theft without the gateway: conferrable adversarial examples.

Lukas, Zhang & Kerschbaum, "Deep Neural Network Fingerprinting by Conferrable Adversarial
Examples" (ICLR 2021). A *conferrable* example is an input that a model distilled from the
victim (a surrogate) classifies as the victim does, while models trained independently on the
same task do not. The defender builds them once from the victim: it distils a few surrogates
from the victim's answers and trains a few independent reference models itself, then perturbs
seed images (targeted PGD within an L-infinity ball of `eps` pixels) towards a random wrong
class ``t`` so that the surrogates' mean probability of ``t`` rises while every reference's
falls. It keeps the rounded uint8 images on which the victim itself answers ``t`` and ranks them
by Lukas et al.'s conferrability score ``mean_S p_S(t) * (1 - max_R p_R(t))``.

The null hypothesis "the suspect was trained independently of the victim" is calibrated on
*other* independent models (`calibration`, never used to build the set): each answers the
fingerprints, and the null rate is the largest one-sided 99% Clopper-Pearson upper bound of
their agreement with the victim's labels. A suspect that agrees with the victim's labels on k of
the n fingerprints it was sent gets the binomial tail ``P[Binomial(n, null_rate) >= k]``
(`verify_fingerprints`); it is declared stolen below ``alpha``. The bound is empirical (it holds
for models like the calibration models), which is why the benchmark tests more independent
models of other seeds and architectures than it calibrated on.

Only the victim's answers are needed (a served model or a SavedModel: black box); gradients come
from the surrogates and references, Keras models built by `common.backbones.build_classifier`
(float pixels in [0, 255] -> logits). A fingerprint set is an ``.npz`` (`save_fingerprints`,
`load_fingerprints`): uint8 images, the victim's labels, the null rate and how it was made.
Numpy, scipy and the standard library at import; TensorFlow only inside `keras_predict` and
`conferrable_examples` (the models are trained elsewhere, e.g. by `attack.surrogate`).

``python -m detector.fingerprint build --victim HOST:PORT|PATH --data SPEC --out FILE`` builds a
set end to end (`BuildConfig`, `build_from_data`): the defender's surrogates are distilled from
the victim's answers on `--limit` images of `--train-split`, the references and calibration
models trained on the true labels (`attack.surrogate.SurrogateTrainer`), the seeds drawn from
`--seed-split`; `python -m detector.verify --method fingerprint --fingerprints FILE` tests a
suspect with it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.constraints import check_fields
from common.errors import UsageError, invalid
from detector.suspects import is_target, open_model

__all__ = [
    "FingerprintResult",
    "BuildConfig",
    "FingerprintSet",
    "agreement_rate_bound",
    "build_fingerprints",
    "build_from_data",
    "conferrable_examples",
    "keras_predict",
    "load_fingerprints",
    "save_fingerprints",
    "verify_fingerprints",
]

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]
CALIBRATION_CONFIDENCE = 0.99


@dataclass(frozen=True)
class FingerprintSet:
    """Fingerprint images, the victim's label for each, and the calibrated null rate."""

    images: np.ndarray          # uint8 [N, H, W, C], best (most conferrable) first
    labels: np.ndarray          # int64 [N]: the victim's answer (top-1) on each image
    classes: int                # the victim's K
    null_rate: float            # upper bound of an independent model's agreement
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4 or not len(images):
            raise invalid("fingerprints", f"{images.dtype} images of shape {images.shape}",
                          "uint8 images [N >= 1, H, W, C]")
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise invalid("fingerprints", f"labels of shape {labels.shape}",
                          f"one integer label per image ({len(images)})")
        if isinstance(self.classes, bool) or int(self.classes) < 2 \
                or labels.min() < 0 or labels.max() >= int(self.classes):
            raise invalid("fingerprints", f"labels in [{labels.min()}, {labels.max()}] of "
                          f"{self.classes} classes", "labels of a task with K >= 2 classes")
        if not 0.0 < float(self.null_rate) < 1.0:
            raise invalid("fingerprints", f"null rate {self.null_rate}", "a rate in (0, 1)")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "classes", int(self.classes))
        object.__setattr__(self, "null_rate", float(self.null_rate))

    def __len__(self) -> int:
        return len(self.labels)


def save_fingerprints(path: str | os.PathLike[str], fingerprints: FingerprintSet) -> Path:
    """Write a fingerprint set to an ``.npz`` (atomically: a temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=fingerprints.images, labels=fingerprints.labels,
             classes=np.int64(fingerprints.classes),
             null_rate=np.float64(fingerprints.null_rate),
             info=np.array(json.dumps(fingerprints.info, default=float)))
    os.replace(tmp, path)
    return path


def load_fingerprints(path: str | os.PathLike[str]) -> FingerprintSet:
    """Read a file written by `save_fingerprints` (`UsageError` naming `fingerprints` if not)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return FingerprintSet(images=data["images"], labels=data["labels"],
                                  classes=int(data["classes"]),
                                  null_rate=float(data["null_rate"]),
                                  info=json.loads(str(data["info"])))
    except (OSError, KeyError, ValueError, EOFError) as err:
        raise invalid("fingerprints", str(path), "a fingerprint .npz written by "
                      f"detector.fingerprint ({type(err).__name__}: {err})") from None


def agreement_rate_bound(agreeing: int, compared: int,
                         confidence: float = CALIBRATION_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen as `agreeing` of `compared`."""
    from scipy.stats import beta

    if agreeing >= compared:
        return 1.0
    return float(beta.ppf(confidence, agreeing + 1, compared - agreeing))


@dataclass(frozen=True)
class FingerprintResult:
    """The test's outcome: the suspect gave the victim's label on k of n fingerprints."""

    stolen: bool
    p_value: float
    agreeing: int
    compared: int
    null_rate: float
    alpha: float
    classes: int
    suspect_queries: int
    victim_agreeing: int | None = None

    def line(self) -> str:
        decision = "STOLEN (fingerprints transferred)" if self.stolen else "not identified"
        text = (f"{decision}: the suspect gave the victim's label on {self.agreeing} of "
                f"{self.compared} conferrable fingerprints ({self.agreeing / self.compared:.0%}; "
                f"independent models agree at most {self.null_rate:.3f}, K={self.classes}); "
                f"one-sided binomial p-value {self.p_value:.3g} (alpha {self.alpha:g}); "
                f"{self.suspect_queries} queries to the suspect")
        if self.victim_agreeing is not None:
            text += (f"; the victim itself gives its stored label on {self.victim_agreeing} of "
                     f"{self.compared}")
        return text


def _scores(predict: Predict, images: np.ndarray, who: str) -> np.ndarray:
    scores = np.asarray(predict(images))
    if scores.ndim != 2 or len(scores) != len(images):
        raise invalid(who, f"answers of shape {scores.shape}",
                      f"class scores [N, K] for {len(images)} images")
    return scores


def verify_fingerprints(suspect: Predict, fingerprints: FingerprintSet, *,
                        victim: Predict | None = None, max_queries: int = 100,
                        alpha: float = 0.01) -> FingerprintResult:
    """Send at most `max_queries` fingerprints (the most conferrable first) to `suspect` and
    test its agreement with the victim's labels against the set's null rate.

    `suspect`, `victim`: callables uint8 images -> class scores [N, K]. A suspect with another
    K is a `UsageError`. `victim`, when given, answers the same images as a check (not counted).
    """
    from scipy.stats import binomtest

    if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
        raise invalid("max_queries", max_queries, "a positive integer")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise invalid("alpha", alpha, "a significance level in (0, 1)")
    n = min(max_queries, len(fingerprints))
    images, labels = fingerprints.images[:n], fingerprints.labels[:n]
    victim_k = None
    if victim is not None:
        victim_scores = _scores(victim, images, "victim")
        if victim_scores.shape[1] != fingerprints.classes:
            raise invalid("victim", f"a model with {victim_scores.shape[1]} classes",
                          f"the model the fingerprints were built from "
                          f"({fingerprints.classes} classes)")
        victim_k = int(np.sum(victim_scores.argmax(1) == labels))
    scores = _scores(suspect, images, "suspect")
    if scores.shape[1] != fingerprints.classes:
        raise invalid("suspect", f"a model with {scores.shape[1]} classes",
                      f"a model of the victim's task ({fingerprints.classes} classes)")
    k = int(np.sum(scores.argmax(1) == labels))
    p_value = float(binomtest(k, n, fingerprints.null_rate, alternative="greater").pvalue)
    return FingerprintResult(stolen=p_value < alpha, p_value=p_value, agreeing=k, compared=n,
                             null_rate=fingerprints.null_rate, alpha=float(alpha),
                             classes=fingerprints.classes, suspect_queries=n,
                             victim_agreeing=victim_k)


# -- building (TensorFlow/Keras) ---------------------------------------------------------------

def keras_predict(model: Any, batch_size: int = 256) -> Predict:
    """A Keras logits model (float pixels in [0, 255]) as a callable uint8 -> probabilities."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(x):
        return tf.nn.softmax(model(x, training=False))

    def predict(images: np.ndarray) -> np.ndarray:
        out = [forward(tf.constant(images[i:i + batch_size], tf.float32)).numpy()
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float32)

    return predict


def conferrable_examples(seeds: np.ndarray, seed_labels: np.ndarray, surrogates: Sequence[Any],
                         references: Sequence[Any], *, classes: int, eps: float = 12.0,
                         steps: int = 40, step_size: float = 1.0, weight: float = 1.0,
                         rng: np.random.Generator | None = None, batch_size: int = 128,
                         targets: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targeted PGD towards a random class other than `seed_labels` that the surrogates (Keras
    logits models) follow and the references do not.

    Loss per image: ``-log mean_S p_S(t) - weight * log(1 - max_R p_R(t))``; signed-gradient
    steps of `step_size` pixels within ``|x - seed| <= eps``, rounded to uint8. Returns (images
    uint8, targets int64, conferrability ``mean_S p_S(t) * (1 - max_R p_R(t))`` on the rounded
    images). `targets`: the target class per seed instead of random ones.
    """
    import tensorflow as tf

    if not surrogates or not references:
        raise invalid("models", f"{len(surrogates)} surrogates, {len(references)} references",
                      "at least one surrogate and one reference model")
    rng = rng or np.random.default_rng(0)
    seeds = np.asarray(seeds, dtype=np.uint8)
    seed_labels = np.asarray(seed_labels, dtype=np.int64)
    if targets is None:
        targets = (seed_labels + rng.integers(1, classes, len(seeds))) % classes
    targets = np.asarray(targets, dtype=np.int64)

    def probs(models, x):
        return tf.stack([tf.nn.softmax(m(x, training=False)) for m in models])  # [M, B, K]

    @tf.function(reduce_retracing=True)
    def step(x, x0, onehot):
        with tf.GradientTape() as tape:
            tape.watch(x)
            ps = tf.reduce_sum(tf.reduce_mean(probs(surrogates, x), 0) * onehot, -1)
            pr = tf.reduce_max(tf.reduce_sum(probs(references, x) * onehot, -1), 0)
            loss = tf.reduce_sum(-tf.math.log(ps + 1e-8) - weight * tf.math.log(1.0 - pr + 1e-8))
        grad = tape.gradient(loss, x)
        x = x - step_size * tf.sign(grad)
        return tf.clip_by_value(tf.clip_by_value(x, x0 - eps, x0 + eps), 0.0, 255.0)

    @tf.function(reduce_retracing=True)
    def score(x, onehot):
        ps = tf.reduce_sum(tf.reduce_mean(probs(surrogates, x), 0) * onehot, -1)
        pr = tf.reduce_max(tf.reduce_sum(probs(references, x) * onehot, -1), 0)
        return ps * (1.0 - pr)

    out, scores = [], []
    for i in range(0, len(seeds), batch_size):
        x0 = tf.constant(seeds[i:i + batch_size], tf.float32)
        onehot = tf.one_hot(targets[i:i + batch_size], classes)
        x = x0
        for _ in range(int(steps)):
            x = step(x, x0, onehot)
        adv = np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8)
        out.append(adv)
        scores.append(score(tf.constant(adv, tf.float32), onehot).numpy())
    return np.concatenate(out), targets, np.concatenate(scores).astype(np.float64)


def build_fingerprints(victim: Predict, seeds: np.ndarray, surrogates: Sequence[Any],
                       references: Sequence[Any], calibration: Sequence[Predict], *,
                       count: int = 100, eps: float = 12.0, steps: int = 40,
                       step_size: float = 1.0, weight: float = 1.0, seed: int = 0,
                       info: dict[str, Any] | None = None) -> FingerprintSet:
    """Conferrable examples from `seeds` (uint8), kept where the victim answers the target, the
    `count` most conferrable, with the null rate calibrated on `calibration` (independent
    models as callables uint8 -> scores, not among `references`). `weight`: how much the
    references' probability of the target is pushed down (`conferrable_examples`)."""
    if not calibration:
        raise invalid("calibration", "0 models", "at least one independent model that did not "
                      "help build the fingerprints (the null rate is measured on it)")
    victim_seed = _scores(victim, seeds, "victim")
    classes = victim_seed.shape[1]
    images, targets, scores = conferrable_examples(
        seeds, victim_seed.argmax(1), surrogates, references, classes=classes, eps=eps,
        steps=steps, step_size=step_size, weight=weight, rng=np.random.default_rng(seed))
    answered = _scores(victim, images, "victim").argmax(1)
    keep = np.flatnonzero(answered == targets)
    if not len(keep):
        raise invalid("seeds", f"{len(seeds)} images", "seeds from which some adversarial "
                      "example makes the victim answer its target (raise eps or steps)")
    keep = keep[np.argsort(-scores[keep], kind="stable")][:count]
    images, labels = images[keep], targets[keep]
    rates = []
    for model in calibration:
        agree = int(np.sum(_scores(model, images, "calibration").argmax(1) == labels))
        rates.append(agree)
    null_rate = max(agreement_rate_bound(k, len(labels)) for k in rates)
    log.info("fingerprints: %d of %d seeds kept (victim answers the target on %d); calibration "
             "agreement %s of %d; null rate %.4f", len(keep), len(seeds),
             int(np.sum(answered == targets)), rates, len(labels), null_rate)
    meta = {"method": "conferrable adversarial examples (Lukas et al. 2021)", "eps": eps,
            "steps": steps, "step_size": step_size, "weight": weight, "seeds": len(seeds),
            "victim_hits": int(np.sum(answered == targets)),
            "surrogates": len(surrogates), "references": len(references),
            "calibration_agreeing": rates, "calibration_confidence": CALIBRATION_CONFIDENCE,
            "conferrability": [float(s) for s in scores[keep]], **(info or {})}
    return FingerprintSet(images=images, labels=labels, classes=classes,
                          null_rate=min(null_rate, 1.0 - 1e-9), info=meta)


# -- the command line: python -m detector.fingerprint build ------------------------------------

PROG = "python -m detector.fingerprint build"


@dataclass(frozen=True)
class BuildConfig:
    """Build a conferrable fingerprint set of a victim: train the defender's surrogates (on the
    victim's answers), references and calibration models (on true labels), then search."""

    victim: str = field(metadata={"help": "our model: HOST:PORT (served) or a SavedModel folder",
                                  "metavar": "HOST:PORT|PATH", "rule": "nonempty"})
    data: str = field(metadata={
        "help": "the defender's labelled data of the victim's task (a dataset spec, e.g. "
                "../shared/data/cifar10_jpeg_q75.zip)", "rule": "nonempty"})
    out: str = field(metadata={"help": "the fingerprint .npz to write", "metavar": "FILE",
                               "rule": "nonempty"})
    victim_model: str | None = field(default=None, metadata={
        "help": "model name of a served victim"})
    train_split: str = field(default="train", metadata={
        "help": "split the defender's models are trained on", "rule": "nonempty"})
    limit: int = field(default=8000, metadata={
        "help": "training images (stratified)", "min": 10})
    seed_split: str = field(default="test", metadata={
        "help": "split the candidate seed images come from", "rule": "nonempty"})
    seed_images: int = field(default=600, metadata={"help": "candidate seed images", "min": 1})
    surrogates: int = field(default=2, metadata={
        "help": "surrogates the defender distils from the victim", "min": 1})
    references: int = field(default=1, metadata={
        "help": "independent reference models (the search pushes them away)", "min": 1})
    calibration: int = field(default=2, metadata={
        "help": "independent models the null rate is calibrated on", "min": 1})
    backbone: str = field(default="cnn", metadata={
        "help": "the defender's models' backbone (common.backbones)", "rule": "nonempty"})
    epochs: int = field(default=3, metadata={"help": "training epochs per model", "min": 1})
    count: int = field(default=100, metadata={"help": "fingerprints kept", "min": 1})
    eps: float = field(default=12.0, metadata={"help": "L-inf radius in pixels (0..255)",
                                               "gt": 0, "max": 255})
    steps: int = field(default=40, metadata={"help": "PGD steps", "min": 1})
    seed: int = field(default=0, metadata={"help": "seed of the models and the search",
                                           "min": 0})
    timeout: float = field(default=10.0, metadata={"help": "seconds per request to a server",
                                                   "gt": 0})

    def __post_init__(self) -> None:
        check_fields(self)
        if is_target(self.victim):
            if not self.victim_model:
                raise invalid("victim_model", self.victim_model,
                              "the model name of the served victim")
        elif not Path(self.victim).is_dir():
            raise invalid("victim", self.victim, "HOST:PORT (port 1..65535) or an existing "
                          "SavedModel folder")
        from common.data.spec import resolve_spec

        try:
            resolve_spec(self.data)
        except UsageError:
            raise invalid("data", self.data, "an existing dataset file or folder, or a "
                          "tensorflow-datasets name") from None
        out = Path(self.out)
        if out.exists() and not out.is_file():
            raise invalid("out", self.out, "a file path for the fingerprint .npz")
        if not out.parent.is_dir():
            raise invalid("out", self.out, "a file in an existing folder")


def build_from_data(config: BuildConfig) -> FingerprintSet:
    """`BuildConfig`'s whole job: load the data, open the victim, train the defender's models
    (`attack.surrogate.SurrogateTrainer`, seeds ``seed``, ``seed+1``, ...), search, save."""
    from attack.surrogate import SurrogateTrainer
    from common.data import load_dataset

    train = load_dataset(config.data, config.train_split, limit=config.limit, seed=config.seed)
    seeds = load_dataset(config.data, config.seed_split, limit=config.seed_images,
                         seed=config.seed).images
    victim = open_model(config.victim, config.victim_model, "victim", timeout=config.timeout)
    try:
        answers = _scores(victim, train.images, "victim")
        if answers.shape[1] != train.num_classes:
            raise invalid("data", config.data, f"data of the victim's task ({answers.shape[1]} "
                          f"classes; the data has {train.num_classes})")
        size = int(train.images.shape[1])
        onehot = np.eye(train.num_classes, dtype=np.float32)[train.labels]
        plan = [("surrogate", answers)] * config.surrogates + \
            [("reference", onehot)] * config.references + \
            [("calibration", onehot)] * config.calibration
        trained: dict[str, list[Any]] = {"surrogate": [], "reference": [], "calibration": []}
        for i, (role, targets) in enumerate(plan):
            trainer = SurrogateTrainer(config.backbone, "none", size, train.num_classes,
                                       epochs=config.epochs, batch_size=128, lr=2e-3,
                                       seed=config.seed + i)
            trained[role].append(trainer.fit(train.images, targets))
            log.info("fingerprint %s model %d of %d trained", role, i + 1, len(plan))
        fingerprints = build_fingerprints(
            victim, seeds, trained["surrogate"], trained["reference"],
            [keras_predict(m) for m in trained["calibration"]], count=config.count,
            eps=config.eps, steps=config.steps, seed=config.seed,
            info={"victim": config.victim, "data": config.data, "backbone": config.backbone,
                  "epochs": config.epochs, "limit": config.limit})
    finally:
        if hasattr(victim, "close"):
            victim.close()
    save_fingerprints(config.out, fingerprints)
    return fingerprints


def _main(argv: Sequence[str]) -> int:
    from common.cli import configure_logging, parse_config

    argv = list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: {PROG} --victim ... --data ... --out FILE\n\n"
              f"{' '.join((BuildConfig.__doc__ or '').split(chr(10) * 2)[0].split())}\n"
              f"`{PROG} --help` lists the options.")
        return 0
    if not argv or argv[0] != "build":
        raise invalid("command", argv[0] if argv else None, "build (the only command: "
                      f"{PROG} --victim ... --data ... --out FILE)")
    config = parse_config(BuildConfig, argv[1:], prog=PROG,
                          description=(BuildConfig.__doc__ or "").split("\n\n")[0])
    configure_logging()
    fingerprints = build_from_data(config)
    print(f"wrote {len(fingerprints)} fingerprints to {config.out} (null rate "
          f"{fingerprints.null_rate:.4f}; victim hits {fingerprints.info['victim_hits']} of "
          f"{fingerprints.info['seeds']} seeds)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    import sys

    from common.cli import run_cli

    return run_cli(_main, sys.argv[1:] if argv is None else argv, prog=PROG)


if __name__ == "__main__":
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
