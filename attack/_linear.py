"""What the exact extraction attacks share: the float signature, a journaled float64 oracle,
answer checks, evaluation and export of the recovered model.

Equation solving (Tramèr et al. 2016) and functionally-equivalent extraction (Jagielski et al.
2020) do not learn from natural images: they choose their own real-valued query points and solve
for the victim's parameters, so they need a victim whose serving signature takes floats
(``victim_export --arch softmax|logreg|mlp`` exports float64 ``images`` and float64
``probabilities``/``logits``) and answers that are real numbers, not labels or rounded values.

`discover` reads the signature with GetModelMetadata and refuses what the attacks cannot use
(integer inputs, no probabilities or logits output). `ExactOracle` sends query points through
`ServingClient.predict_raw` in batches and journals every batch in the run's `QueryJournal`
before it is used: the journal stores float32 words, so each float64 answer row is stored
bit-exact as two float32 words per value (journal width 2K). Both attacks are deterministic given
their seed and the answers, so a resumed run replays the journaled answers query by query (no
query is paid twice) and continues where it stopped. `check_answers` refuses label-only (one-hot
rows) and rounded answers (values on a coarse grid, repeated values, exact 0/1 probabilities)
with a clear error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attack.evaluate import Evaluation, evaluate
from attack.report import write_report
from common.cli import config_to_dict
from common.data import load_dataset
from common.errors import UsageError, invalid

__all__ = [
    "AnswerError",
    "BudgetExceeded",
    "ExactOracle",
    "VictimInterface",
    "check_answers",
    "discover",
    "eval_inputs",
    "evaluate_recovered",
    "export_recovered",
    "reference_variables",
    "report_recovered",
    "softmax",
    "victim_eval_answers",
]

logger = logging.getLogger(__name__)

OUTPUT_CHOICES = ("auto", "logits", "probabilities")


class AnswerError(UsageError):
    """The victim's answers cannot support exact extraction (label-only, rounded, saturated)."""


class BudgetExceeded(UsageError):
    """The attack needs more queries than ``--budget`` allows."""


@dataclass(frozen=True)
class VictimInterface:
    """The float signature an exact attack queries: input, the output it reads, class count."""

    input_name: str
    input_dtype: np.dtype
    input_shape: tuple[int, ...]   # one example, e.g. (28, 28, 1) or (784,)
    output_name: str
    output_kind: str               # "logits" or "probabilities"
    output_dtype: np.dtype
    num_classes: int

    @property
    def dim(self) -> int:
        """d: the number of input features."""
        return int(np.prod(self.input_shape))

    def describe(self) -> dict[str, Any]:
        return {"input": [self.input_name, self.input_dtype.name, [-1, *self.input_shape]],
                "output": [self.output_name, self.output_dtype.name, [-1, self.num_classes]],
                "output_kind": self.output_kind}


def discover(client: Any, output: str = "auto") -> VictimInterface:
    """The victim's float signature, from GetModelMetadata; `UsageError` when unusable.

    `output`: "logits" or "probabilities" to pick that output, "auto" for logits when the
    signature exposes them, else probabilities.
    """
    if output not in OUTPUT_CHOICES:
        raise invalid("output", output, "one of " + ", ".join(OUTPUT_CHOICES))
    sig = client.signature()
    where = f"model '{client.model}' at {client.target}"
    required = [t for k, t in sig.inputs.items() if k not in sig.defaults]
    if len(required) != 1:
        raise invalid("model", client.model,
                      f"a signature with one input; {where} requires {sorted(sig.inputs)}")
    tensor = required[0]
    if not np.issubdtype(tensor.dtype, np.floating):
        raise invalid("model", client.model,
                      f"a float input (float32/float64) for exact extraction; {where} takes "
                      f"{tensor.dtype.name} '{tensor.name}' (export the victim with "
                      "`python -m victim_export --input-dtype float64`)")
    if tensor.shape is None or len(tensor.shape) < 2 or any(d is None or d < 1
                                                             for d in tensor.shape[1:]):
        raise invalid("model", client.model,
                      f"an input with a fixed shape [batch, ...]; {where} has {tensor.shape}")
    names = {"logits", "probabilities"} & set(sig.outputs)
    if output == "auto":
        chosen = "logits" if "logits" in names else "probabilities" if names else None
    else:
        chosen = output if output in names else None
    if chosen is None:
        raise invalid("output", output,
                      f"an output the signature has among 'logits' and 'probabilities'; {where} "
                      f"has {sorted(sig.outputs)}")
    out = sig.outputs[chosen]
    if out.shape is None or len(out.shape) != 2 or not out.shape[1] or out.shape[1] < 2:
        raise invalid("model", client.model,
                      f"a rank-2 output [batch, K >= 2] '{chosen}'; {where} has {out.shape}")
    if not np.issubdtype(out.dtype, np.floating):
        raise invalid("model", client.model, f"a float output '{chosen}'; {where} has "
                                             f"{out.dtype.name}")
    return VictimInterface(tensor.name, np.dtype(tensor.dtype), tuple(tensor.shape[1:]), chosen,
                           chosen, np.dtype(out.dtype), int(out.shape[1]))


