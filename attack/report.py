"""The report of an extraction run: ``report.json``, ``report.md`` and PNG plots in RUN_DIR.

What Knockoff Nets (Orekondy et al. 2019) and Atli et al. 2020 report for an attack: the victim's
and the surrogate's test accuracy and their ratio, fidelity (top-1 agreement) on the test set, on
held-out transfer images and on uniform noise, the number of queries paid, accuracy and fidelity
against the number of queries, and per-class accuracy (classes the surrogate copies poorly, below
50%, are flagged) beside per-class agreement with the victim, so that a class the surrogate misses
because the victim itself does is told from one it failed to copy. ``extra["victim"]`` (what
`attack.victim.Victim.describe` says, plus the victim accuracy measured through that path and
`attack.victim.consistency`'s warnings) becomes the "Victim" section: how the victim was queried
(interface, signature, input range and how it was decided, the output used and its kind, probe
queries), so a report never states a victim accuracy without saying how it was measured. Reference
numbers from the papers, when the caller passes them in ``extra["anchors"]``, are tabled beside
ours. ``report.json`` holds everything; the Markdown file is for people; the plots are drawn with
matplotlib's Agg canvas (no display, no global backend change). Every file is written atomically: a
temp file in RUN_DIR, then `os.replace`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attack.evaluate import Evaluation, poor_classes
from common.errors import invalid
from common.fileio import write_atomic, write_json_atomic, write_text_atomic

__all__ = [
    "CURVE_PLOT_NAME",
    "LOW_ACCURACY",
    "PER_CLASS_PLOT_NAME",
    "REPORT_JSON_NAME",
    "REPORT_MD_NAME",
    "plot_curve",
    "plot_per_class",
    "write_report",
]

logger = logging.getLogger(__name__)

REPORT_JSON_NAME = "report.json"
REPORT_MD_NAME = "report.md"
CURVE_PLOT_NAME = "accuracy_vs_queries.png"
PER_CLASS_PLOT_NAME = "per_class_accuracy.png"
LOW_ACCURACY = 0.5  # surrogate per-class accuracy below this is flagged

_CURVE_COLUMNS = (
    ("queries", "queries"),
    ("victim_acc", "victim acc"),
    ("surrogate_acc", "surrogate acc"),
    ("ratio", "ratio"),
    ("fidelity_test", "fidelity test"),
    ("fidelity_transfer_heldout", "fidelity held-out transfer"),
    ("fidelity_noise", "fidelity noise"),
    ("seconds", "seconds"),
)


# --------------------------------------------------------------------------------------------
# Formatting.


def _jsonable(value: Any) -> Any:
    """JSON-safe copy: dataclasses and mappings as dicts, paths as text, NaN/inf as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def _ratio(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}x"


