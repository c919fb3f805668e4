"""``python -m detector.verify``: was a suspect model stolen from ours? DAWN watermarks or
conferrable fingerprints.

``--method watermark`` (DAWN, Szyller et al. 2021, `detector.watermark`): the gateway answered a
keyed fraction of a client's queries with a wrong label (a keyed class drawn uniformly among the
K-1 other than the victim's top-1, given at least 0.9 of the probability) and kept them. For a
model that never saw those answers the wrong label is independent of its scores, so its *rank*
among the suspect's K-1 classes other than the victim's answer is uniform on 1..K-1. The test
replays at most ``--max-queries`` watermark queries and sums the ranks: ``P[S <= sum]`` for S a
sum of n independent uniform ranks (exact by convolution; a Hoeffding bound above K = 257) is a
valid p-value for "the suspect did not learn from these answers"; the suspect is declared stolen
below ``--alpha``. A surrogate that learnt the answers only partly (soft targets, few epochs, a
later fine-tuning) often keeps the victim's top-1 and ranks the wrong label second or third,
which the rank test sees and DAWN's original statistic (the suspect's top-1 equals the wrong
label, binomial against 1/(K-1); reported beside it) does not.

``--method fingerprint`` (`detector.fingerprint`, Lukas et al. 2021): sends at most
``--max-queries`` conferrable adversarial examples built once from the victim and counts how
often the suspect gives the victim's label; binomial tail against the set's calibrated null
rate. Needs no gateway and no record of the thief's queries.

    python -m detector.verify --suspect 127.0.0.1:8600 --suspect-model stolen \\
        --victim victims/cifar10_cnn --watermarks sqlite:gateway_state.db --client mallory
    python -m detector.verify --method fingerprint --suspect their_model/1 \\
        --fingerprints fingerprints.npz

`--suspect` and `--victim` are a served model (HOST:PORT, with ``--suspect-model`` /
``--victim-model``) or a SavedModel folder on disk (a version folder or a model folder holding
integer versions; uint8 ``images`` -> ``probabilities``). `--watermarks` is an ``.npz`` written by
`detector.watermark.save_watermarks` or the gateway's state (``sqlite:PATH`` or
``redis://...``) with ``--client``. The victim (required for watermarks, optional for
fingerprints) answers the same images as a check; its queries are not counted. Bad input (an
unreachable suspect, a different class count, no watermark for the client, a missing
fingerprint file) is one line and exit code 2.

This is a command-line tool at the edge: the served case opens a gRPC client
(`serving.client`) and the state case the gateway's store, both imported only when used; the
tests themselves (`verify_watermarks`, `detector.fingerprint.verify_fingerprints`) are numpy and
scipy.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import invalid
from detector.fingerprint import FingerprintResult, load_fingerprints, verify_fingerprints
from detector.suspects import is_target, open_model
from detector.watermark import WatermarkRecord, agreement, load_watermarks

__all__ = ["VerifyConfig", "VerifyResult", "main", "rank_sum_p_value", "run_verify",
           "verify_watermarks", "watermark_ranks"]

log = logging.getLogger(__name__)

PROG = "python -m detector.verify"


@dataclass(frozen=True)
class VerifyResult:
    """The test's outcome on n replayed watermark queries: the rank test decides; how many the
    suspect answered with the wrong label (its top-1) is reported beside it."""

    stolen: bool
    p_value: float
    agreeing: int
    compared: int
    chance: float
    alpha: float
    classes: int
    suspect_queries: int
    victim_agreeing: int | None = None
    suspect_top1_agreement: float | None = None
    mean_rank: float = float("nan")
    top1_p_value: float = float("nan")

    def line(self) -> str:
        decision = "STOLEN (watermarks reproduced)" if self.stolen else "not identified"
        text = (f"{decision}: on {self.compared} watermark queries the watermark's wrong label "
                f"ranks {self.mean_rank:.2f} on average among the suspect's {self.classes - 1} "
                f"classes other than the victim's answer (a model that never saw them: uniform, "
                f"mean {self.classes / 2:.1f}); exact rank-sum p-value {self.p_value:.3g} "
                f"(alpha {self.alpha:g}); its top-1 is the wrong label on {self.agreeing} "
                f"(chance <= 1/(K-1) = {self.chance:.4f}, binomial p {self.top1_p_value:.3g}); "
                f"{self.suspect_queries} queries to the suspect")
        if self.victim_agreeing is not None:
            text += (f"; the victim itself gives the wrong label on {self.victim_agreeing} of "
                     f"them and its own top-1 on {self.suspect_top1_agreement:.0%} of the "
                     "suspect's answers")
        return text


def watermark_ranks(scores: np.ndarray, wrong: np.ndarray, answered: np.ndarray) -> np.ndarray:
    """Rank (1 = highest) of each wrong label among the K-1 classes other than the victim's
    answer `answered`, in the suspect's `scores` [N, K]; a tie counts against the watermark (the
    test stays valid: ties can only make the statistic larger)."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(scores))
    own = scores[rows, wrong][:, None]
    higher = scores >= own
    higher[rows, answered] = False
    return higher.sum(axis=1)  # counts the wrong label itself, so ranks start at 1


