"""The detectors watching one client's stream, as one call: ``monitor.observe(state, images,
probabilities) -> Decision``. The serving gateway calls it with each Predict batch a client sent
(uint8 images ``[N, H, W, C]``) and the victim's answer rows (float ``[N, K]`` probabilities),
inside that client's lock, and stores the state it updated; the detection logic lives here, the
gateway only decides what a `Decision` means for the answer (ARCHITECTURE.md, contract 3).

Two kinds of detector run per batch:

* **watches**: a per-query OOD score against a threshold, aggregated per client by a window.
  The default one, ``"ood"``, is Atli et al.'s detector (`detector.ood.OODDetector`, attack
  probability) with a `detector.aggregate.SlidingWindow`, built from the policy's
  `detector.ood.OODConfig` by `Monitor.from_configs`.
* **PRADA** (Juuti et al. 2019, `detector.prada.Prada`): the distances between the client's
  queries (pixel features) per class the victim predicted.

A client is flagged the first time any of them flags it (``state.flagged``, ``flagged_by``
names the detectors); the flag sticks.

Plugging in more scorers and windows (e.g. `detector.robust`'s scores, `detector.aggregate`'s
`BinomialWindow`): a scorer is any object with ``score(images, probabilities) -> np.ndarray``
(one float per image, higher = more out of distribution; `probabilities` is the victim's
answer, or None when the answer had no class scores) and a ``threshold`` attribute (a query is
flagged when its score is >= threshold, compared in float64); a window is any object with
``new_state() -> dict`` (JSON-serialisable) and ``update(state, verdicts) -> (flagged,
share)``. Give them to the monitor as ``Watch(name, scorer, window)``::

    monitor = Monitor([Watch("ood", DetectorScore(detector), SlidingWindow(256, 0.5, 64)),
                       Watch("energy", EnergyScorer(...), BinomialWindow(256, fpr=0.01))],
                      prada=Prada(PradaConfig()))

The window state of the watch named ``"ood"`` is ``state.ood`` itself (the layout the gateway
has always stored); any other watch keeps its state in ``state.ood["watches"][name]``, so the
gateway's SQLite and Redis stores need no change. Verdicts go into the audit record as
``<name>_attack_queries`` and ``<name>_share``. A watch without a scorer (``scorer=None``, with
its own ``threshold``) takes its scores from the caller (``observe(..., scores={name: ...})``):
the gateway scores with a detector served by the upstream that way, since `detector/` never
talks gRPC. `state` is any object with the attributes ``ood`` (dict or None), ``prada`` (bytes
or None), ``flagged`` and ``flagged_by`` (the gateway's `DetectorState`); numpy only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from common.errors import invalid
from detector.aggregate import BinomialWindow, SlidingWindow
from detector.ood import OODConfig, OODDetector
from detector.prada import Prada, PradaConfig, pixel_features
from detector.robust import DetectorScore

__all__ = ["Decision", "DetectorScore", "Monitor", "Scorer", "Watch", "Window"]

logger = logging.getLogger(__name__)

MAIN_WATCH = "ood"


class Scorer(Protocol):
    """A per-query OOD score: higher = more out of distribution; flagged at >= `threshold`."""

    threshold: float

    def score(self, images: np.ndarray, probabilities: np.ndarray | None) -> np.ndarray: ...


class Window(Protocol):
    """Per-client aggregation of verdicts (`detector.aggregate.SlidingWindow`'s contract)."""

    def new_state(self) -> dict[str, Any]: ...

    def update(self, state: dict[str, Any], verdicts: Any) -> tuple[bool, float]: ...


@dataclass(frozen=True)
class Watch:
    """A scorer, its threshold (default the scorer's) and the per-client window of verdicts."""

    name: str
    scorer: Scorer | None
    window: Window
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise invalid("name", self.name, "an identifier (it names the audit verdicts)")
        if self.scorer is None and self.threshold is None:
            raise invalid("threshold", None, f"a threshold for watch {self.name!r}, whose "
                          "scores the caller passes (no scorer)")

    @property
    def limit(self) -> float:
        """The threshold in use: the watch's own, else the scorer's."""
        return float(self.scorer.threshold if self.threshold is None else self.threshold)


@dataclass
class Decision:
    """What `Monitor.observe` concluded for one batch.

    `flagged`: the client is flagged (now or before); `newly`: the detectors that flagged it
    with this batch; `verdicts`: JSON-ready facts for the audit record; `scores`: each watch's
    per-query scores (float64 ``[N]``; the misinformation switch reads ``scores["ood"]``);
    `seconds`: time each detector took (for latency metrics).
    """

    flagged: bool
    newly: tuple[str, ...] = ()
    verdicts: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class Monitor:
    """The detectors of a policy: watches (score + window) and PRADA; see the module doc."""

    def __init__(self, watches: Sequence[Watch] = (), *, prada: Prada | None = None) -> None:
        self.watches = tuple(watches)
        names = [w.name for w in self.watches]
        if len(set(names)) != len(names):
            raise invalid("watches", names, "watches with distinct names")
        self.prada = prada
        # The last PRADA state per client with the bytes it was stored as: when the store hands
        # back those very bytes, the live arrays are reused instead of decoding them again.
        self._prada_live: dict[str, tuple[bytes, dict[str, Any]]] = {}

    @classmethod
    def from_configs(cls, ood: OODConfig | None = None, prada: PradaConfig | None = None, *,
                     detector: Any = None) -> Monitor:
        """The monitor of a policy's ``detectors`` section.

        `detector`: the OOD detector (``score(images)``, ``threshold``) when already loaded;
        otherwise `ood.path` is loaded (`OODDetector.load`, at `ood.threshold` if given), and
        with `ood.upstream_model` the watch has no scorer: the caller passes its scores.
        """
        watches = []
        if ood is not None:
            if detector is None and ood.path is not None:
                detector = OODDetector.load(ood.path, threshold=ood.threshold)
            window = SlidingWindow(window=ood.window, level=ood.level,
                                   min_queries=ood.min_queries)
            if ood.aggregate == "binomial":
                fpr = ood.fpr if ood.fpr is not None else \
                    (getattr(detector, "calibration", None) or {}).get("target_fpr")
                if fpr is None:
                    raise invalid("detectors.ood.fpr", None, "the detector's benign "
                                  "false-positive rate (its calibration has no target_fpr)")
                window = BinomialWindow(ood.window, fpr, ood.alpha, ood.min_queries)
            scorer = None if detector is None else DetectorScore(detector)
            watches.append(Watch(MAIN_WATCH, scorer, window,
                                 threshold=None if scorer is not None else ood.threshold))
        return cls(watches, prada=None if prada is None else Prada(prada))

    def __repr__(self) -> str:
        return f"Monitor(watches={[w.name for w in self.watches]}, prada={self.prada!r})"

    @property
    def names(self) -> tuple[str, ...]:
        """The detectors' names, as `Decision.newly` and ``flagged_by`` give them."""
        return tuple(w.name for w in self.watches) + (("prada",) if self.prada else ())

    def watch(self, name: str) -> Watch | None:
        return next((w for w in self.watches if w.name == name), None)

    def needs_scores(self) -> tuple[str, ...]:
        """The watches whose scores the caller passes to `observe` (no scorer of their own)."""
        return tuple(w.name for w in self.watches if w.scorer is None)

    def observe(self, state: Any, images: np.ndarray | None, probabilities: np.ndarray | None,
                *, scores: Mapping[str, np.ndarray] | None = None,
                client: str | None = None) -> Decision:
        """Run every detector on one batch of `client`'s queries; update `state` in place.

        `images`: uint8 ``[N, H, W, C]`` (None or empty: nothing to watch); `probabilities`: the
        victim's answer ``[N, K]`` (None: PRADA, which needs the predicted classes, skips the
        batch); `scores`: precomputed scores by watch name (see the module doc). Raises
        `UsageError` when a watch without a scorer gets no scores.
        """
        decision = Decision(flagged=bool(state.flagged))
        if images is not None and len(images):
            newly: list[str] = []
            for watch in self.watches:
                if self._observe_watch(watch, state, images, probabilities, scores, decision):
                    newly.append(watch.name)
            if self.prada is not None and probabilities is not None:
                if self._observe_prada(state, images, probabilities, client, decision):
                    newly.append("prada")
            if newly and not state.flagged:
                state.flagged = True
                state.flagged_by = ",".join(newly)
                decision.newly = tuple(newly)
                logger.warning("client %s flagged by %s", client, state.flagged_by)
        decision.flagged = bool(state.flagged)
        decision.verdicts["flagged"] = decision.flagged
        return decision

    def forget(self, client: str) -> None:
        """Drop the live PRADA arrays kept for `client` (its stored state is unaffected)."""
        self._prada_live.pop(client, None)

    # -- the detectors -----------------------------------------------------------------------
    def _window_state(self, state: Any, watch: Watch) -> dict[str, Any]:
        if state.ood is None:
            state.ood = {}
        if watch.name == MAIN_WATCH:
            if "bits" not in state.ood:
                state.ood.update(watch.window.new_state())
            return state.ood
        watches = state.ood.setdefault("watches", {})
        if watch.name not in watches:
            watches[watch.name] = watch.window.new_state()
        return watches[watch.name]

    def _observe_watch(self, watch: Watch, state: Any, images: np.ndarray,
                       probabilities: np.ndarray | None,
                       given: Mapping[str, np.ndarray] | None, decision: Decision) -> bool:
        started = time.perf_counter()
        if given is not None and watch.name in given:
            values = given[watch.name]
        elif watch.scorer is not None:
            values = watch.scorer.score(images, probabilities)
            decision.seconds[watch.name] = time.perf_counter() - started
        else:
            raise invalid("scores", None, f"the scores of watch {watch.name!r} (it has no "
                          "scorer: the caller computes them)")
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape != (len(images),):
            raise invalid("scores", f"{values.size} scores for watch {watch.name!r}",
                          f"one per image ({len(images)})")
        # float64 on both sides: a float32 compare would round the threshold.
        verdicts = values >= watch.limit
        flagged, share = watch.window.update(self._window_state(state, watch), verdicts)
        decision.scores[watch.name] = values
        decision.verdicts[f"{watch.name}_attack_queries"] = int(np.count_nonzero(verdicts))
        decision.verdicts[f"{watch.name}_share"] = round(float(share), 4)
        return bool(flagged) and not state.flagged

    def _observe_prada(self, state: Any, images: np.ndarray, probabilities: np.ndarray,
                       client: str | None, decision: Decision) -> bool:
        started = time.perf_counter()
        rows = np.asarray(probabilities)
        if rows.ndim != 2 or len(rows) != len(images):
            raise invalid("probabilities", f"array of shape {rows.shape}",
                          f"the victim's answer rows [{len(images)}, K]")
        classes, num_classes = np.argmax(rows, axis=1).astype(np.int64), rows.shape[1]
        features = pixel_features(images)
        cached = self._prada_live.get(client) if client is not None else None
        if state.prada and cached is not None and cached[0] is state.prada:
            live = cached[1]  # the store handed back the bytes written last time
        elif state.prada:
            live = Prada.loads(state.prada)
        else:
            live = self.prada.new_state(num_classes, features.shape[1])
        verdict = self.prada.update(live, features, classes)
        state.prada = Prada.dumps(live)
        if client is not None:
            self._prada_live[client] = (state.prada, live)
        decision.seconds["prada"] = time.perf_counter() - started
        decision.verdicts["prada_statistic"] = None if verdict.statistic is None else \
            round(float(verdict.statistic), 4)
        return bool(verdict.flagged) and not state.flagged
