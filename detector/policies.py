"""Output policies: what a defended model answers instead of its full probability vector.

Answering with less information raises the cost of model extraction (Tramer et al. 2016;
Orekondy et al. 2019 evaluate label-only and top-k answers against Knockoff Nets): `LabelOnly`
returns the one-hot of the top-1 class, `TopK` keeps the k largest probabilities, `Rounding`
rounds to a few decimals, `GaussianNoise` adds noise, and `ReverseSigmoid` (Lee et al. 2019,
"Defending against NN model stealing attacks using deceptive perturbations") adds the
perturbation ``r = beta * (sigmoid(gamma * logit(y)) - 1/2)``, answers ``alpha * (y - r)``
clipped at 0 and renormalised by ``alpha``, which keeps small probabilities close to the truth
but reverses the slope of the log-probabilities a surrogate trains on.

Every policy maps a batch of probability rows float32 ``[N, K]`` to float32 ``[N, K]`` (same
shape, so a TF Serving answer keeps its signature), row by row, with every output row summing to
1 (up to float32 precision). Rows are normalised along the class axis with ``keepdims``, so a
batch is never broadcast against its own sums; a row whose entries all vanish (clipped noise,
reverse sigmoid with a large beta, rounding of many small probabilities) falls back to the
one-hot of its original top-1 class instead of dividing by zero (ART's Gaussian-noise and
reverse-sigmoid post-processors answer NaN rows there, and its noise decides per batch whether
to renormalise at all, so one logit row leaves the others unnormalised). `parse_policy` reads the
text form used by the gateway's policy file; ``policy.spec`` writes it back.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

import numpy as np

from common.constraints import check_int, check_number
from common.errors import invalid

__all__ = [
    "GaussianNoise",
    "Identity",
    "LabelOnly",
    "OutputPolicy",
    "ReverseSigmoid",
    "Rounding",
    "TopK",
    "parse_policy",
    "policy_names",
]

_SPECS = ("identity", "label_only", "top_k:K", "round:D", "noise:SIGMA",
          "reverse_sigmoid:BETA,GAMMA")


@runtime_checkable
class OutputPolicy(Protocol):
    """A map of probability batches float32 ``[N, K]`` -> float32 ``[N, K]``."""

    @property
    def spec(self) -> str: ...

    def __call__(self, probs: np.ndarray) -> np.ndarray: ...


def _check_probs(probs: object) -> np.ndarray:
    array = np.asarray(probs)
    if array.ndim != 2 or array.shape[1] < 1:
        raise invalid("probs", f"array of shape {array.shape}", "probability rows [N, K]")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise invalid("probs", f"{array.dtype} array", "float probability rows [N, K]")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise invalid("probs", "rows with NaN or infinity", "finite probability rows [N, K]")
    return array


def _one_hot(indices: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(indices), classes), np.float64)
    out[np.arange(len(indices)), indices] = 1.0
    return out


def _normalise(values: np.ndarray, fallback_top1: np.ndarray) -> np.ndarray:
    """Rows divided by their sums (float64 -> float32); all-zero rows -> one-hot fallback."""
    values = np.maximum(values, 0.0)
    sums = values.sum(axis=1, keepdims=True)
    empty = sums[:, 0] <= 0.0
    if np.any(empty):
        values = values.copy()
        values[empty] = _one_hot(fallback_top1[empty], values.shape[1])
        sums[empty] = 1.0
    return (values / sums).astype(np.float32)


def _fmt(value: float) -> str:
    """The shortest text that parses back to the same float (``0.1``, ``1.0``)."""
    return repr(float(value))


class Identity:
    """The answer as it is (as float32)."""

    spec = "identity"

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        return _check_probs(probs).astype(np.float32)

    def __repr__(self) -> str:
        return "Identity()"


class LabelOnly:
    """The one-hot of the top-1 class: no probability leaves the server."""

    spec = "label_only"

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        array = _check_probs(probs)
        return _one_hot(np.argmax(array, axis=1), array.shape[1]).astype(np.float32)

    def __repr__(self) -> str:
        return "LabelOnly()"


class TopK:
    """The k largest probabilities of each row, renormalised; the others are zero."""

    def __init__(self, k: int) -> None:
        self.k = int(check_int("k", k, min=1))

    @property
    def spec(self) -> str:
        return f"top_k:{self.k}"

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        array = _check_probs(probs)
        top1 = np.argmax(array, axis=1)
        if self.k >= array.shape[1]:
            return _normalise(array, top1)
        # The k largest per row (stable: among ties the lower index wins, so top-1 is kept).
        order = np.argsort(-array, axis=1, kind="stable")[:, : self.k]
        kept = np.zeros_like(array)
        rows = np.arange(len(array))[:, None]
        kept[rows, order] = array[rows, order]
        return _normalise(kept, top1)

    def __repr__(self) -> str:
        return f"TopK(k={self.k})"


class Rounding:
    """Probabilities rounded to `decimals` decimals, then renormalised to sum to 1."""

    def __init__(self, decimals: int) -> None:
        self.decimals = int(check_int("decimals", decimals, min=0, max=8))

    @property
    def spec(self) -> str:
        return f"round:{self.decimals}"

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        array = _check_probs(probs)
        return _normalise(np.round(array, self.decimals), np.argmax(array, axis=1))

    def __repr__(self) -> str:
        return f"Rounding(decimals={self.decimals})"


class GaussianNoise:
    """Gaussian noise of standard deviation `sigma` added, clipped at 0, renormalised.

    With `keep_top1` (default) the top-1 class is kept: where the noise moved the maximum, the
    two entries are swapped, so a benign user's label never changes. Each call draws fresh
    noise from the policy's own generator (`seed`), guarded by a lock for concurrent callers.
    """

    def __init__(self, sigma: float, seed: int | None = None, *, keep_top1: bool = True) -> None:
        self.sigma = float(check_number("sigma", sigma, min=0))
        self.seed = check_int("seed", seed, min=0, optional=True)
        self.keep_top1 = bool(keep_top1)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    @property
    def spec(self) -> str:
        return f"noise:{_fmt(self.sigma)}"

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        array = _check_probs(probs)
        top1 = np.argmax(array, axis=1)
        with self._lock:
            noise = self._rng.normal(0.0, self.sigma, size=array.shape)
        noisy = np.maximum(array + noise, 0.0)
        if self.keep_top1 and len(array):
            rows = np.arange(len(array))
            moved = np.argmax(noisy, axis=1)
            swap = moved != top1
            if np.any(swap):
                r = rows[swap]
                a, b = top1[swap], moved[swap]
                noisy[r, a], noisy[r, b] = noisy[r, b].copy(), noisy[r, a].copy()
        out = _normalise(noisy, top1)
        if self.keep_top1 and len(out):
            # Exact float ties (after the float32 cast) could still hide the top-1 class.
            lost = np.argmax(out, axis=1) != top1
            if np.any(lost):
                out[lost] = _one_hot(top1[lost], out.shape[1]).astype(np.float32)
        return out

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma}, seed={self.seed}, keep_top1={self.keep_top1})"


class ReverseSigmoid:
    """Lee et al. 2019's reverse sigmoid: ``alpha * (y - beta * (s(gamma * s^-1(y)) - 1/2))``.

    ``s`` is the logistic sigmoid and ``s^-1(y) = log(y / (1 - y))`` (y clipped to
    [1e-9, 1 - 1e-9]); the perturbed row is clipped at 0 and ``alpha`` renormalises it to sum
    to 1. `beta` (> 0) scales the perturbation, `gamma` (> 0) sets how fast it saturates (both
    are tuned per model in the paper). The top-1 class can change for large beta (the paper's
    trade-off), so it is not promised.
    """

    _CLIP = 1e-9

    def __init__(self, beta: float, gamma: float) -> None:
        self.beta = float(check_number("beta", beta, gt=0))
        self.gamma = float(check_number("gamma", gamma, gt=0))

    @property
    def spec(self) -> str:
        return f"reverse_sigmoid:{_fmt(self.beta)},{_fmt(self.gamma)}"

    def perturbation(self, probs: np.ndarray) -> np.ndarray:
        """The perturbation r(y) of each entry, float64 ``[N, K]``."""
        y = np.clip(_check_probs(probs), self._CLIP, 1.0 - self._CLIP)
        logit = np.log(y) - np.log1p(-y)
        return self.beta * (1.0 / (1.0 + np.exp(-self.gamma * logit)) - 0.5)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        array = _check_probs(probs)
        return _normalise(array - self.perturbation(array), np.argmax(array, axis=1))

    def __repr__(self) -> str:
        return f"ReverseSigmoid(beta={self.beta}, gamma={self.gamma})"


def policy_names() -> tuple[str, ...]:
    """The accepted spec forms, for help texts and error messages."""
    return _SPECS


def _numbers(spec: str, text: str, count: int, kind: type) -> list:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count or not all(parts):
        raise invalid("policy", spec, f"one of {', '.join(_SPECS)}")
    try:
        return [kind(p) for p in parts]
    except ValueError:
        raise invalid("policy", spec, f"one of {', '.join(_SPECS)} with "
                      f"{'integer' if kind is int else 'numeric'} parameters") from None


def parse_policy(spec: str) -> OutputPolicy:
    """Build a policy from its text form: ``identity``, ``label_only``, ``top_k:K``,
    ``round:D``, ``noise:SIGMA``, ``reverse_sigmoid:BETA,GAMMA``; `UsageError` otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise invalid("policy", spec, f"one of {', '.join(_SPECS)}")
    text = spec.strip()
    name, _, args = text.partition(":")
    name = name.strip().lower()
    try:
        if name == "identity" and not args:
            return Identity()
        if name in ("label_only", "top1", "top_1") and not args:
            return LabelOnly()
        if name == "top_k":
            return TopK(*_numbers(spec, args, 1, int))
        if name == "round":
            return Rounding(*_numbers(spec, args, 1, int))
        if name == "noise":
            return GaussianNoise(*_numbers(spec, args, 1, float))
        if name == "reverse_sigmoid":
            return ReverseSigmoid(*_numbers(spec, args, 2, float))
    except ValueError as err:  # a UsageError from a constructor: name the whole spec
        raise invalid("policy", spec, f"valid parameters ({err})") from err
    raise invalid("policy", spec, f"one of {', '.join(_SPECS)}")