def rank_sum_p_value(ranks: np.ndarray, classes: int) -> tuple[float, str]:
    """``P[S <= sum(ranks)]`` for S a sum of n independent uniform ranks on 1..K-1: exact (a
    convolution) up to K-1 = 256, else Hoeffding's bound ``exp(-2 n d^2 / (K-2)^2)`` with d
    the mean rank's distance below K/2. Returns (p-value, "exact" or "Hoeffding bound")."""
    ranks = np.asarray(ranks, dtype=np.int64)
    n, m = len(ranks), classes - 1
    total = int(ranks.sum())
    if m <= 256:
        pmf = np.ones(1)
        uniform = np.full(m, 1.0 / m)
        for _ in range(n):
            pmf = np.convolve(pmf, uniform)
        return float(min(1.0, pmf[: total - n + 1].sum())), "exact"
    gap = (m + 1) / 2.0 - total / n
    if gap <= 0:
        return 1.0, "Hoeffding bound"
    return float(np.exp(-2.0 * n * gap ** 2 / (m - 1) ** 2)), "Hoeffding bound"


def _predict_classes(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                     who: str) -> np.ndarray:
    probs = np.asarray(predict(images))
    if probs.ndim != 2 or len(probs) != len(images):
        raise invalid(who, f"answers of shape {probs.shape}",
                      f"class scores [N, K] for {len(images)} images")
    return probs


def verify_watermarks(suspect: Callable[[np.ndarray], np.ndarray],
                      records: Sequence[WatermarkRecord], *, classes: int | None = None,
                      victim: Callable[[np.ndarray], np.ndarray] | None = None,
                      max_queries: int = 100, alpha: float = 0.01) -> VerifyResult:
    """Replay at most `max_queries` watermark queries against `suspect` and test them.

    `suspect`, `victim`: callables uint8 images [N, H, W, C] -> class scores [N, K]. `classes`:
    the victim's K (default: the victim's answer width, else the suspect's). A suspect with
    another K is a `UsageError` (it cannot be a copy of this victim's task).
    """
    from scipy.stats import binomtest

    if not records:
        raise invalid("watermarks", "0 records", "at least one watermark query to replay")
    if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
        raise invalid("max_queries", max_queries, "a positive integer")
    if not 0.0 < alpha < 1.0:
        raise invalid("alpha", alpha, "a significance level in (0, 1)")
    chosen = sorted(records, key=lambda r: (r.time, r.digest))[:max_queries]
    images = np.stack([r.image for r in chosen]).astype(np.uint8)
    victim_probs = _predict_classes(victim, images, "victim") if victim is not None else None
    if classes is None:
        classes = victim_probs.shape[1] if victim_probs is not None else None
    suspect_probs = _predict_classes(suspect, images, "suspect")
    if classes is None:
        classes = suspect_probs.shape[1]
    if suspect_probs.shape[1] != classes:
        raise invalid("suspect", f"a model with {suspect_probs.shape[1]} classes",
                      f"a model of the victim's task ({classes} classes)")
    if classes < 3:
        raise invalid("classes", classes, "at least 3 classes (with 2 the wrong label is "
                      "determined by the true one, so agreement proves nothing)")
    top = max(max(r.label, r.true_label) for r in chosen)
    if top >= classes:
        raise invalid("watermarks", f"labels up to {top}", f"labels of a {classes}-class task")
    predicted = suspect_probs.argmax(axis=1)
    k, n = agreement(chosen, predicted)
    chance = 1.0 / (classes - 1)
    top1_p = float(binomtest(k, n, chance, alternative="greater").pvalue)
    ranks = watermark_ranks(suspect_probs, np.array([r.label for r in chosen]),
                            np.array([r.true_label for r in chosen]))
    p_value, _ = rank_sum_p_value(ranks, classes)
    victim_k = top1 = None
    if victim_probs is not None:
        victim_k, _ = agreement(chosen, victim_probs.argmax(axis=1))
        top1 = float(np.mean(predicted == victim_probs.argmax(axis=1)))
    return VerifyResult(stolen=p_value < alpha, p_value=p_value, agreeing=k, compared=n,
                        chance=chance, alpha=float(alpha), classes=int(classes),
                        suspect_queries=n, victim_agreeing=victim_k,
                        suspect_top1_agreement=top1, mean_rank=float(ranks.mean()),
                        top1_p_value=top1_p)


