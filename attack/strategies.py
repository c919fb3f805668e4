"""Which transfer-set images to query next: random sampling and Knockoff Nets' adaptive bandit.

`RandomStrategy` walks a seeded permutation of the transfer set. `AdaptiveStrategy` is Orekondy
et al.'s adaptive strategy (Knockoff Nets, CVPR 2019, Sec. 4.1.2): a gradient bandit over the
transfer set's label hierarchy (`attack.hierarchy`). Every node has a preference ``H``; a query
walks from the root to a leaf, choosing each child with probability ``softmax(H[children])``
(computed stably, children without an unused image masked out), then draws an unused image of the
leaf's class uniformly. Once the victim answers ``y`` the walk is rewarded with

- certainty ``y_top1 - y_top2`` (the margin; ``y_top2 = 0`` for a single class),
- diversity ``sum_k max(0, y_k - mean_k)``, ``mean`` the average answer over the last
  `diversity_window` answers (the paper's Delta; zero before the first), which pays answers unlike
  the recent ones,
- loss, the surrogate's cross-entropy ``-sum_k y_k log q_k`` with ``log q`` re-normalised by a
  log-softmax and clipped below at ``log(eps)``,
- ``all``: the sum of the three after normalisation.

Each reward is normalised by its running mean and standard deviation (Welford, population std,
the sample itself included) with the std floored at `variance_floor`, so no reward becomes inf
or NaN, whatever the victim returns (one-hot answers, exact zeros, NaN) or the surrogate predicts
(``-inf`` log-probabilities). The gradient-bandit step (Sutton & Barto, Sec. 2.8) then moves
every choice on the walk: ``H[chosen] += lr (r - b)(1 - pi[chosen])`` and ``H[sibling] -= lr
(r - b) pi[sibling]`` over the siblings it was chosen among, with ``b`` the mean of all earlier
rewards (0 before the first). A batch of ``n`` queries is ``n`` walks sampled with the same
preferences; `update` applies the answers one at a time in the given order. `lr` sets the time
scale: under rewards that are pure noise the preferences drift like ``lr * sqrt(queries)``; the
default 0.02 keeps that to a few units over a 10,000-query budget (with 0.1 the policy over
Tiny-ImageNet's 200 classes collapses onto a few of them within about 6,000 noise rewards).

The active strategies are ActiveThief's (Pal et al., AAAI 2020): `ActiveStrategy` answers a
round at a time from a queue that `plan` fills, using the surrogate trained on every answer so
far. The first round is a seeded random seed set; later rounds rank the unqueried pool by

- ``uncertainty``: the entropy of the surrogate's predicted distribution, highest first
  (`uncertainty_order`);
- ``kcenter``: greedy k-center on the surrogate's probability vectors, each pick the pool point
  farthest (Euclidean) from everything queried or picked before it (`k_center_greedy`);
- ``dfal``: DeepFool-based active learning, the smallest DeepFool perturbation that flips the
  surrogate's label first (`deepfool_distances`, the only part that needs the Keras model).

All strategies serialise to JSON (`state` / `load_state`) so that a resumed run makes exactly
the selections the uninterrupted run would have made (the active ones: given the same surrogate).
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from attack.hierarchy import Hierarchy
from common.constraints import check_int
from common.errors import UsageError, invalid

__all__ = [
    "ACTIVE",
    "REWARDS",
    "ActiveStrategy",
    "AdaptiveStrategy",
    "HierarchicalBandit",
    "RandomStrategy",
    "RunningStats",
    "Strategy",
    "TransferSetExhausted",
    "certainty_reward",
    "deepfool_distances",
    "diversity_reward",
    "entropy",
    "k_center_greedy",
    "log_softmax",
    "loss_reward",
    "uncertainty_order",
]

logger = logging.getLogger(__name__)

REWARDS = ("cert", "div", "loss", "all")
ACTIVE = ("uncertainty", "kcenter", "dfal")
_STATE_VERSION = 1
_LOGIT_BOUND = 1e4  # |logit| beyond this carries no information a softmax could use


class TransferSetExhausted(UsageError):
    """More images were asked for than the transfer set has left unused."""


class Strategy(Protocol):
    """What the attack loop needs from a sampling strategy."""

    name: str

    @property
    def remaining(self) -> int: ...

    def select(self, n: int) -> np.ndarray: ...

    def update(self, indices: np.ndarray, victim_probs: np.ndarray,
               surrogate_log_probs: np.ndarray | None = None) -> dict[str, Any]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


# ------------------------------------------------------------------------------------ rewards


def _probabilities(victim_probs: np.ndarray) -> np.ndarray:
    """Rows of a valid distribution: NaN and negative entries become 0, +inf the whole mass,
    an all-zero row uniform."""
    y = np.asarray(victim_probs, dtype=np.float64)
    if y.ndim == 1:
        y = y[None, :]
    if y.ndim != 2 or y.shape[1] < 1:
        raise invalid("victim_probs", f"array of shape {y.shape}", "a [n, K] array, K >= 1")
    big = np.isposinf(y)
    y = np.where(big.any(axis=1, keepdims=True), big.astype(np.float64),
                 np.nan_to_num(y, nan=0.0, neginf=0.0))
    y = np.clip(y, 0.0, None)
    total = y.sum(axis=1, keepdims=True)
    uniform = np.full_like(y, 1.0 / y.shape[1])
    return np.where(total > 0, y / np.where(total > 0, total, 1.0), uniform)


def certainty_reward(victim_probs: np.ndarray) -> np.ndarray:
    """``y_top1 - y_top2`` per row, in [0, 1] (``y_top1`` alone for a single class)."""
    y = _probabilities(victim_probs)
    if y.shape[1] == 1:
        return y[:, 0].copy()
    top2 = -np.partition(-y, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def diversity_reward(victim_probs: np.ndarray, history_mean: np.ndarray) -> np.ndarray:
    """``sum_k max(0, y_k - history_mean_k)`` per row, in [0, 1]; `history_mean` is ``[K]``
    (one mean for every row) or ``[n, K]``."""
    y = _probabilities(victim_probs)
    mean = np.nan_to_num(np.asarray(history_mean, dtype=np.float64), nan=0.0, posinf=1.0,
                         neginf=0.0)
    if mean.shape not in ((y.shape[1],), y.shape):
        raise invalid("history_mean", f"array of shape {mean.shape}",
                      f"shape ({y.shape[1]},) or {y.shape}")
    return np.maximum(0.0, y - mean).sum(axis=1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """A stable log-softmax over the last axis; NaN, ``±inf`` and huge values are bounded to
    ``±1e4`` first, so the result is always finite."""
    x = np.asarray(logits, dtype=np.float64)
    x = np.clip(np.nan_to_num(x, nan=-_LOGIT_BOUND, posinf=_LOGIT_BOUND, neginf=-_LOGIT_BOUND),
                -_LOGIT_BOUND, _LOGIT_BOUND)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def loss_reward(victim_probs: np.ndarray, surrogate_log_probs: np.ndarray, *,
                eps: float = 1e-7) -> np.ndarray:
    """The surrogate's cross-entropy against the victim's answer, ``-sum_k y_k log q_k``, per row,
    in [0, -log(eps)]: ``log q`` is re-normalised (log-softmax, so logits work too) and clipped
    below at ``log(eps)``."""
    y = _probabilities(victim_probs)
    log_q = np.asarray(surrogate_log_probs, dtype=np.float64)
    if log_q.ndim == 1:
        log_q = log_q[None, :]
    if log_q.shape != y.shape:
        raise invalid("surrogate_log_probs", f"array of shape {log_q.shape}",
                      f"the victim answers' shape {y.shape}")
    if not 0.0 < eps < 1.0:
        raise invalid("eps", eps, "a number in (0, 1)")
    log_q = np.maximum(log_softmax(log_q), np.log(eps))
    return np.maximum(0.0, -(y * log_q).sum(axis=1))


class RunningStats:
    """Running mean and population standard deviation (Welford) of a scalar stream; `normalise`
    includes the value in the statistics, then divides by ``max(std, floor)``."""

    def __init__(self, floor: float = 1e-3) -> None:
        if not floor > 0:
            raise invalid("variance_floor", floor, "a positive standard-deviation floor")
        self.floor = float(floor)
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def std(self) -> float:
        return max(float(np.sqrt(self.m2 / self.count)) if self.count else 0.0, self.floor)

    def add(self, value: float) -> None:
        value = float(value)
        if not np.isfinite(value):
            raise invalid("value", value, "a finite number")
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    def normalise(self, value: float) -> float:
        self.add(value)
        return (float(value) - self.mean) / self.std

    def state(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


# ----------------------------------------------------------------------------------- bandit


Walk = list[tuple[int, int, tuple[int, ...]]]  # (node, chosen child, children chosen among)


def _softmax(h: np.ndarray) -> np.ndarray:
    z = np.exp(h - h.max())
    return z / z.sum()


class HierarchicalBandit:
    """The gradient bandit over a `Hierarchy`: preferences `H` per node, a baseline, sampling of
    root-to-leaf walks among `alive` nodes, and the update of one walk from one reward."""

    def __init__(self, hierarchy: Hierarchy, lr: float = 0.02) -> None:
        if not (np.isfinite(lr) and lr > 0):
            raise invalid("lr", lr, "a positive learning rate")
        self.hierarchy = hierarchy
        self.lr = float(lr)
        self.H = np.zeros(hierarchy.num_nodes, dtype=np.float64)
        self.baseline = 0.0
        self.count = 0
        self._children = [np.asarray(c, dtype=np.int64) for c in hierarchy.children]

    def candidates(self, node: int, alive: np.ndarray) -> np.ndarray:
        kids = self._children[node]
        return kids[alive[kids]]

    def sample(self, rng: np.random.Generator, alive: np.ndarray) -> Walk:
        """A root-to-leaf walk through `alive` nodes (boolean ``[num_nodes]``, root alive)."""
        walk: Walk = []
        node = 0
        while not self.hierarchy.is_leaf(node):
            kids = self.candidates(node, alive)
            if not len(kids):
                raise RuntimeError(f"node {node} is alive but has no alive child")
            chosen = int(kids[0])
            if len(kids) > 1:  # inverse CDF: one uniform draw per choice
                cdf = np.cumsum(_softmax(self.H[kids]))
                at = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
                chosen = int(kids[min(at, len(kids) - 1)])
            walk.append((node, chosen, tuple(int(k) for k in kids)))
            node = chosen
        return walk

    def update(self, walk: Walk, reward: float) -> float:
        """One gradient-bandit step of every choice on `walk`; returns the advantage."""
        reward = float(reward)
        if not np.isfinite(reward):
            raise invalid("reward", reward, "a finite number")
        advantage = reward - self.baseline
        for _, chosen, among in walk:
            kids = np.asarray(among, dtype=np.int64)
            pi = _softmax(self.H[kids])
            self.H[kids] -= self.lr * advantage * pi
            self.H[chosen] += self.lr * advantage
        self.count += 1
        self.baseline += (reward - self.baseline) / self.count
        return advantage

    def leaf_probabilities(self, alive: np.ndarray) -> np.ndarray:
        """The probability of reaching each class leaf, ``[num_classes]`` (0 where not alive)."""
        tree = self.hierarchy
        reach = np.zeros(tree.num_nodes)
        reach[0] = 1.0
        for node in range(tree.num_nodes):  # pre-order: parents before children
            if reach[node] > 0 and not tree.is_leaf(node):
                kids = self.candidates(node, alive)
                if len(kids):
                    reach[kids] = reach[node] * _softmax(self.H[kids])
        return reach[list(tree.class_leaves)]


# --------------------------------------------------------------------------------- strategies


def _indices(values: object, argument: str, size: int) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise invalid(argument, f"{array.dtype} array of shape {array.shape}",
                      "a 1-D array of integer indices")
    if array.min() < 0 or array.max() >= size:
        raise invalid(argument, f"indices in [{array.min()}, {array.max()}]",
                      f"indices into the {size} transfer-set images")
    return array.astype(np.int64)


def _count(n: object) -> int:
    return int(check_int("n", n, min=0))


def _exhausted(n: int, remaining: int, total: int) -> TransferSetExhausted:
    return TransferSetExhausted(
        f"The transfer set is exhausted: {n} more images were asked for but only {remaining} "
        f"of its {total} are unused. Lower --budget or use a larger --transfer-set.")


def _check_state(state: object, kind: str, expected: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise invalid("state", got, f"the state of a {kind} strategy")
    if state.get("version") != _STATE_VERSION:
        raise invalid("state", f"version {state.get('version')}", f"version {_STATE_VERSION}")
    for key, value in expected.items():
        if state.get(key) != value:
            raise invalid("state", f"{key}={state.get(key)!r}",
                          f"{key}={value!r}, as this strategy was built (same transfer set and "
                          "settings)")
    return state


class _PoolStrategy:
    """What the random and the active strategies share: a pool of `num_items` transfer-set
    images, each selected at most once, `exclude`d ones never (answered before a resume)."""

    name = ""

    def __init__(self, num_items: int, seed: int,
                 exclude: Iterable[int] | np.ndarray | None) -> None:
        self.num_items = int(check_int("num_items", num_items, min=1,
                                       expected="a positive number of transfer-set images"))
        self.seed = int(seed)
        self._used = np.zeros(self.num_items, dtype=bool)
        self._excluded = _indices([] if exclude is None else exclude, "exclude", self.num_items)
        self._used[self._excluded] = True

    @property
    def remaining(self) -> int:
        return int(self.num_items - self._used.sum())

    def exclude(self, indices: Iterable[int] | np.ndarray) -> None:
        """Never select `indices` (queries sent outside this strategy, e.g. re-sent after a
        crash)."""
        self._used[_indices(indices, "indices", self.num_items)] = True

    def update(self, indices: np.ndarray, victim_probs: np.ndarray,
               surrogate_log_probs: np.ndarray | None = None) -> dict[str, Any]:
        """Marks `indices` used and returns {}: these strategies learn nothing from the answers
        (an active one learns in the surrogate before its next `plan`)."""
        self.exclude(indices)
        return {}

    def _restore_used(self, used: np.ndarray) -> None:
        self._used[:] = False
        self._used[used] = True
        self._used[self._excluded] = True


class RandomStrategy(_PoolStrategy):
    """Transfer-set images in a seeded random order, each at most once.

    `exclude` (e.g. the journal's answered indices on resume) are never selected; the others come
    in the order of ``numpy.random.default_rng(seed).permutation(num_items)``.
    """

    name = "random"

    def __init__(self, num_items: int, seed: int = 0, *,
                 exclude: Iterable[int] | np.ndarray | None = None) -> None:
        super().__init__(num_items, seed, exclude)
        self._order = np.random.default_rng(self.seed).permutation(self.num_items)
        self._cursor = 0

    def select(self, n: int) -> np.ndarray:
        n = _count(n)
        if n > self.remaining:
            raise _exhausted(n, self.remaining, self.num_items)
        chosen: list[np.ndarray] = []
        wanted = n
        while wanted:
            block = self._order[self._cursor:self._cursor + max(2 * wanted, 1024)]
            if not len(block):
                raise RuntimeError("random strategy: permutation ended before the count did")
            fresh = block[~self._used[block]][:wanted]
            if len(fresh) == wanted:  # stop just after the last image taken
                self._cursor += int(np.flatnonzero(block == fresh[-1])[0]) + 1
            else:
                self._cursor += len(block)
            chosen.append(fresh)
            wanted -= len(fresh)
        picked = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
        self._used[picked] = True
        return picked.astype(np.int64)

    def state(self) -> dict[str, Any]:
        return {"kind": self.name, "version": _STATE_VERSION, "num_items": self.num_items,
                "seed": self.seed, "used": np.flatnonzero(self._used).tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore `state`; indices excluded at construction stay excluded."""
        state = _check_state(state, self.name, {"num_items": self.num_items, "seed": self.seed})
        self._restore_used(_indices(state["used"], "state", self.num_items))
        self._cursor = 0


class AdaptiveStrategy:
    """Knockoff Nets' adaptive strategy: a gradient bandit over `hierarchy` (module docstring).

    `labels` gives each transfer-set image's class (indices into ``hierarchy.class_names``);
    `reward` is ``cert``, ``div``, ``loss`` or ``all`` (``loss`` and ``all`` need the surrogate's
    log-probabilities in `update`); `exclude` are never selected (answered before a resume).
    """

    name = "adaptive"

    def __init__(self, labels: Sequence[int] | np.ndarray, hierarchy: Hierarchy, *,
                 reward: str = "all", lr: float = 0.02, seed: int = 0,
                 exclude: Iterable[int] | np.ndarray | None = None,
                 diversity_window: int = 25, variance_floor: float = 1e-3,
                 eps: float = 1e-7) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not len(labels) or not np.issubdtype(labels.dtype, np.integer):
            raise invalid("labels", f"{labels.dtype} array of shape {labels.shape}",
                          "a non-empty 1-D array of class indices")
        if labels.min() < 0 or labels.max() >= hierarchy.num_classes:
            raise invalid("labels", f"values in [{labels.min()}, {labels.max()}]",
                          f"indices into the hierarchy's {hierarchy.num_classes} classes")
        if reward not in REWARDS:
            raise invalid("reward", reward, f"one of {', '.join(REWARDS)}")
        check_int("diversity_window", diversity_window, min=1)
        if not 0.0 < eps < 1.0:
            raise invalid("eps", eps, "a number in (0, 1)")
        self.labels = labels.astype(np.int64)
        self.hierarchy = hierarchy
        self.reward = reward
        self.seed = int(seed)
        self.diversity_window = diversity_window
        self.eps = float(eps)
        self.bandit = HierarchicalBandit(hierarchy, lr)
        self._stats = {key: RunningStats(variance_floor) for key in ("cert", "div", "loss")}
        self._rng = np.random.default_rng(self.seed)
        self._excluded = _indices([] if exclude is None else exclude, "exclude", len(labels))
        self._pending: dict[int, Walk] = {}
        self._window: deque[np.ndarray] = deque(maxlen=diversity_window)
        self._step = 0
        self._set_used(self._excluded)
        self._fingerprint = hashlib.sha256(
            self.labels.tobytes() + repr((hierarchy.names, hierarchy.parents)).encode()
        ).hexdigest()[:16]

    # ------------------------------------------------------------------ availability

    def _set_used(self, used: np.ndarray) -> None:
        self._used = np.zeros(len(self.labels), dtype=bool)
        self._used[used] = True
        tree = self.hierarchy
        self._unused = [np.flatnonzero((self.labels == c) & ~self._used)
                        for c in range(tree.num_classes)]
        self._alive_leaves = np.zeros(tree.num_nodes, dtype=np.int64)
        for c, pool in enumerate(self._unused):
            if len(pool):
                self._alive_leaves[list(tree.path(c))] += 1

    def _take(self, index: int) -> None:
        """Mark `index` used, updating the class pool and the alive counts."""
        c = int(self.labels[index])
        pool = self._unused[c]
        at = np.searchsorted(pool, index)
        if at < len(pool) and pool[at] == index:
            self._unused[c] = np.delete(pool, at)
            if not len(self._unused[c]):
                self._alive_leaves[list(self.hierarchy.path(c))] -= 1
        self._used[index] = True

    @property
    def remaining(self) -> int:
        return int(len(self.labels) - self._used.sum())

    def exclude(self, indices: Iterable[int] | np.ndarray) -> None:
        """Never select `indices` (queries sent outside this strategy)."""
        for index in _indices(indices, "indices", len(self.labels)):
            self._take(int(index))

    # ------------------------------------------------------------------ select / update

    def select(self, n: int) -> np.ndarray:
        """`n` unused images, one bandit walk each (walks remembered until `update`)."""
        n = _count(n)
        if n > self.remaining:
            raise _exhausted(n, self.remaining, len(self.labels))
        picked = np.zeros(n, dtype=np.int64)
        for i in range(n):
            walk = self.bandit.sample(self._rng, self._alive_leaves > 0)
            c = self.hierarchy.leaf_classes[walk[-1][1]]
            pool = self._unused[c]
            index = int(pool[self._rng.integers(len(pool))])
            self._take(index)
            self._pending[index] = walk
            picked[i] = index
        return picked

    def _walk_for(self, index: int) -> Walk:
        """The walk that selected `index`; for an image this strategy did not select (re-sent
        after a crash), the path to its class among the children alive now."""
        if index in self._pending:
            return self._pending.pop(index)
        alive = self._alive_leaves > 0
        path = self.hierarchy.path(int(self.labels[index]))
        walk: Walk = []
        for node, child in zip(path[:-1], path[1:]):
            among = set(self.bandit.candidates(node, alive).tolist()) | {child}
            walk.append((node, child, tuple(sorted(among))))
        self._take(index)
        return walk

    def update(self, indices: np.ndarray, victim_probs: np.ndarray,
               surrogate_log_probs: np.ndarray | None = None) -> dict[str, Any]:
        """Reward each answered walk and step the bandit, in the order of `indices`.

        Returns what the caller journals: ``step`` (answers applied so far), the raw ``rewards``
        per kind and the combined ``reward``, ``advantage`` (reward minus baseline) per image,
        the ``baseline``, and ``policy`` (``entropy`` of the leaf distribution in nats and the
        ``top`` five classes ``[name, probability]``).
        """
        index = _indices(indices, "indices", len(self.labels))
        if not len(index):
            return {"step": self._step, "indices": [], "classes": [], "rewards": {},
                    "reward": [], "advantage": [], "baseline": self.bandit.baseline,
                    "policy": self.policy()}
        y = _probabilities(victim_probs)
        if len(y) != len(index):
            raise invalid("victim_probs", f"{len(y)} rows", f"one per index ({len(index)})")
        if self._window and y.shape[1] != len(self._window[0]):
            raise invalid("victim_probs", f"{y.shape[1]} classes",
                          f"the {len(self._window[0])} classes of earlier answers")
        if len(set(index.tolist())) != len(index):
            raise invalid("indices", index.tolist(), "distinct indices")
        if surrogate_log_probs is None:
            if self.reward in ("loss", "all"):
                raise invalid("surrogate_log_probs", None,
                              f"the surrogate's log-probabilities for reward={self.reward!r}")
            loss = None
        else:
            loss = loss_reward(y, surrogate_log_probs, eps=self.eps)
        cert = certainty_reward(y)
        raw: dict[str, list[float]] = {"cert": [], "div": []}
        if loss is not None:
            raw["loss"] = loss.tolist()
        combined: list[float] = []
        advantages: list[float] = []
        for i, item in enumerate(index.tolist()):
            history = np.mean(self._window, axis=0) if self._window else np.zeros(y.shape[1])
            div = float(diversity_reward(y[i], history)[0])
            self._window.append(y[i])
            raw["cert"].append(float(cert[i]))
            raw["div"].append(div)
            normal = {"cert": self._stats["cert"].normalise(cert[i]),
                      "div": self._stats["div"].normalise(div)}
            if loss is not None:
                normal["loss"] = self._stats["loss"].normalise(loss[i])
            r = sum(normal.values()) if self.reward == "all" else normal[self.reward]
            advantages.append(self.bandit.update(self._walk_for(item), r))
            combined.append(float(r))
            self._step += 1
        policy = self.policy()
        info = {"step": self._step, "indices": index.tolist(),
                "classes": self.labels[index].tolist(), "rewards": raw, "reward": combined,
                "advantage": advantages, "baseline": self.bandit.baseline, "policy": policy}
        means = " ".join(f"{k} {np.mean(v):.3f}" for k, v in raw.items())
        logger.info("adaptive step %d: reward %.3f (%s), baseline %.3f, policy entropy %.3f "
                    "nats, top %s", self._step, np.mean(combined), means, self.bandit.baseline,
                    policy["entropy"], ", ".join(f"{name} {p:.3f}" for name, p in policy["top"]))
        return info

    def policy(self, top: int = 5) -> dict[str, Any]:
        """``entropy`` (nats) of the probability of drawing each class now, and the ``top``
        classes ``[name, probability]``."""
        p = self.bandit.leaf_probabilities(self._alive_leaves > 0)
        nz = p[p > 0]
        names = self.hierarchy.class_names
        best = np.argsort(-p, kind="stable")[:top]
        return {"entropy": float(-(nz * np.log(nz)).sum()) + 0.0,
                "top": [[names[c], float(p[c])] for c in best if p[c] > 0]}

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.name, "version": _STATE_VERSION, "num_items": len(self.labels),
            "fingerprint": self._fingerprint, "reward": self.reward,
            "step": self._step, "H": self.bandit.H.tolist(),
            "baseline": {"mean": self.bandit.baseline, "count": self.bandit.count},
            "stats": {key: stats.state() for key, stats in self._stats.items()},
            "window": [row.tolist() for row in self._window],
            "used": np.flatnonzero(self._used).tolist(),
            "pending": [[index, [[node, chosen, list(among)] for node, chosen, among in walk]]
                        for index, walk in self._pending.items()],
            "rng": self._rng.bit_generator.state,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore `state` (from `state()`, possibly through JSON); indices excluded at
        construction stay excluded."""
        state = _check_state(state, self.name, {
            "num_items": len(self.labels), "fingerprint": self._fingerprint,
            "reward": self.reward})
        try:
            H = np.asarray(state["H"], dtype=np.float64)
            if H.shape != self.bandit.H.shape or not np.isfinite(H).all():
                raise ValueError(f"H of shape {H.shape}")
            used = _indices(state["used"], "state", len(self.labels))
            pending = {int(index): [(int(node), int(chosen), tuple(int(a) for a in among))
                                    for node, chosen, among in walk]
                       for index, walk in state["pending"]}
            rng = np.random.default_rng()
            rng.bit_generator.state = state["rng"]
            window = [np.asarray(row, dtype=np.float64) for row in state["window"]]
            stats = {key: RunningStats(self._stats[key].floor) for key in self._stats}
            for key, value in state["stats"].items():
                stats[key].load_state(value)
            baseline = float(state["baseline"]["mean"]), int(state["baseline"]["count"])
            step = int(state["step"])
        except (KeyError, TypeError, ValueError) as err:
            raise invalid("state", f"unreadable adaptive state ({err})",
                          "the JSON written by AdaptiveStrategy.state()") from None
        self.bandit.H = H
        self.bandit.baseline, self.bandit.count = baseline
        self._set_used(np.union1d(used, self._excluded).astype(np.int64))
        self._pending = pending
        self._rng = rng
        self._window = deque(window, maxlen=self.diversity_window)
        self._stats = stats
        self._step = step


# ------------------------------------------------------------------------- active (ActiveThief)


def entropy(probs: np.ndarray) -> np.ndarray:
    """The entropy in nats of each row of `probs` ``[n, K]`` (rows re-normalised like the
    victim's answers: NaN and negative entries count as 0, an all-zero row as uniform)."""
    p = _probabilities(probs)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=1) + 0.0


def uncertainty_order(probs: np.ndarray, n: int) -> np.ndarray:
    """The `n` rows of `probs` with the highest entropy, most uncertain first (ties: lower row
    first)."""
    n = _count(n)
    h = entropy(probs)
    if n > len(h):
        raise invalid("n", n, f"at most the {len(h)} rows scored")
    return np.argsort(-h, kind="stable")[:n].astype(np.int64)


def k_center_greedy(candidates: np.ndarray, centers: np.ndarray, n: int, *,
                    chunk: int = 4096) -> np.ndarray:
    """Greedy k-center (Sener & Savarese 2018, as ActiveThief uses it): `n` rows of
    `candidates` ``[m, d]``, each the one farthest (Euclidean) from its nearest point among
    `centers` ``[c, d]`` (the already-queried set, possibly empty) and the rows picked before it.
    With no centers the first pick is the row farthest from the candidates' mean."""
    n = _count(n)
    x = np.asarray(candidates, dtype=np.float64)
    c = np.asarray(centers, dtype=np.float64).reshape(-1, x.shape[1] if x.ndim == 2 else 0)
    if x.ndim != 2 or not np.isfinite(x).all() or not np.isfinite(c).all():
        raise invalid("candidates", f"array of shape {x.shape}",
                      "finite [m, d] features and finite [c, d] centers")
    if n > len(x):
        raise invalid("n", n, f"at most the {len(x)} candidates")
    if not n:
        return np.zeros(0, dtype=np.int64)
    if len(c):
        nearest = np.full(len(x), np.inf)
        x2 = (x * x).sum(axis=1)
        for start in range(0, len(c), chunk):  # [m, chunk] at a time
            part = c[start:start + chunk]
            d2 = x2[:, None] - 2.0 * x @ part.T + (part * part).sum(axis=1)[None, :]
            nearest = np.minimum(nearest, d2.min(axis=1))
        nearest = np.maximum(nearest, 0.0)
    else:
        nearest = ((x - x.mean(axis=0)) ** 2).sum(axis=1)
    picked = np.zeros(n, dtype=np.int64)
    for i in range(n):
        best = int(np.argmax(nearest))
        picked[i] = best
        nearest = np.minimum(nearest, ((x - x[best]) ** 2).sum(axis=1))
        nearest[best] = -1.0  # never again, even when duplicates sit at distance 0
    return picked


def deepfool_distances(model: Any, inputs: np.ndarray, *, max_iter: int = 20,
                       overshoot: float = 0.02, batch_size: int = 128) -> np.ndarray:
    """The L2 norm of the DeepFool perturbation (Moosavi-Dezfooli et al. 2016, multi-class)
    that flips `model`'s top-1 label on each of `inputs`, ``inf`` where `max_iter` steps do not.

    `model` is a Keras model taking `inputs` (float, as it was trained on) to logits ``[n, K]``
    (a softmax output works the same way: DeepFool only compares differences of outputs). Each
    step linearises the logit differences ``f_k - f_label`` around the current point, moves to
    the nearest linearised boundary and scales the total step by ``1 + overshoot``.
    """
    import tensorflow as tf

    check_int("max_iter", max_iter, min=1)
    if not 0.0 <= overshoot < 1.0:
        raise invalid("overshoot", overshoot, "a number in [0, 1)")
    x_all = np.asarray(inputs, dtype=np.float32)
    out = np.full(len(x_all), np.inf)
    for start in range(0, len(x_all), batch_size):
        x0 = tf.constant(x_all[start:start + batch_size])
        flat = int(np.prod(x0.shape[1:]))
        label = tf.argmax(model(x0, training=False), axis=1)
        r_tot = tf.zeros_like(x0)
        done = np.zeros(len(x0), dtype=bool)
        dist = np.full(len(x0), np.inf)
        for _ in range(max_iter):
            x = x0 + (1.0 + overshoot) * r_tot
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                logits = model(x, training=False)
                per_class = [logits[:, k] for k in range(logits.shape[1])]
            now = np.argmax(logits.numpy(), axis=1)
            flipped = (now != label.numpy()) & ~done
            norm = np.sqrt((((1.0 + overshoot) * r_tot.numpy()) ** 2)
                           .reshape(len(x0), flat).sum(axis=1))
            dist[flipped] = norm[flipped]
            done |= flipped
            if done.all():
                del tape
                break
            grads = tf.stack([tape.gradient(f, x) for f in per_class], axis=1)  # [b, K, ...]
            del tape
            g = grads.numpy().reshape(len(x0), logits.shape[1], flat).astype(np.float64)
            f = logits.numpy().astype(np.float64)
            rows = np.arange(len(x0))
            lab = label.numpy()
            w = g - g[rows, lab][:, None, :]                       # [b, K, flat]
            fd = f - f[rows, lab][:, None]                         # [b, K]
            wn = np.sqrt((w * w).sum(axis=2))
            ratio = np.abs(fd) / np.maximum(wn, 1e-12)
            ratio[rows, lab] = np.inf
            ratio[wn < 1e-12] = np.inf                             # a flat direction: no boundary
            k = np.argmin(ratio, axis=1)
            step_len = (ratio[rows, k] + 1e-4) / np.maximum(wn[rows, k], 1e-12)
            step = (step_len[:, None] * w[rows, k]).reshape(x0.shape)
            step[done | ~np.isfinite(ratio[rows, k])] = 0.0
            r_tot = r_tot + tf.constant(step.astype(np.float32))
        out[start:start + len(x0)] = dist
    return out


def _model_inputs(model: Any, images: np.ndarray) -> np.ndarray:
    """uint8 images as `model` takes them: float pixels, resized (antialiased, rounded) to the
    model's input side when it differs, as the surrogate's training pipeline resizes them."""
    shape = model.input_shape
    if len(shape) != 4 or images.ndim != 4 or shape[1] is None \
            or tuple(images.shape[1:3]) == (shape[1], shape[1]):
        return images.astype(np.float32)
    import tensorflow as tf

    side = shape[1]
    resized = tf.image.resize(images, (side, side), antialias=True)
    return tf.clip_by_value(tf.round(resized), 0, 255).numpy().astype(np.float32)


class ActiveStrategy(_PoolStrategy):
    """ActiveThief's selection (module docstring): `kind` is ``uncertainty``, ``kcenter`` or
    ``dfal``.

    The attack calls ``plan(n, surrogate, images)`` at the start of each round and then takes
    the planned images with `select` (any number at a time, up to `queued`). The first plan
    (nothing answered yet) is a seeded random seed set; the next ones rank the unqueried images
    with `surrogate` (a `SurrogateTrainer`, or anything with ``predict_probs(images)`` and, for
    dfal, a Keras ``model`` giving logits) trained on every answer so far. `candidates` caps the
    pool scored per round (a seeded random subset of the unqueried images; None: all of them):
    DFAL costs one backward pass per class and DeepFool step per image. `exclude` are never
    selected (answered before a resume).
    """

    def __init__(self, kind: str, num_items: int, seed: int = 0, *,
                 exclude: Iterable[int] | np.ndarray | None = None,
                 candidates: int | None = None, max_iter: int = 20) -> None:
        if kind not in ACTIVE:
            raise invalid("strategy", kind, f"one of {', '.join(ACTIVE)}")
        super().__init__(num_items, seed, exclude)
        check_int("candidates", candidates, min=1, optional=True,
                  expected="a positive number of images or None")
        self.name = kind
        self.candidates = None if candidates is None else int(candidates)
        self.max_iter = max_iter
        self._rng = np.random.default_rng([self.seed, 11])
        self._queue = np.zeros(0, dtype=np.int64)
        self._rounds = 0

    @property
    def queued(self) -> int:
        """Images planned for this round and not yet selected."""
        return len(self._queue)

    @property
    def rounds(self) -> int:
        """Rounds planned so far."""
        return self._rounds

    def exclude(self, indices: Iterable[int] | np.ndarray) -> None:
        """Never select `indices` (sent outside this strategy, e.g. re-sent after a crash)."""
        index = _indices(indices, "indices", self.num_items)
        super().exclude(index)
        self._queue = self._queue[~np.isin(self._queue, index)]

    def plan(self, n: int, surrogate: Any = None, images: np.ndarray | None = None
             ) -> np.ndarray:
        """Choose this round's `n` images (returned and queued for `select`)."""
        n = _count(n)
        if self.queued:
            raise RuntimeError(f"{self.name} strategy: {self.queued} planned images not taken")
        if n > self.remaining:
            raise _exhausted(n, self.remaining, self.num_items)
        pool = np.flatnonzero(~self._used)
        if self._rounds == 0 or surrogate is None or not self._used.any():
            order = self._rng.permutation(len(pool))[:n]
            how = "random seed set"
        else:
            if images is None or len(images) != self.num_items:
                raise invalid("images", None if images is None else f"{len(images)} images",
                              f"the {self.num_items} transfer-set images")
            if self.candidates is not None and self.candidates < len(pool):
                pool = np.sort(self._rng.choice(pool, max(self.candidates, n), replace=False))
            order = self._rank(n, surrogate, images, pool)
            how = self.name
        self._queue = pool[order].astype(np.int64)
        self._rounds += 1
        logger.info("%s round %d: %d images planned (%s) from %d unqueried", self.name,
                    self._rounds, n, how, self.remaining)
        return self._queue.copy()

    def _rank(self, n: int, surrogate: Any, images: np.ndarray, pool: np.ndarray) -> np.ndarray:
        if self.name == "uncertainty":
            return uncertainty_order(surrogate.predict_probs(images[pool]), n)
        if self.name == "kcenter":
            queried = np.flatnonzero(self._used)
            return k_center_greedy(surrogate.predict_probs(images[pool]),
                                   surrogate.predict_probs(images[queried]), n)
        model = surrogate.model
        dist = deepfool_distances(model, _model_inputs(model, images[pool]),
                                  max_iter=self.max_iter)
        return np.argsort(dist, kind="stable")[:n].astype(np.int64)

    def select(self, n: int) -> np.ndarray:
        """The next `n` planned images (marked used)."""
        n = _count(n)
        if n > self.queued:
            raise RuntimeError(f"{self.name} strategy: {n} images asked, {self.queued} planned")
        picked, self._queue = self._queue[:n], self._queue[n:]
        self._used[picked] = True
        return picked

    def state(self) -> dict[str, Any]:
        return {"kind": self.name, "version": _STATE_VERSION, "num_items": self.num_items,
                "seed": self.seed, "candidates": self.candidates,
                "used": np.flatnonzero(self._used).tolist(), "queue": self._queue.tolist(),
                "rounds": self._rounds, "rng": self._rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore `state`; indices excluded at construction stay excluded (and leave the
        queue)."""
        state = _check_state(state, self.name, {"num_items": self.num_items, "seed": self.seed,
                                                "candidates": self.candidates})
        try:
            used = _indices(state["used"], "state", self.num_items)
            queue = _indices(state["queue"], "state", self.num_items)
            rounds = int(state["rounds"])
            rng = np.random.default_rng()
            rng.bit_generator.state = state["rng"]
        except (KeyError, TypeError, ValueError) as err:
            raise invalid("state", f"unreadable {self.name} state ({err})",
                          "the JSON written by ActiveStrategy.state()") from None
        self._restore_used(used)
        self._queue = queue[~self._used[queue]]
        self._rounds = rounds
        self._rng = rng
