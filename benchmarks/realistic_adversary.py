"""Atli et al.'s realistic adversary against the OOD detector in the gateway: naive vs realistic.

Atli et al. ("Extraction of Complex DNN Models: Real Threat or Boogeyman?", 2020) show that the
OOD query classifier catches Knockoff Nets (Orekondy et al. 2019) when the attacker queries with
natural images from *outside* the victim's task, and argue that a realistic adversary who owns
natural images of the victim's own domain is not caught. This command measures both against the
same victim, through the same defended deployment:

    python -m benchmarks.realistic_adversary --victims victims --model cifar10_cnn \\
        --detector detectors/cifar10_ood/1 --data-dir ../shared/data --budget 3000 \\
        --out runs/realistic_cifar10

It serves `victims/<model>` with the embedded model server and puts the gateway in front of it
(`serving.gateway`, SQLite state and audit log in OUT/gateway.db, the OOD detector in process
with the gateway's default window/level/min_queries, `on_flag: degrade -> label_only`, no budget
or rate limit, one API key per attacker created with the gateway's Python key API), then runs
two Knockoff attacks (`attack.knockoff`, random strategy, same budget, surrogate and seed):

* **naive**: Tiny-ImageNet images (for CIFAR-10 without the 24 classes that overlap it);
* **realistic**: natural in-distribution images the victim never trained on. There is no spare
  CIFAR-10 or GTSRB data, so the victim's *test* split is cut in two halves with a seeded
  permutation: the attacker owns one half (`--pool-fraction`), and *both* attacks are evaluated
  on the other half only, which neither attacker ever queried. This is the most defensible
  choice here: the pool has exactly the victim's distribution and capture pipeline (for
  CIFAR-10 the same JPEG q75 copy, so the detector cannot separate it by codec), whereas
  Tiny-ImageNet's 24 CIFAR-like classes come from another source (64 px ImageNet crops) and
  would measure how the detector treats another photo source rather than the victim's domain.
  Caveat for GTSRB: its test set holds tracks of ~30 frames of one physical sign, so the two
  halves share signs (the evaluation half is easier than fresh signs would be).

The victim's answers used for evaluation (the held-out test half and uniform noise) are asked
directly from the model server and pre-seeded into each run's `eval/` cache, so (a) accuracy and
fidelity are measured against the undefended victim, and (b) the gateway's audit log holds only
the attack's own queries. For each attacker the command reports whether and at which query the
client was flagged (the detector's exact query index kept in the OOD window state, and the first
degraded answer from the audit log), the detector's per-query flag rate over all its queries
(from the audit log), what it received (label-only answers counted in its own journal), and the
surrogate's accuracy, accuracy ratio and fidelity. Output: a table on stdout,
OUT/results.{json,md}. Re-running the command resumes: a finished attack (report.json) is not
run again, an interrupted one continues with `--resume` semantics (the gateway state is kept;
the attacker's key is rotated, its usage and flag kept).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import invalid
from serving import testing

__all__ = [
    "BenchConfig",
    "RealisticConfig",
    "TASKS",
    "Task",
    "Served",
    "answer_summary",
    "audit_summary",
    "check_run_dir",
    "knockoff_config",
    "main",
    "markdown_table",
    "run_knockoff_through",
    "run_realistic",
    "split_pool",
]

log = logging.getLogger(__name__)

TRANSFER = "tinyimagenet200_val10k_train50pc.zip"
WEIGHTS = "mobilenet_2_5_224_tf_no_top.h5"


@dataclass(frozen=True)
class Task:
    """A victim's task: its labelled data (file in --data-dir) and the naive pool's exclusions."""

    benign: str
    exclude: str | None


# An explicit registry: which data belongs to which exported victim.
TASKS = {
    "cifar10_cnn": Task("cifar10_jpeg_q75.zip", "tinyimagenet_cifar10_overlap_wnids.txt"),
    "gtsrb_resnet34": Task("gtsrb32_uint8_npy.tar.xz", None),
}


def _positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(name, value, "a positive integer")


@dataclass(frozen=True)
class BenchConfig:
    """What both policy benchmarks share: the victim, the data, the Knockoff surrogate."""

    victims: str = field(default="victims", metadata={
        "help": "folder of exported victims (<victims>/<model>/<version>/saved_model.pb)"})
    model: str = field(default="cifar10_cnn", metadata={"help": "the victim's model name"})
    data_dir: str = field(default="../shared/data", metadata={
        "help": "folder with the datasets and MobileNet weights (see DATA.md)"})
    budget: int = field(default=3000, metadata={"help": "queries per Knockoff attack"})
    out: str = field(default="runs/bench", metadata={
        "help": "output folder (resumable: a finished sub-run is reused)", "metavar": "DIR"})
    benign_set: str | None = field(default=None, metadata={
        "help": "the victim's labelled data (default: the registry's file in --data-dir)",
        "metavar": "SPEC"})
    benign_split: str = field(default="test", metadata={"help": "split of the benign set"})
    transfer_set: str | None = field(default=None, metadata={
        "help": f"the naive attacker's natural images (default: --data-dir/{TRANSFER})",
        "metavar": "SPEC"})
    transfer_split: str = field(default="train", metadata={"help": "split of the transfer set"})
    exclude_classes: str | None = field(default=None, metadata={
        "help": "classes dropped from the transfer set (default with the default transfer "
                "set: the registry's overlap list)", "metavar": "FILE"})
    backbone: str = field(default="mobilenet", metadata={"help": "surrogate backbone"})
    weights: str = field(default="default", metadata={
        "help": f"surrogate initial weights: default (--data-dir/{WEIGHTS}), imagenet, none "
                "or a file", "metavar": "default|imagenet|none|PATH"})
    arch_args: tuple[str, ...] = field(default=("alpha=0.25",), metadata={
        "help": "backbone arguments KEY=VALUE", "metavar": "KEY=VALUE"})
    input_size: int | None = field(default=96, metadata={"help": "surrogate input side, px"})
    epochs: int = field(default=4, metadata={"help": "surrogate training epochs"})
    batch_size: int = field(default=64, metadata={"help": "surrogate training batch size"})
    learning_rate: float = field(default=1e-3, metadata={"help": "surrogate learning rate"})
    query_batch: int = field(default=64, metadata={"help": "images per Predict request"})
    noise: int = field(default=500, metadata={
        "help": "uniform-noise images for the fidelity on noise"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        _positive(self, "budget", "epochs", "batch_size", "query_batch")
        if isinstance(self.noise, bool) or not isinstance(self.noise, int) or self.noise < 0:
            raise invalid("noise", self.noise, "a non-negative integer")
        if not self.out:
            raise invalid("out", self.out, "an output folder")
        if not (Path(self.victims) / self.model).is_dir():
            raise invalid("model", self.model,
                          f"an exported victim folder under {self.victims!r} "
                          f"({Path(self.victims) / self.model} does not exist)")
        if self.benign_set is None and self.model not in TASKS:
            raise invalid("model", self.model,
                          f"one of {sorted(TASKS)} (or pass --benign-set for another victim)")
        needs_data = (self.benign_set is None or self.transfer_set is None
                      or self.weights == "default")
        if needs_data and not Path(self.data_dir).is_dir():
            raise invalid("data_dir", self.data_dir, "an existing folder (see DATA.md)")
        for given, path in ((self.benign_set, self.benign_spec),
                            (self.transfer_set, self.transfer_spec)):
            if given is None and not Path(path).exists():
                raise invalid("data_dir", self.data_dir, f"a folder holding {Path(path).name}")
        exclude = self.exclude_spec
        if exclude is not None and not Path(exclude).is_file():
            raise invalid("exclude_classes", exclude, "an existing file of class names")
        weights = self.weights_spec
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise invalid("weights", weights, "imagenet, none, or an existing weights file")

    # The resolved data and weights (the registry's defaults unless given).
    @property
    def benign_spec(self) -> str:
        if self.benign_set is not None:
            return self.benign_set
        return str(Path(self.data_dir) / TASKS[self.model].benign)

    @property
    def transfer_spec(self) -> str:
        return self.transfer_set or str(Path(self.data_dir) / TRANSFER)

    @property
    def exclude_spec(self) -> str | None:
        if self.exclude_classes is not None or self.transfer_set is not None:
            return self.exclude_classes
        task = TASKS.get(self.model)
        return str(Path(self.data_dir) / task.exclude) if task and task.exclude else None

    @property
    def weights_spec(self) -> str:
        if self.weights == "default":
            return str(Path(self.data_dir) / WEIGHTS)
        return self.weights


def _ood_default(name: str) -> Any:
    from serving.gateway.config import OODConfig

    return OODConfig.__dataclass_fields__[name].default


@dataclass(frozen=True)
class RealisticConfig(BenchConfig):
    """Naive (Tiny-ImageNet) against realistic (held-out victim-domain) Knockoff attackers."""

    detector: str | None = field(default=None, metadata={
        "help": "the exported OOD detector (detectors/<name>/<version>)", "metavar": "DIR"})
    pool_fraction: float = field(default=0.5, metadata={
        "help": "share of the benign split the realistic attacker owns; the rest is the "
                "evaluation set of both attacks"})
    window: int = field(default_factory=lambda: _ood_default("window"), metadata={
        "help": "OOD sliding window (queries; the gateway's default)"})
    level: float = field(default_factory=lambda: _ood_default("level"), metadata={
        "help": "share of flagged queries in the window that flags the client"})
    min_queries: int = field(default_factory=lambda: _ood_default("min_queries"), metadata={
        "help": "queries before a client can be flagged"})
    out: str = field(default="runs/realistic_adversary", metadata={
        "help": "output folder (resumable: a finished attack is reused)", "metavar": "DIR"})

    def __post_init__(self) -> None:
        if not self.detector or not Path(self.detector).is_dir():
            raise invalid("detector", self.detector, "an exported OOD detector folder")
        if not isinstance(self.pool_fraction, (int, float)) or not 0 < self.pool_fraction < 1:
            raise invalid("pool_fraction", self.pool_fraction, "a number in (0, 1)")
        super().__post_init__()
        self.policy()  # the gateway's own validation of window/level/min_queries

    def policy(self):
        """The gateway policy of this benchmark (a `GatewayPolicy`)."""
        from serving.gateway.config import policy_from_dict

        return policy_from_dict(self.policy_dict())

    def policy_dict(self) -> dict:
        return {
            "limits": {"budget": None, "rate_per_second": 1e9, "burst": 1e9},
            "detectors": {"ood": {"path": str(self.detector), "window": self.window,
                                  "level": self.level, "min_queries": self.min_queries}},
            "on_flag": {"action": "degrade", "policy": "label_only"},
            "always": "identity",
        }


# -- run folder ------------------------------------------------------------------------------------
def check_run_dir(config: Any) -> Path:
    """Create OUT with config.json, or check that an existing one ran with the same settings."""
    from common.cli import config_to_dict, save_config

    out = Path(config.out)
    saved = out / "config.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        now = json.loads(json.dumps(config_to_dict(config)))
        # a field the saved config lacks (added later) counts as its default
        defaults = {}
        for f in dataclasses.fields(config):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
        defaults = json.loads(json.dumps(defaults))
        differing = sorted(k for k in now if before.get(k, defaults.get(k)) != now[k])
        if differing:
            raise invalid("out", str(out),
                          "a new folder, or the settings it was started with (differs in "
                          + ", ".join(differing) + ")")
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, saved)
    return out


def split_pool(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (attacker, evaluation) index sets covering range(n), both sorted."""
    order = np.random.default_rng([seed, 4]).permutation(n)
    cut = int(round(n * fraction))
    if not 0 < cut < n:
        raise invalid("pool_fraction", fraction, f"a share leaving both halves of {n} non-empty")
    return np.sort(order[:cut]), np.sort(order[cut:])


