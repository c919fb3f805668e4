"""Output policies as a defence: the benign cost against the Knockoff surrogate's accuracy.

Answering with less than the full probability vector is the cheapest defence a server can apply
to every answer: labels only, top-k, rounding (Tramèr et al. 2016), Gaussian noise, or Lee et
al.'s reverse sigmoid (2019, "Defending against NN model stealing attacks using deceptive
perturbations"). Each costs benign users something and costs the attacker something; this
command measures both, through the real gateway (`serving.gateway` with `"always": POLICY`)
in front of the embedded model server:

    python -m benchmarks.output_policies --victims victims --model cifar10_cnn \\
        --data-dir ../shared/data --budget 3000 --out runs/output_policies \\
        --policies identity,label_only,round:1,noise:0.2,reverse_sigmoid:0.7,0.4

For each policy (one gateway each, SQLite state in OUT/<policy>/gateway.db, no detector, no
limits):

* **benign cost**: the victim's labelled test split answered through the gateway by a benign
  client, against the undefended victim's answers: top-1 accuracy change, the mean L1 distance
  between the answered and the true probability vectors (0 .. 2), and the share of answers whose
  argmax is kept;
* **attacker's result** (`--granularity probs`, the default: the attacker trains on what it
  receives; `top1`: on the argmax only, which undoes any perturbation that keeps the top-1
  class): Knockoff Nets (Orekondy et al. 2019; random strategy, Tiny-ImageNet
  transfer set, the same budget, surrogate and seed for every policy, trained on what it
  received) through the same gateway: surrogate accuracy, accuracy ratio (surrogate / victim) and
  fidelity (top-1 agreement with the undefended victim on the test split and on uniform noise).
  The evaluator's victim answers are pre-seeded from the undefended server, so every policy is
  judged against the same truth.

The reverse-sigmoid default `reverse_sigmoid:0.7,0.4` (beta, gamma) is a strong setting in the
range of Lee et al.'s experiments (the perturbation's magnitude is beta, gamma its slope; the
paper tunes both per model): it is not a reproduction of their table. `--policies` takes any
`detector.policies.parse_policy` spec; commas inside reverse_sigmoid's pair are understood.
Output: a table on stdout, OUT/results.{json,md}. Re-running resumes: a finished policy (its
benign.json and its Knockoff report.json) is reused, an interrupted attack is resumed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attack.pipeline import journal_answers, load_test_set
from benchmarks.harness.defended import (
    BenchConfig,
    Served,
    answer_summary,
    benchmark_main,
    check_run_dir,
    client_key,
    knockoff_config,
    run_knockoff_through,
    write_results,
)
from common.errors import invalid
from common.fileio import write_json_atomic
from detector.policies import parse_policy
from serving.gateway.config import policy_from_dict

__all__ = ["DEFAULT_POLICIES", "PoliciesConfig", "benign_cost", "main", "policy_slug",
           "run_output_policies", "split_policies"]

log = logging.getLogger(__name__)

DEFAULT_POLICIES = "identity,label_only,round:1,noise:0.2,reverse_sigmoid:0.7,0.4"


def split_policies(text: str) -> tuple[str, ...]:
    """``"identity,round:1,reverse_sigmoid:0.7,0.4"`` -> the specs, each checked by parse_policy.

    A comma followed by a number continues the previous spec (reverse_sigmoid's BETA,GAMMA).
    """
    if not isinstance(text, str) or not text.strip():
        raise invalid("policies", text, "a comma-separated list of output policies")
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if specs and re.fullmatch(r"[-+]?[0-9.eE+-]+", part or "x"):
            specs[-1] = f"{specs[-1]},{part}"
        else:
            specs.append(part)
    out = []
    for spec in specs:
        try:
            out.append(parse_policy(spec).spec)
        except Exception as err:  # noqa: BLE001 - one line naming the argument
            raise invalid("policies", spec, f"an output policy spec ({err})") from None
    if len(set(out)) != len(out):
        raise invalid("policies", text, "each policy at most once")
    return tuple(out)


def policy_slug(spec: str) -> str:
    """A folder name for a spec: ``reverse_sigmoid:0.7,0.4`` -> ``reverse_sigmoid_0.7_0.4``."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", spec).strip("_")


