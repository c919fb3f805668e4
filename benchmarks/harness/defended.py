"""What the defended benchmarks share: a victim served behind the gateway, its data, a
Knockoff sub-run through it, the run folder and the results files.

`benchmarks.realistic_adversary`, `benchmarks.output_policies`, `benchmarks.prada_bench` and
`benchmarks.defence_bench` serve an exported victim with the embedded model server and put the
gateway in front of it (both through `serving.testing`), create one API key per simulated client
(`client_key`), run attacks through the gateway while the evaluation answers come from the
undefended victim (`run_knockoff_through`), read the gateway's audit log (`audit_summary`) and
write OUT/results.json and OUT/results.md (`write_results`). `VictimData` and `BenchConfig` are
the fields their configs share, `benchmark_main` their command line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attack.config import CopycatConfig, KnockoffConfig
from attack.copycat import run_copycat
from attack.evaluate import uniform_noise_images
from attack.knockoff import run_knockoff
from attack.pipeline import load_test_set, run_attack_cli
from common.cli import config_to_dict, configure_logging, parse_config, save_config
from common.constraints import check_fields
from common.errors import invalid
from common.fileio import write_json_atomic
from serving import testing
from serving.gateway.auth import generate_key, hash_key
from serving.gateway.store import SQLiteStore, new_record

__all__ = ["TASKS", "TRANSFER", "WEIGHTS", "BenchConfig", "Served", "Task", "VictimData",
           "answer_summary", "audit_summary", "benchmark_main", "check_run_dir", "client_key",
           "knockoff_config", "markdown_table", "run_knockoff_through", "split_pool",
           "victim_domain_split", "write_results"]

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


@dataclass(frozen=True)
class VictimData:
    """The served victim and its data, shared by the defended benchmarks' configs: the exported
    victim, its labelled data and the naive attacker's natural images (the registry's files in
    --data-dir unless given)."""

    victims: str = field(default="victims", metadata={
        "help": "folder of exported victims (<victims>/<model>/<version>/saved_model.pb)"})
    model: str = field(default="cifar10_cnn", metadata={"help": "the victim's model name"})
    data_dir: str = field(default="../shared/data", metadata={
        "help": "folder with the datasets (and MobileNet weights; see DATA.md)"})
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

    def check_victim_data(self, *, needs_data_dir: bool = False) -> None:
        """`UsageError` unless the victim, its data and the exclusions exist (before any side
        effect); `needs_data_dir`: another default (the weights) reads --data-dir too."""
        if not (Path(self.victims) / self.model).is_dir():
            raise invalid("model", self.model,
                          f"an exported victim folder under {self.victims!r} "
                          f"({Path(self.victims) / self.model} does not exist)")
        if self.benign_set is None and self.model not in TASKS:
            raise invalid("model", self.model,
                          f"one of {sorted(TASKS)} (or pass --benign-set for another victim)")
        needs_data_dir = needs_data_dir or self.benign_set is None or self.transfer_set is None
        if needs_data_dir and not Path(self.data_dir).is_dir():
            raise invalid("data_dir", self.data_dir, "an existing folder (see DATA.md)")
        for given, path in ((self.benign_set, self.benign_spec),
                            (self.transfer_set, self.transfer_spec)):
            if given is None and not Path(path).exists():
                raise invalid("data_dir", self.data_dir, f"a folder holding {Path(path).name}")
        exclude = self.exclude_spec
        if exclude is not None and not Path(exclude).is_file():
            raise invalid("exclude_classes", exclude, "an existing file of class names")

    # The resolved data (the registry's defaults unless given).
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


@dataclass(frozen=True)
class BenchConfig(VictimData):
    """What the Knockoff-based defended benchmarks share: the victim, the data, the surrogate."""

    budget: int = field(default=3000, metadata={"help": "queries per Knockoff attack", "min": 1})
    out: str = field(default="runs/bench", metadata={
        "help": "output folder (resumable: a finished sub-run is reused)", "metavar": "DIR",
        "rule": "nonempty"})
    backbone: str = field(default="mobilenet", metadata={"help": "surrogate backbone"})
    weights: str = field(default="default", metadata={
        "help": f"surrogate initial weights: default (--data-dir/{WEIGHTS}), imagenet, none "
                "or a file", "metavar": "default|imagenet|none|PATH"})
    arch_args: tuple[str, ...] = field(default=("alpha=0.25",), metadata={
        "help": "backbone arguments KEY=VALUE", "metavar": "KEY=VALUE"})
    input_size: int | None = field(default=96, metadata={"help": "surrogate input side, px"})
    epochs: int = field(default=4, metadata={"help": "surrogate training epochs", "min": 1})
    batch_size: int = field(default=64, metadata={
        "help": "surrogate training batch size", "min": 1})
    learning_rate: float = field(default=1e-3, metadata={"help": "surrogate learning rate"})
    query_batch: int = field(default=64, metadata={
        "help": "images per Predict request", "min": 1})
    noise: int = field(default=500, metadata={
        "help": "uniform-noise images for the fidelity on noise", "min": 0})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        check_fields(self)
        self.check_victim_data(needs_data_dir=self.weights == "default")
        weights = self.weights_spec
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise invalid("weights", weights, "imagenet, none, or an existing weights file")

    @property
    def weights_spec(self) -> str:
        if self.weights == "default":
            return str(Path(self.data_dir) / WEIGHTS)
        return self.weights


# -- run folder ------------------------------------------------------------------------------------
def check_run_dir(config: Any, *, free: Sequence[str] = ()) -> Path:
    """Create OUT with config.json, or check that an existing one ran with the same settings
    (the fields named in `free` may differ: a benchmark keys its sub-runs by them)."""
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
        differing = sorted(k for k in now if k not in free
                           and before.get(k, defaults.get(k)) != now[k])
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


def victim_domain_split(out: Path, dataset: Any, fraction: float, seed: int) -> Path:
    """OUT/data/victim_domain_split.npz, written once: `dataset` (an `ImageDataset`) cut by
    `split_pool` into the realistic attacker's pool (``train``) and the evaluation half that no
    attacker queries (``test``)."""
    split_file = out / "data" / "victim_domain_split.npz"
    if not split_file.is_file():
        pool_idx, eval_idx = split_pool(len(dataset), fraction, seed)
        split_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = split_file.with_name("tmp_split.npz")
        np.savez(tmp, x_train=dataset.images[pool_idx], y_train=dataset.labels[pool_idx],
                 x_test=dataset.images[eval_idx], y_test=dataset.labels[eval_idx],
                 class_names=np.asarray(dataset.class_names))
        tmp.replace(split_file)
    return split_file


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
        store = SQLiteStore(db)
        gw = testing.gateway(self.upstream, policy=policy, state=db, store=store).obj
        return gw, store


def client_key(store, name: str) -> str:
    """A fresh API key for client `name`: added, or rotated (usage and flag kept) if known."""
    key = generate_key()
    if store.get_client(name) is None:
        store.add_client(new_record(name, hash_key(key)))
    else:
        store.rotate(name, hash_key(key))
    return key


# -- one Knockoff attack through a gateway --------------------------------------------------------
def knockoff_config(config: BenchConfig, *, out: Path, grpc: str, api_key: str | None,
                    transfer_set: str, transfer_split: str, exclude_classes: str | None,
                    test_set: str, test_split: str, test_limit: int | None = None,
                    granularity: str = "probs", attack: str = "knockoff"):
    """The attack config of one sub-run: the benchmark's surrogate, budget and seed; a
    `KnockoffConfig` (random strategy, training on `granularity`), or with ``attack="copycat"``
    a `CopycatConfig` (Copycat CNN: the top-1 of every answer, no problem-domain phase)."""
    common = dict(
        grpc=grpc, model=config.model, api_key=api_key, transfer_set=transfer_set,
        transfer_split=transfer_split, exclude_classes=exclude_classes, budget=config.budget,
        heldout=0, backbone=config.backbone,
        weights=config.weights_spec, arch_args=tuple(config.arch_args),
        input_size=config.input_size, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, query_batch=config.query_batch,
        test_set=test_set, test_split=test_split, test_limit=test_limit, noise=config.noise,
        curve_points=1, out=str(out), resume=(out / "config.json").is_file(), seed=config.seed)
    if attack == "copycat":
        return CopycatConfig(**common)
    if attack != "knockoff":
        raise invalid("attack", attack, "knockoff or copycat")
    return KnockoffConfig(**common, strategy="random", granularity=granularity)


def run_knockoff_through(served: Served, kconfig) -> dict:
    """Run (or resume, or reuse) one Knockoff (or Copycat: a `CopycatConfig`) sub-run;
    evaluation answers come from `served`.

    The test and noise answers of the evaluator's cache (RUN_DIR/eval/) are the undefended
    victim's, written before the attack starts, so the gateway sees only attack queries.
    """
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
    (run_copycat if isinstance(kconfig, CopycatConfig) else run_knockoff)(kconfig)
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


def write_results(out: Path, title: str, rows: list[dict], columns, meta: dict,
                  notes: Sequence[str] = (), *, meta_key: str | None = None,
                  table_rows: list[dict] | None = None) -> dict[str, Any]:
    """OUT/results.json (`meta` beside the rows, or under `meta_key`) and OUT/results.md (the
    table of `table_rows`, default `rows`); returns the Markdown table, the rows and `meta`
    (what a benchmark's run returns)."""
    table = markdown_table(rows if table_rows is None else table_rows, columns)
    write_json_atomic(out / "results.json",
                      {"rows": rows, meta_key: meta} if meta_key else {**meta, "rows": rows})
    md = [f"# {title}", "", table, ""]
    md += [f"- {line}" for line in notes]
    md += ["", "```json", json.dumps(meta, indent=1, default=str), "```", ""]
    (out / "results.md").write_text("\n".join(md))
    return {"table": table, "rows": rows, "meta": meta}



def benchmark_main(config_cls, run, argv: Sequence[str] | None, *, prog: str,
                   doc: str) -> int:
    """The CLI of a defended benchmark: parse `config_cls` from `argv`, `run(config)` (which
    returns its table), print it and the files written; exit code 2 on bad input."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

    def _main(args) -> int:
        config = parse_config(config_cls, args, prog=prog, description=doc.split("\n\n")[0])
        configure_logging()
        print(run(config)["table"])
        print(f"\nwritten: {Path(config.out) / 'results.json'}, "
              f"{Path(config.out) / 'results.md'}")
        return 0

    return run_attack_cli(_main, argv, prog=prog)
