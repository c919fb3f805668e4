"""The shipped gateway policy end to end: what it costs six thieves and what it costs benign
clients, through the real gateway, side by side in one run.

    python -m benchmarks.shipped_policy --victims victims --model cifar10_cnn \\
        --detector detectors/cifar10_ood/2 --misinformation-model detectors/cifar10_misinfo/1 \\
        --data-dir ../shared/data --budget 2000 --seeds 0 1 2 --out runs/shipped_cifar10

It serves `<victims>/<model>` with the embedded model server and puts the gateway
(`serving.gateway`, in process, SQLite state) in front of it with a policy file (default: the
shipped `serving/deploy/config/policy.json`; its ``per_model`` section for `--model` when it has
one). `--detector` and `--misinformation-model` replace the policy's ``detectors.ood.path`` and
``misinformation.path`` (the shipped file names container paths); a ``watermark`` section gets
this run's own key file (OUT/wm.key). Then, on the half of the victim's test split that no
thief queries (`--pool-fraction`, seeded; the other half is the realistic adversary's pool):

1. **Thieves** (`--thieves`, each with every seed of `--seeds` through the defended gateway and
   with `--undefended-seeds` straight to the model server): ``knockoff_probs`` (Knockoff Nets,
   random strategy, training on the answered probabilities), ``knockoff_top1`` (the same
   answers' top-1), ``copycat`` (Copycat CNN: one-hot top-1), ``knockoff_jpeg75`` (Knockoff whose
   queries are JPEG-encoded at quality 75), ``knockoff_camouflage50`` (Knockoff whose pool is
   half in-distribution images: the victim's *train* split, a seeded half of it, never the test
   split) and ``realistic`` (Atli et al.'s realistic adversary: in-domain images, the attacker
   half of the test split). The out-of-task pool is Tiny-ImageNet (`--transfer-set`) minus the
   classes overlapping the victim's (`--exclude-classes`), `--pool-size` images. Each thief's
   ratio is its surrogate's accuracy over the victim's, both on the evaluation half and from the
   same scoring (the victim's answers come straight from the model server).
2. **Benign cost**: `--benign-clients` clients (own API keys) replay the whole test split
   between them, in requests of `--query-batch`, through a fresh gateway with the same policy:
   accuracy change and share of answers whose top-1 differs from the undefended victim's, and
   how many clients were flagged. Then added latency: `--latency-requests` requests at batch 1
   and at batch 64 of evaluation images, alternating direct / through the gateway, p50 of each.

Output: a table on stdout, OUT/results.{json,md} (every figure with how it was obtained, the
resolved policy, the machine's load). Finished thieves are reused when re-run with the same
settings; the benign and latency measurements are repeated only when their files are missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attack.pipeline import journal_answers
from benchmarks.harness import defended
from benchmarks.harness.defended import benchmark_main, check_run_dir
from benchmarks.harness.stats import spread
from benchmarks.output_policies import benign_cost
from common.constraints import check_fields
from common.data import load_dataset
from common.errors import invalid
from common.fileio import write_json_atomic
from detector import evasion
from serving.gateway.config import policy_from_dict, read_policy

__all__ = ["THIEVES", "ShippedConfig", "main", "resolve_policy", "run_shipped"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SHIPPED_POLICY = REPO / "serving" / "deploy" / "config" / "policy.json"
THIEVES = ("knockoff_probs", "knockoff_top1", "copycat", "knockoff_jpeg75",
           "knockoff_camouflage50", "realistic")
WATERMARK_KEY = b"shipped-policy-bench-key-0000001"  # a benchmark's key; never a deployment's
LATENCY_BATCHES = (1, 64)
# What a re-run in the same folder may change: sub-runs are keyed by thief and seed.
FREE_FIELDS = ("thieves", "seeds", "undefended_seeds", "undefended_thieves")


@dataclass(frozen=True)
class ShippedConfig(defended.BenchConfig):
    """The shipped policy against six thieves and benign clients, through the gateway."""

    policy: str = field(default=str(SHIPPED_POLICY), metadata={
        "help": "the gateway policy file (its per_model section for --model when it has one)",
        "metavar": "FILE"})
    detector: str | None = field(default=None, metadata={
        "help": "the OOD detector export, replacing the policy's detectors.ood.path",
        "metavar": "DIR"})
    misinformation_model: str | None = field(default=None, metadata={
        "help": "the misinformation model export, replacing the policy's misinformation.path",
        "metavar": "DIR"})
    thieves: tuple[str, ...] = field(default=THIEVES, metadata={
        "help": "thieves to run", "choices": THIEVES})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={
        "help": "seeds of every thief through the defended gateway", "min": 0})
    undefended_seeds: tuple[int, ...] = field(default=(0,), metadata={
        "help": "seeds of the undefended thieves, straight to the model server (none: skip)",
        "min": 0})
    undefended_thieves: tuple[str, ...] = field(default=THIEVES, metadata={
        "help": "thieves also run undefended, in this order", "choices": THIEVES})
    budget: int = field(default=2000, metadata={"help": "queries per thief", "min": 1})
    epochs: int = field(default=5, metadata={"help": "surrogate training epochs", "min": 1})
    noise: int = field(default=0, metadata={
        "help": "uniform-noise images for the fidelity on noise", "min": 0})
    pool_size: int = field(default=4000, metadata={
        "help": "out-of-task images in the thieves' pool (Tiny-ImageNet)", "min": 1})
    pool_fraction: float = field(default=0.5, metadata={
        "help": "share of the test split the realistic adversary owns; the rest is the "
                "evaluation half", "gt": 0, "lt": 1})
    benign_clients: int = field(default=10, metadata={
        "help": "benign clients replaying the test split (0: skip)", "min": 0})
    latency_requests: int = field(default=60, metadata={
        "help": "requests per batch size and path for the latency (0: skip)", "min": 0})
    out: str = field(default="runs/shipped_policy", metadata={
        "help": "output folder (resumable: a finished thief is reused)", "metavar": "DIR",
        "rule": "nonempty"})

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("thieves", "seeds"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise invalid(name, " ".join(map(str, values)), "distinct values, at least one")
        if len(set(self.undefended_seeds)) != len(self.undefended_seeds):
            raise invalid("undefended_seeds", " ".join(map(str, self.undefended_seeds)),
                          "distinct seeds")
        for name in ("detector", "misinformation_model"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_dir():
                raise invalid(name, value, "an exported model folder")
        super().__post_init__()
        self.policy_dict()  # the gateway's own validation, paths included

    def policy_dict(self) -> dict:
        """The policy the gateway runs with (see `resolve_policy`)."""
        return resolve_policy(self.policy, self.model, detector=self.detector,
                              misinformation_model=self.misinformation_model,
                              key_file=Path(self.out) / "wm.key")


def _section(data: dict, model: str) -> dict:
    """The part of a policy that decides `model`'s answers: its per_model entry or the top."""
    per_model = data.get("per_model")
    if isinstance(per_model, dict) and isinstance(per_model.get(model), dict):
        return per_model[model]
    return data


