"""The procedural-prior thief (`attack.synthetic`) against a served victim, beside Knockoff.

    python -m benchmarks.synthetic_bench --victims victims --model gtsrb_cnn \\
        --test-set ../shared/data/gtsrb32_uint8_npy.tar.xz --budget 100000 --seeds 0 1 2 \\
        --out results/gtsrb_synthetic

The embedded model server runs as its own process over ``--victims`` (a folder with a
``models.config``); every run goes through gRPC, one image = one query. ``--methods``:
``synthetic`` (`attack.synthetic` with its defaults: the ``cnn`` surrogate from scratch at the
victim's size; ``--set KEY=VALUE`` overrides a field of its config, e.g. ``round_size=10000``; with
``granularity='"top1"'`` the row, labelled ``synthetic, top1 answers``, is a label-only thief's),
and the Knockoff rows of `benchmarks.datafree_bench` (``knockoff-mobilenet``: random
Tiny-ImageNet queries from the ``--knockoff-split`` of the zip, by default train+val: 20,000
images, MobileNet alpha 0.25 at 96 px from the ImageNet weights in ``--data``,
``--knockoff-epochs``). Each row reads the run's report: surrogate accuracy, fidelity, classes
below 50% and at 0%, the curve, seconds per 1,000 queries by part, and for the synthetic runs
the classes the victim never answered. ``--flags`` replays each synthetic run's query stream
(the images the victim received, in the order sent: rendered ones drawn again from their stored
theta, natural ones from the run's pool) through the gateway's detectors
(`benchmarks.datafree_bench.first_flags`'s logic: PRADA, and the OOD detector of
``--detector``). ``results.json`` and ``results.md`` (the per-class table of every method, mean
over seeds, beside the victim's) go to ``--out``; ``--reuse`` reads back finished rows (with
``--flags``, a finished row without flags gets them: its run's stream is replayed).

``--refit-from DIR --set epochs=N`` uses paid answers again: each seed's finished run
``DIR/synthetic_s<seed>`` is copied to ``--out`` and resumed there with another final pass
(`attack.synthetic.FINAL_PASS_FIELDS`: epochs, final_balance, and for runs with
``online_passes=0`` the surrogate's architecture and recipe, ``--set mixup=0.2`` or
``backbone='"resnet50"'``); every answer is read back from its journal, none is sent, and the
row is labelled ``synthetic, final pass epochs=N``. ``--refit-from DIR --budget
N`` with N above the runs' budget grows each copy to N (`attack.synthetic.check_resume`, with
``--set epochs=...`` too if given): the answers are read back, the rounds continue to N, the
final pass trains on all N; only the new queries are paid (the row's ``sent_this_session``),
and the row is labelled ``synthetic, grown from B``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.datafree_bench import (
    LOW,
    MOBILENET,
    ROW_NAME,
    TINY,
    class_counts,
    per_class_table,
)
from benchmarks.datafree_bench import run_one as run_knockoff_row
from benchmarks.harness import runs

METHODS = ("synthetic", "knockoff", "knockoff-mobilenet")
SPLITS = ("train+val", "train", "val")  # Knockoff's pool: the Tiny-ImageNet zip's splits


def _parse_sets(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        values[key.replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    return values


def synthetic_config(ns, target: str, seed: int, out: Path):
    """The `SyntheticConfig` of one benchmark run (raises `UsageError` on a bad --set)."""
    from attack.synthetic import SyntheticConfig

    values = dict(grpc=target, model=ns.model, budget=ns.budget, test_set=ns.test_set,
                  test_limit=ns.test_limit, noise=200, curve_points=ns.curve_points,
                  seed=seed, out=str(out))
    return SyntheticConfig(**{**values, **_parse_sets(ns.set)})


def first_flags(run_dir: Path, detector: str | None, batch: int = 64) -> dict:
    """The query count at which PRADA (default config) and, with `detector`, the OOD detector
    (calibrated threshold, default window) first flag a synthetic run's stream: the images the
    victim received, in the order sent (`attack.synthetic.sent_queries`: the rendered ones
    drawn again from their stored theta, the natural ones from the run's pool), each with its
    journaled answer; None: never."""
    from attack.journal import QueryJournal
    from attack.synthetic import sent_queries

    with QueryJournal.open(run_dir) as journal:
        answers = np.empty((journal.num_answered, int(journal.num_classes)), np.float32)
        answers[journal.answered_indices()] = journal.responses()
    return runs.stream_flags(sent_queries(run_dir), answers, runs.detector_monitors(detector),
                             batch)


def _source(ns, seed: int) -> Path:
    return Path(ns.refit_from) / f"synthetic_s{seed}"


def refit_config(ns, target: str, seed: int, out: Path):
    """The `SyntheticConfig` that resumes the copy `out` of the finished run of `seed` in
    ``--refit-from`` with the ``--set`` values of its final pass (raises `UsageError`)."""
    from attack.synthetic import SyntheticConfig
    from common.cli import load_config

    saved = load_config(SyntheticConfig, _source(ns, seed) / "config.json")
    budget = {} if ns.budget is None else {"budget": ns.budget}
    return replace(saved, grpc=target, rest=None, out=str(out), resume=True, **budget,
                   **_parse_sets(ns.set))


def _refit_error(ns) -> tuple[str, str, object] | None:
    """(argument, expected, received) when ``--refit-from`` cannot retrain (or grow) every
    seed's run with these flags; None when it can. Read only: nothing is copied before."""
    from attack.synthetic import FINAL_PASS_FIELDS, SURROGATE_FIELDS, check_resume
    from common.errors import UsageError

    always = [name for name in FINAL_PASS_FIELDS if name not in SURROGATE_FIELDS]
    settings = (", ".join(always) + " (and for runs with online_passes=0 the surrogate's: "
                + ", ".join(SURROGATE_FIELDS) + ")")
    if ns.methods != ["synthetic"]:
        return "--methods", "synthetic with --refit-from", " ".join(ns.methods)
    if set(_parse_sets(ns.set)) - set(FINAL_PASS_FIELDS):
        return ("--set", f"with --refit-from, only the final pass's {settings}; a larger "
                "--budget grows the runs", ns.set)
    asked, grows = ns.budget, False
    for seed in ns.seeds:
        source = _source(ns, seed)
        if not (source / "report.json").is_file():
            return "--refit-from", "a folder with finished runs synthetic_s<seed>", str(source)
        budget = json.loads((source / "config.json").read_text())["budget"]
        if (asked is None and ns.budget not in (None, budget)) or (asked or budget) < budget:
            return "--budget", f"the runs' budget ({budget}) or more (a larger one grows " \
                "them; none: theirs, alike for every seed) with --refit-from", ns.budget
        ns.budget, grows = asked or budget, grows or (asked or budget) > budget
        try:
            config = refit_config(ns, "localhost:8500", seed, source)
        except (UsageError, TypeError):
            return None  # a bad --set: main's check of the config names it
        try:  # the growth's own rules (a run whose last round was cut cannot grow)
            check_resume(config, budget_given=True)
        except UsageError as err:
            if err.argument == "budget":
                return "--budget", str(err.expected), ns.budget
            return "--set", f"{err.argument}={err.expected}", ns.set  # kept by online runs
    if not ns.set and not grows:
        return ("--set", f"with --refit-from, NAME=VALUE of the final pass's {settings}, or "
                "a larger --budget", ns.set)
    return None


def run_synthetic_row(ns, target: str, seed: int) -> dict:
    out = Path(ns.out) / f"synthetic_s{seed}"
    refit = ns.refit_from is not None
    if refit and not out.exists():  # a copy: the finished run itself is left as it is
        partial = out.with_name(out.name + ".copying")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(_source(ns, seed), partial, ignore=shutil.ignore_patterns(ROW_NAME))
        partial.rename(out)
    if ns.reuse and (out / ROW_NAME).is_file():
        row = json.loads((out / ROW_NAME).read_text())
        if ns.flags and row.get("first_flagged") is None:  # a finished run replayed now
            row["first_flagged"] = first_flags(out, ns.detector)
            (out / ROW_NAME).write_text(json.dumps(row, indent=1))
        return row
    from attack.synthetic import run_synthetic

    config = (refit_config if refit else synthetic_config)(ns, target, seed, out)
    started = time.perf_counter()
    run_synthetic(config, budget_given=True)
    wall = time.perf_counter() - started
    report = json.loads((out / "report.json").read_text())
    extra, evaluation = report["extra"], report["evaluation"]
    settings = _parse_sets(ns.set)
    method = "synthetic"
    if refit:
        source = json.loads((_source(ns, seed) / ROW_NAME).read_text()) \
            if (_source(ns, seed) / ROW_NAME).is_file() else {}
        settings = {**source.get("settings", {}), **settings}
        grown = extra.get("budget_grown")
        method = ", ".join(["synthetic"] + ([f"grown from {grown['from']:,}"] if grown else [])
                           + (["final pass " + " ".join(ns.set)] if ns.set else []))
    granularity = report["config"].get("granularity", "probs")
    if granularity != "probs":  # a label-only (top-k) thief's row, never the probability row
        method += f", {granularity} answers"
    row = {"method": method, "granularity": granularity,
           "seed": seed, "budget": ns.budget, "wall_seconds": round(wall, 1),
           "settings": settings, "refit_of": _source(ns, seed).name if refit else None,
           "sent_this_session": extra.get("sent_this_session"),
           "budget_grown": extra.get("budget_grown"),
           "final_pass": extra.get("final_pass"),
           "first_flagged": first_flags(out, ns.detector) if ns.flags else None,
           "victim_acc": evaluation["victim_acc"], "surrogate_acc": evaluation["surrogate_acc"],
           "fidelity_test": evaluation["fidelity_test"],
           **class_counts(evaluation["per_class_surrogate"]),
           "per_class_victim": evaluation["per_class_victim"],
           "per_class_surrogate": evaluation["per_class_surrogate"],
           "per_class_agreement": evaluation.get("per_class_agreement"),
           "classes_never_answered": extra["classes_never_answered"],
           "online_at_budget": (extra.get("online_surrogate_at_budget") or {}).get(
               "surrogate_acc"),
           "curve": [{k: p.get(k) for k in ("queries", "surrogate_acc", "fidelity_test")}
                     for p in report["curve"]],
           "seconds_per_1000": extra["seconds_per_1000_queries"],
           "cpu_seconds_per_1000": {k: round(1000 * v / ns.budget, 3)
                                    for k, v in extra["cpu_seconds"].items()}}
    (out / ROW_NAME).write_text(json.dumps(row, indent=1))
    return row


def _markdown(rows: list[dict], ns, load: str) -> str:
    settings = "the runs' own" if getattr(ns, "refit_from", None) else "defaults"
    lines = [f"# Procedural-prior thief, {ns.budget:,} queries per run", "",
             f"Victim `{ns.model}` served by the embedded server (own process), gRPC; test: "
             f"{ns.test_limit or 'all'} images of `{Path(ns.test_set).name}`; settings "
             f"{_parse_sets(ns.set) or settings}. Load at the start: {load}.", "",
             "| method | seeds | surrogate acc (mean ± sd) | ratio | fidelity | classes < 50% "
             "| at 0% | never answered | victim s/1k | render s/1k | search s/1k "
             "| surrogate s/1k | whole run s/1k |", "|---" * 13 + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        acc = np.array([r["surrogate_acc"] for r in mine])
        ratio = acc / np.array([r["victim_acc"] for r in mine])
        fid = np.mean([r["fidelity_test"] for r in mine])
        split = {k: np.mean([r["seconds_per_1000"].get(k, np.nan) for r in mine])
                 for k in ("victim", "render", "search", "surrogate")}
        synthetic = all("classes_never_answered" in r for r in mine)  # a variant's label too
        if not synthetic:
            split["render"] = split["search"] = np.nan
        never = "/".join(str(len(r.get("classes_never_answered", []))) for r in mine) \
            if synthetic else "n/a"
        wall = np.mean([1000 * r["wall_seconds"] / r["budget"] for r in mine])
        lines.append(
            f"| {method} | {len(mine)} | {acc.mean():.4f} ± {acc.std():.4f} | "
            f"{ratio.mean():.3f}x ± {ratio.std():.3f} | {fid:.4f} | "
            + "/".join(str(r["classes_below_50"]) for r in mine) + f" of {mine[0]['classes']} | "
            + "/".join(str(r["classes_at_0"]) for r in mine) + f" | {never} | "
            + " | ".join("n/a" if np.isnan(v) else f"{v:.2f}" for v in split.values())
            + f" | {wall:.2f} |")
    if any(r.get("refit_of") for r in rows):
        lines += ["", "A row `synthetic, final pass ...` is a finished run's final pass trained "
                  "again with those settings (`--refit-from`): no query sent, the same answers; "
                  "a row `synthetic, grown from B` is a finished run of B queries resumed with "
                  "the larger budget: its answers read back, the rounds continued to the "
                  "budget (only the new queries sent), the final pass on every answer. Their "
                  "seconds are the run's until its last round plus this session's (the "
                  "journal's answers read back, the rounds rendered again, the final pass), "
                  "their whole-run column this session's alone. Queries paid this session:", ""]
        lines += [f"- {r['method']} s{r['seed']}: {r.get('sent_this_session', 0):,} of "
                  f"{r['budget']:,}" for r in rows if r.get("refit_of")]
    lines += runs.flag_lines(rows)
    lines += ["", "Curves (surrogate accuracy; synthetic: the online surrogate at each point, "
              "the final pass at the budget):", ""]
    for r in rows:
        lines.append(f"- {r['method']} s{r['seed']}: " + ", ".join(
            f"{p['queries']:,}: {p['surrogate_acc']:.4f}" for p in r["curve"])
            + (f" (online at the budget {r['online_at_budget']:.4f})"
               if r.get("online_at_budget") is not None else ""))
    lines += ["", "Per class, test accuracy and (where measured) agreement with the victim on "
              f"the class's test images (mean over seeds; * below {LOW:.0%}):", "",
              *per_class_table(rows)]
    return "\n".join(lines) + "\n"


def _fail(parser, argument: str, expected: str, received) -> int:
    print(f"{parser.prog}: error: argument {argument}: expected {expected}, received "
          f"{received}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synthetic_bench",
                                     description=__doc__.split("\n\n")[0])
    runs.served_arguments(parser, model="gtsrb_cnn")
    parser.add_argument("--test-set", required=True, help="labelled test data of the victim's "
                        "task (any data-layer spec)")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--budget", type=int, default=None,
                        help="queries per run (default 100,000; with --refit-from, the runs')")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=["synthetic"], choices=METHODS)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="fields of the synthetic run's config (JSON values)")
    parser.add_argument("--curve-points", type=int, default=5)
    parser.add_argument("--knockoff-epochs", type=int, default=5)
    parser.add_argument("--knockoff-split", default="train+val",
                        help="split(s) of the Tiny-ImageNet zip Knockoff samples its queries "
                        "from: train+val (20,000 images, the default), train or val (10,000)")
    parser.add_argument("--flags", action="store_true",
                        help="replay each synthetic stream through PRADA and --detector")
    parser.add_argument("--detector", help="an exported OOD detector (detectors/<name>/<v>)")
    parser.add_argument("--reuse", action="store_true",
                        help=f"read back finished runs' {ROW_NAME} instead of running them")
    parser.add_argument("--refit-from", metavar="DIR",
                        help="retrain the final pass of the finished runs DIR/synthetic_s<seed> "
                        "with --set's final-pass settings (epochs=N), or grow them to a larger "
                        "--budget: each run is copied to --out first and resumed there; only "
                        "the queries beyond its budget are sent")
    parser.add_argument("--out", default="runs/synthetic_bench")
    ns = parser.parse_args(argv)
    if runs.victims_error(parser, ns.victims):
        return 2
    if not Path(ns.test_set).exists():
        return _fail(parser, "--test-set", "an existing data set", ns.test_set)
    if ns.refit_from is not None:
        error = _refit_error(ns)
        if error:
            return _fail(parser, *error)
    elif ns.budget is None:
        ns.budget = 100_000
    if ns.budget < 1:
        return _fail(parser, "--budget", "at least 1", ns.budget)
    if ns.knockoff_split not in SPLITS:
        return _fail(parser, "--knockoff-split", "one of " + ", ".join(SPLITS),
                     ns.knockoff_split)
    knockoff = [m for m in ns.methods if m != "synthetic"]
    for name in ([TINY] if knockoff else []) + (
            [MOBILENET] if "knockoff-mobilenet" in knockoff else []):
        if not (Path(ns.data) / name).is_file():
            return _fail(parser, "--data", f"a folder with {name}", ns.data)
    from common.errors import UsageError

    try:
        (refit_config if ns.refit_from else synthetic_config)(
            ns, "localhost:8500", ns.seeds[0], Path(ns.out) / "check")
    except (UsageError, TypeError) as err:
        return _fail(parser, "--set", "fields of attack.synthetic.SyntheticConfig",
                     f"{ns.set} ({err})")
    from common.cli import configure_logging

    configure_logging()
    knockoff_ns = SimpleNamespace(**{**vars(ns), "arch_args": [], "natural_share": 0.5})

    def run_row(method: str, target: str, seed: int) -> dict:
        if method == "synthetic":
            return run_synthetic_row(ns, target, seed)
        return run_knockoff_row(knockoff_ns, method, target, seed)

    return runs.serve_rows(Path(ns.victims) / "models.config", ns.seeds, ns.methods, run_row,
                           out=Path(ns.out),
                           markdown=lambda rows, load: _markdown(rows, ns, load),
                           shown=lambda row: {k: v for k, v in row.items()
                                              if not k.startswith("per_class")})


if __name__ == "__main__":
    sys.exit(main())