# -- the served victim and the gateway ------------------------------------------------------------
class Served:
    """The embedded model server over one victim, and gateways in front of it (context manager)."""

    def __init__(self, victims: str, model: str) -> None:
        self.victims = Path(victims)
        self.model = model
        self._server = None

    def __enter__(self) -> Served:
        self._server = testing.model_server(base_path=self.victims / self.model, name=self.model)
        self.upstream = self._server.target
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    def direct(self, images: np.ndarray) -> np.ndarray:
        """The undefended victim's probabilities (straight from the model server)."""
        from serving.client import ServingClient

        with ServingClient(self.upstream, self.model, batch_size=256) as client:
            return np.asarray(client.predict(images), dtype=np.float32)

    def gateway(self, policy, db: Path):
        """A started in-process `Gateway` in front of the server, state in `db` (SQLite)."""
        from serving.gateway.store import SQLiteStore

        store = SQLiteStore(db)
        gw = testing.gateway(self.upstream, policy=policy, state=db, store=store).obj
        return gw, store


def client_key(store, name: str) -> str:
    """A fresh API key for client `name`: added, or rotated (usage and flag kept) if known."""
    from serving.gateway.auth import generate_key, hash_key
    from serving.gateway.store import new_record

    key = generate_key()
    if store.get_client(name) is None:
        store.add_client(new_record(name, hash_key(key)))
    else:
        store.rotate(name, hash_key(key))
    return key


