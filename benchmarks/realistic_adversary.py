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

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attack.pipeline import journal_answers
from benchmarks.harness import defended
from benchmarks.harness.defended import benchmark_main, check_run_dir
from common.data import load_dataset
from common.errors import invalid
from detector.ood import OODDetector
from serving.gateway.config import OODConfig, policy_from_dict

__all__ = ["RealisticConfig", "main", "run_realistic"]

log = logging.getLogger(__name__)


def _ood_default(name: str) -> Any:
    return OODConfig.__dataclass_fields__[name].default


@dataclass(frozen=True)
class RealisticConfig(defended.BenchConfig):
    """Naive (Tiny-ImageNet) against realistic (held-out victim-domain) Knockoff attackers."""

    detector: str | None = field(default=None, metadata={
        "help": "the exported OOD detector (detectors/<name>/<version>)", "metavar": "DIR"})
    pool_fraction: float = field(default=0.5, metadata={
        "help": "share of the benign split the realistic attacker owns; the rest is the "
                "evaluation set of both attacks", "gt": 0, "lt": 1})
    window: int = field(default_factory=lambda: _ood_default("window"), metadata={
        "help": "OOD sliding window (queries; the gateway's default)"})
    level: float = field(default_factory=lambda: _ood_default("level"), metadata={
        "help": "share of flagged queries in the window that flags the client"})
    min_queries: int = field(default_factory=lambda: _ood_default("min_queries"), metadata={
        "help": "queries before a client can be flagged"})
    out: str = field(default="runs/realistic_adversary", metadata={
        "help": "output folder (resumable: a finished attack is reused)", "metavar": "DIR",
        "rule": "nonempty"})

    def __post_init__(self) -> None:
        if not self.detector or not Path(self.detector).is_dir():
            raise invalid("detector", self.detector, "an exported OOD detector folder")
        super().__post_init__()
        self.policy()  # the gateway's own validation of window/level/min_queries

    def policy(self):
        """The gateway policy of this benchmark (a `GatewayPolicy`)."""
        return policy_from_dict(self.policy_dict())

    def policy_dict(self) -> dict:
        return {
            "limits": {"budget": None, "rate_per_second": 1e9, "burst": 1e9},
            "detectors": {"ood": {"path": str(self.detector), "window": self.window,
                                  "level": self.level, "min_queries": self.min_queries}},
            "on_flag": {"action": "degrade", "policy": "label_only"},
            "always": "identity",
        }


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


# -- the benchmark --------------------------------------------------------------------------------
def run_realistic(config: RealisticConfig) -> dict:
    """Run both attackers (resuming what is done) and write OUT/results.{json,md}."""
    out = check_run_dir(config)
    benign = load_dataset(config.benign_spec, config.benign_split)
    split_file = defended.victim_domain_split(out, benign, config.pool_fraction, config.seed)
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
    with defended.Served(config.victims, config.model) as served:
        gw, store = served.gateway(policy, out / "gateway.db")
        try:
            target = f"127.0.0.1:{gw.port}"
            for name, spec, split, exclude, pool in scenarios:
                run_dir = out / name
                done = (run_dir / "report.json").is_file()
                kconfig = defended.knockoff_config(
                    config, out=run_dir, grpc=target,
                    api_key="unused" if done else defended.client_key(store, name),
                    transfer_set=spec, transfer_split=split, exclude_classes=exclude,
                    test_set=str(split_file), test_split="test")
                log.info("%s attacker: %d queries from %s", name, config.budget, pool)
                report = defended.run_knockoff_through(served, kconfig)
                _, responses = journal_answers(run_dir)
                rows.append(_row(name, pool, defended.audit_summary(store.audit_records(), name),
                                 defended.answer_summary(responses[:config.budget]),
                                 store.load_detectors(name), report))
        finally:
            gw.stop()
            store.close()
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
    return defended.write_results(out, f"Realistic adversary: {config.model}", rows, _COLUMNS,
                                  meta, notes)


PROG = "python -m benchmarks.realistic_adversary"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    return benchmark_main(RealisticConfig, run_realistic, argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
