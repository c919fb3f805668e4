"""Data-free extraction against a served victim: where the time goes and what the queries buy.

    python -m benchmarks.datafree_bench --victims out/quickstart/victims --model cifar10_cnn \\
        --data ../shared/data --budget 10000 --seeds 0 1 --out runs/datafree_bench

The embedded model server runs as its own process over ``--victims`` (a folder with a
``models.config``, e.g. the quick start's ``victims/``). Each method of ``--methods`` runs
through gRPC, one image = one query, with the same small surrogate (the ``cnn`` backbone, no
pre-training, 32 px): ``dfme``, ``maze``, ``dfms-hl`` (`attack.datafree`), ``hybrid`` (DFME
with half of every surrogate batch from Tiny-ImageNet: not data-free), ``hybrid-prior`` (DFME
with that half rendered by the procedural prior, `attack.prior`, procedural backgrounds only:
data-free, no real image), ``hybrid-prior-hl`` (the same with dfms-hl: top-1 labels only)
and ``knockoff`` (random Tiny-ImageNet
queries, `attack.knockoff`, trained offline for ``--knockoff-epochs``; ``knockoff-adaptive``:
the same with Knockoff's adaptive strategy, the bandit over Tiny-ImageNet's classes;
``knockoff-mobilenet``: the README's Knockoff surrogate instead, MobileNet alpha 0.25 from the
ImageNet weights in ``--data`` at 96 px, trained on the victim's 32 px view). For each
run it reads the report: surrogate accuracy and fidelity against queries, and for the data-free
runs the seconds spent on the victim (request to answer, journal included), the generator, the
surrogate, storage and evaluation, per 1,000 queries. ``results.json`` and ``results.md`` go
to ``--out``. Timings from a shared machine are inflated; compare them within one run.

Another task: ``--test-set`` (e.g. ``../shared/data/gtsrb32_uint8_npy.tar.xz`` against a GTSRB
victim) replaces CIFAR-10, ``--natural-share`` sets the hybrid's share of natural images. Each
row counts the classes the surrogate copies poorly (test accuracy below 50%, and at 0%; Atli et
al.'s finding on GTSRB), and ``results.md`` puts the per-class accuracies of every method (mean
over seeds) beside the victim's.

``--final-epochs N`` (default: the attack's, 0: off): the data-free runs' final pass, a
surrogate trained from its initial weights on every answered query after the budget; the row's
accuracy is that surrogate's, the online one's (``online_acc``) beside it. With ``--reuse``, a
finished run whose row was made with another final pass is resumed (its answers read back from
the journal, nothing paid again) and only the pass is trained: a final pass measured on runs
made before it existed.

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
import warnings
from pathlib import Path

import numpy as np

from attack.datafree import DataFreeConfig
from attack.evaluate import poor_classes
from benchmarks.harness.runs import (
    detector_monitors,
    flag_lines,
    serve_rows,
    served_arguments,
    stream_flags,
    victims_error,
)

METHODS = ("dfme", "maze", "dfms-hl", "hybrid", "hybrid-prior", "hybrid-prior-hl", "knockoff",
           "knockoff-adaptive", "knockoff-mobilenet")
PRIOR_HYBRIDS = {"hybrid-prior": "dfme", "hybrid-prior-hl": "dfms-hl"}
"""The data-free hybrids: the natural share rendered by the procedural prior (no real image)."""
CIFAR = "cifar10_jpeg_q75.zip"
TINY = "tinyimagenet200_val10k_train50pc.zip"
MOBILENET = "mobilenet_2_5_224_tf_no_top.h5"
ROW_NAME = "row.json"  # a finished run's row, beside its report (read back by --reuse)


LOW = 0.5  # a class the surrogate gets below this accuracy is copied poorly


def _test_set(ns) -> str:
    return ns.test_set or str(Path(ns.data) / CIFAR)


def _common(ns, target: str, seed: int, out: Path) -> dict:
    return dict(grpc=target, model=ns.model, budget=ns.budget, backbone="cnn", weights="none",
                arch_args=tuple(ns.arch_args), input_size=32, batch_size=64,
                test_set=_test_set(ns),
                test_limit=ns.test_limit, noise=200, curve_points=ns.curve_points, seed=seed,
                out=str(out))


def variant(method: str, replay: int = 0, diversity: float | None = None) -> str:
    """A row's name: the method, then its replay steps and class-diversity weight when set."""
    return method + (f" replay {replay}" if replay else "") + (
        "" if diversity is None else f" div {diversity:g}")


