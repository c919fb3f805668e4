"""How well an extracted surrogate copies its victim: accuracy, fidelity and their growth.

The measures of Knockoff Nets (Orekondy et al. 2019) and Atli et al. 2020: the surrogate's test
accuracy next to the victim's and their ratio (the "performance recovery" the papers report), and
fidelity, the fraction of inputs on which surrogate and victim agree on the top-1 class, measured
on the test set, on held-out transfer-set images (never queried) and on uniform noise images (far
from any training distribution). Per-class accuracies show which classes the attack failed to
copy, and per-class agreement (fidelity on each class's test images) whether it failed to copy
the victim or copied a victim that is itself wrong there (`poor_classes`); `prefix_curve`
trains surrogates on prefixes of the query journal to show accuracy and fidelity against the
number of queries. Everything here is numpy over callables: the lead wires the serving client,
the journal and the surrogate trainer in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from common.constraints import check_int, is_int
from common.errors import invalid

__all__ = [
    "Evaluation",
    "PredictFn",
    "accuracy",
    "default_budgets",
    "evaluate",
    "fidelity",
    "per_class_accuracy",
    "per_class_agreement",
    "poor_classes",
    "prefix_curve",
    "top1",
    "uniform_noise_images",
]

logger = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
"""Images uint8 [N, H, W, 3] -> scores [N, K] (probabilities, log-probabilities or logits)."""


def top1(scores_or_labels: Any, argument: str = "scores") -> np.ndarray:
    """Class indices int64 [N] from scores [N, K] (argmax) or from labels [N] (unchanged)."""
    values = np.asarray(scores_or_labels)
    if values.ndim == 2:
        if values.shape[1] == 0:
            raise invalid(argument, f"shape {values.shape}", "scores [N, K] with K >= 1")
        return np.argmax(values, axis=1).astype(np.int64)
    if values.ndim == 1:
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise invalid(argument, f"dtype {values.dtype}", "integer class labels [N]")
        return values.astype(np.int64)
    raise invalid(argument, f"shape {values.shape}", "class labels [N] or scores [N, K]")


def _same_length(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if len(a) != len(b):
        raise invalid(names[1], f"{len(b)} rows", f"as many rows as `{names[0]}` ({len(a)})")


def accuracy(pred_labels: Any, labels: Any) -> float | None:
    """Fraction of `pred_labels` (labels [N] or scores [N, K]) equal to `labels`; None if N=0."""
    pred = top1(pred_labels, "pred_labels")
    truth = top1(labels, "labels")
    _same_length(pred, truth, ("pred_labels", "labels"))
    return float(np.mean(pred == truth)) if len(pred) else None


def fidelity(a_probs: Any, b_probs: Any) -> float | None:
    """Top-1 agreement between two models' answers (scores [N, K] or labels [N]); None if N=0."""
    a = top1(a_probs, "a_probs")
    b = top1(b_probs, "b_probs")
    _same_length(a, b, ("a_probs", "b_probs"))
    return float(np.mean(a == b)) if len(a) else None


def _per_class_share(
    hits: np.ndarray, truth: np.ndarray, class_names: Sequence[str]
) -> dict[str, float | None]:
    """The mean of boolean `hits` [N] over the rows of each true class (`truth`: class indices
    [N], as `top1` gives them, lengths checked by the caller), per class name in class order;
    None for a class without rows."""
    names = [str(name) for name in class_names]
    if len(truth) and (truth.min() < 0 or truth.max() >= len(names)):
        raise invalid("labels", f"labels in [{truth.min()}, {truth.max()}]",
                      f"labels in [0, {len(names) - 1}] (one per class name)")
    result: dict[str, float | None] = {}
    for index, name in enumerate(names):
        mask = truth == index
        result[name] = float(hits[mask].mean()) if mask.any() else None
    return result


def per_class_accuracy(
    pred: Any, labels: Any, class_names: Sequence[str]
) -> dict[str, float | None]:
    """Accuracy per class name, in class order; None for a class without test images."""
    predicted = top1(pred, "pred")
    truth = top1(labels, "labels")
    _same_length(predicted, truth, ("pred", "labels"))
    return _per_class_share(predicted == truth, truth, class_names)


def per_class_agreement(
    a: Any, b: Any, labels: Any, class_names: Sequence[str]
) -> dict[str, float | None]:
    """Top-1 agreement of two models' answers (scores [N, K] or labels [N]) on the images of
    each true class (`labels`), per class name in class order; None for a class without test
    images. With a surrogate and its victim: the fidelity on each class's test images."""
    first, second = top1(a, "a"), top1(b, "b")
    _same_length(first, second, ("a", "b"))
    truth = top1(labels, "labels")
    _same_length(first, truth, ("a", "labels"))
    return _per_class_share(first == second, truth, class_names)


