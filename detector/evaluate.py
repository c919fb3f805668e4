"""``python -m detector.evaluate``: Atli et al.'s detector table on held-out data.

Atli et al. 2020 (Table 4) report an OOD query detector by its benign accuracy (share of the
victim's own held-out images it lets through) and its anomalous accuracy (share of attack
queries it flags). `evaluate_detector` scores a held-out benign set (e.g. the victim's test
split) and a held-out attack set (e.g. Tiny-ImageNet's val split, which the detector never
trained on) at the detector's input size, and reports both accuracies at the calibrated
threshold and at 0.5, with the ROC AUC; `main` prints the table and writes
``evaluation.json``, ``evaluation.md`` and ``roc.png`` (matplotlib, Agg canvas) into ``--out``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import config_to_dict, configure_logging, parse_config, run_cli
from common.constraints import check_fields, check_number
from common.data import load_dataset
from common.errors import invalid
from common.fileio import write_json_atomic, write_text_atomic
from detector.config import check_exclude, detector_field, exclude_field, limit_field, spec_field
from detector.metrics import detection_metrics, roc_auc, roc_curve
from detector.ood import OODDetector
from detector.splits import jpeg_reencode

__all__ = ["EvaluateConfig", "evaluate_detector", "format_table", "main", "write_evaluation"]

logger = logging.getLogger(__name__)

PROG = "python -m detector.evaluate"

EPILOG = """\
example (the CIFAR-10 detector on the CIFAR-10 test split and unseen Tiny-ImageNet images):
  python -m detector.evaluate --detector detectors/cifar10_ood/1 \\
      --benign ../shared/data/cifar10_jpeg_q75.zip --benign-split test \\
      --attack ../shared/data/tinyimagenet200_val10k_train50pc.zip --attack-split val \\
      --exclude-classes ../shared/data/tinyimagenet_cifar10_overlap_wnids.txt \\
      --out runs/cifar10_ood_eval
"""


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluate an exported OOD query detector on held-out benign and attack images."""

    detector: str = detector_field()
    benign: str = spec_field("dataset spec of held-out benign images")
    attack: str = spec_field("dataset spec of held-out attack images")
    out: str = field(metadata={"help": "folder for evaluation.json/.md and roc.png",
                               "metavar": "DIR", "rule": "nonempty"})
    benign_split: str = field(default="test", metadata={"help": "split(s) of --benign",
                                                        "rule": "nonempty"})
    attack_split: str = field(default="val", metadata={
        "help": "split(s) of --attack (not the ones the detector trained on)",
        "rule": "nonempty"})
    exclude_classes: str | None = exclude_field("file of --attack class names to drop")
    benign_limit: int | None = limit_field("benign")
    attack_limit: int | None = limit_field("attack")
    attack_jpeg_quality: int | None = field(default=None, metadata={
        "help": "re-encode every attack image as JPEG at this quality first (an attacker who "
                "imitates the victim data's codec)", "metavar": "Q", "min": 1, "max": 100})
    benign_jpeg_quality: int | None = field(default=None, metadata={
        "help": "re-encode every benign image as JPEG at this quality first", "metavar": "Q",
        "min": 1, "max": 100})
    threshold: float | None = field(default=None, metadata={
        "help": "threshold to report besides 0.5; default the detector's calibrated one"})
    seed: int = field(default=0, metadata={"help": "seed of the --*-limit subsets", "min": 0})

    def __post_init__(self) -> None:
        check_fields(self)
        check_number("threshold", self.threshold, optional=True)
        if not Path(self.detector).is_dir():
            raise invalid("detector", self.detector, "an existing detector folder")
        check_exclude(self.exclude_classes)
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise invalid("out", self.out, "a directory (or a path where one can be created)")