def resolve_policy(path: str | Path, model: str, *, detector: str | None = None,
                   misinformation_model: str | None = None,
                   key_file: Path | None = None) -> dict:
    """The policy file at `path` with this run's paths: `detector` and `misinformation_model`
    replace ``detectors.ood.path`` and ``misinformation.path`` of the section that decides
    `model`'s answers; a ``watermark`` anywhere gets `key_file`; ``models`` and ``per_model``
    keep `model` only (one victim is served). `UsageError` (naming
    ``policy``, or the policy's field) unless the result is a valid policy exposing `model`
    whose detector and misinformation model exist."""
    data = read_policy(path)
    if not isinstance(data, dict):
        raise invalid("policy", str(path), "a JSON object")
    models = data.get("models")
    if isinstance(models, list) and model not in models:
        raise invalid("model", model, f"a model the policy exposes ({', '.join(map(str, models))})")
    if isinstance(data.get("per_model"), dict):
        # one victim is served here: the other models' entries (and their files) do not apply
        data["per_model"] = {k: v for k, v in data["per_model"].items() if k == model} or None
        if data["per_model"] is None:
            del data["per_model"]
        if isinstance(models, list):
            data["models"] = [model]
    section = _section(data, model)
    ood = (section.get("detectors") or {}).get("ood")
    if detector is not None:
        if not isinstance(ood, dict):
            raise invalid("detector", detector, f"a policy with detectors.ood for {model!r} "
                          f"({path} has none)")
        ood.update(path=str(detector), upstream_model=None)
    mis = section.get("misinformation")
    if misinformation_model is not None:
        if not isinstance(mis, dict):
            raise invalid("misinformation_model", misinformation_model,
                          f"a policy with a misinformation section for {model!r} ({path} has "
                          "none)")
        mis.update(function="model", path=str(misinformation_model), upstream_model=None)
    for part in [data, *(data.get("per_model") or {}).values()]:
        if isinstance(part, dict) and isinstance(part.get("watermark"), dict) \
                and key_file is not None:
            part["watermark"]["key_file"] = str(key_file)
    policy_from_dict(data, source=str(path))
    for name, value in (("detectors.ood.path", (ood or {}).get("path")),
                        ("misinformation.path", (mis or {}).get("path"))):
        if value is not None and not Path(value).is_dir():
            raise invalid(name, value, "an existing export (give it with --detector / "
                          "--misinformation-model)")
    return data