# -- one Knockoff attack through a gateway --------------------------------------------------------
def knockoff_config(config: BenchConfig, *, out: Path, grpc: str, api_key: str,
                    transfer_set: str, transfer_split: str, exclude_classes: str | None,
                    test_set: str, test_split: str, test_limit: int | None = None,
                    granularity: str = "probs"):
    """The `KnockoffConfig` of one sub-run: the benchmark's surrogate, budget and seed."""
    from attack.config import KnockoffConfig

    return KnockoffConfig(
        grpc=grpc, model=config.model, api_key=api_key, transfer_set=transfer_set,
        transfer_split=transfer_split, exclude_classes=exclude_classes, budget=config.budget,
        strategy="random", granularity=granularity, heldout=0, backbone=config.backbone,
        weights=config.weights_spec, arch_args=tuple(config.arch_args),
        input_size=config.input_size, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, query_batch=config.query_batch,
        test_set=test_set, test_split=test_split, test_limit=test_limit, noise=config.noise,
        curve_points=1, out=str(out), resume=(out / "config.json").is_file(), seed=config.seed)


def run_knockoff_through(served: Served, kconfig) -> dict:
    """Run (or resume, or reuse) one Knockoff sub-run; evaluation answers come from `served`.

    The test and noise answers of the evaluator's cache (RUN_DIR/eval/) are the undefended
    victim's, written before the attack starts, so the gateway sees only attack queries.
    """
    from attack.evaluate import uniform_noise_images
    from attack.knockoff import run_knockoff
    from attack.pipeline import load_test_set

    out = Path(kconfig.out)
    report = out / "report.json"
    if report.is_file():
        log.info("%s: finished earlier, report reused", out)
        return json.loads(report.read_text())
    test = load_test_set(kconfig)
    cache = out / "eval"
    cache.mkdir(parents=True, exist_ok=True)
    wanted = {"test": test.images}
    if kconfig.noise:
        wanted["noise"] = uniform_noise_images(kconfig.noise, test.images.shape[1:],
                                               seed=kconfig.seed)
    for name, images in wanted.items():
        path = cache / f"{name}.npy"
        if not (path.is_file() and len(np.load(path)) == len(images)):
            np.save(path, served.direct(images))
    run_knockoff(kconfig)
    return json.loads(report.read_text())


