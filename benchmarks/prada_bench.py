"""PRADA in the gateway: how soon it flags a JBDA stream, and whether it flags natural images.

Juuti et al. ("PRADA: Protecting against DNN Model Stealing Attacks", EuroS&P 2019) detect
attacks that query synthetic images, such as Papernot et al.'s Jacobian-based dataset
augmentation (JBDA), by testing whether a client's minimum query-to-query distances are normally
distributed (Shapiro-Wilk W against `delta`). Atli et al. (2020) note that PRADA does not flag
Knockoff Nets, whose queries are natural images. This command measures both through the real
gRPC path:

    python -m benchmarks.prada_bench --victims victims --model cifar10_cnn \\
        --data-dir ../shared/data --out runs/prada_cifar10

It serves `victims/<model>` with the embedded model server and puts the gateway in front of it
(`serving.gateway`, SQLite state and audit log in OUT/gateway.db, started afresh each run) with
PRADA only (`detectors.prada`: --delta, --min-samples, --max-set; no OOD detector), `on_flag:
refuse`, no budget or rate limit. Each stream is its own client (its own API key) and sends
batches of --batch images over gRPC with `serving.client`, until its first PERMISSION_DENIED
(flagged) or --max-queries:

* **jbda**: Papernot et al.'s augmentation, generated the way the attack does it: --jbda-seeds
  images of the victim's training split (balanced over its classes) are the seeds; each round a
  small CNN surrogate is fit (from scratch, --jbda-epochs) on every answered query with the
  victim's top-1 labels, and every image so far gets the neighbour x + lambda_r * sign(dF/dx)
  of `attack.jbda.jacobian_augment` (lambda 0.1 on the 0..1 scale, sent as a 26-level pixel
  step; its sign flips every --jbda-tau rounds), so the set doubles (a reservoir sample when
  --max-queries cuts the last round). The gradients are the surrogate's, never the victim's;
* **knockoff**: Tiny-ImageNet training images (for CIFAR-10 without the classes that overlap
  it), balanced over the classes and shuffled, sent at 64 px and resized by the client;
* **benign_N**: --benign-clients clients, each sending its own disjoint shuffled slice of the
  victim's test split (natural images of the victim's own distribution).

Per stream: the queries answered, whether and at which query PRADA flagged it (its exact query
count, with the resolution of the batches), the final and the lowest W the gateway computed
(its PRADA state and the audit log's per-request verdicts), how many distances the test saw,
and the wall time. Output: a table on stdout, OUT/results.{json,md}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attack.jbda import jacobian_augment, reservoir_sample, step_sign
from attack.pipeline import as_seen_by_victim
from benchmarks.harness.defended import (
    Served,
    VictimData,
    benchmark_main,
    client_key,
    write_results,
)
from common.data import load_dataset
from common.errors import invalid
from detector.prada import Prada, PradaConfig
from serving.gateway.config import policy_from_dict

__all__ = ["PradaBenchConfig", "StreamSender", "jbda_stream", "main", "prada_summary",
           "run_prada_bench"]

log = logging.getLogger(__name__)

# The JBDA surrogate: a small VGG-style CNN, cheap to fit every round on 2 CPU cores.
SURROGATE_ARCH = {"filters": (16, 32), "block_dropout": (0.1, 0.2), "dense_units": 64}


@dataclass(frozen=True)
class PradaBenchConfig(VictimData, PradaConfig):
    """PRADA against a JBDA stream, a Knockoff natural-image stream and benign clients.

    PRADA's own fields (`detector.prada.PradaConfig`: delta, min_samples, max_set, ...) go into
    the gateway policy's ``detectors.prada`` section as they are.
    """

    out: str = field(default="runs/prada", metadata={
        "help": "output folder (its gateway.db is started afresh)", "metavar": "DIR",
        "rule": "nonempty"})
    batch: int = field(default=10, metadata={"help": "images per Predict request", "min": 1})
    max_queries: int = field(default=2000, metadata={
        "help": "queries per stream at most (the JBDA stream's last round is cut to fit)",
        "min": 1})
    jbda_seeds: int = field(default=50, metadata={
        "help": "JBDA seed images (round 0)", "min": 1})
    jbda_rounds: int = field(default=5, metadata={
        "help": "JBDA augmentation rounds after the seeds (each doubles the set)", "min": 0})
    jbda_lambda: float = field(default=0.1, metadata={
        "metavar": "LAMBDA", "help": "JBDA step lambda on the 0..1 pixel scale (Papernot et "
                                     "al.: 0.1), sent as the pixel step round(255 * lambda)"})
    jbda_tau: int = field(default=3, metadata={
        "help": "the JBDA step's sign flips every tau rounds", "min": 1})
    jbda_epochs: int = field(default=5, metadata={
        "help": "epochs of the JBDA surrogate's fit each round", "min": 1})
    benign_clients: int = field(default=2, metadata={
        "help": "benign clients, each with its own slice of the victim's test split", "min": 1})
    seed_split: str = field(default="train", metadata={"help": "split of the JBDA seeds"})
    seed: int = field(default=0, metadata={"help": "random seed", "min": 0})

    def __post_init__(self) -> None:
        PradaConfig.__post_init__(self)  # the field rules of all parts, PRADA's own checks
        if self.max_queries < self.jbda_seeds:
            raise invalid("max_queries", self.max_queries,
                          f"at least --jbda-seeds ({self.jbda_seeds}): the seeds are sent first")
        if isinstance(self.jbda_lambda, bool) or not isinstance(self.jbda_lambda, (int, float)) \
                or not 1 / 255 <= self.jbda_lambda <= 1:
            raise invalid("jbda_lambda", self.jbda_lambda,
                          "lambda in [1/255, 1] (at least one pixel level on the wire)")
        self.check_victim_data()

    def policy_dict(self) -> dict:
        """The gateway policy: PRADA only, refuse flagged clients, no budget or rate limit."""
        prada = {f.name: getattr(self, f.name) for f in dataclasses.fields(PradaConfig)}
        return {"limits": {"budget": None, "rate_per_second": 1e9, "burst": 1e9},
                "detectors": {"prada": prada}, "on_flag": {"action": "refuse"}}


# -- one client's stream through the gateway -------------------------------------------------------
class StreamSender:
    """One client sending batches through the gateway, in order, until it is refused."""

    def __init__(self, target: str, model: str, api_key: str, batch: int) -> None:
        from serving.client import ServingClient

        self.client = ServingClient(target, model, api_key=api_key, batch_size=batch,
                                    max_in_flight=1)
        self.batch = batch
        self.answered = 0
        self.refused = False

    def __enter__(self) -> StreamSender:
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()

    def send(self, images: np.ndarray) -> np.ndarray:
        """The answers [n, K] to the first n images, n < len(images) once refused."""
        import grpc

        from serving.client import ServingError

        answers = []
        for start in range(0, len(images), self.batch):
            if self.refused:
                break
            part = images[start:start + self.batch]
            try:
                answers.append(np.asarray(self.client.predict(part), np.float32))
            except ServingError as err:
                if err.code != grpc.StatusCode.PERMISSION_DENIED:
                    raise
                self.refused = True
                break
            self.answered += len(part)
        return np.concatenate(answers) if answers else np.zeros((0, 0), np.float32)


def jbda_stream(sender: StreamSender, seeds: np.ndarray, num_classes: int,
                config: PradaBenchConfig) -> dict:
    """Send Papernot et al.'s JBDA stream (seeds, then doubling rounds) until refused or
    --max-queries; the surrogate is refit every round on what the victim answered."""
    from attack.surrogate import SurrogateTrainer

    queries = seeds
    answers = sender.send(seeds)
    labels = answers.argmax(axis=1) if len(answers) else np.zeros(0, np.int64)
    pixel_step = int(round(255 * config.jbda_lambda))
    trainer = None
    rounds, fit_seconds = 0, 0.0
    while not sender.refused and rounds < config.jbda_rounds \
            and len(queries) < config.max_queries:
        rounds += 1
        if trainer is None:
            trainer = SurrogateTrainer("cnn", "none", int(seeds.shape[1]), num_classes,
                                       epochs=config.jbda_epochs, batch_size=32,
                                       seed=config.seed, augment="none",
                                       arch_kwargs=SURROGATE_ARCH)
        started = time.perf_counter()
        trainer.fit(queries, np.eye(num_classes, dtype=np.float32)[labels])
        fit_seconds += time.perf_counter() - started
        k = min(config.max_queries - len(queries), len(queries))
        chosen = reservoir_sample(len(queries), k, np.random.default_rng([config.seed, rounds]))
        step = step_sign(rounds - 1, config.jbda_tau) * pixel_step
        new = jacobian_augment(trainer.model, queries[chosen], labels[chosen], step)
        log.info("jbda round %d: %d new queries (step %+d pixels) after %d", rounds, len(new),
                 step, len(queries))
        answers = sender.send(new)
        queries = np.concatenate([queries, new[:len(answers)]])
        labels = np.concatenate([labels, answers.argmax(axis=1) if len(answers) else
                                 np.zeros(0, np.int64)])
    return {"rounds": rounds, "surrogate_seconds": round(fit_seconds, 1),
            "pixel_step": pixel_step}


# -- what the gateway recorded --------------------------------------------------------------------
def prada_summary(records: Sequence[Any], state: Any, client: str) -> dict:
    """PRADA's view of `client`: from its stored state (`DetectorState`, whose `prada` bytes are
    a `detector.prada` state) and the audit log's Predict records (`AuditRecord`s)."""
    stats = [r.verdicts.get("prada_statistic") for r in records
             if r.client == client and r.method == "Predict" and r.verdicts]
    stats = [float(s) for s in stats if s is not None]
    out = {"flagged": bool(state.flagged) if state is not None else False,
           "flagged_by": state.flagged_by if state is not None else "",
           "flagged_at": None, "statistic": None, "min_statistic": min(stats) if stats else None,
           "distances": 0, "prada_queries": 0,
           "refused_requests": sum(1 for r in records if r.client == client
                                   and r.method == "Predict" and r.code == "PERMISSION_DENIED")}
    if state is not None and state.prada:
        prada = Prada.loads(state.prada)
        out["prada_queries"] = int(prada["queries"])
        out["distances"] = int(len(prada["distances"]))
        if int(prada["flagged_at"]) >= 0:
            out["flagged_at"] = int(prada["flagged_at"])
        w = float(prada["statistic"])
        out["statistic"] = None if math.isnan(w) else w
    return out


