"""PRADA (Juuti et al. 2019, "PRADA: Protecting against DNN Model Stealing Attacks"): flag a
client whose stream of queries does not look like natural data.

For each client and each class c the victim predicts, PRADA keeps a growing set G_c of queries.
A new query x of predicted class c gets the minimum L2 distance d to G_c; d joins the client's
distance set D. If d exceeds the class threshold T_c, x joins G_c, d joins the distances DG_c of
G_c's members, and ``T_c = max(T_c, mean(DG_c) - std(DG_c))`` (the first member of a class
enters with distance 0 and T_c = 0). Once |D| >= `min_samples`, the Shapiro-Wilk statistic W of
D (``scipy.stats.shapiro``) is compared with `delta`: natural queries give roughly normally
distributed distances (W close to 1), synthetic streams such as Papernot et al.'s Jacobian-based
augmentation (JBDA) mix tiny perturbation steps with large jumps between seeds and give W <
delta. As in the authors' reference implementation, D is cleaned of outliers beyond
`outlier_std` standard deviations before the test (None: no cleaning). A D of zero spread
(every distance equal, no natural stream does that) counts as W = 0.

Vectorised with numpy: the distances of a whole batch to the stored set are one float32
matrix product (``|x|^2 + |g|^2 - 2 x.g``), and each minimum is then recomputed exactly in
float64 from the difference, so small perturbation steps are not lost to cancellation; only the
bookkeeping of who joins G_c runs per query. Features are whatever the caller chooses; for
images Juuti et al. use pixel space, `pixel_features` (flattened, /255).

Memory is bounded per client: the stored set holds at most `max_set` vectors over all classes
(a ring buffer: once full, each new member overwrites the oldest one, first in, first out; the
members a batch adds are stored after the batch's distances are taken; the thresholds T_c and
the running sums behind mean/std of DG_c are kept, so a dropped member never lowers T_c) and D
holds the last `max_distances` distances (the oldest are dropped). The state is a dict of numpy
arrays and numbers; `Prada.dumps` / `Prada.loads` turn it into bytes (``np.savez``, no pickle)
and back, for the gateway's SQLite or Redis store. The test runs once per `update` call, on the
state after the whole batch, so the query count at which a client is first flagged has the
resolution of the caller's batches (the reference implementation tests every 10 queries).
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.constraints import check_fields, check_int
from common.errors import invalid

__all__ = ["Prada", "PradaConfig", "PradaVerdict", "pixel_features"]

_STATE_KEYS = ("num_classes", "dim", "queries", "set", "set_class", "set_order", "set_sqnorm",
               "set_size", "set_head", "next_order", "class_threshold", "class_count",
               "class_sum", "class_sumsq", "distances", "flagged_at", "statistic")
_INT_KEYS = ("num_classes", "dim", "queries", "set_size", "set_head", "next_order", "flagged_at")
_SET_KEYS = ("set", "set_class", "set_order", "set_sqnorm")


@dataclass(frozen=True)
class PradaVerdict:
    """The test after an update: `flagged` (W < delta), `statistic` (W, None before
    `min_samples` distances), `queries` (all queries the client has sent)."""

    flagged: bool
    statistic: float | None
    queries: int


def pixel_features(images: Any) -> np.ndarray:
    """Images uint8 ``[N, H, W, C]`` -> float32 ``[N, H*W*C]`` in [0, 1] (Juuti et al.'s
    pixel-space features)."""
    array = np.asarray(images)
    if array.ndim < 2:
        raise invalid("images", f"array of shape {array.shape}", "images [N, H, W, C]")
    return array.reshape(len(array), -1).astype(np.float32) / np.float32(255.0)


@dataclass(frozen=True)
class PradaConfig:
    """PRADA's hyper-parameters (also the gateway policy's ``detectors.prada`` section).

    `delta` 0.9: measured through the gateway (`python -m benchmarks.prada_bench`), a JBDA stream
    reaches W 0.89 while natural streams dip to 0.94-0.95, so 0.95 would flag benign clients.
    """

    delta: float = field(default=0.9, metadata={
        "help": "flag a client when the Shapiro-Wilk W of its distances falls below this",
        "gt": 0, "lt": 1})
    min_samples: int = field(default=100, metadata={
        "help": "distances needed before the first test (Shapiro-Wilk needs 3)", "min": 3})
    max_set: int = field(default=2000, metadata={
        "help": "stored growing-set vectors per client, over all classes (FIFO)", "min": 1})
    max_distances: int = field(default=5000, metadata={
        "help": "the last distances tested per client", "min": 3})
    outlier_std: float | None = field(default=3.0, metadata={
        "help": "drop distances beyond this many standard deviations before the test "
                "(None: keep all)", "gt": 0})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_distances < self.min_samples:
            raise invalid("max_distances", self.max_distances,
                          f"at least min_samples ({self.min_samples})")


class Prada:
    """PRADA's per-client detector; hyper-parameters here, the client's state passed in.

    ``Prada(config)`` or ``Prada(delta=..., min_samples=...)`` (keywords override `config`'s
    fields; see `PradaConfig`).
    """

    def __init__(self, config: PradaConfig | None = None, /, **params: Any) -> None:
        unknown = sorted(set(params) - {f.name for f in dataclasses.fields(PradaConfig)})
        if unknown:
            raise TypeError(f"Prada() got unexpected keyword arguments {unknown}")
        self.config = dataclasses.replace(config or PradaConfig(), **params)
        self.delta = float(self.config.delta)
        self.min_samples = int(self.config.min_samples)
        self.max_set = int(self.config.max_set)
        self.max_distances = int(self.config.max_distances)
        self.outlier_std = None if self.config.outlier_std is None \
            else float(self.config.outlier_std)

    def __repr__(self) -> str:
        return (f"Prada(delta={self.delta}, min_samples={self.min_samples}, "
                f"max_set={self.max_set}, max_distances={self.max_distances}, "
                f"outlier_std={self.outlier_std})")

    # ------------------------------------------------------------------------------ state

    def new_state(self, num_classes: int, dim: int) -> dict[str, Any]:
        """A fresh client state for `num_classes` predicted classes and `dim` features."""
        num_classes = int(check_int("num_classes", num_classes, min=1))
        dim = int(check_int("dim", dim, min=1))
        return {
            "num_classes": num_classes,
            "dim": dim,
            "queries": 0,
            # The stored set: buffers of growing capacity (doubling up to max_set), the first
            # `set_size` rows in use; once full, a ring whose slot `set_head` is the oldest.
            "set": np.zeros((0, dim), np.float32),
            "set_class": np.zeros((0,), np.int32),
            "set_order": np.zeros((0,), np.int64),
            "set_sqnorm": np.zeros((0,), np.float32),
            "set_size": 0,
            "set_head": 0,
            "next_order": 0,
            "class_threshold": np.zeros((num_classes,), np.float64),
            "class_count": np.zeros((num_classes,), np.int64),
            "class_sum": np.zeros((num_classes,), np.float64),
            "class_sumsq": np.zeros((num_classes,), np.float64),
            "distances": np.zeros((0,), np.float64),
            "flagged_at": -1,
            "statistic": math.nan,
        }

    @staticmethod
    def dumps(state: dict[str, Any]) -> bytes:
        """The state as bytes (an ``.npz`` archive, no pickled objects)."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise invalid("state", f"a dict without {', '.join(missing)}",
                          "a state from Prada.new_state()")
        size = int(state["set_size"])
        arrays = {key: np.asarray(state[key][:size] if key in _SET_KEYS else state[key])
                  for key in _STATE_KEYS}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @staticmethod
    def loads(data: bytes) -> dict[str, Any]:
        """A state from `dumps`' bytes; `UsageError` when they are not one."""
        try:
            with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError) as err:
            raise invalid("data", f"{len(data)} bytes", f"a PRADA state from Prada.dumps ({err})") \
                from err
        missing = [key for key in _STATE_KEYS if key not in arrays]
        if missing:
            raise invalid("data", f"an archive without {', '.join(missing)}",
                          "a PRADA state from Prada.dumps")
        state: dict[str, Any] = {}
        for key in _STATE_KEYS:
            value = arrays[key]
            if key in _INT_KEYS:
                state[key] = int(value)
            elif key == "statistic":
                state[key] = float(value)
            else:
                state[key] = value
        return state

    # ----------------------------------------------------------------------------- update

    def update(self, state: dict[str, Any], features: Any, classes: Any) -> PradaVerdict:
        """Add a batch of queries (features float32 ``[N, D]``, predicted classes int ``[N]``,
        in arrival order) to the client's `state` (updated in place); return the test."""
        dim, num_classes = int(state["dim"]), int(state["num_classes"])
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 1 and dim == x.shape[0]:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != dim or not np.all(np.isfinite(x)):
            raise invalid("features", f"array of shape {x.shape}", f"finite features [N, {dim}]")
        c = np.asarray(classes).reshape(-1)
        if len(c) != len(x) or (len(c) and not np.issubdtype(c.dtype, np.integer)):
            raise invalid("classes", f"{c.dtype} array of shape {c.shape}",
                          f"integer classes [{len(x)}]")
        if len(c) and (c.min() < 0 or c.max() >= num_classes):
            raise invalid("classes", f"values in [{c.min()}, {c.max()}]",
                          f"classes in [0, {num_classes})")
        if len(x):
            self._add_batch(state, x, c.astype(np.int64))
        return self._test(state)

    @staticmethod
    def members(state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored set: (features [M, D], classes [M], arrival index [M]), oldest first."""
        size = int(state["set_size"])
        order = np.argsort(state["set_order"][:size], kind="stable")
        return state["set"][:size][order], state["set_class"][:size][order], \
            state["set_order"][:size][order]

    def _store(self, state: dict[str, Any], x: np.ndarray, c: np.ndarray, order: np.ndarray,
               sqnorm: np.ndarray) -> None:
        """Append rows to the set buffers (growing by doubling), then overwrite the oldest."""
        size, head = int(state["set_size"]), int(state["set_head"])
        for row in range(len(x)):
            if size < self.max_set:
                if size == len(state["set"]):
                    capacity = min(self.max_set, max(16, 2 * size))
                    for key in _SET_KEYS:
                        grown = np.zeros((capacity, *state[key].shape[1:]), state[key].dtype)
                        grown[:size] = state[key][:size]
                        state[key] = grown
                slot = size
                size += 1
            else:  # full: the ring's head is the oldest member (first in, first out)
                slot = head
                head = (head + 1) % self.max_set
            state["set"][slot] = x[row]
            state["set_class"][slot] = c[row]
            state["set_order"][slot] = order[row]
            state["set_sqnorm"][slot] = sqnorm[row]
        state["set_size"], state["set_head"] = size, head

    def _add_batch(self, state: dict[str, Any], x: np.ndarray, c: np.ndarray) -> None:
        size = int(state["set_size"])
        stored, stored_class = state["set"][:size], state["set_class"][:size]
        n = len(x)
        x64 = x.astype(np.float64)
        sq = np.einsum("ij,ij->i", x, x)
        # Squared distances to the stored set (float32 expansion), masked to the own class.
        if size:
            # (set @ x.T).T: OpenBLAS runs this orientation many times faster than x @ set.T
            # for a short batch against a tall set; one query goes without BLAS threads.
            dots = np.einsum("ij,j->i", stored, x[0])[None] if n == 1 else (stored @ x.T).T
            to_set = sq[:, None] + state["set_sqnorm"][:size][None] - 2.0 * dots
            to_set = np.where(stored_class[None] == c[:, None], to_set, np.inf)
            set_best = np.argmin(to_set, axis=1)
            has_set = np.isfinite(to_set[np.arange(n), set_best])
        else:
            set_best = np.zeros(n, np.int64)
            has_set = np.zeros(n, bool)
        # Exact float64 distance to each query's nearest stored member.
        set_dist = np.full(n, np.inf)
        if has_set.any():
            rows = np.flatnonzero(has_set)
            set_dist[rows] = np.linalg.norm(
                x64[rows] - stored[set_best[rows]].astype(np.float64), axis=1)
        within = sq[:, None] + sq[None] - 2.0 * (x @ x.T) if n > 1 else np.zeros((n, n))
        same = c[:, None] == c[None]

        thresholds = state["class_threshold"]
        counts, sums, sumsqs = state["class_count"], state["class_sum"], state["class_sumsq"]
        added = np.zeros(n, bool)
        new_distances = np.full(n, np.nan)
        for i in range(n):
            cls = c[i]
            best = set_dist[i]
            earlier = np.flatnonzero(added[:i] & same[i, :i])
            if earlier.size:
                j = earlier[np.argmin(within[i, earlier])]
                best = min(best, float(np.linalg.norm(x64[i] - x64[j])))
            if not math.isfinite(best):  # first member of this class
                added[i] = True
                counts[cls] += 1  # enters DG_c with distance 0; T_c stays 0
                continue
            new_distances[i] = best
            if best > thresholds[cls]:
                added[i] = True
                counts[cls] += 1
                sums[cls] += best
                sumsqs[cls] += best * best
                mean = sums[cls] / counts[cls]
                std = math.sqrt(max(0.0, sumsqs[cls] / counts[cls] - mean * mean))
                thresholds[cls] = max(thresholds[cls], mean - std)

        order0 = int(state["next_order"])
        if added.any():
            self._store(state, x[added], c[added].astype(np.int32),
                        order0 + np.flatnonzero(added).astype(np.int64), sq[added])
        state["next_order"] = order0 + n
        fresh = new_distances[np.isfinite(new_distances)]
        if fresh.size:
            distances = np.concatenate([state["distances"], fresh])
            state["distances"] = distances[-self.max_distances:]
        state["queries"] = int(state["queries"]) + n

    def statistic(self, distances: np.ndarray) -> float:
        """Shapiro-Wilk W of `distances` after PRADA's outlier cleaning (0.0 for zero spread)."""
        from scipy.stats import shapiro

        values = np.asarray(distances, dtype=np.float64)
        if self.outlier_std is not None and values.size:
            spread = values.std()
            if spread > 0:
                values = values[np.abs(values - values.mean()) < self.outlier_std * spread]
        if values.size < 3 or np.ptp(values) <= 1e-12 * max(1.0, float(np.abs(values).max())):
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # p-value accuracy above 5000 points
            return float(shapiro(values).statistic)

    def _test(self, state: dict[str, Any]) -> PradaVerdict:
        distances = state["distances"]
        queries = int(state["queries"])
        if len(distances) < self.min_samples:
            state["statistic"] = math.nan
            return PradaVerdict(False, None, queries)
        w = self.statistic(distances)
        state["statistic"] = w
        flagged = w < self.delta
        if flagged and int(state["flagged_at"]) < 0:
            state["flagged_at"] = queries
        return PradaVerdict(bool(flagged), w, queries)

    def memory_bytes(self, num_classes: int, dim: int) -> int:
        """The most a client's state holds in its arrays (set, classes, orders, distances)."""
        return self.max_set * (dim * 4 + 4 + 8 + 4) + self.max_distances * 8 + num_classes * 32