# -- the thieves' data -----------------------------------------------------------------------
def _pools(config: ShippedConfig, out: Path, attacker_half: np.ndarray) -> dict[str, Path]:
    """OUT/data/<pool>.npz per thief kind (written once): the out-of-task pool, it
    JPEG-encoded at quality 75, it half camouflaged with train-split images, and the realistic
    adversary's half of the test split."""
    data = out / "data"
    files = {name: data / f"{name}.npz" for name in ("tiny", "tiny_jpeg75", "camouflage50",
                                                      "in_domain")}
    if all(f.is_file() for f in files.values()):
        return files
    size = attacker_half.shape[1]
    tiny = load_dataset(config.transfer_spec, config.transfer_split, image_size=size,
                        channels=attacker_half.shape[3], exclude_classes=config.exclude_spec,
                        limit=config.pool_size, seed=7).images
    train = load_dataset(config.benign_spec, "train", channels=attacker_half.shape[3])
    if train.images.shape[1:] != attacker_half.shape[1:]:
        raise invalid("benign_set", config.benign_spec, "train and test images of one shape")
    _, other_half = defended.split_pool(len(train), 0.5, 0)
    camouflage, _ = evasion.camouflage(tiny, train.images[other_half], 0.5, seed=3)
    pools = {"tiny": tiny, "tiny_jpeg75": evasion.jpeg(tiny, 75), "camouflage50": camouflage,
             "in_domain": attacker_half}
    data.mkdir(parents=True, exist_ok=True)
    for name, images in pools.items():
        tmp = data / f"tmp_{name}.npz"
        np.savez(tmp, x_train=images, y_train=np.zeros(len(images), np.int64))
        tmp.replace(files[name])
    return files


# pool, attack, granularity of each thief
_THIEF = {
    "knockoff_probs": ("tiny", "knockoff", "probs"),
    "knockoff_top1": ("tiny", "knockoff", "top1"),
    "copycat": ("tiny", "copycat", "top1"),
    "knockoff_jpeg75": ("tiny_jpeg75", "knockoff", "probs"),
    "knockoff_camouflage50": ("camouflage50", "knockoff", "probs"),
    "realistic": ("in_domain", "knockoff", "probs"),
}


