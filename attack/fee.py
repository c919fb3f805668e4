"""Functionally-equivalent extraction of one-hidden-layer ReLU networks over gRPC:
`python -m attack.fee --grpc HOST:PORT --model NAME --out RUN_DIR`.

Jagielski et al., "High Accuracy and High Fidelity Extraction of Neural Networks" (USENIX
Security 2020), section 5 (with Carlini et al. 2020, "Cryptanalytic Extraction of Neural Network
Models", for the general idea): a network ``f(x) = A relu(W x + b) + c`` (d inputs, h hidden
units, K outputs) is piecewise linear, and it bends exactly on the h hyperplanes
``W_j . x + b_j = 0``. The attack, in float64:

1. **Critical points.** Along random lines ``x0 + t v`` (|v| = 1, t in [-T, T]) the logits are
   piecewise linear in t. Each interval is tested with the values and one-sided slopes at its
   ends: equal slopes and a consistent value mean no kink; otherwise the two end lines are
   intersected and the intersection is queried: on both lines, it is the one kink of the
   interval; if not, the interval is halved (binary search). Every line crosses every
   hyperplane once, so a few lines find every neuron's critical point ``x*``.
2. **Weight rows up to scale.** Across the kink only neuron j switches, so the Jacobians on its
   two sides differ by the rank-one matrix ``A[:, j] W_j`` (the second difference). Both Jacobians
   are measured with finite differences (2d + 2 queries); the top right-singular vector of their
   difference is ``W_j`` up to scale and sign, and ``b_j = -W_j . x*`` on the same scale. A kink
   already explained by a known neuron (``W_j . x* + b_j = 0``) costs nothing more.
3. **Signs.** ``relu(-z) = relu(z) - z``: with every row's sign unknown, the outputs at a few
   random points (and on both sides of every critical point) are a linear function of the
   features ``[relu(z_j), z_j, 1]``; least squares gives, per neuron, a linear coefficient 0 (sign
   right) or ``-a_j`` (sign wrong), and wrong rows are flipped.
4. **Last layer** by least squares on ``[relu(z_j), 1]``.

`--hybrid` then fine-tunes the recovered network (all layers, full-batch Adam on the squared
error) on extra random queries, adding random units when fewer than `--hidden` were found: the
learning-based repair of Jagielski et al.'s hybrid attack for when exact recovery is imperfect;
the fine-tuned weights are kept only if they lower the error on held-out queried points.

What the answers allow. With **logits** (``victim_export --export-logits``, float64) everything
above is exact up to the network's own symmetries: order of the hidden units and a positive
scale per unit (``relu(a z) = a relu(z)``); the report aligns both before measuring parameter
errors (``--reference``). With **probabilities** only, logits are known up to a per-input
additive constant, but ``log p_i - log p_K`` is still piecewise linear with the same kinks, so
the attack runs on those K - 1 differences: the hidden layer is recovered as above, the last layer
only up to a row shared by all classes (``A_i - A_K``, ``c_i - c_K``): the same probabilities
for every input. This needs unsaturated answers: a probability that rounds to exactly 0 or 1
(far from the data, or rounded by the API) loses the difference; the attack then stops with an
error (shorten the lines with --line-range). Label-only and rounded answers are refused: the
kinks cannot be located from them. Float32 answers work but cost precision (the finite
differences divide rounding errors by the step).

Run directory as every attack: config.json, journal.bin (every answer, float64 bit-exact; a
resumed run replays it, the attack being deterministic given --seed and the answers),
recovered/ (the recovered network exported with the victim's signature), report.{json,md}.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from attack._linear import (
    OUTPUT_CHOICES,
    AnswerError,
    ExactOracle,
    VictimInterface,
    discover,
    eval_inputs,
    evaluate_recovered,
    export_recovered,
    reference_variables,
    report_recovered,
)
from attack.base import ExactAttack, exact_client
from attack.config import ExactConfig, query_batch_field, run_dir_field
from attack.equation_solving import targets
from attack.journal import QueryJournal
from attack.pipeline import ExtractionResult, exact_main, prepare_run_dir
from common.errors import UsageError, invalid

__all__ = ["FEE", "FeeConfig", "FeeResult", "Network", "align_network", "extract_network", "main",
           "run_fee"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeeConfig(ExactConfig):
    """Extract a one-hidden-layer ReLU network exactly (Jagielski et al. 2020)."""

    query_batch: int = query_batch_field(512, "query points")
    out: str = run_dir_field("runs/fee", "config, journal, recovered model, report")
    resume: bool = field(default=False, metadata={
        "help": "continue the run in RUN_DIR, replaying the journaled answers", "check": True})
    seed: int = field(default=0, metadata={"help": "random seed (lines, random points)",
                                           "check": True})
    output: str = field(default="auto", metadata={
        "help": "the output to extract from: logits (exact), probabilities (log-probability "
                "differences: last layer up to a shared row) or auto (logits if exposed)",
        "choices": OUTPUT_CHOICES})
    budget: int | None = field(default=None, metadata={
        "help": "most queries the attack may send (default: no limit)", "min": 1})
    hidden: int | None = field(default=None, metadata={
        "help": "the victim's number of hidden units when known: lines are added until that "
                "many are found (and --hybrid fills missing ones)", "min": 1})
    lines: int = field(default=3, metadata={"help": "random lines searched for critical points",
                                            "min": 1})
    max_lines: int = field(default=20, metadata={
        "help": "most lines when --hidden units are not all found after --lines", "min": 1})
    line_range: float | None = field(default=None, metadata={
        "help": "half-length T of each line (t in [-T, T]); default 1000 with logits, 250 with "
                "probabilities (halved on a line while the softmax saturates there)",
        "metavar": "T", "gt": 0})
    segments: int = field(default=64, metadata={
        "help": "equal pieces each line is cut into before the binary search", "min": 1})
    hybrid: bool = field(default=False, metadata={
        "help": "fine-tune the recovered network on extra queried points (learning-based "
                "repair of an imperfect recovery)", "check": True})
    hybrid_queries: int = field(default=2000, metadata={
        "help": "random queries for --hybrid fine-tuning", "min": 1})
    hybrid_steps: int = field(default=300, metadata={"help": "Adam steps of --hybrid", "min": 1})
    hybrid_set: str | None = field(default=None, metadata={
        "help": "natural images (any data spec; pixels mapped to [low, high]) queried for "
                "--hybrid instead of uniform points: the learning attack's in-distribution "
                "data", "metavar": "SPEC"})
    hybrid_split: str = field(default="train", metadata={"help": "split of --hybrid-set"})
    hybrid_lr: float = field(default=3e-3, metadata={"help": "Adam learning rate of --hybrid",
                                                     "gt": 0})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_lines < self.lines:
            raise invalid("max_lines", self.max_lines, f"at least --lines ({self.lines})")
        if self.hybrid_set is not None and not self.hybrid:
            raise invalid("hybrid_set", self.hybrid_set, "None unless --hybrid is given")


@dataclass
class Network:
    """``f(x) = relu(x @ w1 + b1) @ w2 + b2`` in float64 (w1 [d, h], w2 [h, m])."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def hidden(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(np.asarray(x, dtype=np.float64) @ self.w1 + self.b1, 0.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.hidden(x) @ self.w2 + self.b2