# -- summaries ------------------------------------------------------------------------------------
def audit_summary(records: Iterable[Any], client: str) -> dict:
    """What the audit log says about `client`'s answered Predict calls, in commit order.

    `records` are `serving.gateway.store.AuditRecord`s (or objects with the same fields).
    Returns queries answered, the OOD detector's per-query flag rate over all of them, the
    first query answered degraded (1-based; None if never), how many were degraded, the first
    request after which the client was flagged (as the query count at its end), the largest
    window share seen and how many requests were refused.
    """
    queries = attack = degraded = refused = 0
    first_degraded = flagged_after = None
    max_share = 0.0
    have_ood = False
    for r in records:
        if r.client != client or r.method != "Predict":
            continue
        if r.code != "OK":
            refused += 1
            continue
        verdicts = r.verdicts or {}
        if "ood_attack_queries" in verdicts:
            have_ood = True
            attack += int(verdicts["ood_attack_queries"])
            max_share = max(max_share, float(verdicts.get("ood_share") or 0.0))
        if str(r.action).startswith("degrade"):
            degraded += r.rows
            if first_degraded is None:
                first_degraded = queries + 1
        queries += r.rows
        if verdicts.get("flagged") and flagged_after is None:
            flagged_after = queries
    return {
        "queries": queries,
        "ood_flagged_queries": attack if have_ood else None,
        "ood_flag_rate": (attack / queries) if have_ood and queries else None,
        "ood_max_window_share": max_share if have_ood else None,
        "flagged_after_request_ending_at": flagged_after,
        "first_degraded_query": first_degraded,
        "degraded_queries": degraded,
        "refused_requests": refused,
    }