def _run_thief(config: ShippedConfig, served, *, thief: str, seed: int, run_dir: Path,
               grpc: str, store, pools: dict[str, Path], split_file: Path) -> dict:
    pool, attack, granularity = _THIEF[thief]
    done = (run_dir / "report.json").is_file()
    name = run_dir.name
    key = None if store is None or done else defended.client_key(store, name)
    kconfig = defended.knockoff_config(
        dataclasses.replace(config, seed=seed), out=run_dir, grpc=grpc, api_key=key,
        transfer_set=str(pools[pool]), transfer_split="train", exclude_classes=None,
        test_set=str(split_file), test_split="test", granularity=granularity, attack=attack)
    log.info("%s, seed %d: %d queries", thief, seed, config.budget)
    report = defended.run_knockoff_through(served, kconfig)
    ev = report.get("evaluation") or {}
    row = {"thief": thief, "seed": seed, **{k: ev.get(k) for k in (
        "victim_acc", "surrogate_acc", "ratio", "fidelity_test", "n_test", "n_queries")}}
    if store is not None:
        state = store.load_detectors(name)
        audit = defended.audit_summary(store.audit_records(), name)
        _, responses = journal_answers(run_dir)
        row.update(flagged=bool(state.flagged), flagged_by=state.flagged_by,
                   flagged_at=(state.ood or {}).get("flagged_at") if state.flagged else None,
                   queries=audit["queries"], ood_flag_rate=audit["ood_flag_rate"],
                   misinformed_requests=_misinformed(store.audit_records(), name),
                   **defended.answer_summary(responses[:config.budget]))
    return row


def _defended(config: ShippedConfig, served, gw, store, seed: int, pools: dict[str, Path],
              split_file: Path) -> list[dict]:
    rows = []
    for thief in config.thieves:
        run_dir = Path(config.out) / "defended" / f"{thief}_s{seed}"
        rows.append({"gateway": True, **_run_thief(
            config, served, thief=thief, seed=seed, run_dir=run_dir,
            grpc=f"127.0.0.1:{gw.port}", store=store, pools=pools, split_file=split_file)})
    return rows


def _misinformed(records, client: str) -> int:
    return sum(1 for r in records if r.client == client and r.method == "Predict"
               and str(r.action).startswith("misinform"))


# -- benign clients and latency --------------------------------------------------------------
def _benign(config: ShippedConfig, served, policy, out: Path, images: np.ndarray,
            labels: np.ndarray) -> dict:
    """The test split replayed by `benign_clients` clients through a fresh gateway."""
    from serving.client import ServingClient

    db = out / "benign_gateway.db"
    db.unlink(missing_ok=True)
    truth = served.direct(images)
    answered = np.zeros_like(truth)
    clients = []
    gw, store = served.gateway(policy, db)
    try:
        target = f"127.0.0.1:{gw.port}"
        for index, rows in enumerate(np.array_split(np.arange(len(images)),
                                                    config.benign_clients)):
            name = f"benign_{index}"
            with ServingClient(target, config.model, api_key=defended.client_key(store, name),
                               batch_size=config.query_batch) as client:
                answered[rows] = np.asarray(client.predict(images[rows]), np.float32)
            state = store.load_detectors(name)
            audit = defended.audit_summary(store.audit_records(), name)
            clients.append({"client": name, "images": int(len(rows)),
                            "flagged": bool(state.flagged),
                            "ood_flag_rate": audit["ood_flag_rate"],
                            "misinformed_requests": _misinformed(store.audit_records(), name),
                            "watermarked": len(store.watermarks(name))})
    finally:
        gw.stop()
        store.close()
    cost = benign_cost(truth, answered, labels)
    return {**cost, "top1_changed": 1.0 - cost["argmax_kept"],
            "flagged_clients": sum(c["flagged"] for c in clients),
            "clients": clients}


def _latency(config: ShippedConfig, served, policy, out: Path, images: np.ndarray) -> dict:
    """p50 seconds per request, direct and through a fresh gateway, alternating."""
    from serving.client import ServingClient

    db = out / "latency_gateway.db"
    db.unlink(missing_ok=True)
    gw, store = served.gateway(policy, db)
    result: dict[str, Any] = {}
    try:
        key = defended.client_key(store, "latency")
        with ServingClient(served.upstream, config.model, batch_size=64) as direct, \
                ServingClient(f"127.0.0.1:{gw.port}", config.model, api_key=key,
                              batch_size=64) as through:
            for batch in LATENCY_BATCHES:
                times: dict[str, list[float]] = {"direct": [], "gateway": []}
                for i in range(config.latency_requests + 2):  # 2 warm-up requests each
                    start = (i * batch) % max(len(images) - batch, 1)
                    x = images[start:start + batch]
                    for path, client in (("direct", direct), ("gateway", through)):
                        t0 = time.perf_counter()
                        client.predict(x)
                        if i >= 2:
                            times[path].append(time.perf_counter() - t0)
                p50 = {k: float(np.median(v)) for k, v in times.items()}
                result[f"batch_{batch}"] = {
                    "requests": config.latency_requests, "p50_direct_ms": 1e3 * p50["direct"],
                    "p50_gateway_ms": 1e3 * p50["gateway"],
                    "p50_added_ms": 1e3 * (p50["gateway"] - p50["direct"])}
        result["latency_client_flagged"] = bool(store.load_detectors("latency").flagged)
    finally:
        gw.stop()
        store.close()
    return result