def variants(ns) -> list[tuple[str, int, float | None]]:
    """(method, replay steps, diversity) of each run per seed: every data-free method with each
    of ``--replay-steps`` and ``--diversity``, the Knockoff baselines once."""
    out = []
    for method in ns.methods:
        if method.startswith("knockoff"):
            out.append((method, 0, None))
            continue
        out += [(method, replay, diversity) for replay in ns.replay_steps
                for diversity in (ns.diversity or [None])]
    return out


def run_one(ns, method: str, target: str, seed: int, replay: int = 0,
            diversity: float | None = None) -> dict:
    """One attack run; its headline, curve and time split from the report (with `ns.reuse`, a
    finished run's row is read back instead). `replay` (experience replay steps) and
    `diversity` (None: the attack's default) apply to the data-free methods."""
    name = variant(method, replay, diversity)
    out = Path(ns.out) / f"{name.replace(' ', '_')}_s{seed}"
    wanted = getattr(ns, "final_epochs", None)  # None: any final pass (a caller without one)
    final_epochs = (0 if method.startswith("knockoff") else DataFreeConfig.final_epochs
                    if wanted is None else wanted)
    earlier = (json.loads((out / ROW_NAME).read_text())
               if getattr(ns, "reuse", False) and (out / ROW_NAME).is_file() else None)
    if earlier is not None and (wanted is None or method.startswith("knockoff")
                                or earlier.get("final_epochs", 0) == final_epochs):
        return earlier
    # --reuse of a data-free run with another final pass: resumed (nothing paid again, the
    # final pass trained), its earlier wall time kept
    resume = (getattr(ns, "reuse", False) and not method.startswith("knockoff")
              and (out / "config.json").is_file())
    started = time.perf_counter()
    if method.startswith("knockoff"):
        from attack.config import KnockoffConfig
        from attack.knockoff import run_knockoff

        surrogate = _common(ns, target, seed, out)
        if method == "knockoff-mobilenet":  # the README's Knockoff: pre-trained, 96 px
            surrogate.update(backbone="mobilenet", arch_args=("alpha=0.25",), input_size=96,
                             weights=str(Path(ns.data) / MOBILENET))
        config = KnockoffConfig(**surrogate, transfer_set=str(
            Path(ns.data) / TINY), epochs=ns.knockoff_epochs, heldout=0,
            transfer_split=getattr(ns, "knockoff_split", "train"),
            strategy="adaptive" if method == "knockoff-adaptive" else "random")
        run_knockoff(config)
    else:
        from attack.datafree import run_datafree

        hybrid, prior = method == "hybrid", method in PRIOR_HYBRIDS
        tuned = {} if diversity is None else {"diversity": diversity}
        config = DataFreeConfig(**_common(ns, target, seed, out),
                                method=PRIOR_HYBRIDS.get(method, "dfme" if hybrid else method),
                                natural_share=ns.natural_share if hybrid or prior else 0.0,
                                natural_source="prior" if prior else "images",
                                transfer_set=str(Path(ns.data) / TINY) if hybrid else None,
                                keep_queries=ns.flags, replay_steps=replay,
                                replay_size=getattr(ns, "replay_size", 100_000),
                                generator_width=getattr(ns, "generator_width", 64),
                                diversity_of=getattr(ns, "diversity_of", "auto"),
                                final_epochs=final_epochs, resume=resume, **tuned)
        run_datafree(config)
    wall = time.perf_counter() - started + (earlier or {}).get("wall_seconds", 0.0)
    report = json.loads((out / "report.json").read_text())
    split = report["extra"].get("time_seconds", {})
    flagged = (first_flags(out, ns.detector) if ns.flags and not method.startswith("knockoff")
               else None)
    online = report["extra"].get("online_surrogate_at_budget") or {}
    row = {"method": name, "seed": seed, "budget": ns.budget, "wall_seconds": round(wall, 1),
            "final_epochs": final_epochs, "online_acc": online.get("surrogate_acc"),
            "online_fidelity": online.get("fidelity_test"),
            "first_flagged": flagged,
            "answer_classes": report["extra"].get("answer_classes"),
            "victim_acc": report["evaluation"]["victim_acc"],
            "surrogate_acc": report["evaluation"]["surrogate_acc"],
            "fidelity_test": report["evaluation"]["fidelity_test"],
            **class_counts(report["evaluation"]["per_class_surrogate"]),
            "per_class_victim": report["evaluation"]["per_class_victim"],
            "per_class_surrogate": report["evaluation"]["per_class_surrogate"],
            "per_class_agreement": report["evaluation"].get("per_class_agreement"),
            "curve": [{k: p.get(k) for k in ("queries", "surrogate_acc", "fidelity_test",
                                             "seconds", "parts") if k in p}
                      for p in report["curve"]],
            "seconds_per_1000": {k: round(1000 * v / ns.budget, 3) for k, v in split.items()},
            "cpu_seconds_per_1000": {k: round(1000 * v / ns.budget, 3) for k, v in
                                     report["extra"].get("cpu_seconds", {}).items()}}
    (out / ROW_NAME).write_text(json.dumps(row, indent=1))
    return row