def poor_classes(
    per_class_victim: Mapping[str, float | None],
    per_class_surrogate: Mapping[str, float | None],
    per_class_agreement: Mapping[str, float | None] | None = None,
    threshold: float = 0.5,
) -> dict[str, list[str] | None]:
    """The classes a surrogate copies poorly, by name in the tables' order: ``accuracy``, its
    test accuracy below `threshold`; ``agreement``, its agreement with the victim below it
    (None when no agreement was measured: a table made before it existed); ``victim_too``,
    those of ``accuracy`` where the victim's own accuracy is below it too (a surrogate that
    matched the victim perfectly would fail there by accuracy). A class without a value
    (no test images) is in none."""
    def below(table: Mapping[str, float | None], name: str) -> bool:
        value = table.get(name)
        return value is not None and value < threshold

    accuracy = [name for name in per_class_surrogate if below(per_class_surrogate, name)]
    return {
        "accuracy": accuracy,
        "agreement": None if not per_class_agreement else [
            name for name in per_class_agreement if below(per_class_agreement, name)],
        "victim_too": [name for name in accuracy if below(per_class_victim, name)],
    }


def uniform_noise_images(n: int, shape: Sequence[int], seed: int) -> np.ndarray:
    """`n` images of independent uniform pixels in 0..255, uint8 [n, *shape], seeded."""
    check_int("n", n, min=0)
    dims = tuple(int(v) for v in shape)
    if len(dims) != 3 or dims[2] != 3 or min(dims) < 1:
        raise invalid("shape", tuple(shape), "(height, width, 3)")
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(int(n), *dims), dtype=np.uint8)


@dataclass(frozen=True)
class Evaluation:
    """The headline numbers of one surrogate against its victim (fractions in [0, 1]).

    ``ratio`` is surrogate / victim test accuracy; a fidelity is None when its images were not
    given; ``per_class_agreement`` is the fidelity on each class's test images (empty in an
    evaluation made before it existed); ``n_queries`` is the number of answered queries the
    surrogate was trained on.
    """

    victim_acc: float | None
    surrogate_acc: float | None
    ratio: float | None
    fidelity_test: float | None
    fidelity_transfer_heldout: float | None = None
    fidelity_noise: float | None = None
    per_class_victim: dict[str, float | None] = field(default_factory=dict)
    per_class_surrogate: dict[str, float | None] = field(default_factory=dict)
    per_class_agreement: dict[str, float | None] = field(default_factory=dict)
    n_queries: int | None = None
    n_test: int = 0
    n_transfer_heldout: int = 0
    n_noise: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)

    def headline(self) -> dict[str, Any]:
        """The scalar fields (no per-class tables): one point of an accuracy/fidelity curve."""
        data = self.to_dict()
        for key in ("per_class_victim", "per_class_surrogate", "per_class_agreement"):
            data.pop(key)
        return data


def _ratio(surrogate_acc: float | None, victim_acc: float | None) -> float | None:
    if surrogate_acc is None or victim_acc is None or victim_acc == 0:
        return None
    return surrogate_acc / victim_acc