@dataclass(frozen=True)
class FeeResult(ExtractionResult):
    """What FEE returns: an `ExtractionResult` with the recovered `network` (`surrogate` is
    None: the recovered network is exported to RUN_DIR/recovered/)."""

    network: Network | None = None


class FEE(ExactAttack):
    """Functionally-equivalent extraction of a one-hidden-layer ReLU network (Jagielski et al.
    2020).

    Hyper-parameters (keyword-only; the ``python -m attack.fee`` flags of the same names):
    ``output``, ``budget``, ``hidden``, ``lines``, ``max_lines``, ``line_range``, ``segments``,
    ``input_low``, ``input_high``, ``hybrid``, ``hybrid_queries``, ``hybrid_steps``,
    ``hybrid_lr``, ``noise``, ``seed``; ``hybrid_set=`` (a data spec) goes to `extract`.
    """

    config_class = FeeConfig
    data_fields = ("reference", "hybrid_set", "hybrid_split")
    name = "fee"

    def _prepare_data(self, transfer, test, *, reference=None, hybrid_set=None, **data) -> dict:
        prepared = super()._prepare_data(transfer, test, reference=reference, **data)
        prepared["fields"]["hybrid_set"] = hybrid_set
        return prepared

    def _run(self, victim, config, data, on_progress=None) -> FeeResult:
        return _extract(exact_client(victim), config)