def benign_cost(true_probs: np.ndarray, answered: np.ndarray, labels: np.ndarray) -> dict:
    """What a policy costs benign users, from the undefended answers and the policy's answers.

    `true_probs`, `answered`: float ``[N, K]``; `labels`: int ``[N]``. Returns accuracy with and
    without the policy and their difference, the mean L1 distance between the two vectors per
    answer (0: unchanged, 2: disjoint), and the share of answers whose argmax is kept.
    """
    p = np.asarray(true_probs, dtype=np.float64)
    q = np.asarray(answered, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape != q.shape or y.shape != (len(p),) or not len(p):
        raise invalid("answered", f"shapes {p.shape}, {q.shape}, labels {y.shape}",
                      "two equal non-empty [N, K] arrays and labels [N]")
    acc_true = float(np.mean(p.argmax(1) == y))
    acc = float(np.mean(q.argmax(1) == y))
    return {"accuracy_undefended": acc_true, "accuracy": acc, "accuracy_change": acc - acc_true,
            "mean_l1": float(np.abs(p - q).sum(1).mean()),
            "argmax_kept": float(np.mean(p.argmax(1) == q.argmax(1))), "n": int(len(p))}


@dataclass(frozen=True)
class PoliciesConfig(BenchConfig):
    """Each output policy's benign cost against the Knockoff surrogate's accuracy ratio."""

    policies: str = field(default=DEFAULT_POLICIES, metadata={
        "help": "comma-separated output policies (detector.policies specs)", "metavar": "LIST"})
    granularity: str = field(default="probs", metadata={
        "help": "what the attacker trains on: probs (the answers as received) or top1 (their "
                "argmax only: an attacker who sees through a top-1-preserving perturbation)",
        "choices": ("probs", "top1")})
    test_limit: int | None = field(default=None, metadata={
        "help": "use at most this many test images (benign cost and evaluation)"})
    out: str = field(default="runs/output_policies", metadata={
        "help": "output folder (resumable: a finished policy is reused)", "metavar": "DIR"})

    def __post_init__(self) -> None:
        split_policies(self.policies)
        if self.granularity not in ("probs", "top1"):
            raise invalid("granularity", self.granularity, "'probs' or 'top1'")
        if self.test_limit is not None and (isinstance(self.test_limit, bool)
                                            or self.test_limit < 1):
            raise invalid("test_limit", self.test_limit, "a positive integer or None")
        super().__post_init__()

    @property
    def specs(self) -> tuple[str, ...]:
        return split_policies(self.policies)


_COLUMNS = (
    ("policy", "policy"), ("accuracy_change", "benign top-1 change"),
    ("mean_l1", "benign mean L1"), ("argmax_kept", "argmax kept"),
    ("label_only_share", "one-hot answers (attack)"), ("surrogate_acc", "surrogate acc"),
    ("ratio", "accuracy ratio"), ("fidelity_test", "fidelity (test)"),
    ("fidelity_noise", "fidelity (noise)"),
)


def run_output_policies(config: PoliciesConfig) -> dict:
    """Measure every policy (reusing finished ones) and write OUT/results.{json,md}."""
    from serving.client import ServingClient

    out = check_run_dir(config)
    rows = []
    with Served(config.victims, config.model) as served:
        truth = None
        for spec in config.specs:
            sub = out / policy_slug(spec)
            sub.mkdir(parents=True, exist_ok=True)
            policy = policy_from_dict({"limits": {"budget": None, "rate_per_second": 1e9,
                                                  "burst": 1e9}, "always": spec})
            gw, store = served.gateway(policy, sub / "gateway.db")
            try:
                target = f"127.0.0.1:{gw.port}"
                kconfig = knockoff_config(
                    config, out=sub / "knockoff", grpc=target,
                    api_key=client_key(store, "attacker"), transfer_set=config.transfer_spec,
                    transfer_split=config.transfer_split, exclude_classes=config.exclude_spec,
                    test_set=config.benign_spec, test_split=config.benign_split,
                    test_limit=config.test_limit, granularity=config.granularity)
                cost_file = sub / "benign.json"
                if cost_file.is_file():
                    cost = json.loads(cost_file.read_text())
                else:
                    test = load_test_set(kconfig)
                    if truth is None:
                        truth = served.direct(test.images)
                    with ServingClient(target, config.model, api_key=client_key(store, "benign"),
                                       batch_size=256) as client:
                        answered = np.asarray(client.predict(test.images), dtype=np.float32)
                    cost = benign_cost(truth, answered, test.labels)
                    write_json_atomic(cost_file, cost)
                log.info("%s: benign cost %s", spec, cost)
                report = run_knockoff_through(served, kconfig)
            finally:
                gw.stop()
                store.close()
            _, responses = journal_answers(sub / "knockoff")
            ev = report.get("evaluation") or {}
            rows.append({"policy": spec, **cost, **answer_summary(responses[:config.budget]),
                         **{k: ev.get(k) for k in ("victim_acc", "surrogate_acc", "ratio",
                                                   "fidelity_test", "fidelity_noise",
                                                   "n_test", "n_queries")}})
    meta = {"model": config.model, "budget": config.budget, "policies": list(config.specs),
            "attacker_trains_on": config.granularity,
            "transfer_set": config.transfer_spec, "exclude_classes": config.exclude_spec,
            "test_set": f"{config.benign_spec}:{config.benign_split}",
            "surrogate": {"backbone": config.backbone, "arch_args": list(config.arch_args),
                          "input_size": config.input_size, "epochs": config.epochs,
                          "weights": config.weights_spec}}
    notes = [
        "benign top-1 change: accuracy of the answers through the gateway minus the undefended "
        "victim's, on the test split; mean L1: per answer, sum |p_policy - p_victim| (0..2).",
        "accuracy ratio: surrogate accuracy / undefended victim accuracy on the test split; "
        "fidelity: top-1 agreement with the undefended victim.",
        f"Attack: Knockoff random, {config.budget} queries of {Path(config.transfer_spec).name}"
        f":{config.transfer_split}, surrogate {config.backbone} {' '.join(config.arch_args)} at "
        f"{config.input_size} px, {config.epochs} epochs, trained on "
        + ("the answers as received." if config.granularity == "probs"
           else "the argmax of each answer only (--granularity top1)."),
    ]
    return write_results(out, f"Output policies: {config.model}", rows, _COLUMNS, meta, notes)


PROG = "python -m benchmarks.output_policies"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    return benchmark_main(PoliciesConfig, run_output_policies, argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