# -- summary ---------------------------------------------------------------------------------
def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    """The results file's form of `spread` (keys mean, sd, n, values: the known ones)."""
    s = spread(values)
    return {"mean": s.mean, "sd": s.sd, "n": s.n, "values": [round(x, 4) for x in s.known]}


def _cell(values: Sequence[float | None]) -> str:
    return spread(values).cell()


def summarise(rows: list[dict], thieves: Sequence[str]) -> list[dict]:
    """One row per thief: defended ratio over seeds, undefended ratio, flags."""
    table = []
    for thief in thieves:
        mine = [r for r in rows if r["thief"] == thief]
        defended_rows = [r for r in mine if r["gateway"]]
        undefended = [r for r in mine if not r["gateway"]]
        ratio = _stats([r["ratio"] for r in defended_rows])
        flagged_at = [r.get("flagged_at") for r in defended_rows]
        table.append({
            "thief": thief, "ratio": ratio,
            "ratio_cell": _cell([r["ratio"] for r in defended_rows]),
            "undefended": _stats([r["ratio"] for r in undefended]),
            "undefended_cell": _cell([r["ratio"] for r in undefended]),
            "seeds": f"{ratio['n']} / {len(undefended)}",
            "flagged": f"{sum(bool(r.get('flagged')) for r in defended_rows)}/"
                       f"{len(defended_rows)}",
            "flagged_at": ", ".join("never" if q is None else str(q) for q in flagged_at),
            "surrogate_acc": _cell([r["surrogate_acc"] for r in defended_rows]),
            "victim_acc": _cell([r["victim_acc"] for r in mine])})
    return table


_COLUMNS = (("thief", "thief"), ("ratio_cell", "ratio, shipped policy (mean ± sd)"),
            ("undefended_cell", "ratio, undefended"), ("seeds", "seeds (defended / undefended)"),
            ("flagged", "flagged"), ("flagged_at", "flagged at query"),
            ("surrogate_acc", "surrogate acc"), ("victim_acc", "victim acc (eval half)"))


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