# -- 1. critical points ---------------------------------------------------------------------------

class _Line:
    """f restricted to the line x0 + t v, queried through the oracle in batches of t."""

    def __init__(self, f, x0: np.ndarray, v: np.ndarray) -> None:
        self.f, self.x0, self.v = f, x0, v

    def point(self, t: np.ndarray | float) -> np.ndarray:
        return self.x0 + np.atleast_1d(np.asarray(t, dtype=np.float64))[:, None] * self.v

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return self.f(self.point(t))


def find_kinks(line: _Line, half: float, segments: int) -> list[float]:
    """Every t in [-half, half] where f bends along `line` (binary search on slope changes)."""
    delta = 1e-6 * half                     # step of the one-sided slopes
    min_width = 8 * delta
    grid = np.linspace(-half, half, segments + 1)
    ts = np.concatenate([grid, grid - delta, grid + delta])
    values = line(ts)
    n = len(grid)
    fg, fl, fr = values[:n], values[n:2 * n], values[2 * n:]
    left_slope, right_slope = (fg - fl) / delta, (fr - fg) / delta
    scale = max(1.0, float(np.abs(values).max()))
    slope_err = 1e-14 * scale / delta       # generous bound of rounding in a slope
    intervals = [(grid[i], grid[i + 1], fg[i], right_slope[i], fg[i + 1], left_slope[i + 1])
                 for i in range(segments)]
    kinks: list[float] = []
    while intervals:
        open_: list[tuple] = []
        for iv in intervals:
            a, b, fa, sa, fb, sb = iv
            slope_gap = np.abs(sa - sb)
            consistent = np.abs(fb - fa - sa * (b - a)).max() <= \
                1e-13 * scale + slope_err * (b - a)
            if slope_gap.max() <= 10 * slope_err and consistent:
                continue                    # linear on [a, b]: no kink
            open_.append(iv)
        if not open_:
            break
        # candidate kink: where the two end lines meet (component with the largest bend)
        cands = []
        for a, b, fa, sa, fb, sb in open_:
            c = int(np.argmax(np.abs(sa - sb)))
            denom = sa[c] - sb[c]
            t = (fb[c] - fa[c] + sa[c] * a - sb[c] * b) / denom if denom else (a + b) / 2
            cands.append(t if a < t < b else (a + b) / 2)
        fc = line(np.array(cands))
        split: list[tuple] = []
        for iv, t, ft in zip(open_, cands, fc):
            a, b, fa, sa, fb, sb = iv
            tol = 1e-13 * scale + 10 * slope_err * (abs(t - a) + abs(b - t))
            on_a = np.abs(ft - (fa + sa * (t - a))).max() <= tol
            on_b = np.abs(ft - (fb + sb * (t - b))).max() <= tol
            if on_a and on_b:
                kinks.append(float(t))
            elif b - a < min_width:
                log.debug("unresolved bend in an interval of width %.3g at t=%.6g", b - a, t)
            else:
                split.append(iv)
        if not split:
            break
        mids = np.array([(iv[0] + iv[1]) / 2 for iv in split])
        vals = line(np.concatenate([mids, mids - delta, mids + delta]))
        k = len(mids)
        fm, fml, fmr = vals[:k], vals[k:2 * k], vals[2 * k:]
        intervals = []
        for i, (a, b, fa, sa, fb, sb) in enumerate(split):
            m = mids[i]
            intervals.append((a, m, fa, sa, fm[i], (fm[i] - fml[i]) / delta))
            intervals.append((m, b, fm[i], (fmr[i] - fm[i]) / delta, fb, sb))
    return sorted(kinks)


def _kinks_unsaturated(line: _Line, half: float, segments: int) -> tuple[list[float], float]:
    """`find_kinks`, halving the line while a softmax saturates on it (probabilities only:
    an answer of exactly 0 or 1 far from the data); the last error is raised after 6 tries."""
    for attempt in range(6):
        try:
            return find_kinks(line, half, segments), half
        except AnswerError as err:
            if "exactly 0 or 1" not in str(err) or attempt == 5:
                raise
            log.info("the softmax saturates within |t| <= %.4g: halving the line", half)
            half /= 2
    raise AssertionError("unreachable")


# -- 2. weight rows up to scale -------------------------------------------------------------------