def answer_summary(responses: np.ndarray) -> dict:
    """What the attacker received: how many answers were one-hot (label only) vs full vectors.

    A label-only answer has exactly one non-zero entry, equal to 1; a softmax never does (its
    other entries are tiny but not zero), so the count is exact for this victim.
    """
    r = np.asarray(responses, dtype=np.float32)
    if r.ndim != 2 or not len(r):
        return {"answers": int(len(r)), "label_only_answers": 0, "label_only_share": None}
    one_hot = (np.count_nonzero(r, axis=1) == 1) & (r.max(axis=1) == 1.0)
    return {"answers": int(len(r)), "label_only_answers": int(one_hot.sum()),
            "label_only_share": float(one_hot.mean())}


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of `rows`; `columns` are (key, header); floats to 4 decimals."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


_COLUMNS = (
    ("attacker", "attacker"), ("pool", "query pool"), ("queries", "queries"),
    ("flagged", "flagged"), ("flagged_at", "flagged at query"),
    ("ood_flag_rate", "OOD per-query flag rate"), ("label_only_share", "label-only answers"),
    ("victim_acc", "victim acc (eval)"), ("surrogate_acc", "surrogate acc"),
    ("ratio", "accuracy ratio"), ("fidelity_test", "fidelity (eval)"),
    ("fidelity_noise", "fidelity (noise)"),
)


def _row(name: str, pool: str, audit: dict, answers: dict, flag_state, report: dict) -> dict:
    ev = report.get("evaluation") or {}
    ood = (flag_state.ood or {}) if flag_state is not None else {}
    flagged = bool(flag_state.flagged) if flag_state is not None else False
    return {
        "attacker": name, "pool": pool, "queries": audit["queries"], "flagged": flagged,
        "flagged_by": flag_state.flagged_by if flag_state is not None else "",
        "flagged_at": ood.get("flagged_at") if flagged else None,
        **{k: v for k, v in audit.items() if k != "queries"},
        **answers,
        "received_granularity": (report.get("extra") or {}).get("received_granularity"),
        **{k: ev.get(k) for k in ("victim_acc", "surrogate_acc", "ratio", "fidelity_test",
                                  "fidelity_noise", "n_test", "n_noise", "n_queries")},
    }


def write_results(out: Path, title: str, rows: list[dict], columns, meta: dict,
                  notes: Sequence[str] = (), *, meta_key: str | None = None,
                  table_rows: list[dict] | None = None) -> str:
    """OUT/results.json (`meta` beside the rows, or under `meta_key`) and OUT/results.md (the
    table of `table_rows`, default `rows`); returns the Markdown table."""
    from common.fileio import write_json_atomic

    table = markdown_table(rows if table_rows is None else table_rows, columns)
    write_json_atomic(out / "results.json",
                      {"rows": rows, meta_key: meta} if meta_key else {**meta, "rows": rows})
    md = [f"# {title}", "", table, ""]
    md += [f"- {line}" for line in notes]
    md += ["", "```json", json.dumps(meta, indent=1, default=str), "```", ""]
    (out / "results.md").write_text("\n".join(md))
    return table


