"""A filter that costs the thief: Adaptive Misinformation and DAWN watermarks through the real
gateway, and the OOD detector under cheap evasions, side by side in one run.

    python -m benchmarks.defence_bench --victims victims --model cifar10_cnn \\
        --detector detectors/cifar10_ood/1 --data-dir ../shared/data --budget 1000 \\
        --seeds 0,1,2 --out runs/defence

Four measurements, all against the embedded model server with the gateway in front of it
(`benchmarks.realistic_adversary.Served`: SQLite state, the OOD detector in process with the
gateway's default window, level and min_queries, no budget or rate limit):

1. **evasion** (no gateway needed: the detector and `detector.aggregate.SlidingWindow` exactly
   as the gateway runs them): Tiny-ImageNet's *val* split minus the classes that overlap the
   victim's (never seen by `detector.train`, which uses *train*) transformed by each
   `detector.evasion` function; per transform the anomalous accuracy at the detector's shipped
   threshold (share of attack images flagged), the benign accuracy of the victim-domain
   evaluation half under the same transform, and the query at which a client sending that
   stream in batches of `--query-batch` is flagged; camouflage mixes in 25/50/75% of victim-domain
   images (the attacker half of the test split).
2. **thief's ratio** per output policy (`--policies`): Knockoff Nets (random, the naive
   Tiny-ImageNet pool, `--budget` queries, `--seeds`) through a gateway with that policy,
   training on probabilities and on the top-1 (label-only policies answer one-hot rows, so
   only one granularity is run for them). Policies: ``identity`` (detector, no degradation),
   ``label_only`` (the shipped policy: flagged -> labels), ``misinform`` (flagged -> Adaptive
   Misinformation, probabilities), ``misinform_label_only`` (flagged -> misinformation labels),
   ``misinform_query`` (every answer through Adaptive Misinformation). Every policy also
   watermarks `--watermark-fraction` of each client's answers (DAWN).
3. **benign cost** per policy: the victim-domain evaluation half answered through the gateway
   to a benign client, top-1 change against the undefended victim, and whether it was flagged.
4. **verification** (`detector.verify.verify_watermarks`, at most 100 queries per test): every
   surrogate against its own client's watermarks (stolen) and against every other client's
   (a model that never saw those answers: other seeds, other policies), p-values and decisions.

Surrogate accuracies are on the evaluation half of the victim's test split (no thief queried
it); the attack's own evaluation answers come straight from the model server. Output: tables on
stdout, OUT/results.{json,md}. Finished attacks are reused when re-run with the same settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attack.pipeline import journal_answers
from benchmarks.harness.defended import (
    BenchConfig,
    Served,
    answer_summary,
    audit_summary,
    benchmark_main,
    check_run_dir,
    client_key,
    knockoff_config,
    markdown_table,
    run_knockoff_through,
    victim_domain_split,
)
from benchmarks.output_policies import benign_cost
from common.data import load_dataset
from common.errors import invalid
from common.fileio import write_json_atomic
from detector import evasion
from detector.aggregate import SlidingWindow, first_flag
from detector.ood import OODDetector
from detector.suspects import saved_model_predict
from detector.verify import verify_watermarks
from detector.watermark import image_digest
from serving.gateway.config import OODConfig, policy_from_dict

__all__ = ["DefenceConfig", "POLICIES", "main", "policy_dict", "run_defence"]

log = logging.getLogger(__name__)

POLICIES = ("identity", "label_only", "misinform", "misinform_label_only", "misinform_query")
EVASIONS = (("none", 0), ("jpeg", 95), ("jpeg", 75), ("jpeg", 50), ("resize", 0.5),
            ("blur", 1.0), ("noise", 8.0))
CAMOUFLAGE = (0.25, 0.5, 0.75)
WATERMARK_KEY = b"defence-bench-watermark-key-0001"  # a benchmark's key; never a deployment's


def _names(text: str, allowed: Sequence[str], argument: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in str(text).split(",") if p.strip())
    bad = [p for p in parts if p not in allowed]
    if not parts or bad or len(set(parts)) != len(parts):
        raise invalid(argument, text, f"a comma-separated list of distinct {', '.join(allowed)}")
    return parts


@dataclass(frozen=True)
class DefenceConfig(BenchConfig):
    """Misinformation and watermarks through the gateway; the detector under evasion."""

    detector: str | None = field(default=None, metadata={
        "help": "the exported OOD detector (detectors/<name>/<version>)", "metavar": "DIR"})
    seeds: str = field(default="0,1,2", metadata={"help": "Knockoff seeds (comma-separated)"})
    policies: str = field(default="label_only,misinform,misinform_label_only", metadata={
        "help": f"gateway policies to compare: {', '.join(POLICIES)}", "metavar": "LIST"})
    granularities: str = field(default="probs,top1", metadata={
        "help": "what the thief trains on: probs and/or top1", "metavar": "LIST"})
    pool_fraction: float = field(default=0.5, metadata={
        "help": "share of the test split used as in-distribution camouflage; the rest is the "
                "evaluation half"})
    tau: float | None = field(default=None, metadata={
        "help": "misinformation switch threshold (default: the detector's threshold)"})
    nu: float = field(default=50.0, metadata={"help": "misinformation switch steepness"})
    misinformation_model: str | None = field(default=None, metadata={
        "help": "an exported misinformation model (python -m detector.misinformation); "
                "default: the reversed victim distribution", "metavar": "DIR"})
    watermark_fraction: float = field(default=0.02, metadata={
        "help": "DAWN: share of each client's answers relabelled"})
    evasion_limit: int = field(default=1000, metadata={
        "help": "attack (and benign) images per evasion measurement"})
    parts: str = field(default="evasion,attacks,benign,verify", metadata={
        "help": "which measurements to run", "metavar": "LIST"})
    out: str = field(default="runs/defence", metadata={
        "help": "output folder (resumable: a finished attack is reused)", "metavar": "DIR"})

    def __post_init__(self) -> None:
        if not self.detector or not Path(self.detector).is_dir():
            raise invalid("detector", self.detector, "an exported OOD detector folder")
        _names(self.policies, POLICIES, "policies")
        _names(self.granularities, ("probs", "top1"), "granularities")
        _names(self.parts, ("evasion", "attacks", "benign", "verify"), "parts")
        try:
            seeds = [int(s) for s in self.seeds.split(",")]
        except ValueError:
            raise invalid("seeds", self.seeds, "comma-separated integers") from None
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise invalid("seeds", self.seeds, "distinct non-negative integers")
        if not 0 < self.pool_fraction < 1:
            raise invalid("pool_fraction", self.pool_fraction, "a number in (0, 1)")
        if not 0 < self.watermark_fraction <= 0.5:
            raise invalid("watermark_fraction", self.watermark_fraction, "a number in (0, 0.5]")
        if self.misinformation_model is not None and not Path(
                self.misinformation_model).is_dir():
            raise invalid("misinformation_model", self.misinformation_model,
                          "an exported misinformation model folder")
        if isinstance(self.evasion_limit, bool) or self.evasion_limit < 64:
            raise invalid("evasion_limit", self.evasion_limit, "an integer >= 64")
        super().__post_init__()
        for name in _names(self.policies, POLICIES, "policies"):
            self.policy(name, Path(self.out) / "wm.key")  # the gateway's own validation

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.seeds.split(","))

    def policy(self, name: str, key_file: Path):
        return policy_from_dict(policy_dict(self, name, key_file))


def policy_dict(config: DefenceConfig, name: str, key_file: Path) -> dict:
    """The gateway policy `name` of this benchmark (see the module docstring)."""
    default = OODConfig.__dataclass_fields__
    data: dict[str, Any] = {
        "limits": {"budget": None, "rate_per_second": 1e9, "burst": 1e9},
        "detectors": {"ood": {"path": str(config.detector),
                              "window": default["window"].default,
                              "level": default["level"].default,
                              "min_queries": default["min_queries"].default}},
        "on_flag": {"action": "degrade", "policy": "identity"},
        "watermark": {"key_file": str(key_file), "fraction": config.watermark_fraction},
    }
    misinformation = {"tau": config.tau, "nu": config.nu}
    if config.misinformation_model:
        misinformation.update(function="model", path=str(config.misinformation_model))
    if name == "label_only":
        data["on_flag"] = {"action": "degrade", "policy": "label_only"}
    elif name == "misinform":
        data["on_flag"] = {"action": "misinform", "policy": "identity"}
    elif name == "misinform_label_only":
        data["on_flag"] = {"action": "misinform", "policy": "label_only"}
    elif name == "misinform_query":
        data["on_query"] = "misinform"
        data["on_flag"] = {"action": "misinform", "policy": "identity"}
    if name.startswith("misinform"):
        data["misinformation"] = misinformation
    return data


# -- 1. the detector under evasion -----------------------------------------------------------
def measure_evasion(config: DefenceConfig, benign: np.ndarray, camouflage_pool: np.ndarray
                    ) -> list[dict]:

    detector = OODDetector.load(config.detector)
    attack = load_dataset(config.transfer_spec, "val", image_size=benign.shape[1], channels=3,
                          exclude_classes=config.exclude_spec, limit=config.evasion_limit,
                          seed=0).images
    benign = benign[:config.evasion_limit]
    d = OODConfig.__dataclass_fields__
    window = SlidingWindow(d["window"].default, d["level"].default, d["min_queries"].default)
    rows = []
    for name, level in EVASIONS:
        a = attack if name == "none" else evasion.apply(name, attack, level, seed=1)
        b = benign if name == "none" else evasion.apply(name, benign, level, seed=2)
        flagged = detector.predict(a)
        benign_flagged = detector.predict(b)
        rows.append({"evasion": name if name == "none" else f"{name}:{level:g}",
                     "anomalous_accuracy": float(flagged.mean()),
                     "benign_accuracy": float(1.0 - benign_flagged.mean()),
                     "flagged_at": first_flag(window, flagged, config.query_batch),
                     "n_attack": int(len(a)), "n_benign": int(len(b))})
        log.info("evasion %s: %s", name, rows[-1])
    for share in CAMOUFLAGE:
        stream, is_attack = evasion.camouflage(attack, camouflage_pool, share, seed=3)
        flags = detector.predict(stream)
        verdicts, pool_flags = flags[is_attack], flags[~is_attack]
        rows.append({"evasion": f"camouflage:{share:g}",
                     "anomalous_accuracy": float(verdicts.mean()),
                     "benign_accuracy": float(1.0 - pool_flags.mean()),
                     "stream_flag_share": float(flags.mean()),
                     "flagged_at": first_flag(window, flags, config.query_batch),
                     "n_attack": int(len(attack)), "n_benign": int((~is_attack).sum())})
        log.info("camouflage %s: %s", share, rows[-1])
    return rows


# -- 2-4. through the gateway ----------------------------------------------------------------
def _runs(config: DefenceConfig) -> list[tuple[str, str, int]]:
    out = []
    for policy in _names(config.policies, POLICIES, "policies"):
        grans = ("probs",) if policy.endswith("label_only") else \
            _names(config.granularities, ("probs", "top1"), "granularities")
        out += [(policy, g, s) for g in grans for s in config.seed_list]
    return out


def run_defence(config: DefenceConfig) -> dict:
    out = check_run_dir(config)
    parts = _names(config.parts, ("evasion", "attacks", "benign", "verify"), "parts")
    key_file = out / "wm.key"
    if not key_file.is_file():
        key_file.write_bytes(WATERMARK_KEY)
    benign_set = load_dataset(config.benign_spec, config.benign_split)
    split_file = victim_domain_split(out, benign_set, config.pool_fraction, 0)
    with np.load(split_file) as data:
        pool, evaluation, eval_labels = data["x_train"], data["x_test"], data["y_test"]
    results: dict[str, Any] = {}
    if "evasion" in parts:
        results["evasion"] = measure_evasion(config, evaluation, pool)
    attacks, benign_rows, verification = [], [], []
    with Served(config.victims, config.model) as served:
        truth = served.direct(evaluation)
        surrogates: dict[str, Any] = {}
        watermarks: dict[str, list] = {}
        for policy in _names(config.policies, POLICIES, "policies"):
            sub = out / policy
            sub.mkdir(parents=True, exist_ok=True)
            gw, store = served.gateway(config.policy(policy, key_file), sub / "gateway.db")
            try:
                target = f"127.0.0.1:{gw.port}"
                if "benign" in parts:
                    benign_rows.append(_benign(config, policy, target, store, truth,
                                               evaluation, eval_labels))
                for pol, gran, seed in _runs(config):
                    if pol != policy or "attacks" not in parts:
                        continue
                    name = f"{gran}_s{seed}"
                    run_dir = sub / name
                    seeded = dataclasses.replace(config, seed=seed)
                    kconfig = knockoff_config(
                        seeded, out=run_dir, grpc=target,
                        api_key=client_key(store, name) if not (run_dir / "report.json")
                        .is_file() else "unused", transfer_set=config.transfer_spec,
                        transfer_split=config.transfer_split,
                        exclude_classes=config.exclude_spec, test_set=str(split_file),
                        test_split="test", granularity=gran)
                    report = run_knockoff_through(served, kconfig)
                    _, responses = journal_answers(run_dir)
                    ev = report.get("evaluation") or {}
                    audit = audit_summary(store.audit_records(), name)
                    det = store.load_detectors(name)
                    attacks.append({"policy": policy, "granularity": gran, "seed": seed,
                                    "flagged": bool(det.flagged),
                                    "flagged_at": (det.ood or {}).get("flagged_at"),
                                    **{k: audit[k] for k in ("queries", "degraded_queries")},
                                    **answer_summary(responses[:config.budget]),
                                    **{k: ev.get(k) for k in ("victim_acc", "surrogate_acc",
                                                              "ratio", "fidelity_test")}})
                    client = f"{policy}/{name}"
                    watermarks[client] = store.watermarks(name)
                    exported = (report.get("extra") or {}).get("surrogate_export")
                    if exported:
                        surrogates[client] = saved_model_predict(exported, "surrogate")
            finally:
                gw.stop()
                store.close()
        if "verify" in parts and surrogates:
            for owner, records in watermarks.items():
                if not records:
                    continue
                for model_name, predict in surrogates.items():
                    r = verify_watermarks(predict, records, victim=served.direct,
                                          max_queries=100)
                    verification.append({"watermarks_of": owner, "model": model_name,
                                         "stolen_via_this_client": owner == model_name,
                                         "agreeing": r.agreeing, "compared": r.compared,
                                         "p_value": r.p_value, "identified": r.stolen})
    results.update(attacks=attacks, benign=benign_rows, verification=verification)
    return _write(config, out, results)


def _benign(config, policy, target, store, truth, images, labels) -> dict:
    from serving.client import ServingClient

    name = "benign"
    with ServingClient(target, config.model, api_key=client_key(store, name),
                       batch_size=config.query_batch) as client:
        answered = np.asarray(client.predict(images), dtype=np.float32)
    cost = benign_cost(truth, answered, labels)
    det = store.load_detectors(name)
    marked = {r.digest for r in store.watermarks(name)}
    keep = np.array([image_digest(x) not in marked for x in images])
    rest = benign_cost(truth[keep], answered[keep], labels[keep])
    return {"policy": policy, **cost, "flagged": bool(det.flagged), "watermarked": len(marked),
            "accuracy_change_unwatermarked": rest["accuracy_change"]}


def _summary(attacks: list[dict]) -> list[dict]:
    groups: dict[tuple, list] = {}
    for row in attacks:
        groups.setdefault((row["policy"], row["granularity"]), []).append(row)
    out = []
    for (policy, gran), rows in groups.items():
        ratios = np.array([r["ratio"] for r in rows if r["ratio"] is not None], float)
        out.append({"policy": policy, "granularity": gran, "seeds": len(rows),
                    "ratio_mean": float(ratios.mean()) if len(ratios) else None,
                    "ratio_std": float(ratios.std(ddof=1)) if len(ratios) > 1 else None,
                    "ratio_min": float(ratios.min()) if len(ratios) else None,
                    "ratio_max": float(ratios.max()) if len(ratios) else None,
                    "flagged": f"{sum(r['flagged'] for r in rows)}/{len(rows)}",
                    "label_only_share": float(np.mean([r["label_only_share"] or 0
                                                       for r in rows]))})
    return out


def _verify_summary(rows: list[dict]) -> dict:
    own = [r for r in rows if r["stolen_via_this_client"]]
    other = [r for r in rows if not r["stolen_via_this_client"]]
    return {"stolen_identified": f"{sum(r['identified'] for r in own)}/{len(own)}",
            "stolen_max_p": max((r["p_value"] for r in own), default=None),
            "independent_identified": f"{sum(r['identified'] for r in other)}/{len(other)}",
            "independent_min_p": min((r["p_value"] for r in other), default=None),
            "independent_p_above_0.05": f"{sum(r['p_value'] > 0.05 for r in other)}/"
                                        f"{len(other)}"}


def _write(config: DefenceConfig, out: Path, results: dict) -> dict:
    tables = []
    if results.get("evasion"):
        tables.append(("OOD detector under evasion (shipped threshold)", markdown_table(
            results["evasion"], (("evasion", "evasion"), ("anomalous_accuracy",
                                                          "anomalous acc"),
                                 ("benign_accuracy", "benign acc (same transform)"),
                                 ("stream_flag_share", "stream flag share"),
                                 ("flagged_at", "client flagged at query")))))
    summary = _summary(results["attacks"]) if results["attacks"] else []
    if summary:
        tables.append(("Knockoff through the gateway: surrogate / victim accuracy",
                       markdown_table(summary, (
                           ("policy", "policy"), ("granularity", "thief trains on"),
                           ("seeds", "seeds"), ("ratio_mean", "ratio mean"),
                           ("ratio_std", "ratio std"), ("ratio_min", "min"),
                           ("ratio_max", "max"), ("flagged", "flagged"),
                           ("label_only_share", "one-hot answers")))))
    if results["benign"]:
        tables.append(("Benign client through the gateway (evaluation half)", markdown_table(
            results["benign"], (("policy", "policy"), ("accuracy_undefended", "victim acc"),
                                ("accuracy", "answered acc"),
                                ("accuracy_change", "top-1 change"),
                                ("accuracy_change_unwatermarked",
                                 "top-1 change, watermarked answers left out"),
                                ("flagged", "flagged"), ("watermarked", "watermarked")))))
    vsum = _verify_summary(results["verification"]) if results["verification"] else None
    if vsum:
        tables.append(("DAWN verification (<= 100 queries per test)",
                       markdown_table([vsum], tuple((k, k) for k in vsum))))
    meta = {"model": config.model, "detector": str(config.detector),
            "budget": config.budget, "seeds": list(config.seed_list),
            "policies": {p: policy_dict(config, p, Path("wm.key"))
                         for p in _names(config.policies, POLICIES, "policies")},
            "surrogate": {"backbone": config.backbone, "arch_args": list(config.arch_args),
                          "input_size": config.input_size, "epochs": config.epochs},
            "misinformation": "model " + str(config.misinformation_model)
            if config.misinformation_model else "reverse (the victim's distribution in "
                                                "reversed rank order)"}
    text = "\n\n".join(f"## {title}\n\n{table}" for title, table in tables)
    write_json_atomic(out / "results.json", {**meta, **results, "summary": summary,
                                             "verification_summary": vsum})
    (out / "results.md").write_text(f"# Defence benchmark: {config.model}\n\n{text}\n\n"
                                    f"```json\n{json.dumps(meta, indent=1, default=str)}\n"
                                    "```\n")
    return {"table": text, **results}


PROG = "python -m benchmarks.defence_bench"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    return benchmark_main(DefenceConfig, run_defence, argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