def class_counts(per_class: dict) -> dict:
    """How many classes (with test images) the surrogate gets below `LOW` and at exactly 0."""
    values = [v for v in per_class.values() if v is not None]
    return {"classes": len(values), "classes_below_50": sum(v < LOW for v in values),
            "classes_at_0": sum(v == 0 for v in values)}


def per_class_table(rows: list[dict]) -> list[str]:
    """Markdown: per class, the victim's test accuracy and each method's surrogate accuracy
    (mean over its seeds), sorted by the victim's class order; `*` marks a mean below `LOW`.
    When rows measured it (``per_class_agreement``), each method's agreement with the victim
    on the class's test images (its fidelity there) beside its accuracy ("-" for a method with
    a seed measured before it existed). Under the table, per method, the classes below `LOW`:
    by accuracy, by agreement, and by accuracy where the victim itself is below `LOW` too
    (`attack.evaluate.poor_classes`)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    names = list(rows[0]["per_class_surrogate"])

    def mean(table: str, name: str, method: str | None = None) -> float:
        return np.nanmean([_nan((r.get(table) or {}).get(name)) for r in rows
                           if method is None or r["method"] == method])

    def agreement_of(method: str) -> dict[str, float] | None:
        if not all(r.get("per_class_agreement") for r in rows if r["method"] == method):
            return None
        return {name: mean("per_class_agreement", name, method) for name in names}

    with warnings.catch_warnings():  # a class no seed drew a test image of: nan, skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        victim = {name: mean("per_class_victim", name) for name in names}
        means = {m: {name: mean("per_class_surrogate", name, m) for name in names}
                 for m in methods}
        agreement = {m: agreement_of(m) for m in methods}
    shown = any(r.get("per_class_agreement") for r in rows)

    def cell(value: float) -> str:
        return "n/a" if np.isnan(value) else f"{value:.2f}{'*' if value < LOW else ''}"

    header = [f"{m} | {m} agreement" if shown else m for m in methods]
    lines = ["| class | victim | " + " | ".join(header) + " |",
             "|---|---|" + "---|" * len(methods) * (2 if shown else 1)]
    for name in names:
        if np.isnan(victim[name]):
            continue  # no test image of this class drawn
        cells = [cell(means[m][name]) + (
            "" if not shown else " | -" if agreement[m] is None else
            f" | {cell(agreement[m][name])}") for m in methods]
        lines.append(f"| {name} | {victim[name]:.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"Classes below {LOW:.0%} (of the means): surrogate accuracy; agreement with "
              f"the victim; surrogate accuracy where the victim itself is below {LOW:.0%}:", ""]
    known = {name: _none(victim[name]) for name in names}
    for m in methods:
        poor = poor_classes(known, {name: _none(means[m][name]) for name in names},
                            None if agreement[m] is None else
                            {name: _none(agreement[m][name]) for name in names}, LOW)
        lines.append(f"- {m}: " + "; ".join(
            "-" if poor[key] is None else f"{len(poor[key])}"
            + (f" ({', '.join(poor[key])})" if poor[key] else "")
            for key in ("accuracy", "agreement", "victim_too")))
    return lines


def curve_means(rows: list[dict]) -> list[tuple[int, list[float]]]:
    """Per query count of the curves of `rows` (one variant's seeds): the accuracies there."""
    at: dict[int, list[float]] = {}
    for r in rows:
        for p in r["curve"]:
            at.setdefault(int(p["queries"]), []).append(float(p["surrogate_acc"]))
    return sorted(at.items())


def pace(row: dict) -> list[tuple[int, int, float]]:
    """(from, to, seconds per 1,000 queries) between consecutive curve points that recorded
    the time per part and the end of the run, evaluation excluded: does the cost stay linear
    in the budget?"""
    points = [(0, 0.0)] + [(int(p["queries"]), sum(v for k, v in p["parts"].items()
                                                    if k != "evaluation"))
                           for p in row["curve"] if p.get("parts")]
    if len(points) > 1 and row.get("seconds_per_1000"):  # the end: the report's split
        points.append((int(row["budget"]), row["budget"] / 1000 * sum(
            v for k, v in row["seconds_per_1000"].items()
            if k not in ("evaluation", "final_pass"))))
    return [(a, b, 1000 * (tb - ta) / (b - a))
            for (a, ta), (b, tb) in zip(points, points[1:]) if b > a]


def _final_seconds(row: dict) -> float:
    """Wall seconds of a row's final pass (this session's, or the loaded one's)."""
    return row["seconds_per_1000"].get("final_pass", 0.0) * row["budget"] / 1000


def _nan(value) -> float:
    return np.nan if value is None else float(value)


def _none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def first_flags(run_dir: Path, detector: str | None, batch: int = 64) -> dict:
    """The query count at which the gateway's detectors (`detector.monitor.Monitor`, each on its
    own: PRADA with its default config, and with `detector` the OOD detector with its
    calibrated threshold and default window) first flag the stream of a data-free run kept
    with --keep-queries, replayed in the order it was sent in batches of `batch`; None: never."""
    from attack.journal import QueryJournal

    firsts, images = [], []
    for path in sorted((run_dir / "queries").glob("it*.npz")):
        with np.load(path) as block:
            firsts.append(int(block["first"]))
            images.append(block["images"])
    stream = np.concatenate([images[i] for i in np.argsort(firsts, kind="stable")])
    with QueryJournal.open(run_dir) as journal:
        answers = np.empty((len(stream), int(journal.num_classes)), np.float32)
        answers[journal.answered_indices()] = journal.responses()
    return stream_flags([(0, stream)], answers, detector_monitors(detector), batch)


def _markdown(rows: list[dict], ns, load: str) -> str:
    victim_acc = float(np.mean([r["victim_acc"] for r in rows]))
    args = " ".join(getattr(ns, "arch_args", ()))
    lines = [f"# Data-free extraction, {ns.budget:,} queries per run", "",
             f"Victim `{ns.model}` served by the embedded server (own process), gRPC; "
             f"surrogate `cnn{' ' + args if args else ''}` from scratch at 32 px; test: "
             f"{ns.test_limit} images of `{Path(_test_set(ns)).name}` (victim "
             f"{victim_acc:.4f} on them, mean over seeds)"
             + ("; knockoff-mobilenet: MobileNet alpha 0.25, ImageNet weights, 96 px"
                if any(r["method"] == "knockoff-mobilenet" for r in rows) else "")
             + f". Load at the start: {load}.", "",
             "A data-free row without `replay N` ran without experience replay; `div W`: the "
             "class-diversity weight when not the attack's default. Real images: `hybrid` "
             "and `knockoff*` query Tiny-ImageNet; `hybrid-prior*` mix the procedural prior's "
             "renders instead (data-free, like dfme/maze/dfms-hl); `*-hl` and dfms-hl learn "
             "from top-1 labels only.", "",
             "Seconds per 1,000 queries, wall clock (attack CPU seconds in brackets; the victim's "
             "CPU is the server process's and not counted there; with replay, the victim's is the "
             "wait left after the replay steps it overlaps).", "",
             "`final N`: the reported surrogate is the final pass (N epochs from the initial "
             "weights over every answered query, `--final-epochs`); `online`: the surrogate "
             "trained during the generator loop, at the budget (mean ± sd).", "",
             "| method | seeds | surrogate acc (mean ± sd) | ratio | fidelity | classes < 50% "
             "| at 0% | online | victim | generator | surrogate | replay | storage | final pass "
             "| whole run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        acc = np.array([r["surrogate_acc"] for r in mine])
        fid = np.array([r["fidelity_test"] for r in mine])
        parts = ("victim", "generator", "surrogate", "replay", "storage", "final_pass")
        split = {k: np.mean([r["seconds_per_1000"].get(k, np.nan) for r in mine]) for k in parts}
        cpu = {k: np.mean([r["cpu_seconds_per_1000"].get(k, np.nan) for r in mine])
               for k in parts}
        wall = np.mean([1000 * r["wall_seconds"] / r["budget"] for r in mine])
        ratio = acc / np.array([r["victim_acc"] for r in mine])
        below = "/".join(str(r.get("classes_below_50", "?")) for r in mine)
        zero = "/".join(str(r.get("classes_at_0", "?")) for r in mine)
        online = [r["online_acc"] for r in mine if r.get("online_acc") is not None]
        epochs = mine[0].get("final_epochs", 0)
        lines.append(f"| {method}{f' final {epochs}' if epochs else ''} | {len(mine)} | "
                     f"{acc.mean():.4f} ± {acc.std():.4f} | "
                     f"{ratio.mean():.3f}x | {fid.mean():.4f} | {below} of "
                     f"{mine[0].get('classes', '?')} | {zero} | "
                     + (f"{np.mean(online):.4f} ± {np.std(online):.4f} | "
                        if len(online) == len(mine) else "n/a | ") + " | ".join(
                         "n/a" if np.isnan(split[k]) else f"{split[k]:.2f} ({cpu[k]:.2f})"
                         for k in parts)
                     + f" | {wall:.2f} |")
    lines += flag_lines(rows)
    lines += ["", "Curves (surrogate accuracy at each point, mean ± sd over seeds):", ""]
    for method in dict.fromkeys(r["method"] for r in rows):
        lines.append(f"- {method}: " + ", ".join(
            f"{n:,}: {np.mean(accs):.4f} ± {np.std(accs):.4f}"
            for n, accs in curve_means([r for r in rows if r["method"] == method])))
    finals = [r for r in rows if r.get("final_epochs") and r.get("online_acc") is not None]
    if finals:
        lines += ["", "At the budget, per seed: the online surrogate (trained during the loop) "
                  "-> the final pass (the reported surrogate):", ""]
        lines += [f"- {r['method']} s{r['seed']}: {r['online_acc']:.4f} -> "
                  f"{r['surrogate_acc']:.4f} ({r['surrogate_acc'] - r['online_acc']:+.4f}; "
                  f"final pass {_final_seconds(r):.0f} s)" for r in finals]
    paced = [(r, pace(r)) for r in rows if pace(r)]
    if paced:
        lines += ["", "Seconds per 1,000 queries between curve points (the attack's parts, "
                  "evaluation excluded):", ""]
        lines += [f"- {r['method']} s{r['seed']}: " + ", ".join(
            f"{a:,}-{b:,}: {v:.2f}" for a, b, v in spans) for r, spans in paced]
    if rows and rows[0].get("per_class_surrogate"):
        lines += ["", "Per class, test accuracy of the victim and of each method's surrogate, "
                  "and the surrogate's agreement with the victim on the class's test images "
                  f"(mean over seeds; * below {LOW:.0%}):", "", *per_class_table(rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datafree_bench",
                                     description=__doc__.split("\n\n")[0])
    served_arguments(parser, model="cifar10_cnn")
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--test-set", help="labelled test data of the victim's task (any "
                        "data-layer spec); default: CIFAR-10 in --data")
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--natural-share", type=float, default=0.5,
                        help="the hybrid's share of natural images in each surrogate batch")
    parser.add_argument("--curve-points", type=int, default=4)
    parser.add_argument("--knockoff-epochs", type=int, default=10)
    parser.add_argument("--arch-args", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the surrogate cnn's arguments, every method alike (e.g. "
                             "filters=[16,32,64] dense_units=128: a quarter of the cost)")
    parser.add_argument("--replay-steps", type=int, nargs="+", metavar="N",
                        default=[DataFreeConfig.replay_steps],
                        help="experience replay steps per iteration of the data-free methods "
                             "(default: the attack's); several values: one run each")
    parser.add_argument("--replay-size", type=int, default=100_000,
                        help="answered queries kept for replay")
    parser.add_argument("--diversity", type=float, nargs="+", metavar="W",
                        help="class-diversity weight of the data-free generators; several "
                             "values: one run each (default: the attack's)")
    parser.add_argument("--diversity-of", default="auto",
                        choices=("auto", "victim", "surrogate"),
                        help="whose predictions the class diversity spreads (attack.datafree)")
    parser.add_argument("--generator-width", type=int, default=64,
                        help="channels of the generator's last convolution")
    parser.add_argument("--final-epochs", type=int, default=DataFreeConfig.final_epochs,
                        metavar="N",
                        help="the data-free runs' final pass: epochs over every answered query "
                             "after the budget (0: off, the online surrogate is reported); "
                             "with --reuse, a finished run made with another value is resumed "
                             "for its final pass, no query paid again")
    parser.add_argument("--flags", action="store_true",
                        help="keep the data-free queries and replay them through the gateway's "
                             "detectors (PRADA; the OOD detector with --detector)")
    parser.add_argument("--detector", help="an exported OOD detector (detectors/<name>/<v>)")
    parser.add_argument("--reuse", action="store_true",
                        help="read back the rows of runs already finished in --out (their "
                             f"{ROW_NAME}) instead of running them again")
    parser.add_argument("--out", default="runs/datafree_bench")
    ns = parser.parse_args(argv)
    config = Path(ns.victims) / "models.config"
    if victims_error(parser, ns.victims):
        return 2
    if ns.budget < 1000:
        print(f"{parser.prog}: error: argument --budget: expected at least 1000, received "
              f"{ns.budget}", file=sys.stderr)
        return 2
    needed = ([] if ns.test_set else [CIFAR]) + (
        [TINY] if any(m == "hybrid" or m.startswith("knockoff") for m in ns.methods) else [])
    if "knockoff-mobilenet" in ns.methods:
        needed.append(MOBILENET)
    for name in needed:
        if not (Path(ns.data) / name).is_file():
            print(f"{parser.prog}: error: argument --data: expected a folder with {name}, "
                  f"received {ns.data}", file=sys.stderr)
            return 2
    if ns.test_set and not Path(ns.test_set).exists():
        print(f"{parser.prog}: error: argument --test-set: expected an existing data set, "
              f"received {ns.test_set}", file=sys.stderr)
        return 2
    for flag, values, least in (("--replay-steps", ns.replay_steps, 0),
                                ("--final-epochs", [ns.final_epochs], 0),
                                ("--diversity", ns.diversity or [], 0),
                                ("--replay-size", [ns.replay_size], 1),
                                ("--generator-width", [ns.generator_width], 1)):
        bad = [v for v in values if v < least]
        if bad:
            print(f"{parser.prog}: error: argument {flag}: expected values of at least "
                  f"{least}, received {bad[0]}", file=sys.stderr)
            return 2
    if not 0 < ns.natural_share <= 1:
        print(f"{parser.prog}: error: argument --natural-share: expected a share in (0, 1], "
              f"received {ns.natural_share}", file=sys.stderr)
        return 2
    return serve_rows(config, ns.seeds, variants(ns),
                      lambda arm, target, seed: run_one(ns, arm[0], target, seed, *arm[1:]),
                      out=Path(ns.out), markdown=lambda rows, load: _markdown(rows, ns, load))


if __name__ == "__main__":
    sys.exit(main())