# -- the command line --------------------------------------------------------------------------

METHODS = ("watermark", "fingerprint")


@dataclass(frozen=True)
class VerifyConfig:
    """Test a suspect model: replay a client's DAWN watermarks, or send conferrable
    fingerprints."""

    suspect: str = field(metadata={"help": "the suspect: HOST:PORT (served) or a SavedModel "
                                           "folder", "metavar": "HOST:PORT|PATH"})
    victim: str | None = field(default=None, metadata={
        "help": "our model: HOST:PORT (served) or a SavedModel folder (required with "
                "--method watermark; with fingerprint it is only a check)",
        "metavar": "HOST:PORT|PATH"})
    method: str = field(default="watermark", metadata={
        "help": "watermark: DAWN, the gateway's watermark queries; fingerprint: conferrable "
                "adversarial examples from detector.fingerprint (no gateway needed)",
        "choices": METHODS})
    watermarks: str | None = field(default=None, metadata={
        "help": "watermarks: an .npz from detector.watermark, or the gateway state "
                "(sqlite:PATH or redis://HOST:PORT/DB, with --client)", "metavar": "SOURCE"})
    fingerprints: str | None = field(default=None, metadata={
        "help": "the fingerprint .npz (detector.fingerprint) for --method fingerprint",
        "metavar": "FILE"})
    client: str | None = field(default=None, metadata={
        "help": "the client whose watermarks to replay (required with a gateway state)"})
    suspect_model: str | None = field(default=None, metadata={
        "help": "model name of a served suspect"})
    victim_model: str | None = field(default=None, metadata={
        "help": "model name of a served victim"})
    api_key: str | None = field(default=None, metadata={
        "help": "API key for a served suspect behind a gateway"})
    max_queries: int = field(default=100, metadata={
        "help": "at most this many queries are sent to the suspect"})
    alpha: float = field(default=0.01, metadata={
        "help": "significance level: stolen when the p-value is below it"})
    timeout: float = field(default=10.0, metadata={"help": "seconds per request to a server"})
    json_out: str | None = field(default=None, metadata={
        "help": "also write the result as JSON here", "metavar": "FILE"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise invalid("method", self.method, " or ".join(METHODS))
        if self.method == "watermark" and not self.victim:
            raise invalid("victim", self.victim, "our model, HOST:PORT or a SavedModel folder "
                          "(required with --method watermark)")
        for name in ("suspect", "victim"):
            value = getattr(self, name)
            if name == "victim" and value is None:
                continue
            if not isinstance(value, str) or not value:
                raise invalid(name, value, "HOST:PORT or a SavedModel folder")
            if not is_target(value) and not Path(value).is_dir():
                raise invalid(name, value, "HOST:PORT (port 1..65535) or an existing "
                              "SavedModel folder")
            model = getattr(self, f"{name}_model")
            if is_target(value) and not model:
                raise invalid(f"{name}_model", model, f"the model name of the served {name}")
        if isinstance(self.max_queries, bool) or not isinstance(self.max_queries, int) \
                or self.max_queries < 1:
            raise invalid("max_queries", self.max_queries, "a positive integer")
        if not isinstance(self.alpha, (int, float)) or not 0.0 < self.alpha < 1.0:
            raise invalid("alpha", self.alpha, "a number in (0, 1)")
        if not isinstance(self.timeout, (int, float)) or self.timeout <= 0:
            raise invalid("timeout", self.timeout, "a positive number of seconds")
        if self.method == "fingerprint":
            if not self.fingerprints or not Path(self.fingerprints).is_file():
                raise invalid("fingerprints", self.fingerprints, "an existing fingerprint .npz "
                              "(with --method fingerprint)")
            if self.watermarks:
                raise invalid("watermarks", self.watermarks, "no watermarks with --method "
                              "fingerprint")
            return
        if self.fingerprints:
            raise invalid("fingerprints", self.fingerprints, "no fingerprints with --method "
                          "watermark (add --method fingerprint)")
        source = self.watermarks
        if not source:
            raise invalid("watermarks", source, "an .npz, sqlite:PATH or redis://... "
                          "(required with --method watermark)")
        if source.startswith(("sqlite:", "redis://", "rediss://", "unix://")):
            if not self.client:
                raise invalid("client", self.client,
                              "the client name whose watermarks to replay (with a gateway state)")
            if source.startswith("sqlite:") and not Path(source[len("sqlite:"):]).is_file():
                raise invalid("watermarks", source, "sqlite:PATH of an existing gateway state")
        elif not Path(source).is_file():
            raise invalid("watermarks", source, "an existing .npz, sqlite:PATH or redis://...")


def _load_records(config: VerifyConfig) -> list[WatermarkRecord]:
    source = config.watermarks
    if source.startswith(("sqlite:", "redis://", "rediss://", "unix://")):
        from serving.gateway.store import open_store

        store = open_store(source)
        try:
            records = store.watermarks(config.client)
        finally:
            store.close()
    else:
        records = load_watermarks(source)
        if config.client:
            records = [r for r in records if r.client == config.client]
    if not records:
        raise invalid("client" if config.client else "watermarks",
                      config.client or source, "a client with stored watermark queries "
                      f"in {source}")
    return records


def _open(config: VerifyConfig, who: str):
    return open_model(getattr(config, who), getattr(config, f"{who}_model"), who,
                      timeout=config.timeout,
                      api_key=config.api_key if who == "suspect" else None)


def run_verify(config: VerifyConfig) -> VerifyResult | FingerprintResult:
    """Load the watermarks or fingerprints, open the models, query the suspect and test (see
    the module docstring)."""
    if config.method == "fingerprint":
        evidence: Any = load_fingerprints(config.fingerprints)
    else:
        evidence = _load_records(config)
    suspect = _open(config, "suspect")
    victim = None
    try:
        if config.victim:
            victim = _open(config, "victim")
        if config.method == "fingerprint":
            result = verify_fingerprints(suspect, evidence, victim=victim,
                                         max_queries=config.max_queries, alpha=config.alpha)
        else:
            result = verify_watermarks(suspect, evidence, victim=victim,
                                       max_queries=config.max_queries, alpha=config.alpha)
    finally:
        for model in (suspect, victim):
            if model is not None and hasattr(model, "close"):
                model.close()
    if config.json_out:
        from common.fileio import write_json_atomic

        write_json_atomic(config.json_out, {**asdict(result), "method": config.method,
                                            "suspect": config.suspect,
                                            "victim": config.victim,
                                            "watermarks": config.watermarks,
                                            "fingerprints": config.fingerprints,
                                            "client": config.client})
    return result


def _main(argv: Sequence[str] | None) -> int:
    from common.cli import configure_logging, parse_config

    config = parse_config(VerifyConfig, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    configure_logging()
    result = run_verify(config)
    print(result.line())
    print(json.dumps({k: v for k, v in asdict(result).items()}, default=float))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    from common.cli import run_cli

    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