def _count(value: Any) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def _plain(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _curve_cell(key: str, value: Any) -> str:
    if key == "queries":
        return _count(value)
    if key == "ratio":
        return _ratio(value)
    if key == "seconds":
        return "n/a" if value is None else f"{float(value):.1f}"
    return _pct(value)


def _per_class_rows(
    evaluation: Evaluation | None,
) -> list[tuple[str, float | None, float | None, float | None]]:
    """(class, victim, surrogate, agreement) sorted by surrogate accuracy, worst first, unknown
    last; agreement None where it was not measured."""
    if evaluation is None:
        return []
    names = list(evaluation.per_class_surrogate) or list(evaluation.per_class_victim)
    rows = [(name, evaluation.per_class_victim.get(name), evaluation.per_class_surrogate.get(name),
             evaluation.per_class_agreement.get(name)) for name in names]
    return sorted(rows, key=lambda r: (r[2] is None, r[2] if r[2] is not None else 0.0, r[0]))


def _named(names: Sequence[str] | None) -> str:
    """A count and the names: ``2 (dog, cat)``, ``0``; "not measured" for None."""
    if names is None:
        return "not measured"
    return f"{len(names)}" + (f" ({', '.join(names)})" if names else "")


def _per_class_section(evaluation: Evaluation | None, plots: Mapping[str, str]) -> list[str]:
    """The per-class table (victim accuracy, surrogate accuracy, agreement with the victim on
    the class's test images) and the line under it naming the classes below `LOW_ACCURACY`."""
    rows = _per_class_rows(evaluation)
    lines = ["## Per-class accuracy", ""]
    if not rows:
        return [*lines, "No per-class accuracy was computed.", ""]
    measured = bool(evaluation.per_class_agreement)
    low = poor_classes(evaluation.per_class_victim,
                       {name: surrogate for name, _, surrogate, _ in rows},
                       evaluation.per_class_agreement, LOW_ACCURACY)
    lines += [f"Sorted by surrogate accuracy, worst first; {len(low['accuracy'])} of {len(rows)} "
              f"classes are below {LOW_ACCURACY:.0%} (flagged). Agreement: the share of the "
              "class's test images on which the surrogate's top-1 class is the victim's.", ""]

    def flag(victim: float | None, surrogate: float | None) -> str:
        if surrogate is None or surrogate >= LOW_ACCURACY:
            return ""
        too = victim is not None and victim < LOW_ACCURACY
        return f"below {LOW_ACCURACY:.0%}" + (" (the victim too)" if too else "")

    lines += _table(["class", "victim", "surrogate", "agreement", "flag"], [
        [name, _pct(victim), _pct(surrogate), _pct(agreement) if measured else "-",
         flag(victim, surrogate)]
        for name, victim, surrogate, agreement in rows
    ])
    lines += ["", f"Below {LOW_ACCURACY:.0%}: surrogate accuracy {_named(low['accuracy'])}; "
              f"agreement with the victim {_named(low['agreement'])}; surrogate accuracy where "
              f"the victim's own accuracy is below {LOW_ACCURACY:.0%} too "
              f"{_named(low['victim_too'])}."]
    if "per_class" in plots:
        lines += ["", f"![per-class accuracy]({plots['per_class']})"]
    return [*lines, ""]


# --------------------------------------------------------------------------------------------
# Markdown.


def _anchor_table(anchors: Any) -> list[str]:
    """Reference numbers as a table, values printed as given.

    Accepts a list of row mappings (columns: their keys), a mapping of setting -> row mapping
    (first column: the setting) or a flat mapping of measure -> value.
    """
    if isinstance(anchors, Mapping):
        if all(isinstance(v, Mapping) for v in anchors.values()):
            rows = [{"setting": name, **dict(row)} for name, row in anchors.items()]
        else:
            return _table(["measure", "value"],
                          [[str(k), _plain(_jsonable(v))] for k, v in anchors.items()])
    else:
        rows = [dict(row) for row in anchors]
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    return _table(columns, [[_plain(_jsonable(row.get(c))) for c in columns] for row in rows])


_VICTIM_ROWS = (
    ("interface", "interface"),
    ("target", "target"),
    ("model", "model"),
    ("signature", "signature"),
    ("input", "input"),
    ("input_range", "input range sent"),
    ("input_range_decided_by", "input range decided by"),
    ("output", "output learnt from"),
    ("output_kind", "output kind"),
    ("output_decided_by", "output kind decided by"),
    ("num_classes", "classes (K)"),
    ("probe_queries", "probe queries (not journaled)"),
)


def _victim_section(victim: Mapping[str, Any], evaluation: Evaluation | None) -> list[str]:
    """How the victim was queried, the victim accuracy measured that way, and the warnings."""
    lines = ["## Victim", "", "How the victim was queried (every answer the attack learnt "
             "from and every evaluation answer went through this path):", ""]
    rows = [[heading, _plain(_jsonable(victim[key]))] for key, heading in _VICTIM_ROWS
            if victim.get(key) not in (None, "")]
    measured = victim.get("accuracy_measured")
    if measured is None and evaluation is not None:
        measured = evaluation.victim_acc
    if measured is not None:
        images = victim.get("accuracy_test_images")
        rows.append(["victim accuracy measured through this path"
                     + (f" ({_count(images)} test images)" if images else ""), _pct(measured)])
    lines += _table(["fact", "value"], rows)
    warnings = list(victim.get("consistency_warnings") or ())
    lines.append("")
    if warnings:
        lines += ["**Warning: the measured victim accuracy may not be the model's.**", ""]
        lines += [f"- {w}" for w in warnings]
        lines.append("")
    elif measured is not None and "consistency_warnings" in victim:  # the check ran
        lines += ["The victim's answers on the test set fit the measured accuracy (no "
                  "saturated or one-class answers).", ""]
    return lines


def _markdown(
    config: Mapping[str, Any],
    evaluation: Evaluation | None,
    curve: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any],
    plots: Mapping[str, str],
) -> str:
    e = evaluation
    lines = ["# Model extraction report", ""]
    title = extra.get("title")
    if title:
        lines += [str(title), ""]
    lines += ["## Headline", ""]
    if e is None:
        lines += ["No test set was given: accuracy and fidelity were not measured.", ""]
    else:
        lines += _table(["measure", "value"], [
            ["victim accuracy (test set)", _pct(e.victim_acc)],
            ["surrogate accuracy (test set)", _pct(e.surrogate_acc)],
            ["accuracy ratio (surrogate / victim)", _ratio(e.ratio)],
            [f"fidelity on the test set ({_count(e.n_test)} images)", _pct(e.fidelity_test)],
            [f"fidelity on held-out transfer images ({_count(e.n_transfer_heldout)})",
             _pct(e.fidelity_transfer_heldout)],
            [f"fidelity on uniform noise ({_count(e.n_noise)})", _pct(e.fidelity_noise)],
            ["queries used", _count(e.n_queries)],
        ])
        lines += ["", "Fidelity is the fraction of images on which the surrogate's top-1 class "
                  "equals the victim's.", ""]

    victim = extra.get("victim")
    if isinstance(victim, Mapping) and victim:
        lines += _victim_section(victim, e)

    anchors = extra.get("anchors")
    if anchors:
        source = extra.get("anchors_source", "published results")
        lines += ["## Reference numbers", "", f"From {source}, for comparison.", ""]
        lines += _anchor_table(anchors)
        lines.append("")

    lines += ["## Accuracy and fidelity against queries", ""]
    if curve:
        lines += _table([heading for _, heading in _CURVE_COLUMNS],
                        [[_curve_cell(key, point.get(key)) for key, _ in _CURVE_COLUMNS]
                         for point in curve])
        lines += ["", "Each row is a surrogate trained on the first `queries` answered queries."]
        if "curve" in plots:
            lines += ["", f"![accuracy and fidelity against queries]({plots['curve']})"]
    else:
        lines.append("No curve was computed for this run.")
    lines.append("")

    lines += _per_class_section(e, plots)

    notes = {k: v for k, v in extra.items()
             if k not in ("anchors", "anchors_source", "title")
             and not (k == "victim" and isinstance(v, Mapping))}
    if notes:
        lines += ["## Notes", ""]
        lines += _table(["fact", "value"], [[str(k), _plain(_jsonable(v))]
                                            for k, v in notes.items()])
        lines.append("")
    if config:
        lines += ["## Configuration", ""]
        lines += _table(["setting", "value"], [[str(k), _plain(_jsonable(v))]
                                              for k, v in config.items()])
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots.