def row_at(f, x_star: np.ndarray, v: np.ndarray, step: float) -> tuple[np.ndarray, float] | None:
    """The unit normal of the hyperplane through the critical point `x_star` (sign arbitrary)
    and how rank-one the Jacobian difference was (second singular value / first).

    Measures the Jacobians at ``x_star +- step v`` with forward differences (2d + 2 queries).
    """
    d = len(x_star)
    eps = step / (4.0 * math.sqrt(d))
    for _ in range(2):
        sides = np.stack([x_star + step * v, x_star - step * v])
        pts = [sides]
        for s in sides:
            pts.append(s + eps * np.eye(d))
        vals = f(np.concatenate(pts))
        f_plus, f_minus = vals[0], vals[1]
        g_plus = (vals[2:2 + d] - f_plus) / eps          # [d, m]
        g_minus = (vals[2 + d:] - f_minus) / eps
        diff = g_plus - g_minus
        u, s_vals, _ = np.linalg.svd(diff, full_matrices=False)
        if s_vals[0] == 0:
            return None
        w = u[:, 0]
        ratio = float(s_vals[1] / s_vals[0]) if len(s_vals) > 1 else 0.0
        along = abs(float(w @ v)) * step
        # Free check: across the kink, f(x+) - f(x-) = step (G+ + G-)^T v when both Jacobians
        # are right and x* is on the hyperplane; a coordinate step that crossed a hyperplane
        # or an imprecise x* breaks it.
        gap = f_plus - f_minus - step * (g_plus + g_minus).T @ v
        scale = 1.0 + float(np.abs(vals[:2]).max())
        consistent = float(np.abs(gap).max()) <= 1e-7 * scale
        if eps * np.abs(w).max() < 0.25 * along and consistent:
            return w, ratio
        log.debug("row at a kink: inconsistent (gap %.3g); retrying with smaller steps",
                  float(np.abs(gap).max()))
        eps = min(eps, 0.1 * along / np.abs(w).max()) / 4
    return None


# -- 3 and 4. signs and last layer ----------------------------------------------------------------

def solve_signs_and_head(rows: np.ndarray, biases: np.ndarray, x: np.ndarray, y: np.ndarray
                         ) -> tuple[Network, np.ndarray, float]:
    """Fix each row's sign and solve the last layer by least squares.

    `rows` [h, d] unit normals (signs arbitrary), `biases` [h], points `x` [n, d] with outputs
    `y` [n, m]. Returns (network, flipped mask, max residual on the points).
    """
    z = x @ rows.T + biases
    h = len(rows)
    features = np.hstack([np.maximum(z, 0), z, np.ones((len(x), 1))])
    theta, *_ = np.linalg.lstsq(features, y, rcond=None)
    a, lin = theta[:h], theta[h:2 * h]
    flipped = np.linalg.norm(lin + a, axis=1) < np.linalg.norm(lin, axis=1)
    signs = np.where(flipped, -1.0, 1.0)
    rows, biases = rows * signs[:, None], biases * signs
    z = x @ rows.T + biases
    head = np.hstack([np.maximum(z, 0), np.ones((len(x), 1))])
    theta, *_ = np.linalg.lstsq(head, y, rcond=None)
    net = Network(rows.T.copy(), biases.copy(), theta[:h].copy(), theta[h].copy())
    residual = float(np.abs(net(x) - y).max())
    return net, flipped, residual


# -- hybrid: learning-based repair ----------------------------------------------------------------