# -- the benchmark --------------------------------------------------------------------------------
def run_realistic(config: RealisticConfig) -> dict:
    """Run both attackers (resuming what is done) and write OUT/results.{json,md}."""
    from attack.pipeline import journal_answers
    from common.data import load_dataset

    out = check_run_dir(config)
    benign = load_dataset(config.benign_spec, config.benign_split)
    split_file = out / "data" / "victim_domain_split.npz"
    if not split_file.is_file():
        pool_idx, eval_idx = split_pool(len(benign), config.pool_fraction, config.seed)
        split_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = split_file.with_name("tmp_split.npz")
        np.savez(tmp, x_train=benign.images[pool_idx], y_train=benign.labels[pool_idx],
                 x_test=benign.images[eval_idx], y_test=benign.labels[eval_idx],
                 class_names=np.asarray(benign.class_names))
        tmp.replace(split_file)
    n_pool = int(round(len(benign) * config.pool_fraction))
    del benign
    policy = config.policy()
    (out / "policy.json").write_text(json.dumps(config.policy_dict(), indent=1) + "\n")
    scenarios = [
        ("naive", config.transfer_spec, config.transfer_split, config.exclude_spec,
         f"{Path(config.transfer_spec).name}:{config.transfer_split}"
         + (f" minus {Path(config.exclude_spec).name}" if config.exclude_spec else "")),
        ("realistic", str(split_file), "train", None,
         f"{Path(config.benign_spec).name}:{config.benign_split}, attacker half "
         f"({n_pool} images)"),
    ]
    rows = []
    with Served(config.victims, config.model) as served:
        gw, store = served.gateway(policy, out / "gateway.db")
        try:
            target = f"127.0.0.1:{gw.port}"
            for name, spec, split, exclude, pool in scenarios:
                run_dir = out / name
                kconfig = knockoff_config(
                    config, out=run_dir, grpc=target,
                    api_key=client_key(store, name) if not (run_dir / "report.json").is_file()
                    else "unused", transfer_set=spec, transfer_split=split,
                    exclude_classes=exclude, test_set=str(split_file), test_split="test")
                log.info("%s attacker: %d queries from %s", name, config.budget, pool)
                report = run_knockoff_through(served, kconfig)
                _, responses = journal_answers(run_dir)
                rows.append(_row(name, pool, audit_summary(store.audit_records(), name),
                                 answer_summary(responses[:config.budget]),
                                 store.load_detectors(name), report))
        finally:
            gw.stop()
            store.close()
    from detector.ood import OODDetector

    threshold = OODDetector.load(config.detector).threshold
    meta = {"model": config.model, "detector": str(config.detector),
            "detector_threshold": float(threshold), "policy": config.policy_dict(),
            "budget": config.budget, "evaluation": f"{split_file.name}:test (the victim-domain "
            "half no attacker queried; answers from the undefended victim)"}
    notes = [
        f"Gateway: OOD detector {config.detector} (threshold {threshold:.4g}), window "
        f"{config.window}, level {config.level}, min_queries {config.min_queries}; on flag: "
        "degrade -> label_only.",
        "flagged at query: the query at which the client's OOD window first reached the level "
        "(the gateway's exact index); answers are degraded from the request that crossed it.",
        "OOD per-query flag rate: the detector's attack verdicts over all the client's "
        "queries, from the gateway's audit log.",
        "label-only answers: one-hot answers in the attacker's own journal.",
        f"Surrogate: Knockoff random, {config.backbone} {' '.join(config.arch_args)} at "
        f"{config.input_size} px, {config.epochs} epochs, trained on what it received.",
    ]
    table = write_results(out, f"Realistic adversary: {config.model}", rows, _COLUMNS, meta, notes)
    return {"table": table, "rows": rows, "meta": meta}


PROG = "python -m benchmarks.realistic_adversary"


def benchmark_main(config_cls, run, argv: Sequence[str] | None, *, prog: str,
                   doc: str) -> int:
    """The CLI of a defended benchmark: parse `config_cls` from `argv`, `run(config)` (which
    returns its table), print it and the files written; exit code 2 on bad input."""
    from attack.pipeline import run_attack_cli
    from common.cli import configure_logging, parse_config

    def _main(args) -> int:
        config = parse_config(config_cls, args, prog=prog, description=doc.split("\n\n")[0])
        configure_logging()
        print(run(config)["table"])
        print(f"\nwritten: {Path(config.out) / 'results.json'}, "
              f"{Path(config.out) / 'results.md'}")
        return 0

    return run_attack_cli(_main, argv, prog=prog)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    return benchmark_main(RealisticConfig, run_realistic, argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