def _save_figure(figure: Any, path: Path) -> Path:
    """Render `figure` to PNG at `path` atomically (temp file in the same folder, replace)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    return write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=100))


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def plot_curve(curve: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Accuracy and fidelity against the number of queries, as lines (PNG)."""
    from matplotlib.figure import Figure

    points = sorted(curve, key=lambda p: int(p["queries"]))
    queries = [int(p["queries"]) for p in points]
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    series = (
        ("surrogate_acc", "surrogate accuracy", "-", "o"),
        ("fidelity_test", "fidelity (test set)", "--", "s"),
        ("fidelity_transfer_heldout", "fidelity (held-out transfer)", "--", "^"),
        ("fidelity_noise", "fidelity (uniform noise)", ":", "v"),
    )
    for key, label, style, marker in series:
        values = [_nan(p.get(key)) for p in points]
        if not all(math.isnan(v) for v in values):
            axes.plot(queries, values, linestyle=style, marker=marker, label=label)
    victim = [float(p["victim_acc"]) for p in points if p.get("victim_acc") is not None]
    if victim:
        axes.axhline(sum(victim) / len(victim), color="black", linestyle="-.", linewidth=1,
                     label="victim accuracy")
    if len(queries) > 1 and max(queries) >= 10 * min(queries):
        axes.set_xscale("log")
    axes.set_xlabel("queries (answered)")
    axes.set_ylabel("fraction")
    axes.set_ylim(0, 1.02)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title("Accuracy and fidelity against queries")
    figure.tight_layout()
    return _save_figure(figure, path)


