"""Understanding a victim we did not export: which output to learn from, what kind of answer it
is, and which pixel value range its input expects.

Real TF Serving image classifiers (ARCHITECTURE.md, contract 2) take uint8 pixels or floats in
[0, 1] or [-1, 1], and answer probabilities, logits, class ids or top-k (scores, classes) pairs,
often several outputs at once. GetModelMetadata tells the dtypes and shapes but not the value
range nor whether a float output is a distribution. This module decides both from the signature
and a few answers, and keeps the evidence:

* `choose_outputs` picks the output(s) from the signature (`--output` wins);
* `answer_kind` / `check_kind` tell and check what a batch of answers is (probabilities, logits,
  one-hot labels, top-k rows), so a wrong `--output-kind` stops after the first paid batch;
* `journal_form` turns decoded outputs into the one journal form, float32 [n, K];
  `to_probabilities` turns that into training targets (rows summing to 1);
* `range_statistics` / `decide_range` choose the input range from the answers to the same probe
  images under each candidate scaling: a wrong scale saturates the answers (a [0, 1] model fed
  0..255: logit gaps of hundreds of nats) or flattens them to one class (a 0..255 model fed
  [0, 1]: every image looks black), and a wrong offset shifts every image out of the training
  distribution, which collapses the answers onto fewer classes.

Pure numpy: no TensorFlow, no gRPC.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np

from common.errors import UsageError, invalid

__all__ = [
    "INPUT_RANGES",
    "OUTPUT_KINDS",
    "OutputChoice",
    "answer_kind",
    "check_kind",
    "choose_outputs",
    "decide_range",
    "journal_form",
    "parse_input_range",
    "range_statistics",
    "scale_pixels",
    "to_probabilities",
]

logger = logging.getLogger(__name__)

INPUT_RANGES = ("0,255", "0,1", "-1,1")
"""Candidate pixel value ranges, in the order `auto` tries them."""
OUTPUT_KINDS = ("probabilities", "logits", "labels", "topk")

_PROB_NAMES = ("probabilities", "probs", "probability", "scores", "score", "predictions",
               "prediction", "softmax", "output_0", "outputs", "output", "dense")
_LOGIT_NAMES = ("logits", "logit")
_SUM_TOL = 1e-2  # float16 answers sum to 1 within ~1e-3; rounding policies within 1e-2
_SATURATED_NATS = 60.0  # a logit gap no trained classifier shows at its own input range
_CONSTANT_SHARE = 0.9  # one class for >= 90% of the probe images: the input looks constant


def parse_input_range(text: object, argument: str = "input_range") -> str:
    """``0,255``, ``0,1``, ``-1,1`` or ``auto`` (spaces ignored); `UsageError` naming it."""
    if not isinstance(text, str):
        raise invalid(argument, text, "one of 0,255 | 0,1 | -1,1 | auto")
    value = text.replace(" ", "")
    if value not in (*INPUT_RANGES, "auto"):
        raise invalid(argument, text, "one of 0,255 | 0,1 | -1,1 | auto")
    return value


def scale_pixels(images: np.ndarray, input_range: str) -> np.ndarray:
    """uint8-valued pixels (0..255) -> float32 in `input_range` (0,255 keeps the values)."""
    x = np.asarray(images, dtype=np.float32)
    if input_range == "0,1":
        return x / np.float32(255.0)
    if input_range == "-1,1":
        return x / np.float32(127.5) - np.float32(1.0)
    if input_range == "0,255":
        return x
    raise invalid("input_range", input_range, f"one of {list(INPUT_RANGES)}")


# -- choosing the output ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OutputChoice:
    """Which outputs answer: `name` (scores, probabilities, logits or class ids) and, for top-k
    pairs, `classes` (the int class ids beside the scores). `kind` is what the signature alone
    says (``labels`` for class ids, ``topk`` for pairs) or None (decided from the answers);
    `reason` is the sentence the report states."""

    name: str
    classes: str | None
    kind: str | None
    reason: str

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) if self.classes is None else (self.name, self.classes)


def _is_float(t) -> bool:
    return np.issubdtype(t.dtype, np.floating)


def _is_int(t) -> bool:
    return np.issubdtype(t.dtype, np.integer)


def _width(t) -> int | None:
    return None if t.shape is None or len(t.shape) < 2 else t.shape[-1]


def _is_ids(t) -> bool:
    """Class ids [batch] or [batch, 1]."""
    return _is_int(t) and t.shape is not None and (
        len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1))


def _rank(t) -> int | None:
    return None if t.shape is None else len(t.shape)


def _name_rank(name: str) -> int:
    low = name.lower()
    for i, key in enumerate(_PROB_NAMES):
        if low == key or low.endswith("/" + key) or low.endswith("_" + key):
            return i
    if any(k in low for k in ("prob", "score", "softmax")):
        return len(_PROB_NAMES)
    if any(k in low for k in _LOGIT_NAMES):
        return len(_PROB_NAMES) + 2
    return len(_PROB_NAMES) + 1


def _pair_for(scores_name: str, outputs: Mapping) -> str | None:
    """The int output of the same [batch, k] shape as `scores_name` (top-k class ids)."""
    width = _width(outputs[scores_name])
    if width is None or width == 1:
        return None
    pairs = [k for k, t in outputs.items() if k != scores_name and _is_int(t)
             and _rank(t) == 2 and _width(t) == width]
    if not pairs:
        return None
    pairs.sort(key=lambda k: (0 if ("class" in k.lower() or "indic" in k.lower()) else 1, k))
    return pairs[0]


def choose_outputs(outputs: Mapping, output: str | None = None,
                   output_kind: str = "auto") -> OutputChoice:
    """The output(s) to learn from, among a signature's `outputs` (name -> TensorInfo).

    `output` (the ``--output`` flag) names one; otherwise float [batch, K] outputs named like
    probabilities come first, then any float rank-2 output, then logits, then top-k pairs, then
    int class ids. Raises `UsageError` naming `output` when nothing fits.
    """
    names = sorted(outputs)
    if output is not None:
        if output not in outputs:
            raise invalid("output", output, f"one of the outputs {names}")
        t = outputs[output]
        if _is_int(t):
            if _is_ids(t):
                return OutputChoice(output, None, "labels", f"--output {output}: class ids")
            if _rank(t) == 2:
                scores = [k for k, u in outputs.items() if _is_float(u) and _rank(u) == 2
                          and _width(u) == _width(t)]
                if scores:
                    scores.sort(key=lambda k: (_name_rank(k), k))
                    return OutputChoice(scores[0], output, "topk",
                                        f"--output {output}: top-k class ids paired with the "
                                        f"scores '{scores[0]}'")
            raise invalid("output", output, "a float [batch, K] output, int class ids [batch] "
                          f"or top-k class ids beside float scores; '{output}' is "
                          f"{t.dtype.name}{list(t.shape or [])}")
        if not _is_float(t) or _rank(t) not in (None, 2):
            raise invalid("output", output, "a float [batch, K] output or int class ids; "
                          f"'{output}' is {t.dtype.name}{list(t.shape or [])}")
        pair = _pair_for(output, outputs) if output_kind in ("auto", "topk") else None
        if pair is not None:
            return OutputChoice(output, pair, "topk",
                                f"--output {output}: scores paired with the class ids '{pair}'")
        return OutputChoice(output, None, None, f"--output {output}")

    floats = [k for k in names if _is_float(outputs[k]) and _rank(outputs[k]) in (None, 2)]
    if floats:
        # the widest outputs first (all K classes beat top-k scores), then by name
        widest = max(_width(outputs[k]) or 0 for k in floats)
        ranked = sorted(floats, key=lambda k: ((_width(outputs[k]) or 0) != widest,
                                               _name_rank(k), k))
        pair = _pair_for(ranked[0], outputs) if output_kind in ("auto", "topk") else None
        if pair is not None:  # float scores [batch, k] beside int classes [batch, k]
            return OutputChoice(ranked[0], pair, "topk",
                                f"top-k pairs: scores '{ranked[0]}' with class ids '{pair}'")
        chosen = ranked[0]
        why = (f"'{chosen}', the only float [batch, K] output" if len(floats) == 1 else
               f"'{chosen}' among the float [batch, K] outputs {ranked} (by name; "
               "--output picks another)")
        return OutputChoice(chosen, None, None, why)
    ids = [k for k in names if _is_ids(outputs[k])]
    if ids:
        ids.sort(key=lambda k: (0 if "class" in k.lower() else 1, k))
        return OutputChoice(ids[0], None, "labels", f"'{ids[0]}': class ids only (label-only)")
    described = ", ".join(f"{k}: {outputs[k].dtype.name}{list(outputs[k].shape or [])}"
                          for k in names)
    raise invalid("output", None, "a signature with a float [batch, K] output, int class ids or "
                  f"top-k pairs; the outputs are {{{described}}}")


# -- answers ---------------------------------------------------------------------------------------
def journal_form(decoded: Mapping[str, np.ndarray], choice: OutputChoice, kind: str,
                 num_classes: int) -> np.ndarray:
    """Decoded outputs of one request -> float32 [n, K]: probabilities or logits as received,
    class ids as one-hot rows, top-k pairs as scores at their classes' positions (0 elsewhere).

    Class ids outside 0..K-1 leave an all-zero row (`check_kind` then refuses the batch).
    """
    main = np.asarray(decoded[choice.name])
    n = main.shape[0] if main.ndim else 0
    if kind == "labels" and np.issubdtype(main.dtype, np.integer):
        ids = main.reshape(n, -1)[:, 0].astype(np.int64)
        out = np.zeros((n, num_classes), np.float32)
        ok = (ids >= 0) & (ids < num_classes)
        out[np.nonzero(ok)[0], ids[ok]] = 1.0
        return out
    if choice.classes is not None and kind == "topk":
        ids = np.asarray(decoded[choice.classes]).reshape(n, -1).astype(np.int64)
        scores = main.reshape(n, -1).astype(np.float32)
        out = np.zeros((n, num_classes), np.float32)
        ok = (ids >= 0) & (ids < num_classes)
        rows = np.broadcast_to(np.arange(n)[:, None], ids.shape)
        out[rows[ok], ids[ok]] = scores[ok]
        return out
    array = main.astype(np.float32).reshape(n, -1)
    if array.shape[1] != num_classes:
        raise invalid("output", choice.name, f"[batch, {num_classes}] answers; received "
                      f"shape {tuple(main.shape)}")
    return array


def _is_distribution(rows: np.ndarray) -> np.ndarray:
    """Per row: values in [0, 1] and summing to 1 (within float16/rounding tolerance)."""
    finite = np.isfinite(rows).all(axis=1)
    bounded = (rows >= -1e-6).all(axis=1) & (rows <= 1 + 1e-6).all(axis=1)
    return finite & bounded & (np.abs(rows.sum(axis=1) - 1.0) <= _SUM_TOL)


def _is_one_hot(rows: np.ndarray) -> np.ndarray:
    return ((rows == 0) | (rows == 1)).all(axis=1) & (rows.sum(axis=1) == 1)


def answer_kind(raw: np.ndarray) -> str:
    """What a batch of float answers [n, K] is: ``labels`` (one-hot rows), ``probabilities``
    (every row a distribution) or ``logits`` (anything else finite)."""
    rows = np.asarray(raw, dtype=np.float64)
    if len(rows) and _is_one_hot(rows).all():
        return "labels"
    if len(rows) and _is_distribution(rows).all():
        return "probabilities"
    return "logits"


def _summary(rows: np.ndarray) -> str:
    if not rows.size:
        return "no answers"
    sums = rows.sum(axis=1)
    return (f"values {float(rows.min()):.3g}..{float(rows.max()):.3g}, row sums "
            f"{float(sums.min()):.3g}..{float(sums.max()):.3g}")


def check_kind(raw: np.ndarray, kind: str, output: str) -> None:
    """`UsageError` (one line, naming ``--output-kind``) when `raw` does not fit `kind`."""
    rows = np.asarray(raw, dtype=np.float64)
    if rows.ndim != 2:
        raise invalid("output", output, f"answers [n, K]; received shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise invalid("output_kind", kind, f"finite answers from output '{output}'; received "
                      "NaN or infinite values (--output picks another output)")
    seen = answer_kind(rows) if len(rows) else kind
    bad = None
    if kind == "probabilities" and seen == "logits":
        bad = "rows that are not distributions: pass --output-kind logits if they are logits"
    elif kind == "logits" and seen in ("probabilities", "labels"):
        bad = (f"rows that are already {'one-hot labels' if seen == 'labels' else 'distributions'}"
               f": pass --output-kind {seen} (softmax over probabilities would flatten them)")
    elif kind == "labels" and seen != "labels":
        bad = f"rows that are not one-hot class labels (they look like {seen}): pass " \
              f"--output-kind {seen}"
    elif kind == "topk":
        nonneg = (rows >= -1e-6).all() and (rows.sum(axis=1) <= 1 + _SUM_TOL).all()
        some = (rows > 0).any(axis=1).all()
        if not (nonneg and some):
            bad = "rows of top-k probabilities (non-negative scores summing to at most 1): " \
                  "pass --output-kind logits or --output another output"
    if bad is not None:
        raise UsageError(
            f"Invalid value for argument `output_kind`. Received: output_kind={kind!r}. The "
            f"answers of output '{output}' ({_summary(rows)}) are {bad}. The paid answers stay "
            "in the journal: --resume with the right flag uses them.")


def to_probabilities(raw: np.ndarray, kind: str) -> np.ndarray:
    """Journal-form answers -> float32 rows summing to 1 (softmax for logits, renormalised
    scores for top-k, identity for probabilities and one-hot labels)."""
    rows = np.asarray(raw, dtype=np.float64)
    if kind == "logits":
        z = rows - rows.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    if kind == "topk":
        clipped = np.clip(rows, 0.0, None)
        sums = clipped.sum(axis=1, keepdims=True)
        return np.where(sums > 0, clipped / np.where(sums > 0, sums, 1.0),
                        1.0 / max(rows.shape[1], 1)).astype(np.float32)
    if kind in ("probabilities", "labels"):
        return rows.astype(np.float32)
    raise invalid("output_kind", kind, f"one of {list(OUTPUT_KINDS)}")


# -- the input range -------------------------------------------------------------------------------
def range_statistics(raw: np.ndarray, kind: str) -> dict:
    """How the answers to the probe images behave under one candidate scaling.

    `top_share`: fraction of images given the most common class; `distinct`: classes seen;
    `diversity`: entropy of the class histogram (nats); `information`: mutual information
    between image and answer, H(mean p) - mean H(p) (nats); `mean_confidence`; `saturated`:
    fraction of answers whose logit gap exceeds 60 nats (unreachable at a model's own range).
    """
    rows = np.asarray(raw, dtype=np.float64)
    probs = to_probabilities(rows, kind).astype(np.float64)
    n, k = probs.shape
    top = probs.argmax(axis=1)
    counts = np.bincount(top, minlength=k).astype(np.float64)
    hist = counts / max(n, 1)
    nz = hist[hist > 0]
    diversity = float(-(nz * np.log(nz)).sum())
    mean_p = probs.mean(axis=0)
    mp = mean_p[mean_p > 0]
    ent_rows = -(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)).sum(1)
    information = float(-(mp * np.log(mp)).sum() - ent_rows.mean())
    if kind == "logits":
        gaps = rows.max(axis=1) - np.median(rows, axis=1)
    elif kind == "probabilities":
        logp = np.log(np.clip(probs, 1e-45, None))
        gaps = logp.max(axis=1) - np.median(logp, axis=1)
    elif kind == "topk":  # only the received scores: the zeros are classes not sent
        logp = np.log(np.clip(rows, 1e-45, None))
        sent = rows > 0
        low = np.where(sent, logp, np.inf).min(axis=1)
        gaps = np.where(sent.sum(axis=1) >= 2, logp.max(axis=1) - low, 0.0)
    else:
        gaps = np.zeros(n)
    return {
        "images": int(n),
        "top_share": round(float(hist.max()) if n else 0.0, 4),
        "distinct": int((counts > 0).sum()),
        "diversity": round(diversity, 4),
        "information": round(information, 4),
        "mean_confidence": round(float(probs.max(axis=1).mean()) if n else 0.0, 4),
        "saturated": round(float((gaps >= _SATURATED_NATS).mean()) if n else 0.0, 4),
        "median_gap": round(float(np.median(gaps)) if n else 0.0, 3),
    }


def decide_range(stats: Mapping[str, dict]) -> tuple[str, str]:
    """(range, why) from `range_statistics` per candidate.

    A candidate is out when its answers are degenerate: one class for >= 90% of the probe
    images (the images look constant to the model) or a majority of saturated answers (the
    scale is far too large). Among the rest the most diverse answers win (a shifted range
    collapses answers onto fewer classes), then the most informative.
    """
    def key(c: str) -> tuple:
        s = stats[c]
        return (s["diversity"], s["information"], -s["saturated"])

    healthy = [c for c in stats if stats[c]["top_share"] < _CONSTANT_SHARE
               and stats[c]["saturated"] <= 0.5]
    pool = healthy or list(stats)
    best = max(pool, key=key)
    out = [c for c in stats if c not in healthy]
    why = (f"{best}: the most diverse answers among the non-degenerate candidates "
           f"{sorted(healthy, key=INPUT_RANGES.index)}"
           + (f" (degenerate: {sorted(out, key=INPUT_RANGES.index)})" if out else "")
           if healthy else
           f"{best}: every candidate's answers are degenerate (one class or saturated); the "
           "most diverse was taken, pass --input-range to be sure")
    return best, why