def _pair(argument: str, value: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        images, victim_probs = value
    except (TypeError, ValueError) as err:
        raise invalid(argument, type(value).__name__, "a pair (images, victim_probs)") from err
    images = np.asarray(images)
    victim_probs = np.asarray(victim_probs)
    _same_length(images, victim_probs, (f"{argument}[0]", f"{argument}[1]"))
    return images, victim_probs


def _predict(predict: PredictFn, images: np.ndarray, argument: str) -> np.ndarray:
    if len(images) == 0:
        return np.zeros((0,), np.int64)
    scores = np.asarray(predict(images))
    labels = top1(scores, argument)
    if len(labels) != len(images):
        raise invalid(argument, f"{len(labels)} answers", f"one per image ({len(images)})")
    return labels


def evaluate(
    surrogate_predict: PredictFn,
    victim_probs_test: np.ndarray,
    test_labels: np.ndarray,
    *,
    test_images: np.ndarray,
    transfer_heldout: tuple[np.ndarray, np.ndarray] | None = None,
    noise: tuple[np.ndarray, np.ndarray] | None = None,
    class_names: Sequence[str] | None = None,
    n_queries: int | None = None,
) -> Evaluation:
    """Evaluate a surrogate against its victim.

    Args:
        surrogate_predict: images -> scores [N, K] (only the argmax is used).
        victim_probs_test: the victim's answers on the test set [N, K] (or its labels [N]).
        test_labels: the test set's true labels [N].
        test_images: the test images, uint8 [N, H, W, 3].
        transfer_heldout: (images, victim answers) of transfer-set images never queried.
        noise: (images, victim answers) of uniform noise images (`uniform_noise_images`).
        class_names: K names for the per-class tables; default "0".."K-1".
        n_queries: the number of answered queries the surrogate was trained on.
    """
    labels = top1(test_labels, "test_labels")
    victim = top1(victim_probs_test, "victim_probs_test")
    _same_length(labels, victim, ("test_labels", "victim_probs_test"))
    _same_length(labels, np.asarray(test_images), ("test_labels", "test_images"))
    if class_names is None:
        width = np.asarray(victim_probs_test).shape[1] if np.ndim(victim_probs_test) == 2 \
            else int(max(labels.max(initial=-1), victim.max(initial=-1)) + 1)
        class_names = [str(i) for i in range(width)]
    surrogate = _predict(surrogate_predict, np.asarray(test_images), "surrogate_predict")
    victim_acc = accuracy(victim, labels)
    surrogate_acc = accuracy(surrogate, labels)

    fidelities: dict[str, float | None] = {}
    sizes: dict[str, int] = {}
    for name, value in (("transfer_heldout", transfer_heldout), ("noise", noise)):
        if value is None:
            fidelities[name], sizes[name] = None, 0
            continue
        images, victim_answers = _pair(name, value)
        fidelities[name] = fidelity(_predict(surrogate_predict, images, "surrogate_predict"),
                                    top1(victim_answers, f"{name}[1]"))
        sizes[name] = len(images)
    result = Evaluation(
        victim_acc=victim_acc,
        surrogate_acc=surrogate_acc,
        ratio=_ratio(surrogate_acc, victim_acc),
        fidelity_test=fidelity(surrogate, victim),
        fidelity_transfer_heldout=fidelities["transfer_heldout"],
        fidelity_noise=fidelities["noise"],
        per_class_victim=per_class_accuracy(victim, labels, class_names),
        per_class_surrogate=per_class_accuracy(surrogate, labels, class_names),
        per_class_agreement=per_class_agreement(surrogate, victim, labels, class_names),
        n_queries=None if n_queries is None else int(n_queries),
        n_test=len(labels),
        n_transfer_heldout=sizes["transfer_heldout"],
        n_noise=sizes["noise"],
    )
    logger.info("surrogate accuracy %s (victim %s), fidelity test %s / transfer %s / noise %s",
                _fmt(result.surrogate_acc), _fmt(result.victim_acc), _fmt(result.fidelity_test),
                _fmt(result.fidelity_transfer_heldout), _fmt(result.fidelity_noise))
    return result


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def default_budgets(total: int, points: int = 5) -> list[int]:
    """Query budgets for a curve: `total` halved `points - 1` times, ascending, distinct.

    ``default_budgets(10000, 5) == [625, 1250, 2500, 5000, 10000]``.
    """
    check_int("total", total, min=1)
    check_int("points", points, min=1)
    budgets = {max(1, int(total) >> shift) for shift in range(int(points))}
    return sorted(budgets)


def _check_budgets(budgets: Iterable[int]) -> list[int]:
    values = list(budgets)
    if not values or any(not is_int(b) or b < 1 for b in values):
        raise invalid("budgets", values, "a non-empty list of positive integers")
    if len(set(values)) != len(values):
        raise invalid("budgets", values, "distinct budgets")
    return sorted(int(b) for b in values)


def prefix_curve(
    budgets: Iterable[int],
    train_fn: Callable[[int], PredictFn],
    *,
    victim_probs_test: np.ndarray,
    test_labels: np.ndarray,
    test_images: np.ndarray,
    transfer_heldout: tuple[np.ndarray, np.ndarray] | None = None,
    noise: tuple[np.ndarray, np.ndarray] | None = None,
    completed: Sequence[Mapping[str, Any]] = (),
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Accuracy and fidelity against the number of queries.

    For each budget B (ascending), ``train_fn(B)`` trains a surrogate on the first B answered
    queries of the journal and returns its predict function, which is evaluated as `evaluate`
    does. Points in `completed` (earlier results, matched by their ``"queries"``) are reused
    without training, and `on_point` receives each new point as soon as it exists, so an
    interrupted curve can be saved and resumed.

    Returns:
        One dict per budget: ``queries``, the `Evaluation.headline` numbers and ``seconds``
        (training plus evaluation time).
    """
    wanted = _check_budgets(budgets)
    done = {int(point["queries"]): dict(point) for point in completed if "queries" in point}
    points: list[dict[str, Any]] = []
    for budget in wanted:
        if budget in done:
            points.append(done[budget])
            continue
        started = time.monotonic()
        predict = train_fn(budget)
        result = evaluate(predict, victim_probs_test, test_labels, test_images=test_images,
                          transfer_heldout=transfer_heldout, noise=noise, n_queries=budget)
        point = {"queries": budget, **result.headline(),
                 "seconds": round(time.monotonic() - started, 3)}
        logger.info("curve point: %d queries -> surrogate accuracy %s, fidelity %s", budget,
                    _fmt(point["surrogate_acc"]), _fmt(point["fidelity_test"]))
        points.append(point)
        if on_point is not None:
            on_point(dict(point))
    return points