def plot_per_class(evaluation: Evaluation, path: Path) -> Path:
    """Per-class accuracy of victim and surrogate as horizontal bars, worst surrogate first,
    and the surrogate's agreement with the victim per class as a marker on its bar."""
    from matplotlib.figure import Figure

    rows = _per_class_rows(evaluation)
    count = len(rows)
    figure = Figure(figsize=(7, min(60.0, max(3.0, 0.28 * count + 1.5))), layout="constrained")
    axes = figure.add_subplot()
    positions = list(range(count))
    height = 0.4
    axes.barh([p - height / 2 for p in positions], [_nan(r[1]) for r in rows], height=height,
              label="victim", color="tab:gray")
    axes.barh([p + height / 2 for p in positions], [_nan(r[2]) for r in rows], height=height,
              label="surrogate", color="tab:blue")
    if evaluation.per_class_agreement:
        axes.plot([_nan(r[3]) for r in rows], [p + height / 2 for p in positions],
                  linestyle="none", marker="D", markersize=4, color="black",
                  label="agreement with the victim")
    axes.axvline(LOW_ACCURACY, color="tab:red", linestyle="--", linewidth=1,
                 label=f"{LOW_ACCURACY:.0%} (flag)")
    axes.set_yticks(positions, [r[0] for r in rows], fontsize="small")
    axes.set_ylim(count - 0.5, -0.5)  # first row (worst surrogate class) on top
    axes.set_xlim(0, 1)
    axes.set_xlabel("test accuracy (agreement: share of the class's images)")
    axes.set_title("Per-class accuracy (worst surrogate classes first)")
    figure.legend(loc="outside lower center", ncols=2, fontsize="small")
    return _save_figure(figure, path)


# --------------------------------------------------------------------------------------------
# The report.


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | Any,
    evaluation: Evaluation | None,
    curve: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots into `run_dir`.

    Args:
        run_dir: the attack's run directory (created if missing).
        config: the run's configuration (a mapping or a dataclass such as the attack config).
        evaluation: the final surrogate's `Evaluation`; None when there was no test set.
        curve: the points of `attack.evaluate.prefix_curve` (each with ``"queries"``).
        extra: more facts for the JSON and the Notes table; ``"anchors"`` (a list of row
            mappings, or one mapping) and ``"anchors_source"`` give reference numbers from the
            papers (printed as given), ``"title"`` a line under the heading, ``"victim"`` (a
            mapping: `Victim.describe()` plus ``accuracy_measured`` and
            ``consistency_warnings``) the Victim section.

    Returns:
        The written paths by kind: ``json``, ``markdown``, ``curve_plot`` (when `curve` has
        points), ``per_class_plot`` (when there are per-class accuracies).
    """
    if evaluation is not None and not isinstance(evaluation, Evaluation):
        raise invalid("evaluation", type(evaluation).__name__,
                      "an attack.evaluate.Evaluation or None")
    points = [dict(p) for p in curve]
    if any("queries" not in p for p in points):
        raise invalid("curve", "points without 'queries'", "points of prefix_curve")
    extra = dict(extra or {})
    config_dict = _jsonable(config) if config is not None else {}
    if not isinstance(config_dict, dict):
        raise invalid("config", type(config).__name__, "a mapping or a dataclass")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise invalid("run_dir", str(run_dir), "a directory")
    run_dir.mkdir(parents=True, exist_ok=True)

    paths: dict[str, Path] = {}
    plots: dict[str, str] = {}
    if points:
        paths["curve_plot"] = plot_curve(points, run_dir / CURVE_PLOT_NAME)
        plots["curve"] = CURVE_PLOT_NAME
    if _per_class_rows(evaluation):
        paths["per_class_plot"] = plot_per_class(evaluation, run_dir / PER_CLASS_PLOT_NAME)
        plots["per_class"] = PER_CLASS_PLOT_NAME
    paths["markdown"] = write_text_atomic(
        run_dir / REPORT_MD_NAME, _markdown(config_dict, evaluation, points, extra, plots))
    report = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "evaluation": None if evaluation is None else _jsonable(evaluation.to_dict()),
        "curve": _jsonable(points),
        "config": config_dict,
        "extra": _jsonable(extra),
        "files": {**{kind: path.name for kind, path in paths.items()}, "json": REPORT_JSON_NAME},
    }
    paths["json"] = write_json_atomic(run_dir / REPORT_JSON_NAME, report)
    logger.info("report written to %s", paths["markdown"])
    return paths