def evaluate_detector(
    detector: OODDetector,
    benign_images: np.ndarray,
    attack_images: np.ndarray,
    *,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Scores of both sets and the table rows (calibrated threshold and 0.5), ROC and AUC."""
    benign_scores = detector.score(benign_images)
    attack_scores = detector.score(attack_images)
    chosen = detector.threshold if threshold is None else float(threshold)
    rows = {"calibrated": detection_metrics(benign_scores, attack_scores, chosen),
            "0.5": detection_metrics(benign_scores, attack_scores, 0.5)}
    recorded = detector.calibration.get("thresholds") or {}
    for rate, value in sorted(recorded.items(), key=lambda kv: float(kv[0])):
        if isinstance(value, (int, float)) and value != chosen:
            rows[f"fpr:{rate}"] = detection_metrics(benign_scores, attack_scores, float(value))
    return {
        "benign_examples": int(len(benign_scores)),
        "attack_examples": int(len(attack_scores)),
        "rows": rows,
        "roc_auc": roc_auc(benign_scores, attack_scores),
        "roc": roc_curve(benign_scores, attack_scores),
        "benign_score_quantiles": _quantiles(benign_scores),
        "attack_score_quantiles": _quantiles(attack_scores),
    }


def _quantiles(scores: np.ndarray) -> dict[str, float]:
    if len(scores) == 0:
        return {}
    qs = (0.01, 0.05, 0.5, 0.95, 0.99)
    return {f"q{int(q * 100):02d}": float(v) for q, v in zip(qs, np.quantile(scores, qs))}


def format_table(result: Mapping[str, Any]) -> str:
    """Atli et al.'s table as Markdown: one row per threshold, plus the ROC AUC."""
    lines = ["| threshold | benign accuracy | anomalous accuracy | balanced |",
             "|---|---|---|---|"]
    names = {"calibrated": "calibrated", "0.5": "argmax"}
    for name, row in result["rows"].items():
        kind = names.get(name) or f"calibrated for benign FPR {name.split(':', 1)[1]}"
        label = f"{row['threshold']:.4g} ({kind})"
        lines.append(f"| {label} | {row['benign_accuracy']:.2%} | "
                     f"{row['anomalous_accuracy']:.2%} | {row['balanced_accuracy']:.2%} |")
    lines.append("")
    lines.append(f"ROC AUC {result['roc_auc']:.4f} on {result['benign_examples']} benign and "
                 f"{result['attack_examples']} attack images.")
    return "\n".join(lines)


def _plot_roc(result: Mapping[str, Any], path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(result["roc"]["fpr"], result["roc"]["tpr"],
              label=f"detector (AUC {result['roc_auc']:.3f})")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    row = result["rows"]["calibrated"]
    axes.scatter([row["benign_fpr"]], [row["anomalous_accuracy"]], color="red", zorder=3,
                 label=f"threshold {row['threshold']:.3g}")
    axes.set_xlabel("benign false-positive rate")
    axes.set_ylabel("attack true-positive rate (anomalous accuracy)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_title(title, fontsize=9)
    axes.legend(loc="lower right")
    figure.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_evaluation(result: Mapping[str, Any], out: str | os.PathLike[str], *,
                     title: str = "OOD query detector") -> dict[str, Path]:
    """Write ``evaluation.json``, ``evaluation.md`` and ``roc.png`` into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "evaluation.json", "markdown": out / "evaluation.md",
             "roc": out / "roc.png"}
    write_json_atomic(paths["json"], dict(result))
    write_text_atomic(paths["markdown"], f"# {title}\n\n{format_table(result)}\n\n"
                      f"![ROC](roc.png)\n")
    _plot_roc(result, paths["roc"], title)
    return paths


def _main(argv: Sequence[str] | None) -> int:
    config = parse_config(EvaluateConfig, argv, prog=PROG, epilog=EPILOG)
    configure_logging()
    detector = OODDetector.load(config.detector)
    size = detector.input_shape[:2]
    benign = load_dataset(config.benign, config.benign_split, image_size=size, channels=3,
                          limit=config.benign_limit, seed=config.seed)
    attack = load_dataset(config.attack, config.attack_split, image_size=size, channels=3,
                          exclude_classes=config.exclude_classes, limit=config.attack_limit,
                          seed=config.seed)
    benign_images, attack_images = benign.images, attack.images
    if config.benign_jpeg_quality is not None:
        q = config.benign_jpeg_quality
        benign_images = jpeg_reencode(benign_images, 1.0, seed=config.seed, qualities=(q, q))
    if config.attack_jpeg_quality is not None:
        q = config.attack_jpeg_quality
        attack_images = jpeg_reencode(attack_images, 1.0, seed=config.seed, qualities=(q, q))
    result = evaluate_detector(detector, benign_images, attack_images,
                               threshold=config.threshold)
    result = {
        "detector": str(detector.path),
        "benign": benign.source,
        "attack": attack.source,
        "target_fpr": detector.calibration.get("target_fpr"),
        **result,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config_to_dict(config),
    }
    jpeg = {"benign": config.benign_jpeg_quality, "attack": config.attack_jpeg_quality}
    result["jpeg_quality"] = jpeg
    codec = "".join(f", {k} as JPEG q{v}" for k, v in jpeg.items() if v is not None)
    title = f"{detector.path}: {benign.source} vs {attack.source}{codec}"
    paths = write_evaluation(result, config.out, title=title)
    print(f"{title}\n\n{format_table(result)}\n\nwrote {paths['json']}, {paths['markdown']}, "
          f"{paths['roc']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (default ``sys.argv[1:]``); return the exit code."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