# -- answers --------------------------------------------------------------------------------------

_GRID_DECIMALS = range(0, 5)


def check_answers(answers: np.ndarray, kind: str, *, attack: str) -> None:
    """Refuse answers exact extraction cannot use, naming what was detected (`AnswerError`).

    Probabilities: one-hot rows (label-only), exact 0 or 1 (rounded or saturated softmax), or
    few distinct values (rounded); logits: every value on a decimal grid of at most 4 decimals
    (rounded). Non-finite values are refused too.
    """
    a = np.asarray(answers, dtype=np.float64)
    if not a.size:
        return
    if not np.isfinite(a).all():
        raise AnswerError(f"{attack}: the victim returned non-finite {kind} (NaN or inf); "
                          "exact extraction needs finite real-valued answers.")
    if kind == "probabilities":
        onehot = np.isin(a, (0.0, 1.0)).all(axis=1) & (np.count_nonzero(a, axis=1) == 1)
        if onehot.all():
            raise AnswerError(
                f"{attack}: label-only answers (every row is one-hot): the victim reveals only "
                "its top-1 class, which cannot determine the model's parameters. Exact "
                "extraction needs real-valued probabilities or logits (use a learning attack "
                "such as attack.knockoff --granularity top1 against label-only APIs).")
        if (a <= 0.0).any() or (a >= 1.0).any():
            raise AnswerError(
                f"{attack}: answers with probabilities of exactly 0 or 1 in "
                f"{int(((a <= 0) | (a >= 1)).any(axis=1).sum())} of {len(a)} rows: the answers "
                "are rounded (or the softmax saturates), so log-probability ratios are lost. "
                "Exact extraction needs unrounded probabilities (or logits); if the victim "
                "saturates, query closer to its data range (--input-low/--input-high).")
    distinct = np.unique(a).size
    if a.size >= 40 and distinct < 0.5 * a.size:
        raise AnswerError(
            f"{attack}: the answers take only {distinct} distinct values in {a.size}: they are "
            f"rounded or quantised {kind}, which exact extraction cannot invert. Expose "
            "unrounded probabilities or logits (float64 for full precision).")
    if kind == "logits" and a.size >= 8:
        for decimals in _GRID_DECIMALS:
            scaled = a * 10.0**decimals
            if np.abs(scaled - np.round(scaled)).max() <= 1e-9 * max(1.0, np.abs(scaled).max()):
                raise AnswerError(
                    f"{attack}: every logit is a multiple of 1e-{decimals}: the answers are "
                    "rounded, which exact extraction cannot invert. Expose unrounded logits.")


# -- the oracle -----------------------------------------------------------------------------------

def _to_words(rows: np.ndarray) -> np.ndarray:
    """float64 [n, K] -> float32 words [n, 2K] holding the same bits (the journal's width)."""
    return np.ascontiguousarray(rows, dtype="<f8").view("<f4")


