"""A data-free thief with a procedural prior: `python -m attack.synthetic ...` or `Synthetic`.

For a thief who owns no image of the victim's task but knows what kind of task it is (a
classifier of pictograms: signs, logos, icons). Queries are drawn from a procedural image
prior (`attack.prior.ImagePrior`: generic shapes, glyphs, colours, backgrounds, warps, blur,
lighting, noise; a parameter vector theta in [0, 1]^d per image) and the victim's answers steer
a black-box search over theta, round by round:

* each round of ``--round-size`` queries splits into fresh random theta (a share
  ``--explore``; the whole first round) and mutations of per-class **elites**: for every class c
  the ``--elites`` theta whose answers gave c the highest probability (with a victim that
  answers top-1 only, the theta it answered c for);
* the mutations go to the classes in proportion to ``(1 + answers of class c so far) **
  -balance``, so the classes seen least get the most queries and every class the victim has
  is pursued (the elite of a class never answered is still the theta that gave it the most
  probability, so the search climbs towards it); a mutation moves a share ``--mutation-rate``
  of theta's coordinates by Gaussian steps of ``--mutation-scale`` (and re-draws a few);
* with ``--screen k`` (ActiveThief's selection on a synthetic pool), each round after the
  first plans and renders k times its size and sends the share the online surrogate scores
  highest (``--screen-by``: its entropy, or its probability of the classes answered least);
  the candidates cost rendering and a surrogate prediction, no query, and the chosen theta
  are written before any is sent, like every round's;
* with ``--natural-share s`` and ``--transfer-set``, a share s of each round is the thief's
  natural images instead (resized to the victim's input, the next ones of a seeded order of
  the pool): Knockoff's queries and the prior's in one budget and one surrogate;
* every answer is kept (replay); after each round the surrogate is updated (warm start) on a
  sample of the whole replay, ``--online-passes`` times the round's size, shifted by up to
  ``--shift`` pixels (augmentation that keeps the victim's label), and at the end a final pass
  trains it on every answer (`attack.surrogate.SurrogateTrainer.fit`, the same recipe as every
  attack: sharpened targets, cosine schedule, crop augmentation; no flips unless ``--flip``,
  since a mirrored pictogram can be another class).

The curve of test accuracy against queries is measured on the online surrogate at
``--curve-points`` budgets (halvings of the budget) and on the final surrogate at the budget;
the report also states how many answers each class got, which classes the victim never
answered (named), and where the time went (victim / renderer / search / surrogate).

One image is one query, the budget is spent exactly (the last round is cut), and a run resumes
after a crash without paying twice: each round's theta (float16, about 170 bytes a query) is
written to ``RUN_DIR/queries/`` before any of it is sent, every answer is journaled as it
arrives (`attack.journal`), and the search state (elites, counts) with the surrogate's weights
is written atomically after every round (``RUN_DIR/synthetic_state.npz``). A resumed run
re-renders the finished rounds from their theta (the renderer is deterministic) and continues
the unfinished round from its stored theta, sending only the queries never answered.
``--resume`` with another ``--epochs`` (`FINAL_PASS_FIELDS`: no query depends on them; with
``--online-passes 0`` the surrogate's architecture and recipe too, `SURROGATE_FIELDS`) trains
the final pass again on the journaled answers, none sent again; ``--resume --budget N`` with N
above the run's budget grows it (`check_resume`): every journaled answer is kept, the rounds
continue to N as a fresh run of budget N would have sent them (the run's budget a multiple of
``--round-size``: its stream's prefix does not depend on the budget), and the final pass trains
again on all N answers; only the N - old new queries are paid. `SyntheticConfig.resume_changes`
declares both (`attack.config.RESUME_CHANGES`). `sent_queries` gives back a run's stream exactly
as the victim received it (for the detectors' replay).

``--granularity top1`` (or ``topk:K``) learns from what a label-only (top-k) API would have
answered: each answer is cut to its top-1 (one-hot) or top-k (renormalised) by
`attack.responses.apply_granularity`, the meaning Knockoff's flag has, as it arrives and
before anything reads it: the elites (a theta's score for class c is then 1 when the victim
answered c, 0 otherwise), the per-class counts, the screen, the online updates, the final
pass and the curve. Against a victim that already answers top-1 the run sends the same
queries with or without the flag; against one that answers probabilities the flag makes the
run a top-1 thief's, query for query. As in Knockoff, the journal keeps the raw answers (what
was paid for) and a resumed run applies the granularity again as it reads them back;
``--granularity`` is not among the settings a resume may change (another one would have
steered the search elsewhere: `prepare_run_dir` refuses it). ``topk:K`` with K above the
victim's classes is refused once its signature is read, before any query. The report's
``extra.granularity`` and ``extra.trained_on`` say what the surrogate learnt from.

This is a new combination, not a published attack: the prior plays the role of Truong et al.'s
and Kariyappa et al.'s generators (DFME, MAZE: `attack.datafree`), the victim-guided elites that
of a quality-diversity search (one elite set per class, as MAP-Elites keeps one per niche).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import numpy as np

from attack.config import (
    REDO_EXTEND,
    REDO_FINAL_PASS,
    RESUME_CHANGES,
    AttackConfig,
    SurrogatePart,
    changed_on_resume,
    check_granularity_spelling,
    resume_fields,
    saved_run_config,
)
from attack.generated import GeneratedAttack, GeneratedRun, prefixed, run_generated
from attack.pipeline import (
    ExtractionResult,
    answers_as_probabilities,
    as_seen_by_victim,
    begin_run,
    clock,
    finish,
    probe_images,
    save_npz,
    surrogate_trainer,
)
from attack.prior import GLYPH_STYLES, PRIOR_VERSION, ImagePrior
from attack.responses import apply_granularity, check_granularity, parse_granularity
from common.cli import typed_fields
from common.constraints import check_fields
from common.errors import invalid
from common.fileio import write_json_atomic

__all__ = ["FINAL_PASS_FIELDS", "SURROGATE_FIELDS", "Elites", "Synthetic", "SyntheticConfig",
           "balanced_rows", "check_resume", "plan_round", "pool_digest", "prior_probes",
           "run_prior", "run_synthetic", "select_screened", "sent_queries", "shift_images"]

log = logging.getLogger(__name__)

STATE_NAME = "synthetic_state.npz"
GROWN_NAME = "budget_grown.json"  # {"from": the run's first budget, "to": its budget now}
POOL_NAME = "natural_pool.json"  # the digest of the natural images a run draws from
QUERIES_DIR = "queries"
PARTS = ("victim", "render", "search", "surrogate", "storage", "evaluation")
"""Where a run's time goes (``time_seconds``/``cpu_seconds`` in the report; the victim part is
request to answer, journal included; the server's own CPU is not this process's)."""


# -- config ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig(AttackConfig):
    """Steal an image classifier with a procedural image prior and a victim-guided search."""

    budget: int = field(default=100_000, metadata={
        "help": "queries (rendered images) to send", "min": 1})
    round_size: int = field(default=1000, metadata={
        "help": "queries per round (the elites and the surrogate are updated after each)",
        "min": 1})
    explore: float = field(default=0.2, metadata={
        "help": "share of each round (after the first, all fresh) drawn as fresh random theta; "
                "the rest mutates the per-class elites", "min": 0, "max": 1})
    elites: int = field(default=16, metadata={
        "help": "theta kept per class: those whose answers gave the class the highest "
                "probability", "min": 1})
    balance: float = field(default=1.0, metadata={
        "help": "mutations per class proportional to (1 + answers of the class) ** -balance "
                "(0: every class alike)", "min": 0})
    mutation_scale: float = field(default=0.1, metadata={
        "help": "standard deviation of a mutation's Gaussian step on [0, 1] coordinates",
        "gt": 0, "max": 1})
    mutation_rate: float = field(default=0.25, metadata={
        "help": "share of theta's coordinates one mutation moves (at least one)", "gt": 0,
        "max": 1})
    screen: int = field(default=1, metadata={
        "help": "surrogate-screened rounds: plan and render this many times a round's queries "
                "and send the share --screen-by picks, scored by the online surrogate (no "
                "query; needs --online-passes > 0; 1: send every planned theta)", "min": 1})
    screen_by: str = field(default="entropy", metadata={
        "help": "what the screen sends: entropy (the candidates the surrogate is least sure "
                "of) or rare (those it predicts for the classes the victim answered least)",
        "choices": ("entropy", "rare")})
    online_passes: float = field(default=1.0, metadata={
        "help": "surrogate updates after each round: this many times the round's size, "
                "drawn from the whole replay; the curve is this online surrogate's (0: no "
                "online updates, the curve's points are surrogates trained like the final "
                "pass on the first answers)", "min": 0})
    shift: int = field(default=3, metadata={
        "help": "online updates: random shift of up to this many pixels (edge padded)",
        "min": 0})
    flip: bool = field(default=False, metadata={
        "help": "train the surrogate with horizontal flips too (a mirrored pictogram can be "
                "another class: off by default)"})
    image_size: int | None = field(default=None, metadata={
        "help": "side of the rendered images; none: the victim's input size (needed for a "
                "victim without a fixed size)", "metavar": "PX", "min": 8})
    transfer_set: str | None = field(default=None, metadata={
        "help": "optional natural images whose crops become one background kind of the prior "
                "(any data-layer spec); none: procedural backgrounds only", "metavar": "SPEC"})
    transfer_split: str = field(default="train", metadata={"help": "split of --transfer-set"})
    transfer_limit: int = field(default=2000, metadata={
        "help": "natural images kept from --transfer-set (backgrounds, and the pool of "
                "--natural-share)", "min": 1})
    glyphs: str = field(default="default", metadata={
        "help": "how the prior draws its digits, letters and two-digit numbers: default (a "
                "fixed font size: two-digit numbers stay small in their shape) or fill (each "
                "scaled to fill its glyph's square, as a sign's or an icon's glyph fills it)",
        "choices": GLYPH_STYLES})
    natural_share: float = field(default=0.0, metadata={
        "help": "share of each round sent as the thief's natural images (--transfer-set, "
                "resized to the victim's input, in a seeded order): a mixed transfer set in one "
                "budget; 0: rendered images only", "min": 0, "max": 1})
    backbone: str = field(default="cnn", metadata={
        "help": "surrogate architecture: a Keras Applications name, cnn (default: the "
                "victim-sized CNN from scratch) or resnet34"})
    weights: str = field(default="none", metadata={
        "help": "surrogate initial weights: imagenet (needs internet), none, or a file",
        "metavar": "imagenet|none|PATH"})
    input_size: int | None = field(default=None, metadata={
        "help": "surrogate input side in pixels (default: the rendered images' size)",
        "metavar": "PX", "min": 8})
    epochs: int = field(default=10, metadata={
        "help": "epochs of the final pass over every answer", "min": 1})
    final_balance: float = field(default=0.0, metadata={
        "help": "final pass: the answers resampled (seeded, as many as there are) so each is "
                "drawn with weight (answers of its top-1 class) ** -final_balance (0: every "
                "answer once; 1: every answered class alike)", "min": 0, "max": 1})
    granularity: str = field(default="probs", metadata={
        "help": "learn from: probs (what the victim returns), top1 (its top-1 label, one-hot: "
                "a label-only thief's run) or topk:K, applied to every answer before the "
                "search or the surrogate reads it", "metavar": "probs|top1|topk:K",
        "check": True})
    out: str = field(default="runs/synthetic", metadata={
        "help": "run directory (config, journal, query theta, state, surrogate, report)",
        "metavar": "RUN_DIR"})
    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self)
        check_granularity_spelling(self.granularity)
        if self.distribute != "none":
            raise invalid("distribute", self.distribute,
                          "none (the online rounds train on one device)")
        if self.natural_share > 0 and not self.transfer_set:
            raise invalid("natural_share", self.natural_share, "0 without --transfer-set (the "
                          "natural images it sends)")
        if self.screen > 1 and self.online_passes <= 0:
            raise invalid("screen", self.screen, "1 unless --online-passes > 0 (the online "
                          "surrogate screens the candidates)")


SURROGATE_FIELDS = (*(f.name for f in dataclasses.fields(SurrogatePart)
                      if f.name not in ("epochs", "augment", "distribute")), "flip")
"""The surrogate's architecture and training recipe: `attack.config.SurrogatePart`'s fields but
``epochs`` (always the final pass's), ``augment`` (this attack's is ``--flip``, added) and
``distribute`` (where it trains, `RESUME_CHANGES`). The online surrogate (``--online-passes``
above 0) trains with them while the run chooses its queries (its screen, its curve), so a run
with online updates keeps them on ``--resume`` (`check_resume` refuses another value); with
``--online-passes 0`` no query depends on them (the surrogate is first trained after the
budget): ``--resume`` may change them and the final pass is trained again from the answers,
none paid twice (another architecture or recipe on the same paid answers)."""

# Set after the class, not annotated ``ClassVar`` in its body: run as ``__main__`` through runpy
# without altering sys.modules (the startup tests), dataclasses cannot resolve the string
# annotation and would take it for a field with a mutable default.
SyntheticConfig.resume_changes = MappingProxyType({
    **RESUME_CHANGES, "epochs": REDO_FINAL_PASS, "final_balance": REDO_FINAL_PASS,
    **dict.fromkeys(SURROGATE_FIELDS, REDO_FINAL_PASS), "budget": REDO_EXTEND})
"""What ``--resume`` may change besides the shared `RESUME_CHANGES`: ``epochs`` and
``final_balance`` (no query depends on them: the final pass, and with ``--online-passes 0``
the curve's points, trained again), `SURROGATE_FIELDS` likewise for a run without online
updates, and a larger ``budget`` (the rounds continue, then the final pass on every answer)."""

FINAL_PASS_FIELDS = resume_fields(SyntheticConfig, REDO_FINAL_PASS)
"""Settings ``--resume`` may change by training the final pass (with ``--online-passes 0`` the
curve's points too) again from the run's answers: ``epochs`` and ``final_balance`` always (the
online rounds never read them), `SURROGATE_FIELDS` when the run has no online updates."""


def check_resume(config: SyntheticConfig, *, budget_given: bool = True) -> dict[str, Any]:
    """On ``--resume``: {field: the run's value} of the settings this session changes that a
    resume may change (`SyntheticConfig.resume_changes`), or {}. Read only, so it runs before
    anything is written or sent; `UsageError` for a budget the run cannot grow to: below the
    run's (a run's budget grows, never shrinks), a run whose last round was cut at its budget
    (its stream cannot continue as a fresh run of the new budget's would), or the default
    budget while `budget_given` is false (a resume without ``--budget`` would pay for queries
    nobody asked for)."""
    earlier = changed_on_resume(config)
    online = [name for name in SURROGATE_FIELDS if name in earlier]
    if online and config.online_passes > 0:
        name = online[0]
        raise invalid(name, getattr(config, name), f"{earlier[name]!r}, the run's own: its "
                      f"online surrogate (--online-passes {config.online_passes:g}) trained "
                      "with it while the run chose its queries (only a run with --online-passes "
                      "0 trains its surrogate again with other settings)")
    if "budget" not in earlier:
        return earlier
    old, new, run_dir = int(earlier["budget"]), config.budget, Path(config.out)
    if new < old:
        raise invalid("budget", new, f"at least {old}, the budget of the run in {run_dir} (a "
                      "resume may grow a run's budget, never shrink it)")
    default = SyntheticConfig.__dataclass_fields__["budget"].default
    if new == default and not budget_given:
        raise invalid("budget", new, f"{old}, the budget of the run in {run_dir}: a resume "
                      f"without --budget gets the default {default}, which would pay for "
                      f"{new - old} more queries (give --budget {new} to grow the run to it)")
    size = int((saved_run_config(config) or {}).get("round_size", config.round_size))
    last = old // size + 1
    if old % size and _block_path(run_dir, last).is_file():
        raise invalid("budget", new, f"{old}, the budget of the run in {run_dir}: its last round "
                      f"({last}) was cut to {old % size} queries where a run of budget {new} "
                      f"sends {size}, so its stream cannot continue as that run's (only a "
                      "budget that is a multiple of --round-size grows)")
    return earlier


# -- the pure parts --------------------------------------------------------------------------------
class Elites:
    """Per class, the `size` theta with the highest scores seen so far (a score <= 0 never
    enters), and how many answers had each class as their top-1.

    `update(theta, probs)` takes a round's theta [m, d] and the victim's rows [m, K] (one-hot
    for a label-only victim): the score of a theta for class c is its probability of c. Ties
    keep the elite that was there first.
    """

    def __init__(self, num_classes: int, size: int, dim: int) -> None:
        self.theta = np.zeros((num_classes, size, dim), np.float32)
        self.score = np.zeros((num_classes, size), np.float32)
        self.seen = np.zeros(num_classes, np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.seen)

    def counts(self) -> np.ndarray:
        """Elites held per class (those with a positive score)."""
        return (self.score > 0).sum(axis=1)

    def update(self, theta: np.ndarray, probs: np.ndarray) -> None:
        theta, probs = np.asarray(theta, np.float32), np.asarray(probs, np.float32)
        if probs.shape != (len(theta), self.num_classes):
            raise invalid("probs", f"shape {probs.shape}",
                          f"[{len(theta)}, {self.num_classes}] (one row per theta)")
        if not len(theta):
            return
        top = probs.argmax(axis=1)
        self.seen += np.bincount(top[probs.max(axis=1) > 0], minlength=self.num_classes)
        size = self.score.shape[1]
        scores = np.concatenate([self.score, probs.T], axis=1)  # [K, size + m]
        order = np.argsort(-scores, axis=1, kind="stable")[:, :size]
        best = np.take_along_axis(scores, order, axis=1)
        from_old = order < size
        old = np.take_along_axis(self.theta, np.minimum(order, size - 1)[..., None], axis=1)
        new = theta[np.maximum(order - size, 0)]
        self.theta = np.where(from_old[..., None], old, new).astype(np.float32)
        self.score = np.where(best > 0, best, 0).astype(np.float32)

    def weights(self, balance: float) -> np.ndarray:
        """Share of the mutations each class gets: (1 + seen) ** -balance over the classes
        holding an elite, 0 elsewhere; all zero when none holds one."""
        held = self.counts() > 0
        w = np.where(held, (1.0 + self.seen) ** -float(balance), 0.0)
        return w / w.sum() if w.sum() > 0 else w

    def state(self) -> dict[str, np.ndarray]:
        return {"elite_theta": self.theta, "elite_score": self.score, "elite_seen": self.seen}

    def load(self, arrays) -> None:
        self.theta = np.asarray(arrays["elite_theta"], np.float32)
        self.score = np.asarray(arrays["elite_score"], np.float32)
        self.seen = np.asarray(arrays["elite_seen"], np.int64)


def plan_round(count: int, elites: Elites, prior_dim: int, config: SyntheticConfig,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(theta [count, d] float32, target class per row, -1 for a fresh one) of one round: a
    share `config.explore` fresh (all of it while no class holds an elite), the rest mutations
    of elites of the classes `Elites.weights` picks. Theta is rounded to float16 values, the
    precision it is stored at, so a resumed run renders exactly what was sent."""
    weights = elites.weights(config.balance)
    mutated = 0 if not weights.any() else count - int(round(config.explore * count))
    target = np.full(count, -1, np.int64)
    theta = np.empty((count, prior_dim), np.float32)
    theta[: count - mutated] = rng.random((count - mutated, prior_dim), dtype=np.float32)
    if mutated:
        classes = np.repeat(np.arange(len(weights)), rng.multinomial(mutated, weights))
        held = elites.counts()[classes]
        parents = elites.theta[classes, (rng.random(mutated) * held).astype(np.int64)]
        moved = rng.random((mutated, prior_dim)) < config.mutation_rate
        moved[np.arange(mutated), rng.integers(0, prior_dim, mutated)] = True
        step = rng.standard_normal((mutated, prior_dim)).astype(np.float32)
        child = parents + moved * config.mutation_scale * step
        redraw = rng.random((mutated, prior_dim)) < config.mutation_rate * 0.1
        child = np.where(redraw, rng.random((mutated, prior_dim), dtype=np.float32), child)
        theta[count - mutated:] = np.clip(child, 0, 1)
        target[count - mutated:] = classes
    order = rng.permutation(count)
    theta, target = theta[order], target[order]
    return theta.astype(np.float16).astype(np.float32), target


def balanced_rows(probs: np.ndarray, power: float, seed: int) -> np.ndarray:
    """Row indices (as many as `probs` has rows, sorted) of a class-balanced resampling of the
    answers `probs` [n, K]: each row drawn with replacement with weight (answers whose top-1 is
    its top-1) ** -`power`, by a generator seeded with `seed`; `power` 0: every row once."""
    probs = np.asarray(probs)
    if power <= 0:
        return np.arange(len(probs))
    top = probs.argmax(axis=1)
    weight = np.bincount(top, minlength=probs.shape[1]).astype(np.float64)[top] ** -float(power)
    rng = np.random.default_rng([seed, 13])
    return np.sort(rng.choice(len(probs), size=len(probs), p=weight / weight.sum()))


def select_screened(probs: np.ndarray, count: int, by: str, seen: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the `count` candidates a screened round sends, from the
    surrogate's probabilities `probs` [m, K] of all m candidates: ``entropy``, the highest
    entropy; ``rare``, the highest probability mass on the classes the victim answered least
    (each class weighted by (1 + `seen`) ** -1). Ties go to the earlier candidate."""
    probs = np.asarray(probs, np.float64)
    if by == "entropy":
        score = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    elif by == "rare":
        score = probs @ (1.0 / (1.0 + np.asarray(seen, np.float64)))
    else:
        raise invalid("screen_by", by, "entropy or rare")
    return np.sort(np.argsort(-score, kind="stable")[:count])


def shift_images(images: np.ndarray, shift: int, rng: np.random.Generator,
                 flip: bool = False) -> np.ndarray:
    """Each uint8 image moved by a random whole-pixel offset in [-shift, shift]^2 (edges
    repeated), and mirrored at random with `flip`."""
    if shift <= 0 and not flip:
        return images
    n, h, w = images.shape[:3]
    out = images
    if shift > 0:
        padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
        dy = rng.integers(0, 2 * shift + 1, n)
        dx = rng.integers(0, 2 * shift + 1, n)
        rows = dy[:, None] + np.arange(h)[None, :]
        cols = dx[:, None] + np.arange(w)[None, :]
        out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        mirror = rng.random(n) < 0.5
        out = out.copy() if out is images else out
        out[mirror] = out[mirror, :, ::-1]
    return out


def _block_path(run_dir: Path, round_: int) -> Path:
    return run_dir / QUERIES_DIR / f"r{round_:06d}.npz"


def run_prior(size: tuple[int, int], seed: int, natural=None,
              limit: int | None = None, glyphs: str = "default") -> ImagePrior:
    """The prior of a run at `size` with `seed` and glyph style `glyphs`: its natural
    backgrounds (and the pool of ``--natural-share``) are the first `limit` images of `natural`
    (a data set or uint8 images) as the victim receives them."""
    backgrounds = None
    if natural is not None:
        images = getattr(natural, "images", natural)[:limit]
        backgrounds = as_seen_by_victim(np.asarray(images), SimpleNamespace(image_size=size))
    return ImagePrior(size, backgrounds, seed=seed, glyphs=glyphs)


def prior_probes(prior: ImagePrior, seed: int) -> np.ndarray:
    """The 64 renders a run at `seed` probes the victim with when it has no natural image
    (`benchmarks.victim_matrix --probe-source prior` measures the range they choose)."""
    return prior.render(prior.sample(64, np.random.default_rng([seed, 11])))


def sent_queries(run_dir: str | Path, natural=None) -> Iterator[tuple[int, np.ndarray]]:
    """A run's query stream as the victim received it: (first query number, uint8 images) of
    each stored round, in the order sent, made one round at a time (lazily).

    Nothing but the run directory is needed: the rendered queries are drawn again from their
    stored theta by the run's prior (its size, seed and natural backgrounds; the renderer is
    deterministic), the natural ones are the pool images each block names. A run given its
    natural images through the Python API (not a ``--transfer-set`` spec) needs them again
    as `natural`; a CLI run's are loaded from its config like the run loaded them."""
    from common.data import load_dataset

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    size = config.get("image_size")
    size = ((size, size) if size else
            tuple(json.loads((run_dir / "victim.json").read_text())["input"]["image_size"]))
    if natural is None and config.get("transfer_set"):
        spec, split = config["transfer_set"], config["transfer_split"]
        head, _, tail = spec.rpartition(":")
        if not Path(spec).exists() and head and Path(head).exists():
            spec, split = head, tail  # a data set given to the API: "<source>:<split>"
        if not Path(spec).exists():
            raise invalid("natural", None, "the natural images the run was given (its "
                          f"transfer_set {config['transfer_set']!r} is not a path here)")
        natural = load_dataset(spec, split, seed=config["seed"],
                               limit=config["transfer_limit"])
    prior = run_prior(tuple(int(v) for v in size), int(config["seed"]), natural,
                      config["transfer_limit"], config.get("glyphs", "default"))
    pool = run_dir / POOL_NAME
    if pool.is_file() and json.loads(pool.read_text()) != pool_digest(prior.backgrounds):
        raise invalid("natural", config.get("transfer_set"), "the natural images the run "
                      f"drew from ({pool} holds their digest; these differ)")
    for path in sorted((run_dir / QUERIES_DIR).glob("r*.npz")):
        with np.load(path) as block:
            theta, first = block["theta"].astype(np.float32), int(block["first"])
            natural_rows = (block["natural"] if "natural" in block.files
                            else np.full(len(theta), -1, np.int64))
        if theta.shape[1] != prior.dim:
            raise invalid("run_dir", str(run_dir), f"a run of this prior ({prior.dim} values "
                          f"a theta; {path.name} holds {theta.shape[1]})")
        yield first, _round_images(prior, theta, natural_rows)


def pool_digest(backgrounds: np.ndarray | None) -> dict:
    """How many natural images a prior holds and their SHA-256 (None without any)."""
    if backgrounds is None:
        return {"images": 0, "sha256": None}
    return {"images": len(backgrounds),
            "sha256": hashlib.sha256(np.ascontiguousarray(backgrounds).data).hexdigest()}


def _round_images(prior: ImagePrior, theta: np.ndarray, natural: np.ndarray) -> np.ndarray:
    """A round's images: theta rendered, the natural pool's images where `natural` >= 0."""
    rendered = natural < 0
    if rendered.all():
        return prior.render(theta)
    if prior.backgrounds is None:
        raise invalid("natural", None, "the natural images of a run with --natural-share")
    images = np.empty((len(theta), *prior.size, 3), np.uint8)
    images[rendered] = prior.render(theta[rendered])
    images[~rendered] = prior.backgrounds[natural[~rendered]]
    return images


# -- the attack object -----------------------------------------------------------------------------
class Synthetic(GeneratedAttack):
    """Data-free extraction with a procedural image prior and a victim-guided search.

    Hyper-parameters (keyword-only; the ``python -m attack.synthetic`` flags of the same names):
    ``budget``, ``round_size``, ``explore``, ``elites``, ``balance``, ``mutation_scale``,
    ``mutation_rate``, ``online_passes``, ``shift``, ``flip``, ``image_size``,
    ``transfer_limit``, ``curve_points``, ``seed``... `transfer` is None (procedural
    backgrounds only) or natural images whose crops become one background kind.
    """

    config_class = SyntheticConfig
    name = "synthetic"

    def _placeholders(self) -> dict:
        return {"transfer_set": "<given to extract>"} if self.params.get("natural_share") \
            else {}

    def _run(self, victim, config: SyntheticConfig, data: dict, on_progress=None
             ) -> ExtractionResult:
        return _SyntheticRun(victim, config, data["natural"], data["test"], on_progress,
                             budget_given="budget" in self.params).run()


def run_synthetic(config: SyntheticConfig, *, on_progress=None,
                  budget_given: bool = False) -> ExtractionResult:
    """The CLI's attack: check a resume's changes (`check_resume`: `budget_given`, the budget
    was asked for, not a default), load the data of `config`, open its victim, run
    `Synthetic`."""
    check_resume(config, budget_given=budget_given)
    return run_generated(Synthetic, config, transfer_limit=config.transfer_limit,
                         on_progress=on_progress)


# -- the loop --------------------------------------------------------------------------------------
class _SyntheticRun(GeneratedRun):
    """One run: the prior, the elites, the replay (the journal, the timers, the curve and the
    state file: `attack.generated.GeneratedRun`)."""

    parts, made, state_name = PARTS, "rendered", STATE_NAME

    def __init__(self, victim, config: SyntheticConfig, natural, test, on_progress, *,
                 budget_given: bool = True) -> None:
        super().__init__(victim, config, test, on_progress)
        check_granularity(config.granularity, self.num_classes)  # before any query
        self.granularity = parse_granularity(config.granularity)
        self.budget_given = budget_given
        if config.input_size is None:
            self.kwargs["input_size"] = self.size[0]
        self.kwargs["augment"] = "crop+flip" if config.flip else "crop"
        self.prior = run_prior(self.size, config.seed, natural, config.transfer_limit,
                               config.glyphs)
        if self.prior.backgrounds is None and not config.resume:
            # the prior's renders chose the wrong range for 3 of 32 CIFAR-10-scale float victims
            # and for the test matrix's [-1, 1] one; a resumed run keeps its victim.json's
            self._refuse_unprobed_range("the prior's renders cannot tell it reliably",
                                        "--transfer-set")

    # -- state ---------------------------------------------------------------------------------
    def _save_state(self) -> None:
        started = clock()
        arrays = dict(self.elites.state())
        for k, w in enumerate(self.trainer.model.get_weights()):
            arrays[f"s_{k:04d}"] = np.asarray(w)
        self._write_state(arrays, {"prior": PRIOR_VERSION, "round": self.round,
                                   "assigned": self.assigned, "hits": self.hits})
        self._add("storage", started)

    def _check_pool(self) -> None:
        """RUN_DIR/natural_pool.json: the digest of the run's natural images, written by its
        first session; a resumed run given other images is refused (its blocks' pool indices
        and rendered backgrounds would name other pictures than those answered)."""
        path, digest = self.run_dir / POOL_NAME, pool_digest(self.prior.backgrounds)
        if not path.is_file():
            write_json_atomic(path, digest)
        elif json.loads(path.read_text()) != digest:
            raise invalid("transfer_set", self.config.transfer_set, "the natural images the run "
                          f"started with ({digest['images']} images here, {path} holds the "
                          "digest of others)")

    def _load_state(self) -> None:
        state = self._read_state()
        if state is None:
            return
        meta, data = state
        if meta.get("prior") != PRIOR_VERSION:
            raise invalid("resume", True, f"a run of this prior (version {PRIOR_VERSION}); "
                          f"{self.run_dir / STATE_NAME} was written by version "
                          f"{meta.get('prior')}")
        self.elites.load(data)
        self.trainer.model.set_weights(prefixed(data, "s"))
        self.round, self.assigned = int(meta["round"]), int(meta["assigned"])
        self.hits = {k: int(v) for k, v in meta.get("hits", {}).items()}
        log.info("resumed after round %d (%d queries answered)", self.round, self.assigned)

    # -- one round -----------------------------------------------------------------------------
    def _round(self, round_: int, first: int, count: int, replaying: bool) -> None:
        """Plan (or read back) the round's theta, render, ask, update the elites and the
        replay; then the online surrogate updates unless `replaying` a finished round."""
        config = self.config
        started = clock()
        path = _block_path(self.run_dir, round_)
        images = None
        if path.is_file():  # written before a crash (or a finished round): these, never new
            with np.load(path) as stored:
                theta, target = stored["theta"].astype(np.float32), stored["target"]
                natural = (stored["natural"] if "natural" in stored.files
                           else np.full(len(theta), -1, np.int64))
        else:
            natural = self._natural_indices(round_, count)
            rendered = count - len(natural)
            # screened: the first round has no trained surrogate (and no elite) to screen with
            screen = config.screen if round_ > 1 else 1
            theta, target = plan_round(rendered * screen, self.elites, self.prior.dim, config,
                                       np.random.default_rng([config.seed, round_]))
            if screen > 1:
                theta, target, images = self._screen(theta, target, rendered, started)
                started = clock()
            if len(natural):  # the natural images go last, theta 0 and target -2
                theta = np.concatenate([theta, np.zeros((len(natural), theta.shape[1]),
                                                        np.float32)])
                target = np.concatenate([target, np.full(len(natural), -2, np.int64)])
                natural = np.concatenate([np.full(rendered, -1, np.int64), natural])
                if images is not None:  # the screened renders, the pool's images after them
                    images = np.concatenate([images, self.prior.backgrounds[natural[rendered:]]])
            else:
                natural = np.full(count, -1, np.int64)
            self._add("search", started)
            started = clock()
            save_npz(path, theta=theta.astype(np.float16), target=target,
                      first=np.int64(first), natural=natural)
            self._add("storage", started)
            started = clock()
        self._add("search", started)
        if images is None:
            started = clock()
            images = _round_images(self.prior, theta, natural)
            self._add("render", started)
        raw = self._ask(first, images)
        started = clock()
        probs = self._as_learnt(answers_as_probabilities(self.victim, raw))
        if not replaying:
            self.elites.update(theta[natural < 0], probs[natural < 0])
            self.hits["natural"] = self.hits.get("natural", 0) + int((natural >= 0).sum())
            mutated = target >= 0
            self.hits["mutations"] += int(mutated.sum())
            self.hits["on_target"] += int((probs[mutated].argmax(axis=1)
                                           == target[mutated]).sum())
        self.images.append(images)
        self.probs.append(probs)
        self._add("search", started)
        if not replaying:
            log.info("round %d: %d queries (%d mutations, %.0f%% answered their class); "
                     "%d of %d classes answered so far", round_, count, int(mutated.sum()),
                     100 * self.hits["on_target"] / max(1, self.hits["mutations"]),
                     int((self.elites.seen > 0).sum()), self.num_classes)
        if not replaying:
            self._online(round_, count)

    def _as_learnt(self, probs: np.ndarray) -> np.ndarray:
        """The answers at ``--granularity`` (`apply_granularity`; probs: as received), what
        every later step reads: the journal keeps them raw, a replay cuts them again."""
        if self.granularity.kind == "probs":
            return probs
        return apply_granularity(probs, self.granularity)

    def _natural_indices(self, round_: int, count: int) -> np.ndarray:
        """Indices into the natural pool (`ImagePrior.backgrounds`) of round `round_`'s
        natural queries (a share `natural_share` of its `count`): the next ones of a seeded
        permutation of the pool, from where the earlier rounds (of fixed sizes) stopped; the
        pool is cycled when the budget asks for more than it holds."""
        share, size = self.config.natural_share, self.config.round_size
        if share <= 0:
            return np.zeros(0, np.int64)
        pool = len(self.prior.backgrounds)
        order = np.random.default_rng([self.config.seed, 9]).permutation(pool)
        earlier = sum(int(round(share * min(size, self.config.budget - k * size)))
                      for k in range(round_ - 1))
        wanted = int(round(share * count))
        if earlier + wanted > pool and earlier <= pool:
            log.warning("natural pool of %d images exhausted: round %d sends some again", pool,
                        round_)
        return order[(earlier + np.arange(wanted)) % pool].astype(np.int64)

    def _screen(self, theta: np.ndarray, target: np.ndarray, count: int, started
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The `count` of the planned candidates (theta, target) that `select_screened` picks
        by the online surrogate's answers to their renders, with their images."""
        self._add("search", started)
        started = clock()
        candidates = self.prior.render(theta)
        self._add("render", started)
        started = clock()
        probs = self.trainer.predict_probs(candidates)
        self._add("surrogate", started)
        keep = select_screened(probs, count, self.config.screen_by, self.elites.seen)
        self.hits["screened"] = self.hits.get("screened", 0) + len(theta)
        return theta[keep], target[keep], candidates[keep]

    def _online(self, round_: int, count: int) -> None:
        config = self.config
        steps = math.ceil(config.online_passes * count / config.batch_size)
        if not steps:
            return
        started = clock()
        from attack.surrogate import sharpen

        total = sum(len(p) for p in self.probs)
        rng = np.random.default_rng([config.seed, round_, 3])
        picks = np.sort(rng.integers(0, total, steps * config.batch_size))
        images, targets = _gather(self.images, picks), _gather(self.probs, picks)
        x = shift_images(images, config.shift, rng, config.flip)
        order = rng.permutation(len(x))
        self.trainer.partial_fit(x[order],
                                 sharpen(targets[order], config.target_temperature))
        self._add("surrogate", started)

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate_point(self) -> dict:
        return self._measure("online surrogate")

    def _probe_images(self) -> np.ndarray:
        """What an ``auto`` input range is probed with (at most 63 queries, not journaled): 64
        of the thief's natural images when it has some (the range is told by how the victim
        answers natural pictures), else 64 of the prior's renders (then the input is uint8 or
        the range was given, and only the output kind is probed)."""
        if self.prior.backgrounds is not None:
            return probe_images(self.prior.backgrounds, self.config.seed)
        return prior_probes(self.prior, self.config.seed)

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> ExtractionResult:
        config = self.config
        probes = self._probe_images()
        self.retrained = None
        earlier = check_resume(config, budget_given=self.budget_given)
        self.run_dir, self.check = begin_run(self.victim, config, probes)
        if earlier:
            self._apply_resume_changes(earlier)
        self.trainer = surrogate_trainer(self.run_dir, self.kwargs, "final")
        self.elites = Elites(self.num_classes, config.elites, self.prior.dim)
        self.round, self.assigned, self.sent = 0, 0, 0
        self.hits = {"mutations": 0, "on_target": 0}
        self.images: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []
        self._check_pool()
        self._load_state()
        milestones = self._begin_curve()
        with self._journal() as journal:
            done, first = self.round, 0
            for r in range(1, done + 1):  # finished rounds: re-rendered, answers read back
                count = min(config.round_size, config.budget - first)
                self._round(r, first, count, replaying=True)
                first += count
            while self.assigned < config.budget:
                r = self.round + 1
                count = min(config.round_size, config.budget - self.assigned)
                self._round(r, self.assigned, count, replaying=False)
                self.assigned += count
                self.round = r
                if self.test is not None and config.online_passes > 0 \
                        and self._point_due(milestones):
                    self._add_point(self._evaluate_point())
                self._save_state()
            online_final = (self._evaluate_point() if self.test is not None
                            and config.online_passes > 0 and not self.trainer_fitted()
                            else None)
            answered = journal.num_answered
        if answered != config.budget:  # pragma: no cover - the rounds assign exactly the budget
            raise RuntimeError(f"the journal holds {answered} answers, not the budget "
                               f"{config.budget}")
        images, probs = np.concatenate(self.images), np.concatenate(self.probs)
        del self.images, self.probs
        points = [p["queries"] for p in self.curve]
        started = clock()
        self.trainer.fit(*_final_pass_data(images, probs, config))
        self._add("surrogate", started)

        def train(n: int, tag: str):
            if tag == "final":
                return self.trainer
            if config.online_passes > 0:
                if n not in points:
                    raise RuntimeError(f"no curve point at {n} queries")
                return self.trainer  # pragma: no cover - finish reads the point from curve.json
            refit = surrogate_trainer(self.run_dir, self.kwargs, tag)  # the final recipe
            refit.fit(*_final_pass_data(images[:n], probs[:n], config))
            return refit

        extra = self._extra(probs, online_final)
        log.info("time: %s", ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return finish(self.victim, self.info, config, self.run_dir, queries=config.budget,
                      train=train, test=self.test, extra=extra,
                      curve_budgets=points if config.online_passes > 0 else None)

    def _apply_resume_changes(self, earlier: dict) -> None:
        """A resumed run whose settings change (`check_resume`'s `earlier`, the run's values):
        config.json takes the new values. A final pass setting (`FINAL_PASS_FIELDS`): with
        ``--online-passes 0`` the curve's points (surrogates trained like the final pass) are
        dropped to be trained again. A larger budget: RUN_DIR/budget_grown.json says from
        which budget (before config.json changes, so a kill in between loses nothing), and the
        curve's point at the earlier budget (its final pass, with online updates) is dropped:
        the curve stays the online surrogate's, the final pass's at the budget. Every answer
        is kept; only the queries beyond the earlier budget are paid."""
        now = {k: getattr(self.config, k) for k in earlier}
        final = {k: v for k, v in earlier.items() if k in FINAL_PASS_FIELDS}
        if final:
            log.info("final pass retrained with %s (the run's was %s); no answered query is "
                     "sent again", {k: now[k] for k in final}, final)
            self.retrained = {"from": final, "to": {k: now[k] for k in final}}
        curve = self.run_dir / "curve.json"
        if "budget" in earlier:
            old, grown = int(earlier["budget"]), self.run_dir / GROWN_NAME
            first = json.loads(grown.read_text())["from"] if grown.is_file() else old
            write_json_atomic(grown, {"from": first, "to": self.config.budget})
            log.info("budget grown from %d to %d queries: every journaled answer kept, the "
                     "rounds continue", old, self.config.budget)
            if self.config.online_passes > 0 and curve.is_file():
                write_json_atomic(curve, [p for p in json.loads(curve.read_text())
                                          if p["queries"] < old])
        path = self.run_dir / "config.json"
        write_json_atomic(path, {**json.loads(path.read_text()), **now}, sort_keys=True)
        if final and self.config.online_passes <= 0:
            curve.unlink(missing_ok=True)

    def _budget_grown(self) -> dict | None:
        """{"from": the run's first budget, "to": this one} when a resume grew it."""
        path = self.run_dir / GROWN_NAME
        grown = json.loads(path.read_text()) if path.is_file() else None
        return grown if grown and grown["to"] == self.config.budget else None

    def trainer_fitted(self) -> bool:
        """Whether the final pass finished before on this budget's answers (a resumed run
        after it: the online surrogate of the budget is not measured again)."""
        path = self.run_dir / "checkpoints" / "final" / "fit_state.json"
        state = json.loads(path.read_text()) if path.is_file() else {}
        return bool(state.get("completed")) and state.get("examples") == self.config.budget

    def _extra(self, probs: np.ndarray, online_final: dict | None) -> dict:
        names = (self.test.class_names if self.test is not None
                 and len(self.test.class_names) == self.num_classes
                 else tuple(str(c) for c in range(self.num_classes)))
        top = np.bincount(probs.argmax(axis=1), minlength=self.num_classes)
        best = probs.max(axis=0)
        never = [names[c] for c in range(self.num_classes) if top[c] == 0]
        if never:
            log.warning("the victim never answered %d classes: %s", len(never),
                        ", ".join(never))
        budget = self.config.budget
        hits = self.hits
        return {
            "method": "procedural prior + per-class elite search",
            "prior_dim": self.prior.dim, "glyphs": self.prior.glyphs, "rounds": self.round,
            "natural_backgrounds": 0 if self.prior.backgrounds is None
            else len(self.prior.backgrounds),
            "answers_per_class": {names[c]: int(top[c]) for c in range(self.num_classes)},
            "classes_answered": int((top > 0).sum()),
            "classes_never_answered": never,
            "highest_probability_per_class": {names[c]: round(float(best[c]), 4)
                                              for c in range(self.num_classes)},
            "mutations": hits["mutations"],
            "mutations_answered_their_class": hits["on_target"],
            "screened_candidates": hits.get("screened", 0),
            "natural_queries": hits.get("natural", 0),
            "online_surrogate_at_budget": online_final,
            "sent_this_session": self.sent,
            "budget_grown": self._budget_grown(),
            "final_pass": {"epochs": self.config.epochs, "examples": budget,
                           "retrained_on_resume": self.retrained,
                           **({"balance": self.config.final_balance}
                              if self.config.final_balance > 0 else {})},
            "time_seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()},
            "seconds_per_1000_queries": {k: round(1000 * v / budget, 3)
                                         for k, v in self.seconds.items()},
            "granularity": str(self.granularity),
            "trained_on": _trained_on(self.granularity, self.config.target_temperature),
        }


def _trained_on(granularity, temperature: float) -> str:
    """What the report says the surrogate learnt from (a truncated run's label first, so no
    figure of it is read as a probability thief's)."""
    when = "online after each round and in a final pass over every answer"
    if granularity.kind == "top1":
        return f"top1 (one-hot): the victim's top-1 labels only, {when}"
    if granularity.kind == "topk":
        return (f"{granularity} (the victim's {granularity.k} highest probabilities, the rest "
                f"zeroed, renormalised; sharpened at T={temperature}), {when}")
    return f"the victim's answers as probabilities (sharpened at T={temperature}), {when}"


def _final_pass_data(images: np.ndarray, probs: np.ndarray, config: SyntheticConfig
                     ) -> tuple[np.ndarray, np.ndarray]:
    """What the final pass trains on: the answers as they are, or with ``--final-balance`` their
    class-balanced resampling (`balanced_rows`)."""
    if config.final_balance <= 0:
        return images, probs
    rows = balanced_rows(probs, config.final_balance, config.seed)
    return images[rows], probs[rows]


def _gather(blocks: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Rows `rows` (sorted) of the concatenation of `blocks`, without concatenating them."""
    ends = np.cumsum([len(b) for b in blocks])
    which = np.searchsorted(ends, rows, side="right")
    starts = ends - np.array([len(b) for b in blocks])
    out = np.empty((len(rows), *blocks[0].shape[1:]), blocks[0].dtype)
    for k in np.unique(which):
        mask = which == k
        out[mask] = blocks[k][rows[mask] - starts[k]]
    return out


# -- command line ----------------------------------------------------------------------------------
PROG = "python -m attack.synthetic"
EPILOG = """\
example (the GTSRB victim, 100,000 rendered queries, no natural image):
  python -m attack.synthetic --grpc localhost:8500 --model gtsrb_cnn --budget 100000 \\
      --test-set ../shared/data/gtsrb32_uint8_npy.tar.xz --out runs/synthetic_gtsrb
  # natural crops as one background kind: --transfer-set SPEC; a REST victim: --rest URL
  # interrupted? the same command with --resume continues without re-sending answered queries
  # more queries? the same command with --resume --budget N pays only the N - budget new ones
"""


def main(argv=None) -> int:
    """Run the attack with `argv` (default sys.argv[1:]); return the exit code (2: bad input)."""
    from attack.pipeline import attack_main

    def run(config: SyntheticConfig, on_progress=None) -> ExtractionResult:
        given = "budget" in typed_fields(SyntheticConfig, argv)  # in any spelling argparse takes
        return run_synthetic(config, on_progress=on_progress, budget_given=given)

    return attack_main(SyntheticConfig, run, argv, prog=PROG, epilog=EPILOG)


if __name__ == "__main__":
    sys.exit(main())