# -- the benchmark ---------------------------------------------------------------------------
def run_shipped(config: ShippedConfig) -> dict:
    """Run every thief (reusing finished ones), the benign clients and the latency; write
    OUT/results.{json,md}."""
    out = check_run_dir(config, free=FREE_FIELDS)
    key_file = out / "wm.key"
    if not key_file.is_file():
        key_file.write_bytes(WATERMARK_KEY)
    load_start = _load()
    started = time.time()
    test = load_dataset(config.benign_spec, config.benign_split)
    split_file = defended.victim_domain_split(out, test, config.pool_fraction, 0)
    with np.load(split_file) as data:
        attacker_half, evaluation = data["x_train"], data["x_test"]
    pools = _pools(config, out, attacker_half)
    policy_data = config.policy_dict()
    write_json_atomic(out / "policy.json", policy_data)
    policy = policy_from_dict(policy_data)
    rows: list[dict] = []
    with defended.Served(config.victims, config.model) as served:
        # benign cost first (cheap next to the thieves, so a run cut short still has it)
        benign = _cached(out / "benign.json", config.benign_clients, lambda: _benign(
            config, served, policy, out, test.images, test.labels))
        latency = _cached(out / "latency.json", config.latency_requests, lambda: _latency(
            config, served, policy, out, evaluation))
        gw, store = served.gateway(policy, out / "gateway.db")
        try:
            # the first defended seed, then the undefended references, then the other seeds
            for seed in config.seeds[:1]:
                rows += _defended(config, served, gw, store, seed, pools, split_file)
            for seed in config.undefended_seeds:
                for thief in config.undefended_thieves:
                    run_dir = out / "undefended" / f"{thief}_s{seed}"
                    rows.append({"gateway": False, **_run_thief(
                        config, served, thief=thief, seed=seed, run_dir=run_dir,
                        grpc=served.upstream, store=None, pools=pools, split_file=split_file)})
            for seed in config.seeds[1:]:
                rows += _defended(config, served, gw, store, seed, pools, split_file)
        finally:
            gw.stop()
            store.close()
    summary = summarise(rows, config.thieves)
    meta = {
        "model": config.model, "policy_file": _shown(config.policy), "policy": policy_data,
        "budget": config.budget, "seeds": list(config.seeds),
        "undefended_seeds": list(config.undefended_seeds),
        "surrogate": {"backbone": config.backbone, "arch_args": list(config.arch_args),
                      "input_size": config.input_size, "epochs": config.epochs},
        "evaluation": f"{split_file.name}:test ({len(evaluation)} images of "
                      f"{Path(config.benign_spec).name}:{config.benign_split} no thief queried)",
        "benign": benign, "latency": latency, "summary": summary,
        "load_average": {"start": load_start, "end": _load()},
        "minutes": round((time.time() - started) / 60, 1),
    }
    notes = _notes(config, benign, latency, len(evaluation))
    result = defended.write_results(out, f"Shipped policy: {config.model}", rows, _COLUMNS,
                                    meta, notes, table_rows=summary)
    result["table"] += "\n\n" + "\n".join(notes)
    return result


def _cached(path: Path, wanted: int, measure) -> dict | None:
    if not wanted:
        return None
    if path.is_file():
        return json.loads(path.read_text())
    value = measure()
    write_json_atomic(path, value)
    return value


def _notes(config: ShippedConfig, benign: dict | None, latency: dict | None,
           n_eval: int) -> list[str]:
    notes = [
        f"ratio = surrogate accuracy / victim accuracy on the {n_eval} evaluation images (the "
        "half of the test split no thief queried); the victim's answers for scoring come "
        "straight from the model server, the thief's training answers through the gateway "
        "(defended) or straight from the model server (undefended).",
        f"Thieves: {config.budget} queries each, surrogate {config.backbone} "
        f"{' '.join(config.arch_args)} at {config.input_size} px, {config.epochs} epochs; "
        f"defended seeds {' '.join(map(str, config.seeds))}, undefended seeds "
        f"{' '.join(map(str, config.undefended_seeds)) or 'none'}.",
        "flagged at query: the OOD window's exact query index (the gateway's state).",
    ]
    if benign:
        notes.append(
            f"Benign: {config.benign_clients} clients replaying the {benign['n']} test images "
            f"between them (requests of {config.query_batch}) through a fresh gateway: "
            f"accuracy {benign['accuracy']:.4f} vs {benign['accuracy_undefended']:.4f} direct "
            f"(change {100 * benign['accuracy_change']:+.2f} points), top-1 differs on "
            f"{100 * benign['top1_changed']:.2f}% of answers, "
            f"{benign['flagged_clients']} of {config.benign_clients} clients flagged.")
    if latency:
        parts = [f"batch {b}: {latency[f'batch_{b}']['p50_direct_ms']:.1f} ms direct, "
                 f"{latency[f'batch_{b}']['p50_gateway_ms']:.1f} ms through the gateway "
                 f"({latency[f'batch_{b}']['p50_added_ms']:+.1f} ms)"
                 for b in LATENCY_BATCHES]
        notes.append(f"Latency, p50 of {config.latency_requests} requests each, alternating "
                     f"direct and gateway (shared machine, load at start/end in the json): "
                     + "; ".join(parts) + ".")
    return notes


PROG = "python -m benchmarks.shipped_policy"


def _shown(path: str) -> str:
    """`path` as recorded in results: relative to the repository when inside it (no machine path
    in committed results), else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    return benchmark_main(ShippedConfig, run_shipped, argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
