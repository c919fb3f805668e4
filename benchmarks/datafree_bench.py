"""Data-free extraction against a served victim: where the time goes and what the queries buy.

    python -m benchmarks.datafree_bench --victims /tmp/victims --model cifar10_cnn \\
        --data ../shared/data --budget 10000 --seeds 0 1 --out runs/datafree_bench

The embedded model server runs as its own process over ``--victims`` (a folder with a
``models.config``, e.g. the quick start's ``victims/``). Each method of ``--methods`` runs
through gRPC, one image = one query, with the same small surrogate (the ``cnn`` backbone, no
pre-training, 32 px): ``dfme``, ``maze``, ``dfms-hl`` (`attack.datafree`), ``hybrid`` (DFME
with half of every surrogate batch from Tiny-ImageNet) and ``knockoff`` (random Tiny-ImageNet
queries, `attack.knockoff`, trained offline for ``--knockoff-epochs``). For each run it reads
the report: surrogate accuracy and fidelity against queries, and for the data-free runs the
seconds spent on the victim (request to answer, journal included), the generator, the
surrogate, storage and evaluation, per 1,000 queries. ``results.json`` and ``results.md`` go
to ``--out``. Timings from a shared machine are inflated; compare them within one run.

``--flags``: the data-free runs keep their query blocks (``--keep-queries``), and the stream is
replayed in the order it was sent, with the victim's journaled answers, through the detectors
the gateway calls (`detector.monitor.Monitor`): PRADA with its default config and, with
``--detector``, the OOD detector at its calibrated threshold with the default window; the
query count at which each first flags the stream (offline: the gateway's logic, not its
process).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("dfme", "maze", "dfms-hl", "hybrid", "knockoff")
CIFAR = "cifar10_jpeg_q75.zip"
TINY = "tinyimagenet200_val10k_train50pc.zip"


def _common(ns, target: str, seed: int, out: Path) -> dict:
    return dict(grpc=target, model=ns.model, budget=ns.budget, backbone="cnn", weights="none",
                input_size=32, batch_size=64, test_set=str(Path(ns.data) / CIFAR),
                test_limit=ns.test_limit, noise=200, curve_points=ns.curve_points, seed=seed,
                out=str(out))


def run_one(ns, method: str, target: str, seed: int) -> dict:
    """One attack run; its headline, curve and time split from the report."""
    out = Path(ns.out) / f"{method}_s{seed}"
    started = time.perf_counter()
    if method == "knockoff":
        from attack.config import KnockoffConfig
        from attack.knockoff import run_knockoff

        config = KnockoffConfig(**_common(ns, target, seed, out), transfer_set=str(
            Path(ns.data) / TINY), epochs=ns.knockoff_epochs, heldout=0)
        run_knockoff(config)
    else:
        from attack.datafree import DataFreeConfig, run_datafree

        hybrid = method == "hybrid"
        config = DataFreeConfig(**_common(ns, target, seed, out),
                                method="dfme" if hybrid else method,
                                natural_share=0.5 if hybrid else 0.0,
                                transfer_set=str(Path(ns.data) / TINY) if hybrid else None,
                                keep_queries=ns.flags)
        run_datafree(config)
    wall = time.perf_counter() - started
    report = json.loads((out / "report.json").read_text())
    split = report["extra"].get("time_seconds", {})
    flagged = first_flags(out, ns.detector) if ns.flags and method != "knockoff" else None
    return {"method": method, "seed": seed, "budget": ns.budget, "wall_seconds": round(wall, 1),
            "first_flagged": flagged,
            "victim_acc": report["evaluation"]["victim_acc"],
            "surrogate_acc": report["evaluation"]["surrogate_acc"],
            "fidelity_test": report["evaluation"]["fidelity_test"],
            "curve": [{k: p.get(k) for k in ("queries", "surrogate_acc", "fidelity_test")}
                      for p in report["curve"]],
            "seconds_per_1000": {k: round(1000 * v / ns.budget, 3) for k, v in split.items()},
            "cpu_seconds_per_1000": {k: round(1000 * v / ns.budget, 3) for k, v in
                                     report["extra"].get("cpu_seconds", {}).items()}}


def first_flags(run_dir: Path, detector: str | None, batch: int = 64) -> dict:
    """The query count at which the gateway's detectors (`detector.monitor.Monitor`, each on its
    own: PRADA with its default config, and with `detector` the OOD detector with its
    calibrated threshold and default window) first flag the stream of a data-free run kept
    with --keep-queries, replayed in the order it was sent in batches of `batch`; None: never."""
    from types import SimpleNamespace

    from attack.journal import QueryJournal
    from detector.monitor import Monitor
    from detector.ood import OODConfig
    from detector.prada import PradaConfig

    firsts, images = [], []
    for path in sorted((run_dir / "queries").glob("it*.npz")):
        with np.load(path) as block:
            firsts.append(int(block["first"]))
            images.append(block["images"])
    stream = np.concatenate([images[i] for i in np.argsort(firsts, kind="stable")])
    with QueryJournal.open(run_dir) as journal:
        answers = np.empty((len(stream), int(journal.num_classes)), np.float32)
        answers[journal.answered_indices()] = journal.responses()
    monitors = {"prada": Monitor.from_configs(prada=PradaConfig())}
    if detector:
        monitors["ood"] = Monitor.from_configs(ood=OODConfig(path=detector))
    flags: dict = {"stream": len(stream)}
    for name, monitor in monitors.items():
        state = SimpleNamespace(ood=None, prada=None, flagged=False, flagged_by=None)
        flags[name] = None
        for start in range(0, len(stream), batch):
            if monitor.observe(state, stream[start:start + batch],
                               answers[start:start + batch], client="thief").flagged:
                flags[name] = min(start + batch, len(stream))
                break
    return flags


def _markdown(rows: list[dict], ns, load: str) -> str:
    lines = [f"# Data-free extraction, {ns.budget:,} queries per run", "",
             f"Victim `{ns.model}` served by the embedded server (own process), gRPC; "
             f"surrogate `cnn` from scratch at 32 px; test: {ns.test_limit} CIFAR-10 images. "
             f"Load at the start: {load}.", "",
             "Seconds per 1,000 queries, wall clock (attack CPU seconds in brackets; the victim's "
             "CPU is the server process's and not counted there).", "",
             "| method | seeds | surrogate acc (mean ± sd) | fidelity | victim | "
             "generator | surrogate | storage | whole run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        acc = np.array([r["surrogate_acc"] for r in mine])
        fid = np.array([r["fidelity_test"] for r in mine])
        parts = ("victim", "generator", "surrogate", "storage")
        split = {k: np.mean([r["seconds_per_1000"].get(k, np.nan) for r in mine]) for k in parts}
        cpu = {k: np.mean([r["cpu_seconds_per_1000"].get(k, np.nan) for r in mine])
               for k in parts}
        wall = np.mean([1000 * r["wall_seconds"] / r["budget"] for r in mine])
        lines.append(f"| {method} | {len(mine)} | {acc.mean():.4f} ± {acc.std():.4f} | "
                     f"{fid.mean():.4f} | " + " | ".join(
                         "n/a" if np.isnan(split[k]) else f"{split[k]:.2f} ({cpu[k]:.2f})"
                         for k in parts)
                     + f" | {wall:.2f} |")
    flags = [f"{r['method']} s{r['seed']}: {r['first_flagged']}" for r in rows
             if r.get("first_flagged")]
    if flags:
        lines += ["", "The gateway's detectors first flag the stream at query (None: never): "
                  + "; ".join(flags)]
    lines += ["", "Curves (surrogate accuracy at each point, first seed):", ""]
    for r in rows:
        if r["seed"] == rows[0]["seed"]:
            lines.append(f"- {r['method']}: " + ", ".join(
                f"{p['queries']:,}: {p['surrogate_acc']:.4f}" for p in r["curve"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datafree_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--victims", required=True, help="folder with models.config")
    parser.add_argument("--model", default="cifar10_cnn")
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--curve-points", type=int, default=4)
    parser.add_argument("--knockoff-epochs", type=int, default=10)
    parser.add_argument("--flags", action="store_true",
                        help="keep the data-free queries and replay them through the gateway's "
                             "detectors (PRADA; the OOD detector with --detector)")
    parser.add_argument("--detector", help="an exported OOD detector (detectors/<name>/<v>)")
    parser.add_argument("--out", default="runs/datafree_bench")
    ns = parser.parse_args(argv)
    config = Path(ns.victims) / "models.config"
    if not config.is_file():
        print(f"{parser.prog}: error: argument --victims: expected a folder with models.config, "
              f"received {ns.victims}", file=sys.stderr)
        return 2
    if ns.budget < 1000:
        print(f"{parser.prog}: error: argument --budget: expected at least 1000, received "
              f"{ns.budget}", file=sys.stderr)
        return 2
    for name in (CIFAR, TINY):
        if not (Path(ns.data) / name).is_file():
            print(f"{parser.prog}: error: argument --data: expected a folder with {name}, "
                  f"received {ns.data}", file=sys.stderr)
            return 2
    import os

    from serving import testing

    load = "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + \
        f" on {os.cpu_count()} cores"
    Path(ns.out).mkdir(parents=True, exist_ok=True)
    rows = []
    with testing.model_server(config_file=config, process=True) as server:
        for seed in ns.seeds:
            for method in ns.methods:
                rows.append(run_one(ns, method, server.target, seed))
                print(json.dumps(rows[-1]), flush=True)
                (Path(ns.out) / "results.json").write_text(json.dumps(
                    {"load": load, "rows": rows}, indent=1))
    text = _markdown(rows, ns, load)
    (Path(ns.out) / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