# -- the benchmark --------------------------------------------------------------------------------
_COLUMNS = (
    ("stream", "stream"), ("source", "queries from"), ("answered", "queries answered"),
    ("until_flagged", "flagged at query"), ("statistic", "final W"),
    ("min_statistic", "lowest W"), ("distances", "distances tested"), ("seconds", "wall s"),
)


def _natural(dataset, n: int, seed: int, salt: int) -> np.ndarray:
    order = np.random.default_rng([seed, salt]).permutation(len(dataset))
    return dataset.images[order[:n]]


def run_prada_bench(config: PradaBenchConfig) -> dict:
    """Send every stream through a fresh PRADA gateway; write OUT/results.{json,md}."""
    from serving.client import ServingClient  # TensorFlow's protos: after the flags

    policy = policy_from_dict(config.policy_dict())
    seeds_set = load_dataset(config.benign_spec, config.seed_split, limit=config.jbda_seeds,
                             seed=config.seed)
    if len(seeds_set) < config.jbda_seeds:
        raise invalid("jbda_seeds", config.jbda_seeds,
                      f"at most {len(seeds_set)} (images in {seeds_set.source})")
    benign = load_dataset(config.benign_spec, config.benign_split)
    per_client = min(config.max_queries, len(benign) // config.benign_clients)
    if per_client < 1:
        raise invalid("benign_clients", config.benign_clients,
                      f"at most {len(benign)} (images in {benign.source})")
    transfer = load_dataset(config.transfer_spec, config.transfer_split,
                            exclude_classes=config.exclude_spec, limit=config.max_queries,
                            seed=config.seed)
    order = np.random.default_rng([config.seed, 1]).permutation(len(benign))
    streams: list[tuple[str, str, Any]] = [
        ("jbda", f"{len(seeds_set)} seeds of {Path(config.benign_spec).name}:"
                 f"{config.seed_split} + up to {config.jbda_rounds} JBDA rounds", None),
        ("knockoff", f"{Path(config.transfer_spec).name}:{config.transfer_split}"
                     + (f" minus {Path(config.exclude_spec).name}" if config.exclude_spec
                        else ""), _natural(transfer, config.max_queries, config.seed, 2))]
    for i in range(config.benign_clients):
        streams.append((f"benign_{i + 1}", f"{Path(config.benign_spec).name}:"
                        f"{config.benign_split}, slice {i + 1} of {config.benign_clients}",
                        benign.images[order[i * per_client:(i + 1) * per_client]]))
    del benign

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "gateway.db"
    for stale in (db, db.with_name("gateway.db-wal"), db.with_name("gateway.db-shm")):
        stale.unlink(missing_ok=True)
    (out / "policy.json").write_text(json.dumps(config.policy_dict(), indent=1) + "\n")
    rows = []
    with Served(config.victims, config.model) as served:
        with ServingClient(served.upstream, config.model) as direct:
            info = direct.metadata()
        if not info.num_classes:
            raise invalid("model", config.model, "a classifier with a fixed number of classes")
        num_classes = int(info.num_classes)
        gw, store = served.gateway(policy, db)
        try:
            target = f"127.0.0.1:{gw.port}"
            for name, source, images in streams:
                started = time.perf_counter()
                extra: dict[str, Any] = {}
                with StreamSender(target, config.model, client_key(store, name),
                                  config.batch) as sender:
                    if images is None:
                        seeds = as_seen_by_victim(seeds_set.images, info)
                        extra = jbda_stream(sender, seeds, num_classes, config)
                    else:
                        sender.send(images)
                seconds = time.perf_counter() - started
                summary = prada_summary(store.audit_records(), store.load_detectors(name), name)
                flagged_at = summary["flagged_at"]
                rows.append({
                    "stream": name, "source": source, "answered": sender.answered,
                    "until_flagged": flagged_at if summary["flagged"] and flagged_at
                    else f"never (within {sender.answered})",
                    **summary, **extra, "seconds": round(seconds, 1)})
                log.info("%s: %d answered, flagged at %s, W %s", name, sender.answered,
                         flagged_at, summary["statistic"])
        finally:
            gw.stop()
            store.close()
    meta = {**{k: getattr(config, k) for k in config.__dataclass_fields__},
            "benign_spec": config.benign_spec, "transfer_spec": config.transfer_spec,
            "exclude_spec": config.exclude_spec, "policy": config.policy_dict()}
    notes = [
        f"Gateway: PRADA only (delta {config.delta}, min_samples {config.min_samples}, max_set "
        f"{config.max_set}), on flag: refuse; {config.batch} images per request, at most "
        f"{config.max_queries} queries per stream, each stream its own client.",
        "flagged at query: PRADA's query count when W first fell below delta (the request that "
        "crossed it is refused, so answered = flagged at query minus that request).",
        "final W: the Shapiro-Wilk statistic of the client's last PRADA test; lowest W: the "
        "lowest any answered or refused request got (audit log).",
        f"jbda: seeds then rounds of x + lambda*sign(grad) (lambda {config.jbda_lambda}, sign "
        f"flipping every {config.jbda_tau} rounds), gradients of a small CNN surrogate refit "
        f"each round ({config.jbda_epochs} epochs) on the victim's top-1 answers.",
        "Juuti et al. (2019) detect JBDA-style attacks; Atli et al. (2020) note that PRADA does "
        "not flag Knockoff's natural-image queries.",
    ]
    return write_results(out, f"PRADA through the gateway: {config.model}", rows, _COLUMNS,
                         meta, notes, meta_key="config",
                         table_rows=[{**r, "seconds": f"{r['seconds']:.1f}"} for r in rows])


PROG = "python -m benchmarks.prada_bench"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    return benchmark_main(PradaBenchConfig, run_prada_bench, argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
