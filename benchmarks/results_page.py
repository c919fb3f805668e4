"""The results page of `python -m benchmarks.reproduce`: Markdown tables and PNG plots.

Each table puts the figure measured here beside the paper's and says in words where they differ
and why (scale: queries, epochs, input size, backbone). The page lists the exact commands each
experiment ran, its seed, the package versions and the machine, so that anyone can run it again.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from common.fileio import write_json_atomic, write_text_atomic

__all__ = ["write_results_page"]


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def _x(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f}x"


def _fig(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    entry = results.get(name)
    return entry["figures"] if entry else None


def _knockoff_rows(results: dict[str, dict[str, Any]], paper: dict[str, tuple]) -> list[str]:
    rows = ["| experiment | victim | surrogate | ratio | fidelity (test) | queries | paper "
            "(victim / surrogate / ratio) |", "|---|---|---|---|---|---|---|"]
    anchors = {"cifar10_cnn": "CIFAR10 (CNN)", "cifar10_resnet34": "CIFAR10 (ResNet-34)",
               "gtsrb_resnet34": "GTSRB (ResNet-34)", "caltech256_resnet34":
               "Caltech256 (ResNet-34)", "cubs200_resnet34": "CUBS200 (ResNet-34)"}
    for name, entry in results.items():
        if not name.startswith(("knockoff_", "realistic_", "copycat_", "jbda_", "policy_")):
            continue
        f = entry["figures"]
        if "ratio" not in f:
            continue
        anchor = next((label for key, label in anchors.items() if key in name), None)
        paper_cell = ""
        if anchor and name.startswith("knockoff_") and name.endswith("_probs"):
            v, s, r = paper[anchor]
            paper_cell = f"{_pct(v)} / {_pct(s)} / {_x(r)} (100,000 ImageNet queries)"
        rows.append(f"| {entry['title']} | {_pct(f.get('victim_acc'))} | "
                    f"{_pct(f.get('surrogate_acc'))} | {_x(f.get('ratio'))} | "
                    f"{_pct(f.get('fidelity_test'))} | {f.get('n_queries', 'n/a')} | "
                    f"{paper_cell} |")
    return rows


GTSRB = "knockoff_gtsrb_resnet34_probs"


def _gtsrb_poor(f: dict[str, Any]) -> tuple[dict[str, list[str] | None], int, float]:
    """The GTSRB classes the surrogate copies poorly (`attack.evaluate.poor_classes`: by
    accuracy, by agreement with the victim, None where a run before agreement existed measured
    none; by accuracy where the victim is below too), the count of classes with test images and
    the threshold (`benchmarks.datafree_bench.LOW`)."""
    # numpy and the data-free benchmark's imports, only once there is a page to write: at the
    # top they made `python -m benchmarks.reproduce --help` import numpy and PIL (0.25 -> 0.55 s)
    from attack.evaluate import poor_classes
    from benchmarks.datafree_bench import LOW, class_counts

    per_class = f["per_class_surrogate"]
    poor = poor_classes(f.get("per_class_victim") or {}, per_class,
                        f.get("per_class_agreement") or None, LOW)
    return poor, class_counts(per_class)["classes"], LOW


def _count(names: list[str] | None) -> str:
    return "not measured" if names is None else str(len(names))


def _gtsrb_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """Atli et al.'s rare classes, then every class's victim accuracy, surrogate accuracy and
    agreement with the victim (`benchmarks.datafree_bench.per_class_table`, which names the
    classes below 50% by each under the table)."""
    f = _fig(results, GTSRB)
    if not f or not f.get("per_class_surrogate"):
        return []
    from benchmarks.datafree_bench import per_class_table  # see _gtsrb_poor

    per_class, agreement = f["per_class_surrogate"], f.get("per_class_agreement") or {}
    poor, known, low = _gtsrb_poor(f)
    rare = " and ".join(f"{_pct(per_class.get(name))}"
                        + (f" (agreement {_pct(agreement[name])})" if name in agreement else "")
                        for name in ("21", "39"))
    by_agreement = ("agreement with the victim not measured (a run made before it was)"
                    if poor["agreement"] is None else f"{len(poor['agreement'])} below {low:.0%}"
                    " agreement with the victim on their test images")
    return [f"{len(poor['accuracy'])} of {known} GTSRB classes below {low:.0%} surrogate accuracy "
            f"(Atli et al.: classes 21 and 39 at 0%), {len(poor['victim_too'])} of them where "
            f"the victim itself is below {low:.0%} too; {by_agreement}. Classes 21 and 39 "
            f"here: {rare}.", "",
            *per_class_table([{**f, "method": "surrogate"}])]


def _detector_rows(results: dict[str, dict[str, Any]], paper: dict[str, tuple]) -> list[str]:
    rows = ["| detector | threshold | benign accuracy | anomalous accuracy | ROC AUC | paper "
            "(benign / anomalous) |", "|---|---|---|---|---|---|"]
    labels = {"cifar10": "CIFAR10", "gtsrb": "GTSRB", "cubs200": "CUBS200",
              "diabetic5": "Diabetic5", "caltech256": "Caltech256"}
    for name, entry in results.items():
        if not name.startswith("detector_"):
            continue
        f = entry["figures"]
        key = name.removeprefix("detector_")
        ref = paper.get(labels.get(key, ""), None)
        ref_cell = f"{_pct(ref[0])} / {_pct(ref[1])}" if ref else ""
        for label, row in f.get("rows", {}).items():
            title = (f"calibrated (benign FPR {f.get('target_fpr')})" if label == "calibrated"
                     else f"{label}")
            rows.append(f"| {key} | {title} | {_pct(row.get('benign_accuracy'))} | "
                        f"{_pct(row.get('anomalous_accuracy'))} | "
                        f"{f.get('roc_auc', 0):.4f} | {ref_cell} |")
    return rows if len(rows) > 2 else []


def _exact_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| attack | queries | fidelity (test) | fidelity (uniform inputs) | max parameter "
            "error |", "|---|---|---|---|---|"]
    for name, entry in results.items():
        if not name.startswith(("equation_solving_", "fee_")):
            continue
        f = entry["figures"]
        err = f.get("max_parameter_error")
        rows.append(f"| {entry['title']} | {f.get('queries')} | {_pct(f.get('fidelity_test'))} "
                    f"| {_pct(f.get('fidelity_noise'))} | "
                    f"{'n/a' if err is None else f'{float(err):.1e}'} |")
    return rows if len(rows) > 2 else []


def _defended_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    rows: list[str] = []
    for name, entry in results.items():
        f = entry["figures"]
        if name.startswith("realistic_"):
            rows += [f"{entry['title']}:", "", "| attacker | flagged at query | OOD flag rate "
                     "| label-only answers | ratio | fidelity |", "|---|---|---|---|---|---|"]
            rows += [f"| {r.get('attacker')} | {r.get('flagged_at') or 'never'} | "
                     f"{_pct(r.get('ood_flag_rate'))} | {r.get('label_only_answers')} | "
                     f"{_x(r.get('ratio'))} | {_pct(r.get('fidelity_test'))} |"
                     for r in f.get("rows", [])]
            rows.append("")
        elif name.startswith("policies_"):
            rows += [f"{entry['title']} (benign cost on the test set; attacker's surrogate):",
                     "", "| policy | benign top-1 change | mean L1 distortion | argmax kept | "
                     "ratio |", "|---|---|---|---|---|"]
            rows += [f"| {r.get('policy')} | {r.get('accuracy_change', 0):+.4f} | "
                     f"{r.get('mean_l1', 0):.3f} | {_pct(r.get('argmax_kept'))} | "
                     f"{_x(r.get('ratio'))} |" for r in f.get("rows", [])]
            rows.append("")
        elif name.startswith("prada_"):
            rows += [f"{entry['title']} (PRADA only, delta {f.get('delta')}, min_samples "
                     f"{f.get('min_samples')}, {f.get('batch')} images per request, on flag: "
                     "refuse; each stream its own client):", "",
                     "| stream | queries from | answered | flagged at query | final W | "
                     "lowest W |", "|---|---|---|---|---|---|"]
            rows += [f"| {r.get('stream')} | {r.get('source')} | {r.get('answered')} | "
                     f"{r.get('flagged_at') if r.get('flagged') else 'never'} | "
                     f"{_w(r.get('statistic'))} | {_w(r.get('min_statistic'))} |"
                     for r in f.get("rows", [])]
            rows += ["", "Papers: Juuti et al. (2019) detect JBDA-style synthetic streams "
                     "(Shapiro-Wilk W of the minimum query distances below delta); Atli et al. "
                     "(2020) note that PRADA does not flag Knockoff's natural-image queries.", ""]
    return rows


def _w(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


# -- the headline: each paper finding, the figure here, and why they differ -----------------------
def _flag(cmds: list[str], flag: str) -> str | None:
    """The value of `flag` in the step's (last) command, e.g. --input-size."""
    for cmd in reversed(cmds):
        parts = cmd.split()
        if flag in parts and parts.index(flag) + 1 < len(parts):
            return parts[parts.index(flag) + 1]
    return None