def _from_words(words: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(words, dtype="<f4").view("<f8")


class ExactOracle:
    """Journaled float64 access to the victim: ``x [n, d] -> (x as sent, answers [n, K])``.

    Query number i (counted from the start of the run) is journal index i. On a resumed run the
    first answered indices are replayed from the journal instead of being sent again. Each answer
    batch is checked with `check_answers`. `budget` (None: unlimited) bounds the queries of the
    attack; exceeding it raises `BudgetExceeded` naming ``--budget`` before anything is sent.
    """

    def __init__(self, client: Any, iface: VictimInterface, journal: Any, *,
                 budget: int | None, batch_size: int, attack: str) -> None:
        self.client = client
        self.iface = iface
        self.journal = journal
        self.budget = budget
        self.batch_size = int(batch_size)
        self.attack = attack
        self.count = 0
        self.replayed = 0
        self.sent = 0
        indices = np.asarray(journal.answered_indices())
        words = np.asarray(journal.responses())
        width = 2 * iface.num_classes
        if len(indices) and words.shape[1] != width:
            raise UsageError(
                f"The journal {journal.path} holds answers of width {words.shape[1]}, not "
                f"{width} (float64 rows of {iface.num_classes} classes): it belongs to another "
                "victim or attack; start a new --out.")
        self._known = dict(zip(indices.tolist(), range(len(indices))))
        self._words = words

    def cast(self, x: np.ndarray) -> np.ndarray:
        """`x` rounded to the wire dtype, back in float64: the points the victim really sees."""
        return np.asarray(x, dtype=np.float64).astype(self.iface.input_dtype).astype(np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The victim's answers (float64 [n, K]) on the points `x` ([n, d]; sent as `cast(x)`)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.iface.dim:
            raise invalid("x", f"array of shape {x.shape}", f"[n, {self.iface.dim}]")
        n = len(x)
        if self.budget is not None and self.count + n > self.budget:
            raise BudgetExceeded(
                f"Invalid value for argument `budget`. Received: budget={self.budget}. Expected "
                f"at least {self.count + n} queries: {self.attack} has used {self.count} and "
                f"needs {n} more at this step; raise --budget.")
        out = np.empty((n, self.iface.num_classes), dtype=np.float64)
        for start in range(0, n, self.batch_size):
            rows = x[start:start + self.batch_size]
            idx = np.arange(self.count + start, self.count + start + len(rows), dtype=np.int64)
            positions = [self._known.get(i) for i in idx.tolist()]
            known = np.array([p is not None for p in positions])
            block = out[start:start + len(rows)]
            if known.any():  # replayed from the journal (a resumed run)
                block[known] = _from_words(self._words[[p for p in positions if p is not None]])
                self.replayed += int(known.sum())
            if known.all():
                continue
            todo = ~known
            wire = rows[todo].astype(self.iface.input_dtype).reshape(int(todo.sum()),
                                                                   *self.iface.input_shape)
            self.journal.record_sent(idx[todo])
            answer = self.client.predict_raw({self.iface.input_name: wire},
                                             [self.iface.output_name])[self.iface.output_name]
            answer = np.asarray(answer, dtype=np.float64).reshape(len(wire), -1)
            if answer.shape[1] != self.iface.num_classes:
                raise UsageError(f"{self.attack}: the victim answered {answer.shape[1]} columns, "
                                 f"its signature says {self.iface.num_classes}")
            self.journal.record_answers(idx[todo], _to_words(answer))
            self.sent += len(wire)
            block[todo] = answer
        self.count += n
        check_answers(out, self.iface.output_kind, attack=self.attack)
        return out


# -- evaluation -----------------------------------------------------------------------------------

def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits [N, K]."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate_recovered(client: Any, iface: VictimInterface, run_dir: Path, config: Any,
                       recovered: Callable[[np.ndarray], np.ndarray],
                       test: tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None,
                       extra: dict[str, Any], queries: int) -> Evaluation | None:
    """Compare `recovered` (inputs -> logits) with the victim on ``config.noise`` uniform points
    in [input_low, input_high] and on the `test` images (`eval_inputs`); the errors and the
    noise fidelity go into `extra`, the test-set evaluation is returned (None without one)."""
    noise_x = np.random.default_rng(config.seed + 1).uniform(
        config.input_low, config.input_high, (config.noise, iface.dim))
    noise_answers = victim_eval_answers(client, iface, run_dir, "noise", noise_x) \
        if config.noise else None
    if noise_answers is not None:
        logits = recovered(noise_x)
        extra["max_abs_probability_error_noise"] = float(
            np.abs(softmax(logits) - noise_answers["probabilities"]).max())
        if "logits" in noise_answers and iface.output_kind == "logits":
            extra["max_abs_logit_error_noise"] = float(
                np.abs(logits - noise_answers["logits"]).max())
        extra["fidelity_noise"] = float(np.mean(
            np.argmax(logits, 1) == np.argmax(noise_answers["probabilities"], 1)))
    if test is None:
        return None
    tx, labels, names = test
    victim_test = victim_eval_answers(client, iface, run_dir, "test", tx)
    extra["max_abs_probability_error_test"] = float(
        np.abs(softmax(recovered(tx)) - victim_test["probabilities"]).max())
    return evaluate(recovered, victim_test["probabilities"], labels, test_images=tx,
                    noise=None if noise_answers is None else (noise_x,
                                                              noise_answers["probabilities"]),
                    class_names=names, n_queries=queries)


def report_recovered(run_dir: Path, config: Any, evaluation: Evaluation | None,
                     extra: dict[str, Any], **figures: Any) -> tuple[dict[str, Any], dict]:
    """Write the run's report; return its paths and the headline (the evaluation's, the
    noise errors and fidelity found in `extra`, then `figures`)."""
    paths = write_report(run_dir, config=config_to_dict(config), evaluation=evaluation,
                         extra=extra)
    headline = evaluation.headline() if evaluation is not None else {}
    headline.update({key: extra[key] for key in (
        "fidelity_noise", "max_abs_logit_error_noise", "max_abs_probability_error_noise")
        if key in extra})
    headline.update(figures)
    return paths, headline

def victim_eval_answers(client: Any, iface: VictimInterface, run_dir: Path, name: str,
                        x: np.ndarray, *, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The victim's probabilities (and logits when exposed) on evaluation points, cached in
    ``RUN_DIR/eval/<name>.npz`` (evaluation queries, not part of the attack's count)."""
    path = run_dir / "eval" / f"{name}.npz"
    if path.is_file():
        with np.load(path) as cached:
            if len(cached["probabilities"]) == len(x):
                return {k: cached[k] for k in cached.files}
    sig = client.signature()
    outputs = [o for o in ("probabilities", "logits") if o in sig.outputs]
    parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
    for start in range(0, len(x), batch_size):
        rows = np.asarray(x[start:start + batch_size])
        wire = rows.astype(iface.input_dtype).reshape(len(rows), *iface.input_shape)
        answer = client.predict_raw({iface.input_name: wire}, outputs)
        for o in outputs:
            parts[o].append(np.asarray(answer[o], dtype=np.float64))
    result = {o: np.concatenate(v) if v else np.zeros((0, iface.num_classes)) for o, v in
              parts.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **result)
    tmp.replace(path)
    return result


def eval_inputs(spec: str, split: str, limit: int | None, seed: int, iface: VictimInterface,
                low: float, high: float) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Labelled test images as the victim's float inputs: (x [N, d], labels [N], class names).

    uint8 pixels p become ``low + p / 255 * (high - low)`` (the dense victims of
    `victim_export` take pixels in [0, 1]).
    """
    shape = iface.input_shape
    channels = shape[-1] if len(shape) == 3 and shape[-1] in (1, 3) else None
    size = tuple(shape[:2]) if len(shape) == 3 else None
    data = load_dataset(spec, split, image_size=size, channels=channels, limit=limit, seed=seed)
    flat = data.images.reshape(len(data), -1)
    if flat.shape[1] != iface.dim:
        raise invalid("test_set", spec, f"images of {iface.dim} values (the victim's input "
                                        f"{list(shape)}); got {list(data.image_shape)}")
    x = low + flat.astype(np.float64) / 255.0 * (high - low)
    return x, data.labels, data.class_names


def reference_variables(path: str | Path) -> list[np.ndarray]:
    """The variables of a SavedModel version folder (evaluation only: the true parameters)."""
    import tensorflow as tf

    if not Path(path).is_dir():
        raise invalid("reference", str(path), "a SavedModel version folder of the victim")
    loaded = tf.saved_model.load(str(path))
    return [np.asarray(v.numpy(), dtype=np.float64) for v in loaded.variables]


def export_recovered(layers: Sequence[tuple[np.ndarray, np.ndarray]], iface: VictimInterface,
                     run_dir: Path, *, class_names: Sequence[str] | None = None,
                     card: dict | None = None) -> Path:
    """Export the recovered dense network (``[(W [in, out], b [out]), ...]``, ReLU between
    layers) with the victim's signature: ``RUN_DIR/recovered/recovered/<version>/``."""
    from victim_export.dense import build_dense_classifier
    from victim_export.export import export_classifier
    from victim_export.models_config import write_models_config

    dtype = "float64" if iface.input_dtype == np.float64 else "float32"
    kind = "mlp" if len(layers) == 2 else "softmax"
    hidden = layers[0][1].shape[0] if kind == "mlp" else 16
    model = build_dense_classifier(kind, iface.num_classes, iface.input_shape, dtype=dtype,
                                   hidden=hidden)
    weights = [np.asarray(a, dtype=dtype) for pair in layers for a in pair]
    model.set_weights(weights)
    base = run_dir / "recovered"
    path = export_classifier(model, base, "recovered", input_shape=iface.input_shape,
                             class_names=class_names, export_logits=True, card=card,
                             input_dtype=dtype)
    write_models_config(base, "recovered", container_base_path="")
    return path