def fine_tune(net: Network, x: np.ndarray, y: np.ndarray, *, steps: int, seed: int,
              lr: float = 1e-3) -> tuple[Network, float, float]:
    """Full-batch Adam on the squared error, from `net`; keep the best on a held-out fifth.

    Returns (network, held-out max error before, after).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    cut = max(1, len(x) // 5)
    hx, hy, tx, ty = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    params = [net.w1.copy(), net.b1.copy(), net.w2.copy(), net.b2.copy()]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]

    def error(p) -> float:
        return float(np.abs(Network(*p)(hx) - hy).max())

    best, best_err = [p.copy() for p in params], error(params)
    start_err = best_err
    scale = max(1e-12, float(np.abs(ty).std()))
    for step in range(1, steps + 1):
        w1, b1, w2, b2 = params
        zz = tx @ w1 + b1
        hh = np.maximum(zz, 0)
        dy = 2 * (hh @ w2 + b2 - ty) / (len(tx) * scale**2)
        dz = (dy @ w2.T) * (zz > 0)
        grads = [tx.T @ dz, dz.sum(0), hh.T @ dy, dy.sum(0)]
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] = params[i] - lr * (m[i] / (1 - 0.9**step)) / (
                np.sqrt(v[i] / (1 - 0.999**step)) + 1e-12)
        if step % 50 == 0 or step == steps:
            err = error(params)
            if err < best_err:
                best, best_err = [p.copy() for p in params], err
    return Network(*best), start_err, best_err


# -- the extraction -------------------------------------------------------------------------------

def extract_network(f, d: int, config: FeeConfig, rng: np.random.Generator,
                    half: float, hybrid_x: np.ndarray | None = None) -> tuple[Network, dict]:
    """Steps 1-4 (and --hybrid) against the output function `f` ([n, d] -> [n, m]).

    `hybrid_x`: the points --hybrid queries (default: `hybrid_queries` uniform points).
    """
    low, high = config.input_low, config.input_high
    rows: list[np.ndarray] = []
    biases: list[float] = []
    crit: list[np.ndarray] = []
    stats = {"lines": 0, "kinks": 0, "kinks_known": 0, "kinks_rejected": 0, "max_rank_ratio": 0.0}
    for line_no in range(config.max_lines):
        if line_no >= config.lines and (config.hidden is None or len(rows) >= config.hidden):
            break
        if config.hidden is not None and len(rows) >= config.hidden and line_no >= 1:
            break
        x0 = rng.uniform(low, high, d)
        v = rng.normal(size=d)
        v /= np.linalg.norm(v)
        line = _Line(f, x0, v)
        ts, half = _kinks_unsaturated(line, half, config.segments)
        stats["lines"] += 1
        stats["kinks"] += len(ts)
        log.info("line %d: %d kinks", line_no + 1, len(ts))
        for i, t in enumerate(ts):
            x_star = x0 + t * v
            if rows:
                dist = np.abs(np.array(rows) @ x_star + np.array(biases))
                if dist.min() <= 1e-6 * (1.0 + np.linalg.norm(x_star)):
                    stats["kinks_known"] += 1
                    continue
            gaps = [abs(t - ts[j]) for j in (i - 1, i + 1) if 0 <= j < len(ts)]
            step = min([0.25 * g for g in gaps] + [1.0, 0.25 * (half - abs(t)) or 1.0])
            found = row_at(f, x_star, v, step)
            if found is None or found[1] > 1e-3:
                stats["kinks_rejected"] += 1
                log.debug("kink at t=%.6g is not a single neuron's (rank ratio %s)", t,
                          None if found is None else f"{found[1]:.3g}")
                continue
            w, ratio = found
            if rows and np.abs(np.array(rows) @ w).max() > 1 - 1e-9 and np.abs(
                    np.abs(np.array(rows) @ x_star + np.array(biases)).min()) <= \
                    1e-4 * (1.0 + np.linalg.norm(x_star)):
                stats["kinks_known"] += 1   # a known unit after all (imprecise bias)
                continue
            stats["max_rank_ratio"] = max(stats["max_rank_ratio"], ratio)
            rows.append(w)
            biases.append(-float(w @ x_star))
            crit.append(x_star)
    if not rows:
        raise UsageError("functionally-equivalent extraction found no critical point: the "
                         "victim looks linear along every line (not a ReLU network), or the "
                         "kinks lie beyond --line-range")
    stats["line_range_final"] = half
    h = len(rows)
    log.info("%d hidden units found on %d lines (%d kinks)", h, stats["lines"], stats["kinks"])
    w_rows, b_rows = np.array(rows), np.array(biases)
    # points for the signs and the last layer: both sides of every critical point + random
    radius = 0.5 * (high - low)
    around = np.concatenate([np.array(crit) + radius * w_rows, np.array(crit) - radius * w_rows])
    random_pts = rng.uniform(low, high, (2 * h + 64, d))
    ls_x = np.concatenate([around, random_pts])
    ls_y = f(ls_x)
    net, flipped, residual = solve_signs_and_head(w_rows, b_rows, ls_x, ls_y)
    stats.update({"hidden_found": h, "signs_flipped": int(flipped.sum()),
                  "least_squares_points": len(ls_x), "least_squares_max_residual": residual})
    log.info("signs: %d flipped; last layer residual %.3g", int(flipped.sum()), residual)
    if config.hybrid:
        hx = rng.uniform(low, high, (config.hybrid_queries, d)) if hybrid_x is None \
            else np.asarray(hybrid_x, dtype=np.float64)[:config.hybrid_queries]
        hy = f(hx)
        if config.hidden is not None and config.hidden > h:
            extra = config.hidden - h
            scale = float(np.abs(net.w1).mean())
            net = Network(np.hstack([net.w1, rng.normal(0, scale, (d, extra))]),
                          np.concatenate([net.b1, np.zeros(extra)]),
                          np.vstack([net.w2, np.zeros((extra, net.w2.shape[1]))]), net.b2)
        tuned, before, after = fine_tune(net, np.concatenate([ls_x, hx]),
                                         np.concatenate([ls_y, hy]), steps=config.hybrid_steps,
                                         seed=config.seed, lr=config.hybrid_lr)
        stats["hybrid"] = {"queries": len(hx), "heldout_max_error_before": before,
                           "heldout_max_error_after": after, "kept": after < before}
        if after < before:
            net = tuned
    return net, stats


def align_network(net: Network, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray,
                  kind: str) -> dict:
    """Largest parameter errors after aligning the hidden units' order and positive scales.

    Every unit is normalised to a unit-norm weight row (its outgoing weights scaled
    accordingly); recovered units are matched to the true ones by the largest cosine. With
    probabilities, the last layer is compared relative to class K (its shift symmetry).
    """
    def normal(a1, c1, a2):
        n = np.linalg.norm(a1, axis=0)
        n = np.where(n == 0, 1.0, n)
        return a1 / n, c1 / n, a2 * n[:, None]

    tw1, tb1, tw2 = normal(w1, b1, w2)
    rw1, rb1, rw2 = normal(net.w1, net.b1, net.w2)
    match = np.argmax(tw1.T @ rw1, axis=1)       # for each true unit, the recovered one
    tb2 = np.asarray(b2, dtype=np.float64)
    rb2 = net.b2
    if kind != "logits":
        tw2, tb2 = tw2 - tw2[:, -1:], tb2 - tb2[-1]
        rw2 = np.hstack([rw2, np.zeros((rw2.shape[0], 1))]) if rw2.shape[1] < tw2.shape[1] \
            else rw2
        rb2 = np.append(rb2, 0.0) if len(rb2) < len(tb2) else rb2
    return {
        "aligned": "hidden units matched by cosine and scaled to unit-norm weight rows"
                   + ("" if kind == "logits" else "; last layer relative to class K"),
        "true_hidden": int(w1.shape[1]),
        "recovered_hidden": int(net.w1.shape[1]),
        "distinct_matches": int(len(set(match.tolist()))),
        "max_abs_error_w1": float(np.abs(tw1 - rw1[:, match]).max()),
        "max_abs_error_b1": float(np.abs(tb1 - rb1[match]).max()),
        "max_abs_error_w2": float(np.abs(tw2 - rw2[match]).max()),
        "max_abs_error_b2": float(np.abs(tb2 - rb2).max()),
    }


def _as_logits(net: Network, kind: str) -> Network:
    """From K - 1 log-probability differences to K logits (class K's logit 0)."""
    if kind == "logits":
        return net
    return Network(net.w1, net.b1, np.hstack([net.w2, np.zeros((net.w2.shape[0], 1))]),
                   np.append(net.b2, 0.0))


def run_fee(config: FeeConfig) -> FeeResult:
    """The CLI's attack: open the config's victim, run `FEE`."""
    return FEE.run_config(config)


def _extract(client, config: FeeConfig) -> FeeResult:
    """The whole attack: discover, extract, evaluate, export, report."""
    iface: VictimInterface = discover(client, config.output)
    d, k = iface.dim, iface.num_classes
    half = config.line_range or (1000.0 if iface.output_kind == "logits" else 250.0)
    test = None
    if config.test_set:
        test = eval_inputs(config.test_set, config.test_split, config.test_limit,
                           config.seed, iface, config.input_low, config.input_high)
    hybrid_x = None
    if config.hybrid_set:
        hybrid_x, _, _ = eval_inputs(config.hybrid_set, config.hybrid_split,
                                     config.hybrid_queries, config.seed, iface,
                                     config.input_low, config.input_high)
    run_dir = prepare_run_dir(config)
    rng = np.random.default_rng(config.seed)
    with QueryJournal.open(run_dir, num_classes=2 * k) as journal:
        oracle = ExactOracle(client, iface, journal, budget=config.budget,
                             batch_size=config.query_batch,
                             attack="functionally-equivalent extraction")

        def f(x: np.ndarray) -> np.ndarray:
            sent = oracle.cast(x)
            if iface.input_dtype != np.float64 and not np.array_equal(sent, x):
                log.debug("queries rounded to %s", iface.input_dtype)
            return targets(oracle(sent), iface.output_kind)

        net, stats = extract_network(f, d, config, rng, half, hybrid_x)
        queries, replayed = oracle.count, oracle.replayed
    full = _as_logits(net, iface.output_kind)
    class_names = test[2] if test is not None and len(test[2]) == k else None
    exported = export_recovered([(full.w1, full.b1), (full.w2, full.b2)], iface, run_dir,
                                class_names=class_names,
                                card={"attack": "functionally-equivalent extraction "
                                                "(Jagielski et al. 2020)",
                                      "victim": config.model, "queries": queries})

    def recovered(xs: np.ndarray) -> np.ndarray:
        return full(np.asarray(xs, dtype=np.float64).reshape(len(xs), -1))

    extra: dict = {
        "title": "Functionally-equivalent extraction (Jagielski et al. 2020)",
        "victim": {"target": config.grpc, "model": config.model, **iface.describe(),
                   "num_classes": k, "features": d},
        "queries": {"attack": queries, "replayed_from_journal": replayed},
        "line_range": half,
        "extraction": stats,
        "identifiable": (
            "every parameter up to the order and positive scale of the hidden units "
            "(logits)" if iface.output_kind == "logits" else
            "the hidden layer up to order and positive scale; the last layer up to a row "
            "shared by all classes (probabilities: logits known up to a per-input "
            "constant)"),
        "recovered_export": str(exported),
    }
    evaluation = evaluate_recovered(client, iface, run_dir, config, recovered, test, extra,
                                    queries)
    if config.reference:
        variables = reference_variables(config.reference)
        kernels = [v for v in variables if v.ndim == 2]
        vectors = [v for v in variables if v.ndim == 1]
        if len(kernels) != 2 or len(vectors) != 2 or kernels[0].shape[0] != d:
            raise invalid("reference", [list(v.shape) for v in variables],
                          f"the variables of a {d}-h-{k} network (two dense layers)")
        extra["parameter_error"] = align_network(net, kernels[0], vectors[0], kernels[1],
                                                 vectors[1], iface.output_kind)
    errors = extra.get("parameter_error")
    if errors is not None:
        errors = {"max_param_error": max(errors[key] for key in errors
                                         if key.startswith("max_abs_error"))}
    paths, headline = report_recovered(run_dir, config, evaluation, extra, queries=queries,
                                       hidden_found=stats["hidden_found"], **(errors or {}))
    return FeeResult(run_dir, queries, headline, journal=run_dir / "journal.bin",
                     report=paths.get("markdown"),
                     figures=tuple(v for k, v in paths.items() if k.endswith("_plot")),
                     victim=extra["victim"], network=full)


# -- command line ---------------------------------------------------------------------------------
PROG = "python -m attack.fee"
EPILOG = """\
example (an MNIST 784-16-10 ReLU network served in float64 with its logits):
  python -m victim_export --dataset ../shared/data/mnist_test10k_uint8.npz \\
      --train-split test --test-split test --arch mlp --arch-args hidden=16 \\
      --export-logits --out victims --name mnist_mlp16
  python -m serving.model_server --port 8510 --model_config_file victims/models.config &
  python -m attack.fee --grpc localhost:8510 --model mnist_mlp16 --hidden 16 \\
      --test-set ../shared/data/mnist_test10k_uint8.npz --reference victims/mnist_mlp16/1 \\
      --out runs/fee_mnist16
"""


def main(argv=None) -> int:
    """Run the attack with `argv` (default sys.argv[1:]); return the exit code (2: bad input)."""
    return exact_main(FeeConfig, run_fee, argv, prog=PROG, epilog=EPILOG)


if __name__ == "__main__":
    sys.exit(main())