def _verdict(here: float, paper: float, tolerance: float = 0.05) -> str:
    if here > paper + tolerance:
        return "beats"
    return "matches" if here >= paper - tolerance else "misses"


def _setting(entry: dict[str, Any]) -> str:
    f, cmds = entry["figures"], entry.get("commands", [])
    backbone = _flag(cmds, "--backbone") or "?"
    args = _flag(cmds, "--arch-args")
    transfer = (_flag(cmds, "--transfer-set") or "").lower()
    source = "Tiny-ImageNet" if "tiny" in transfer or not transfer else "ImageNet"
    return (f"{f.get('n_queries')} {source} queries (paper: 100,000 ImageNet), {backbone}"
            f"{' ' + args if args else ''} at {_flag(cmds, '--input-size')} px, "
            f"{_flag(cmds, '--epochs')} epochs (paper: ResNet-34 at 224 px)")


def _headline_rows(results: dict[str, dict[str, Any]], paper: dict[str, tuple],
                   paper_detector: dict[str, tuple]) -> list[str]:
    rows = ["| finding (paper) | paper | here | verdict | why they differ |",
            "|---|---|---|---|---|"]
    anchors = {"knockoff_cifar10_cnn_probs": "CIFAR10 (CNN)",
               "knockoff_cifar10_resnet34_probs": "CIFAR10 (ResNet-34)",
               "knockoff_gtsrb_resnet34_probs": "GTSRB (ResNet-34)",
               "knockoff_caltech256_resnet34_probs": "Caltech256 (ResNet-34)",
               "knockoff_cubs200_resnet34_probs": "CUBS200 (ResNet-34)"}
    for name, anchor in anchors.items():
        entry = results.get(name)
        if not entry or entry["figures"].get("ratio") is None:
            continue
        f = entry["figures"]
        v, _, r = paper[anchor]
        verdict = _verdict(float(f["ratio"]), r)
        why = _setting(entry) + f"; victim {_pct(f.get('victim_acc'))} (paper {_pct(v)})"
        if verdict == "beats":
            why += ": a weaker victim is easier to copy, and the ratio is relative to it"
        elif verdict == "misses":
            why += ": far fewer queries and a smaller surrogate than the paper"
        rows.append(f"| Knockoff, {anchor}, probabilities: surrogate/victim accuracy | "
                    f"{_x(r)} | {_x(f['ratio'])} | {verdict} | {why} |")
    probs, top1 = _fig(results, "knockoff_cifar10_cnn_probs"), _fig(results,
                                                                     "knockoff_cifar10_cnn_top1")
    if probs and top1 and probs.get("ratio") is not None and top1.get("ratio") is not None:
        gap = float(probs["ratio"]) - float(top1["ratio"])
        rows.append(f"| top-1 answers hurt the attacker (CIFAR-10 CNN) | lower with top-1 | "
                    f"{_x(probs['ratio'])} probabilities vs {_x(top1['ratio'])} top-1 | "
                    f"{'matches' if gap >= 0.02 else 'misses'} | same queries and surrogate; "
                    "only the answer's granularity differs"
                    + ("" if gap >= 0.02 else ": the surrogate learns from the images as the "
                       "victim saw them, where the top-1 label already carries most of what "
                       "the probabilities say (Atli et al.'s surrogates learned from "
                       "224 px ImageNet images the victim never saw at that size)") + " |")
    same = _fig(results, "knockoff_cifar10_cnn_same_arch")
    if probs and same and probs.get("ratio") is not None and same.get("ratio") is not None:
        rows.append(f"| architecture mismatch hurts the attacker | the victim's architecture "
                    f"does better | {_x(same['ratio'])} victim's CNN from scratch vs "
                    f"{_x(probs['ratio'])} ImageNet MobileNet | "
                    f"{'matches' if float(same['ratio']) >= float(probs['ratio']) else 'misses'}"
                    " | here the same-architecture surrogate has no ImageNet pre-training (none "
                    "exists for the victim's CNN), which weighs more than the match |")
    adaptive = _fig(results, "knockoff_cifar10_cnn_adaptive")
    if probs and adaptive and adaptive.get("ratio") is not None and probs.get("ratio") is not None:
        ok = float(adaptive["ratio"]) >= float(probs["ratio"]) - 0.02
        rows.append(f"| adaptive sampling (Orekondy et al.) | at least as good as random | "
                    f"{_x(adaptive['ratio'])} adaptive vs {_x(probs['ratio'])} random | "
                    f"{'matches' if ok else 'misses'} | the transfer set has no hierarchy of "
                    "CIFAR-10 classes left (every overlapping class is excluded), so the "
                    "bandit has little to find |")
    gtsrb = _fig(results, GTSRB)
    if gtsrb and gtsrb.get("per_class_surrogate"):
        per = gtsrb["per_class_surrogate"]
        poor, known, low = _gtsrb_poor(gtsrb)
        below = len(poor["accuracy"])
        rows.append(f"| rare GTSRB classes collapse | classes 21 and 39 at 0% | classes 21 / "
                    f"39 at {_pct(per.get('21'))} / {_pct(per.get('39'))}; {below} of "
                    f"{known} classes below {low:.0%} ({_count(poor['agreement'])} by "
                    f"agreement with the victim) | {'matches' if below else 'misses'} | "
                    "natural images rarely look like rare traffic signs, so the victim "
                    "seldom answers those classes |")
    labels = {"cifar10": "CIFAR10", "gtsrb": "GTSRB", "cubs200": "CUBS200",
              "diabetic5": "Diabetic5", "caltech256": "Caltech256"}
    for key, label in labels.items():
        f = _fig(results, f"detector_{key}")
        row = (f or {}).get("rows", {}).get("calibrated")
        if not row:
            continue
        pb, pa = paper_detector[label]
        b, a = float(row["benign_accuracy"]), float(row["anomalous_accuracy"])
        verdict = "matches" if b >= pb - 0.02 and a >= pa - 0.02 else "misses"
        rows.append(f"| OOD detector, {label} (benign / anomalous accuracy) | {_pct(pb)} / "
                    f"{_pct(pa)} | {_pct(b)} / {_pct(a)} at benign FPR "
                    f"{f.get('target_fpr')} | {verdict} | MobileNet 0.25 at 96 px (paper: "
                    "ResNet-34 at 224 px); Tiny-ImageNet, not ImageNet, as attack data |")
    real = _fig(results, "realistic_cifar10_cnn")
    if real and real.get("rows"):
        cells = "; ".join(f"{r.get('attacker')}: {r.get('flagged_at') or 'never'} flagged, "
                          f"{_x(r.get('ratio'))}" for r in real["rows"])
        evades = any(not r.get("flagged_at") for r in real["rows"])
        rows.append(f"| the realistic adversary evades the detector | not detected | {cells} |"
                    f" {'matches' if evades else 'misses'} | in-distribution queries are what "
                    "the detector was trained to accept |")
    prada = _fig(results, "prada_cifar10_cnn")
    if prada and prada.get("rows"):
        by = {r.get("stream"): r for r in prada["rows"]}
        jb, ko = by.get("jbda"), by.get("knockoff")
        if jb and ko:
            ok = jb.get("flagged") and not ko.get("flagged")
            jb_cell = f"flagged at {jb.get('flagged_at')}" if jb.get("flagged") else \
                "never flagged"
            rows.append(f"| PRADA flags JBDA, not Knockoff | JBDA flagged; Knockoff not | JBDA "
                        f"{jb_cell}"
                        f"; Knockoff {'flagged' if ko.get('flagged') else 'never flagged'} in "
                        f"{ko.get('answered')} | {'matches' if ok else 'misses'} | delta "
                        f"{prada.get('delta')}: natural streams' lowest W sits near 0.95 |")
    return rows if len(rows) > 2 else []


def _plot_curves(out: Path, results: dict[str, dict[str, Any]]) -> str | None:
    curves = {name: entry["figures"]["curve"] for name, entry in results.items()
              if entry["figures"].get("curve")}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, curve in curves.items():
        xs = [p["queries"] for p in curve]
        ys = [p.get("surrogate_acc", p.get("accuracy")) for p in curve]
        ax.plot(xs, ys, marker="o", label=results[name]["title"])
    ax.set_xlabel("queries")
    ax.set_ylabel("surrogate test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def write_results_page(out: Path, scale: str, results: dict[str, dict[str, Any]],
                       failures: list[str], *, versions: dict[str, str], machine: str,
                       wall_seconds: float, paper_knockoff: dict[str, tuple],
                       paper_detector: dict[str, tuple],
                       extra_sections: list[tuple[str, list[str]]] | None = None) -> Path:
    """Write `<out>/results.md` and `<out>/results.json`; returns the Markdown path."""
    out = Path(out)
    lines = [f"# Reproduction of Atli et al. 2020 (scale `{scale}`)", "",
             f"Written {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by "
             f"`python -m benchmarks.reproduce --scale {scale}`; total wall time of this "
             f"invocation {wall_seconds / 60:.1f} min (finished steps are not run again; each "
             f"step's own time is in its row below); the steps' own times add up to "
             f"{sum(float(e.get('seconds') or 0) for e in results.values()) / 60:.1f} min.", "",
             f"Machine: {machine}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    headline = _headline_rows(results, paper_knockoff, paper_detector)
    if headline:
        lines += ["## Headline: the papers' findings here", "", *headline, ""]
    victims = [(n, e) for n, e in results.items() if n.startswith("victim_")]
    if victims:
        lines += ["## Victims", "", "| victim | test accuracy | epochs | training time |",
                  "|---|---|---|---|"]
        for _, entry in victims:
            f = entry["figures"]
            lines.append(f"| {entry['title']} | {_pct(f.get('test_accuracy'))} | "
                         f"{f.get('epochs')} | {f.get('seconds')} s |")
        lines.append("")
    knock = _knockoff_rows(results, paper_knockoff)
    if len(knock) > 2:
        lines += ["## Model extraction: surrogate against victim", "", *knock, ""]
    curves = _plot_curves(out, results)
    if curves:
        lines += [f"![accuracy against queries]({curves})", ""]
    gtsrb = _gtsrb_rows(results)
    if gtsrb:
        lines += ["## GTSRB per class (rare classes)", "", *gtsrb, ""]
    detector = _detector_rows(results, paper_detector)
    if detector:
        lines += ["## The OOD query detector (Atli et al.'s table)", "", *detector, ""]
    exact = _exact_rows(results)
    if exact:
        lines += ["## Exact extraction (Tramer et al., Jagielski et al.)", "", *exact, ""]
    defended = _defended_rows(results)
    if defended:
        lines += ["## The defended deployment (through the gateway)", "", *defended]
    for title, body in extra_sections or []:
        lines += [f"## {title}", "", *body, ""]
    if failures:
        lines += ["## Steps that failed or were skipped", "",
                  *[f"- `{name}` (see `{name}/log.txt`)" for name in failures], ""]
    lines += ["## Commands", ""]
    for name, entry in results.items():
        lines.append(f"- `{name}` ({entry['seconds']} s):")
        lines += [f"  - `{cmd}`" for cmd in entry["commands"]]
    path = out / "results.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    write_json_atomic(out / "results.json", {"scale": scale, "results": results,
                                             "failures": failures, "versions": versions,
                                             "machine": machine})
    return path
