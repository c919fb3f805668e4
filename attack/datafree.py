"""Data-free extraction: `python -m attack.datafree --method dfme|maze|dfms-hl ...` or `DataFree`.

The thief owns no images of the victim's task. A generator (`attack.generator`) synthesises
the queries and is trained to find images on which the surrogate still disagrees with the
victim; the surrogate learns from the victim's answers on them. Three methods:

* ``dfme`` (Truong et al., "Data-Free Model Extraction", CVPR 2021): l1 loss between the
  surrogate's logits and the victim's (approximated from its probabilities as log p minus its
  mean); the victim's gradient, needed to train the generator, is estimated from its answers
  alone by forward differences along random directions (zeroth order, 1 direction per image);
* ``maze`` (Kariyappa et al., "MAZE: Data-Free Model Stealing Attack Using Zeroth-Order
  Gradient Estimation", CVPR 2021): the same loop with the KL divergence and 10 directions;
* ``dfms-hl``: the idea of Sanyal et al. ("Towards Data-Free Model Stealing in a Hard Label
  Setting", CVPR 2022) for victims that answer top-1 only: no victim gradient (hard labels have
  none), the generator is trained against the surrogate alone (towards images the surrogate is
  unsure of, plus DFMS-HL's class-diversity loss on the surrogate's batch-mean prediction), the
  surrogate on the victim's top-1 labels with cross-entropy. What is *not* here: DFMS-HL's GAN
  discriminator against a proxy data set (its generator is pre-trained and regularised as a
  GAN); ``--natural-share`` with ``--transfer-set`` is the nearest thing (natural images mixed
  into every surrogate batch).

Every method's generator also spreads its images over the classes (``--diversity``): DFMS-HL's
negative entropy of the batch-mean prediction, on the victim's answers for dfme and maze (its
zeroth-order gradient comes from the generator step's own queries, `victim_spread`) or on the
surrogate's (exact; dfms-hl, or ``--diversity-of surrogate``).

Experience replay (MAZE, any method): ``--replay-steps R`` adds R surrogate steps per iteration,
each on a batch drawn from the last ``--replay-size`` answered queries (`ReplayBuffer`), run
while the victim answers the iteration's new queries. The buffer survives ``--resume``: the
query blocks before a checkpoint move to ``RUN_DIR/replay/`` (deleted once every query of them
has left the buffer), and a resumed run rebuilds the buffer from them and the journal, checked
against the digest the checkpoint recorded.

Hybrid (any method): ``--natural-share S --transfer-set SPEC`` replaces a share S of the
images of every surrogate batch with natural transfer images (drawn without replacement in a
seeded order, as the victim sees them), queried and counted like the generator's. The
data-free hybrid, ``--natural-source prior`` (no ``--transfer-set``), fills that share with
renders of `attack.prior.ImagePrior` (procedural backgrounds only, theta drawn by a generator
seeded by the iteration): no real image is read or sent.

One image sent is one query, the perturbed copies of the gradient estimate included: a
generator step costs ``batch_size * (directions + 1)`` queries, a surrogate round
``surrogate_steps * batch_size``; the last iteration is cut so that the journal holds exactly
``--budget`` answers. Images go on the wire as uint8 pixels (the victims' contract; a float
victim gets them mapped to the range its probe decided), so the perturbation is quantised: the
estimate uses the differences actually sent, not the continuous directions, which keeps it
unbiased to first order (`zo_gradient`).

Resume: every block of query images is written to ``RUN_DIR/queries/`` (with the generator's
latent vectors) before any of it is sent, each answer is journaled as it arrives
(`attack.journal`), and the generator, the surrogate and both optimizers are checkpointed every
``--checkpoint-every`` iterations (``RUN_DIR/datafree_state.npz``, written atomically; query
blocks up to it are then deleted). A resumed run restores the checkpoint and replays the
iterations after it from the stored blocks and journaled answers, sending only the queries that
were never answered. The surrogate is trained online, so the curve of accuracy and fidelity
against queries is measured on the surrogate as it is at ``--curve-points`` budgets (halvings
of the budget), not retrained on journal prefixes.

Final pass (``--final-epochs N``; default 0, off: measured, it lost to the online surrogate on
the CIFAR-10 runs of docs/datafree.md): once the budget is spent, a surrogate is
trained from its initial weights on every answered query, the images read back from the stored
blocks (kept to the end for it: ``replay/``) and the answers from the journal, with the recipe
every attack's offline surrogate uses (`attack.surrogate.SurrogateTrainer.fit`: sharpened
probabilities, or the top-1 labels for dfms-hl; cosine schedule; crop and flip). It is the
surrogate reported at the budget (the curve's last point, the exported model); the online
surrogate's accuracy there stays in the report (``online_surrogate_at_budget``). The pass is
checkpointed each epoch (RUN_DIR/checkpoints/final: a kill resumes it) and ``--resume`` of a
finished run trains it alone, no query sent (``final_epochs`` may change on resume); a run
made with ``--final-epochs 0`` and no replay buffer holding its queries deleted their images,
and is refused a final pass in one line before anything is written.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attack.config import AttackConfig
from attack.generated import (
    GeneratedAttack,
    GeneratedRun,
    prefixed,
    read_state,
    run_generated,
)
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
from attack.prior import ImagePrior
from common.constraints import check_fields
from common.errors import invalid

__all__ = ["METHODS", "DataFree", "DataFreeConfig", "ReplayBuffer", "check_final_pass",
           "missing_queries", "perturb", "plan_iteration", "quantize", "query_blocks",
           "run_datafree", "stored_queries", "victim_spread", "zo_gradient"]

log = logging.getLogger(__name__)

METHODS = ("dfme", "maze", "dfms-hl")
NATURAL_SOURCES = ("images", "prior")
LOSS_OF = {"dfme": "l1", "maze": "kl", "dfms-hl": "ce"}
DEFAULT_DIRECTIONS = {"dfme": 1, "maze": 10, "dfms-hl": 0}
STATE_NAME = "datafree_state.npz"
PARTS = ("victim", "generator", "surrogate", "replay", "storage", "evaluation", "final_pass")
"""Where a run's time goes (wall and CPU seconds in the report's ``time_seconds``/``cpu_seconds``:
the victim part is request to answer, journal included, less what the replay steps overlapped
(they run while a surrogate round's queries are answered); the server's own CPU is not this
process's; ``final_pass``: the surrogate trained after the budget, reading its images included)."""
QUERIES_DIR = "queries"
REPLAY_DIR = "replay"  # query blocks before the checkpoint still in the replay buffer


# -- config ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataFreeConfig(AttackConfig):
    """Steal a TF Serving image classifier without natural images (DFME, MAZE, DFMS-HL's idea)."""

    method: str = field(default="dfme", metadata={
        "help": "dfme (l1 on logits, zeroth-order victim gradient), maze (KL, zeroth order) "
                "or dfms-hl (top-1 labels only, generator trained against the surrogate)",
        "choices": METHODS})
    budget: int = field(default=100_000, metadata={
        "help": "queries (images) to send, the gradient estimate's perturbed copies included",
        "min": 1})
    directions: int | None = field(default=None, metadata={
        "help": "random directions per generator image for the zeroth-order gradient (each "
                "one query); none: the method's (dfme 1, maze 10, dfms-hl 0)", "min": 1})
    epsilon: float = field(default=0.02, metadata={
        "help": "size of the gradient estimate's perturbation: RMS per pixel on the 0..1 "
                "scale (0.02 = about 5 grey levels; quantised to whole levels on the wire)",
        "gt": 0, "max": 1})
    surrogate_steps: int = field(default=5, metadata={
        "help": "surrogate steps per iteration (each batch-size new queries)", "min": 1})
    generator_steps: int = field(default=1, metadata={
        "help": "generator steps per iteration", "min": 1})
    generator_lr: float = field(default=1e-4, metadata={
        "help": "generator learning rate (Adam)", "gt": 0})
    latent_dim: int = field(default=256, metadata={
        "help": "size of the generator's latent vector", "min": 1})
    generator_width: int = field(default=64, metadata={
        "help": "channels of the generator's last convolution (twice as many before it)",
        "min": 1})
    diversity: float = field(default=1.0, metadata={
        "help": "weight of DFMS-HL's class-diversity loss in the generator's loss, every "
                "method (negative entropy of the surrogate's batch-mean prediction on the "
                "generator's images; no query); 0: off", "min": 0})
    diversity_of: str = field(default="auto", metadata={
        "help": "whose predictions the class diversity spreads: victim (dfme, maze: the "
                "zeroth-order estimate from the generator step's own queries, no extra query), "
                "surrogate (exact, through the surrogate) or auto (victim, but surrogate for "
                "dfms-hl, whose generator step sends nothing)",
        "choices": ("auto", "victim", "surrogate")})
    replay_steps: int = field(default=20, metadata={
        "help": "experience replay (MAZE): extra surrogate steps per iteration, each on a "
                "batch drawn at random from the answered queries kept (--replay-size), run "
                "while the iteration's new queries are being answered; 0: each answer trains "
                "the surrogate once", "min": 0})
    replay_size: int = field(default=100_000, metadata={
        "help": "answered queries kept for replay, the oldest dropped first (about 3 KB each "
                "at 32 px, in memory and in RUN_DIR/replay/)", "min": 1})
    image_size: int | None = field(default=None, metadata={
        "help": "side of the generated images; none: the victim's input size (needed for a "
                "victim without a fixed size)", "metavar": "PX", "min": 8})
    natural_share: float = field(default=0.0, metadata={
        "help": "hybrid: share of every surrogate batch taken from --natural-source instead "
                "of the generator (0: the generator's images only)", "min": 0, "max": 1})
    natural_source: str = field(default="images", metadata={
        "help": "where --natural-share's images come from: images (--transfer-set's natural "
                "images: not data-free) or prior (attack.prior's procedural renders, "
                "procedural backgrounds only: no real image at all)",
        "choices": NATURAL_SOURCES})
    transfer_set: str | None = field(default=None, metadata={
        "help": "natural images for --natural-share (any data-layer spec)", "metavar": "SPEC"})
    transfer_split: str = field(default="train", metadata={"help": "split of --transfer-set"})
    checkpoint_every: int = field(default=10, metadata={
        "help": "iterations between checkpoints of generator and surrogate (a resumed run "
                "replays at most this many from stored queries, paying none again)", "min": 1})
    keep_queries: bool = field(default=False, metadata={
        "help": "keep every query block in RUN_DIR/queries/ (uint8 images and latent vectors, "
                "about 3 KB per 32 px query) instead of deleting them at each checkpoint"})
    final_epochs: int = field(default=0, metadata={
        "help": "final pass: once the budget is spent, train a surrogate from its initial "
                "weights on every answered query for this many epochs (SurrogateTrainer.fit, "
                "the attack recipe; top-1 labels for dfms-hl) and report it as the surrogate "
                "at the budget, the online one beside it; the query blocks are then kept on "
                "disk until the end (about 3 KB per 32 px query); may change on --resume "
                "(a finished run trains the pass alone); 0 (default: 5 and 10 epochs lost "
                "to the online surrogate, docs/datafree.md): off", "min": 0})
    epochs: int = field(default=10, metadata={
        "cli": False, "help": "unused: the online surrogate's steps are per query; the final "
                              "pass trains --final-epochs"})
    out: str = field(default="runs/datafree", metadata={
        "help": "run directory (config, journal, query blocks, checkpoint, surrogate, report)",
        "metavar": "RUN_DIR"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self)
        if self.distribute != "none":
            raise invalid("distribute", self.distribute,
                          "none (the data-free loop trains generator and surrogate on one device)")
        if self.method == "dfms-hl" and self.directions is not None:
            raise invalid("directions", self.directions,
                          "none with --method dfms-hl (label-only: no gradient estimate)")
        if self.method == "dfms-hl" and self.diversity_of == "victim":
            raise invalid("diversity_of", self.diversity_of,
                          "surrogate or auto with --method dfms-hl (its generator step sends "
                          "no query)")
        if self.natural_source == "prior":
            if self.transfer_set:
                raise invalid("transfer_set", self.transfer_set,
                              "none with --natural-source prior (its images are rendered, "
                              "none is read)")
            if self.natural_share == 0:
                raise invalid("natural_share", self.natural_share,
                              "a share in (0, 1] to use --natural-source prior")
        elif self.natural_share > 0 and not self.transfer_set:
            raise invalid("transfer_set", self.transfer_set,
                          f"a dataset spec of natural images for --natural-share "
                          f"{self.natural_share}")
        if self.transfer_set and self.natural_share == 0:
            raise invalid("natural_share", self.natural_share,
                          f"a share in (0, 1] to use --transfer-set {self.transfer_set}")

    def n_directions(self) -> int:
        """Random directions per generator image (0 for the label-only method)."""
        return DEFAULT_DIRECTIONS[self.method] if self.directions is None else self.directions

    def diversity_source(self) -> str:
        """Whose batch-mean prediction the class diversity spreads: victim or surrogate."""
        if self.diversity_of != "auto":
            return self.diversity_of
        return "surrogate" if self.method == "dfms-hl" else "victim"

    def loss(self) -> str:
        """The surrogate's loss: l1 (dfme), kl (maze) or ce (dfms-hl)."""
        return LOSS_OF[self.method]


# -- the pure parts --------------------------------------------------------------------------------
def quantize(pixels: np.ndarray) -> np.ndarray:
    """Float pixels (0..255 scale) -> the uint8 image that goes on the wire (rounded, clipped)."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def perturb(base: np.ndarray, directions: int, epsilon: float, rng: np.random.Generator
            ) -> np.ndarray:
    """`directions` perturbed copies of each uint8 image of `base` [n, H, W, C]: base + a
    random direction (uniform on the sphere) with RMS `epsilon` * 255 grey levels per pixel,
    rounded and clipped; uint8 [n, directions, H, W, C]."""
    n, dims = len(base), int(np.prod(base.shape[1:]))
    u = rng.standard_normal((n, directions, dims)).astype(np.float32)
    u *= (epsilon * 255.0 * math.sqrt(dims)) / np.linalg.norm(u, axis=2, keepdims=True)
    moved = base.reshape(n, 1, dims).astype(np.float32) + u
    return quantize(moved).reshape(n, directions, *base.shape[1:])


def zo_gradient(losses: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Forward-difference estimate of d loss / d x from the losses at x and at x + delta_m.

    `losses` [n, M+1] (column 0 at the base point x_i, column m at x_i + delta_im), `deltas`
    [n, M, ...] the perturbations actually applied (after rounding and clipping). The estimate
    (dims / M) sum_m (L(x + d_m) - L(x)) d_m / |d_m|^2 is unbiased for a linear loss when the
    d_m are isotropic (E[d d^T / |d|^2] = I / dims); a zero difference (a perturbation rounded
    away) contributes nothing. Returns float32 [n, ...] shaped like one base point per row.
    """
    losses = np.asarray(losses, np.float64)
    n, m = deltas.shape[:2]
    if losses.shape != (n, m + 1):
        raise invalid("losses", f"shape {losses.shape}", f"[{n}, {m + 1}] (base + directions)")
    flat = deltas.reshape(n, m, -1).astype(np.float64)
    dims = flat.shape[2]
    squared = (flat ** 2).sum(axis=2)
    weight = np.where(squared > 0, (losses[:, 1:] - losses[:, :1]) / np.maximum(squared, 1e-12),
                      0.0)
    grad = (dims / m) * np.einsum("nm,nmd->nd", weight, flat)
    return grad.reshape(n, *deltas.shape[2:]).astype(np.float32)


def victim_spread(probs: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Per-query terms whose zeroth-order gradients sum to that of the entropy of the victim's
    batch-mean prediction (DFMS-HL's class diversity, spread on the victim's own answers).

    `probs` [n, M+1, K]: the victim's probabilities at each base image (column 0) and its
    perturbed copies. With m the mean over the n base images, d H(m) / d x_i equals
    (1/n) d/dx_i [-sum_k log(m_k) p_ik(x_i)] (the +1 of d(m log m) cancels: each p_i sums to
    1), so each query's term is -sum_k log(max(m_k, floor)) p_k, [n, M+1]; the floor keeps a
    class the victim never names from dominating.
    """
    probs = np.asarray(probs, np.float64)
    mean = probs[:, 0].mean(axis=0)
    return -(probs @ np.log(np.maximum(mean, floor)))


def plan_iteration(assigned: int, config: DataFreeConfig) -> tuple[int, int]:
    """(generator queries, surrogate queries) of the next iteration, given `assigned` query
    numbers used so far: the generator's block needs room for itself and a surrogate batch
    (else it is skipped), the surrogate's is cut to what is left of the budget."""
    left = config.budget - assigned
    per_step = config.batch_size * (config.n_directions() + 1)
    gen = config.generator_steps * per_step if config.n_directions() else 0
    if gen and left < gen + config.batch_size:
        gen = 0
    return gen, min(config.surrogate_steps * config.batch_size, left - gen)


class ReplayBuffer:
    """MAZE's experience replay: the last `capacity` answered queries (uint8 images and the
    victim's journal-form answers), query number `i` in slot ``i % capacity``.

    Queries are added in the order of their numbers, so the contents depend on how many were
    added, never on how they were grouped: a resumed run that adds the same queries again from
    its stored blocks and journal holds the same buffer (`digest` says so).
    """

    def __init__(self, capacity: int, image_shape: tuple[int, ...], num_classes: int) -> None:
        self.capacity = int(capacity)
        self.images = np.zeros((self.capacity, *image_shape), np.uint8)
        self.answers = np.zeros((self.capacity, num_classes), np.float32)
        self.count = 0  # queries 0..count-1 seen; the last len(self) of them are kept

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def add(self, first: int, images: np.ndarray, answers: np.ndarray) -> None:
        """Queries first..first+n-1; `first` continues the buffer (a gap leaves stale slots,
        which `digest` shows; a resumed run skips only queries already dropped)."""
        if first < self.count:
            raise invalid("first", first, f"the next query number, at least {self.count}")
        n = len(images)
        keep = slice(max(0, n - self.capacity), n)
        slots = np.arange(first, first + n)[keep] % self.capacity
        self.images[slots] = images[keep]
        self.answers[slots] = answers[keep]
        self.count = first + n

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` queries drawn uniformly with replacement: (images, answers)."""
        slots = rng.integers(0, len(self), n)
        return self.images[slots], self.answers[slots]

    def digest(self) -> str:
        """CRC-32 of the kept queries' images and answers in query order, and the count (an
        integrity check, not a secret: no copy of the buffer is made)."""
        start = self.count - len(self)
        head, tail = start % self.capacity, (start + len(self) - 1) % self.capacity + 1
        segments = ([] if not len(self) else [slice(head, tail)] if head < tail
                    else [slice(head, self.capacity), slice(0, tail)])
        images = answers = 0
        for part in segments:
            images = zlib.crc32(memoryview(self.images[part]).cast("B"), images)
            answers = zlib.crc32(memoryview(self.answers[part]).cast("B"), answers)
        return f"{self.count}:{images:08x}:{answers:08x}"


def _block_path(run_dir: Path, iteration: int, phase: str) -> Path:
    return run_dir / QUERIES_DIR / f"it{iteration:08d}_{phase}.npz"


# -- the attack object -----------------------------------------------------------------------------
class DataFree(GeneratedAttack):
    """Data-free extraction (DFME, MAZE, DFMS-HL's label-only idea), optionally hybrid.

    Hyper-parameters (keyword-only; the ``python -m attack.datafree`` flags of the same names):
    ``method``, ``budget``, ``directions``, ``epsilon``, ``surrogate_steps``,
    ``generator_steps``, ``generator_lr``, ``latent_dim``, ``generator_width``, ``diversity``,
    ``diversity_of``, ``replay_steps``, ``replay_size``, ``image_size``, ``natural_share``,
    ``natural_source``, ``final_epochs``, ``checkpoint_every``, ``curve_points``, ``seed``.
    `transfer` is None (data-free; with ``natural_source="prior"`` the share is rendered by
    `attack.prior.ImagePrior`) or the natural images of ``natural_share``.
    """

    config_class = DataFreeConfig
    name = "datafree"

    def _placeholders(self) -> dict:
        return {"transfer_set": "<given to extract>"} if self.params.get("natural_share") \
            and self.params.get("natural_source") != "prior" else {}

    def _run(self, victim, config: DataFreeConfig, data: dict, on_progress=None
             ) -> ExtractionResult:
        """Generator and surrogate trained against the victim's answers; evaluate, export,
        report. Resumable at every iteration."""
        return _DataFreeRun(victim, config, data["natural"], data["test"], on_progress).run()


def run_datafree(config: DataFreeConfig, *, on_progress=None) -> ExtractionResult:
    """The CLI's attack: load the data of `config`, open its victim, run `DataFree`."""
    check_final_pass(config)
    return run_generated(DataFree, config, on_progress=on_progress)


# -- the loop --------------------------------------------------------------------------------------
class _DataFreeRun(GeneratedRun):
    """One run: the models and the stored query blocks (the journal, the timers, the curve and
    the state file: `attack.generated.GeneratedRun`)."""

    parts, state_name = PARTS, STATE_NAME

    def __init__(self, victim, config: DataFreeConfig, natural, test, on_progress) -> None:
        super().__init__(victim, config, test, on_progress)
        surrogate_trainer(None, self.kwargs, None)  # checks backbone, weights, size, arch_args
        self.natural = None
        if natural is not None:
            self.natural = _at_size(natural.images, self.info, self.size)
        # the data-free hybrid: the share rendered by the procedural prior, procedural
        # backgrounds only (no natural crop), its seeded banks from the run's seed
        self.prior = (ImagePrior(self.size, None, seed=config.seed)
                      if config.natural_source == "prior" and config.natural_share else None)
        if natural is None:
            # measured: noise probes chose the wrong range for 28 of 32 float victims (CIFAR-10
            # and GTSRB CNNs taking [0, 1] or [-1, 1]); only natural images tell it reliably
            self._refuse_unprobed_range("synthetic images cannot tell it",
                                        "--natural-share with --transfer-set")
        _check_kind_fits(config.method, getattr(victim, "output_kind", None))

    # -- setup ---------------------------------------------------------------------------------
    def _probe_images(self) -> np.ndarray:
        from attack.evaluate import uniform_noise_images

        if self.natural is not None:
            return probe_images(self.natural, self.config.seed)
        return uniform_noise_images(64, (*self.size, 3), seed=self.config.seed + 11)

    def _build(self) -> None:
        import keras

        from attack import generator as gen

        config = self.config
        self.gen = gen
        self.trainer = surrogate_trainer(None, self.kwargs, None)
        self.surrogate = gen.SurrogateView(self.trainer.model)
        self.generator = gen.build_generator(config.latent_dim, self.size,
                                             config.generator_width, config.seed + 1)
        self.opt_g = keras.optimizers.Adam(config.generator_lr, beta_1=0.5)
        self.opt_s = keras.optimizers.Adam(config.learning_rate)
        self.opt_g.build(self.generator.trainable_variables)
        self.opt_s.build(self.trainer.model.trainable_variables)
        self.firsts: dict[str, int] = {}  # first query number of each block in replay/
        self.buffer = (ReplayBuffer(min(config.replay_size, config.budget), (*self.size, 3),
                                    self.num_classes) if config.replay_steps else None)
        self._compile_steps()

    def _compile_steps(self) -> None:
        """The graph functions of the loop (eager Keras calls cost several times more)."""
        import tensorflow as tf

        gen, config = self.gen, self.config
        loss_name, surrogate, generator = config.loss(), self.surrogate, self.generator
        s_vars = self.trainer.model.trainable_variables
        g_vars = generator.trainable_variables
        opt_s, opt_g = self.opt_s, self.opt_g

        @tf.function(reduce_retracing=True)
        def surrogate_step(x, targets):
            with tf.GradientTape() as tape:
                logits = surrogate.logits(x, training=True)
                loss = tf.reduce_mean(gen.loss_per_image(logits, targets, loss_name))
            opt_s.apply_gradients(zip(tape.gradient(loss, s_vars), s_vars))
            return loss

        @tf.function(reduce_retracing=True)
        def images(z):
            return gen.generator_pixels(generator, z, training=True)

        @tf.function(reduce_retracing=True)
        def losses(x, targets):
            return gen.loss_per_image(surrogate.logits(x), targets, loss_name)

        weight = float(config.diversity) if config.diversity_source() == "surrogate" else 0.0

        @tf.function(reduce_retracing=True)
        def ascend(z, grad):
            # the same z in training mode gives the same images (batch statistics): the batch
            # mean of <pixels, estimated d loss / d pixels> has the estimate, pushed back
            # through the generator, as its gradient; ascending it, the class diversity
            # descending (on the surrogate's predictions: exact, no query)
            with tf.GradientTape() as tape:
                pixels = gen.generator_pixels(generator, z, training=True)
                loss = -tf.reduce_mean(tf.reduce_sum(pixels * grad, axis=[1, 2, 3]))
                if weight:
                    loss += weight * gen.class_diversity(
                        tf.nn.softmax(surrogate.logits(pixels), axis=1))
            opt_g.apply_gradients(zip(tape.gradient(loss, g_vars), g_vars))

        @tf.function(reduce_retracing=True)
        def label_only_step(z):
            with tf.GradientTape() as tape:
                pixels = gen.generator_pixels(generator, z, training=True)
                probs = tf.nn.softmax(surrogate.logits(pixels), axis=1)
                confidence = tf.reduce_mean(tf.reduce_max(probs, axis=1))
                loss = confidence + weight * gen.class_diversity(probs)
            opt_g.apply_gradients(zip(tape.gradient(loss, g_vars), g_vars))
            return loss

        self._train_s, self._images, self._losses = surrogate_step, images, losses
        self._ascend, self._label_only = ascend, label_only_step

    # -- state ---------------------------------------------------------------------------------
    def _save_state(self) -> None:
        started = clock()
        arrays = {}
        for name, weights in (("g", self.generator.get_weights()),
                              ("s", self.trainer.model.get_weights()),
                              ("og", [v.numpy() for v in self.opt_g.variables]),
                              ("os", [v.numpy() for v in self.opt_s.variables])):
            for k, w in enumerate(weights):
                arrays[f"{name}_{k:04d}"] = np.asarray(w)
        meta = {"iteration": self.iteration, "assigned": self.assigned,
                "natural_used": self.natural_used, "losses": self.losses[-50:]}
        if self.buffer is not None:
            meta["replay"] = {"count": self.buffer.count, "digest": self.buffer.digest()}
        self._write_state(arrays, meta)
        if not self.config.keep_queries:  # blocks before the checkpoint: replay's or gone
            # (kept to the end for the final pass, which trains on every answered query)
            final = self.config.final_epochs > 0
            kept = self.run_dir / REPLAY_DIR
            for path in sorted((self.run_dir / QUERIES_DIR).glob("it*.npz")):
                if int(path.name[2:10]) > self.iteration:
                    continue
                if self.buffer is None and not final:
                    path.unlink()
                else:
                    kept.mkdir(exist_ok=True)
                    os.replace(path, kept / path.name)
            if self.buffer is not None and not final:
                blocks = _blocks(kept, self.firsts)
                for (_, path), (after, _) in zip(blocks, blocks[1:]):
                    if after <= self.buffer.count - len(self.buffer):
                        path.unlink()  # every query of it dropped from the buffer
                        del self.firsts[path.name]
        self._add("storage", started)

    def _rebuild_replay(self, journal, saved: dict | None) -> None:
        """The replay buffer as it was at the checkpoint: the stored blocks before it (in
        RUN_DIR/replay/, or queries/ with --keep-queries) and their journaled answers; checked
        against the digest the checkpoint recorded."""
        buffer, start = self.buffer, self.assigned - self.buffer.capacity
        answers = np.zeros((self.assigned, self.num_classes), np.float32)
        indices = journal.answered_indices()
        mask = indices < self.assigned
        answers[indices[mask]] = journal.responses()[mask]
        blocks = (_blocks(self.run_dir / REPLAY_DIR, self.firsts)
                  + _blocks(self.run_dir / QUERIES_DIR))
        for first, path in sorted(blocks):
            if int(path.name[2:10]) > self.iteration:
                continue
            with np.load(path) as stored:
                images = stored["images"]
            if first + len(images) > max(start, buffer.count):
                buffer.add(max(first, buffer.count), images[max(0, buffer.count - first):],
                           answers[max(first, buffer.count):first + len(images)])
        if buffer.count < self.assigned:  # a checkpoint written without replay
            buffer.add(self.assigned, buffer.images[:0], answers[:0])
        if saved is None or saved != {"count": buffer.count, "digest": buffer.digest()}:
            log.warning("the replay buffer could not be rebuilt as it was at the checkpoint "
                        "(%s): it replays what it holds, %d of the %d answered queries",
                        "the checkpoint recorded none" if saved is None else "blocks missing",
                        len(buffer), self.assigned)
            self.replay_rebuilt = False

    def _load_state(self) -> bool:
        state = self._read_state()
        if state is None:
            return False
        meta, data = state
        self.generator.set_weights(prefixed(data, "g"))
        self.trainer.model.set_weights(prefixed(data, "s"))
        for opt, saved in ((self.opt_g, prefixed(data, "og")), (self.opt_s, prefixed(data, "os"))):
            for variable, value in zip(opt.variables, saved, strict=True):
                variable.assign(value)
        self.iteration, self.assigned = int(meta["iteration"]), int(meta["assigned"])
        self.saved_replay = meta.get("replay")
        self.natural_used = int(meta["natural_used"])
        self.losses = list(meta.get("losses", []))
        log.info("resumed from the checkpoint after iteration %d (%d queries assigned)",
                 self.iteration, self.assigned)
        return True

    # -- one iteration -------------------------------------------------------------------------
    def _generator_step(self, it: int, step: int, first: int) -> None:
        """One DFME/MAZE generator step: images, their perturbed copies, the victim's answers,
        the zeroth-order gradient of the per-image loss, backpropagated through the generator."""
        config, b, m = self.config, self.config.batch_size, self.config.n_directions()
        started = clock()
        path = _block_path(self.run_dir, it, f"g{step}")
        if path.is_file():  # written before a crash: these images, never new ones
            with np.load(path) as stored:
                z, images = stored["z"], stored["images"]
        else:
            z = np.random.default_rng([config.seed, it, 0, step]).standard_normal(
                (b, config.latent_dim)).astype(np.float32)
            base = quantize(self._images(z).numpy())
            moved = perturb(base, m, config.epsilon,
                            np.random.default_rng([config.seed, it, 1, step]))
            images = np.concatenate([base[:, None], moved], axis=1).reshape(-1, *base.shape[1:])
            self._add("generator", started)
            started = clock()
            save_npz(path, z=z, images=images, first=np.int64(first))
            self._add("storage", started)
            started = clock()
        self._add("generator", started)
        raw = self._ask(first, images)
        started = clock()
        if self.buffer is not None:
            self.buffer.add(first, images, raw)
        probs = answers_as_probabilities(self.victim, raw)
        targets = self.gen.victim_targets(probs, config.loss())
        losses = self._losses(images.astype(np.float32), targets).numpy().reshape(b, m + 1)
        if config.diversity and config.diversity_source() == "victim":
            losses = losses + config.diversity * victim_spread(probs.reshape(b, m + 1, -1))
        grouped = images.reshape(b, m + 1, *images.shape[1:]).astype(np.int16)
        self._ascend(z, zo_gradient(losses, grouped[:, 1:] - grouped[:, :1]))
        self.losses.append(float(losses[:, 0].mean()))
        self._add("generator", started)

    def _label_only_generator_step(self, it: int, step: int) -> None:
        """DFMS-HL's idea without queries: the generator moves towards images the surrogate is
        unsure of, spread over the classes (class-diversity loss on the batch-mean prediction)."""
        config = self.config
        started = clock()
        z = np.random.default_rng([config.seed, it, 0, step]).standard_normal(
            (config.batch_size, config.latent_dim)).astype(np.float32)
        self.losses.append(float(self._label_only(z)))
        self._add("generator", started)

    def _surrogate_round(self, it: int, first: int, count: int) -> None:
        """`count` queries from the generator (and the natural share), answered, then the
        surrogate's steps over them, one batch each."""
        config = self.config
        started = clock()
        path = _block_path(self.run_dir, it, "s")
        n_natural = (int(round(config.natural_share * count))
                     if self.natural is not None or self.prior is not None else 0)
        if path.is_file():  # written before a crash: these images, never new ones
            with np.load(path) as stored:
                images = stored["images"]
        else:
            rng = np.random.default_rng([config.seed, it, 2])
            z = rng.standard_normal((count - n_natural, config.latent_dim)).astype(np.float32)
            made = quantize(self._images(z).numpy()) if len(z) \
                else np.zeros((0, *self.size, 3), np.uint8)
            images = np.empty((count, *self.size, 3), np.uint8)
            where = np.zeros(count, bool)
            where[rng.permutation(count)[:n_natural]] = True
            images[~where] = made
            if n_natural:
                images[where] = self._natural_images(it, n_natural)
            self._add("generator", started)
            t = clock()
            save_npz(path, images=images, first=np.int64(first))
            self._add("storage", t)
        self.natural_used += n_natural
        if self.buffer is None or not len(self.buffer):
            raw = self._ask(first, images)
        else:  # the replay steps run while the victim answers the new queries
            answering = self.pool.submit(self._ask, first, images, False)
            self._replay(it)
            started = clock()
            raw = answering.result()
            self._add("victim", started)
        started = clock()
        if self.buffer is not None:
            self.buffer.add(first, images, raw)
        targets = self._targets(raw)
        x = images.astype(np.float32)
        for start in range(0, count, config.batch_size):
            part = slice(start, start + config.batch_size)
            self._train_s(x[part], targets[part])
        self._add("surrogate", started)

    def _targets(self, raw: np.ndarray) -> np.ndarray:
        return self.gen.victim_targets(answers_as_probabilities(self.victim, raw),
                                       self.config.loss())

    def _replay(self, it: int) -> None:
        """MAZE's experience replay: `replay_steps` surrogate steps, each on a batch drawn from
        the answered queries kept (seeded by the iteration: a resumed run draws the same)."""
        config = self.config
        started = clock()
        rng = np.random.default_rng([config.seed, it, 3])
        for _ in range(config.replay_steps):
            images, raw = self.buffer.sample(rng, config.batch_size)
            self._train_s(images.astype(np.float32), self._targets(raw))
        self._add("replay", started)

    def _natural_images(self, it: int, n: int) -> np.ndarray:
        """The hybrid's `n` images of iteration `it`: the prior's renders of theta drawn from a
        generator seeded by the iteration (a resumed run renders the same), or the next `n` of
        the natural images in their seeded order."""
        if self.prior is not None:
            rng = np.random.default_rng([self.config.seed, it, 4])
            return self.prior.render(self.prior.sample(n, rng))
        return self.natural[self._natural_rows(n)]

    def _natural_rows(self, n: int) -> np.ndarray:
        order = np.random.default_rng([self.config.seed, 12]).permutation(len(self.natural))
        positions = np.arange(self.natural_used, self.natural_used + n)
        if positions[-1] >= len(order):
            log.warning("the natural images are all used: drawing them again (%d of %d)",
                        positions[-1] + 1, len(order))
        return order[positions % len(order)]

    # -- the final pass ------------------------------------------------------------------------
    def _final_pass(self, answers: np.ndarray) -> tuple[object, dict]:
        """A surrogate trained from its initial weights on every answered query (the images
        from the stored blocks, the answers from the journal: `answers`, journal form) with
        the attack recipe, checkpointed in RUN_DIR/checkpoints/final (a kill during it resumes
        from the last finished epoch, a finished one is loaded); (trainer, what the report
        says of it)."""
        config = self.config
        started = clock()
        images = stored_queries(self.run_dir, config.budget)
        probs = answers_as_probabilities(self.victim, answers)
        labels = config.loss() == "ce"  # label-only: the top-1 labels, as online
        targets = self.gen.victim_targets(probs, "ce") if labels else probs
        trainer = surrogate_trainer(self.run_dir, {**self.kwargs, "epochs": config.final_epochs},
                                    "final")
        log.info("final pass: %d epochs over the %d answered queries", config.final_epochs,
                 len(images))
        trainer.fit(images, targets)
        self._add("final_pass", started)
        return trainer, {"epochs": config.final_epochs, "examples": int(len(images)),
                         "targets": "top-1 labels" if labels else "probabilities",
                         "loaded_finished_fit": bool(trainer.restored_final),
                         "first_epoch_this_session": int(trainer.initial_epoch),
                         "seconds_this_session": round(clock()[0] - started[0], 3)}

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate_point(self) -> None:
        self._add_point(self._measure(parts={k: round(v, 3) for k, v in self.seconds.items()}))

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> ExtractionResult:
        from attack.pipeline import AnswerCheck

        config = self.config
        check_final_pass(config)
        self.run_dir, self.check = begin_run(self.victim, config, self._probe_images())
        _check_kind_fits(config.method, getattr(self.victim, "output_kind", None))
        self._build()
        self.iteration, self.assigned, self.natural_used, self.sent = 0, 0, 0, 0
        self.losses: list[float] = []
        self.saved_replay, self.replay_rebuilt = None, True
        resumed = self._load_state()
        milestones = self._begin_curve()
        with self._journal(since=self.assigned) as journal:
            if resumed and self.buffer is not None:
                started = clock()
                self._rebuild_replay(journal, self.saved_replay)
                self._add("storage", started)
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="datafree-victim")
            try:
                if not isinstance(self.check, AnswerCheck):  # pragma: no cover
                    raise TypeError("begin_run returned no AnswerCheck")
                while self.assigned < config.budget:
                    it = self.iteration + 1
                    gen, student = plan_iteration(self.assigned, config)
                    if config.n_directions():
                        per = gen // config.generator_steps if gen else 0
                        for step in range(config.generator_steps if gen else 0):
                            self._generator_step(it, step, self.assigned)
                            self.assigned += per
                    else:
                        for step in range(config.generator_steps):
                            self._label_only_generator_step(it, step)
                    self._surrogate_round(it, self.assigned, student)
                    self.assigned += student
                    self.iteration = it
                    if it % config.checkpoint_every == 0 or self.assigned >= config.budget:
                        self._save_state()
                    if self.test is not None and self._point_due(milestones):
                        self._evaluate_point()
            finally:  # an answer in flight is journaled before the run stops
                self.pool.shutdown()
            answered = journal.num_answered
            answers = np.zeros((config.budget, self.num_classes), np.float32)
            indices = journal.answered_indices()
            answers[indices[indices < config.budget]] = journal.responses()[
                indices < config.budget]
        if answered != config.budget:  # pragma: no cover - the plan assigns exactly the budget
            raise RuntimeError(f"the journal holds {answered} answers, not the budget "
                               f"{config.budget}")
        top1 = np.argmax(answers, axis=1)
        points = [p["queries"] for p in self.curve]
        online = (self._measure("online surrogate")
                  if self.test is not None and config.final_epochs else None)
        final, final_pass = self.trainer, None
        if config.final_epochs:
            final, final_pass = self._final_pass(answers)

        def train(n: int, tag: str):
            if tag != "final" and n not in points:
                raise RuntimeError(f"no curve point at {n} queries")
            return final if tag == "final" else self.trainer

        extra = {"method": config.method, "loss": config.loss(),
                 "directions": config.n_directions(), "iterations": self.iteration,
                 "natural_queries": self.natural_used,
                 "natural_source": (None if not self.natural_used else config.natural_source),
                 "diversity": config.diversity, "diversity_of": config.diversity_source(),
                 "answer_classes": (np.bincount(top1, minlength=self.num_classes)
                                    / max(1, len(top1))).round(4).tolist(),
                 "replay": None if self.buffer is None else {
                     "steps": config.replay_steps, "size": self.buffer.capacity,
                     "kept": len(self.buffer), "digest": self.buffer.digest(),
                     "rebuilt_on_resume": self.replay_rebuilt},
                 "surrogate_reported": "final pass" if final_pass else "online",
                 "online_surrogate_at_budget": online,
                 "final_pass": final_pass,
                 "sent_this_session": self.sent,
                 "time_seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                 "cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()},
                 "generator_loss_last": self.losses[-1] if self.losses else None,
                 "trained_on": {"l1": "the victim's probabilities as centred log-probabilities "
                                      "(DFME's logit approximation)",
                                "kl": "the victim's probabilities (KL)",
                                "ce": "the victim's top-1 labels"}[config.loss()]
                 + ("; the reported surrogate: a final pass over every answered query ("
                    + ("the top-1 labels" if config.loss() == "ce" else "the probabilities, "
                       f"sharpened at T={config.target_temperature}") + ")"
                    if final_pass else "")}
        log.info("time: %s", ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return finish(self.victim, self.info, config, self.run_dir, queries=config.budget,
                      train=train, test=self.test, curve_budgets=points, extra=extra)


def _blocks(folder: Path, known: dict[str, int] | None = None) -> list[tuple[int, Path]]:
    """(first query number, path) of the query blocks in `folder`, in query order; `known`
    caches the first numbers by file name (a block is never rewritten under its name)."""
    known = {} if known is None else known
    found = []
    for path in folder.glob("it*.npz"):
        if path.name not in known:
            with np.load(path) as stored:
                known[path.name] = int(stored["first"])
        found.append((known[path.name], path))
    return sorted(found)


def check_final_pass(config: DataFreeConfig) -> None:
    """On ``--resume`` with a final pass, `UsageError` (read only: before anything is written)
    when the images of queries before the run's checkpoint are gone: a run made with
    ``--final-epochs 0`` and no replay buffer holding them deleted its blocks at each
    checkpoint, and the final pass trains on every answered query."""
    if not (config.resume and config.final_epochs):
        return
    run_dir = Path(config.out)
    state = read_state(run_dir / STATE_NAME)
    if state is None:
        return
    meta = state[0]
    missing = missing_queries(query_blocks(run_dir, int(meta["iteration"])),
                              int(meta["assigned"]))
    if missing:
        a, b = missing[0]
        raise invalid("final_epochs", config.final_epochs,
                      f"0 for the run in {run_dir}: the final pass trains on every answered "
                      f"query, and the images of queries {a}-{b - 1} were deleted at its "
                      "checkpoints (it ran with --final-epochs 0 and no replay buffer holding "
                      "them)")


def query_blocks(run_dir: Path, iterations: int | None = None) -> list[tuple[int, int, Path]]:
    """(first query number, number of queries, path) of RUN_DIR's stored query blocks
    (``replay/`` and ``queries/``), in query order; with `iterations`, only the blocks of
    iterations 1..`iterations`. The count is read from the block's array header, not its data."""
    found = []
    for folder in (run_dir / REPLAY_DIR, run_dir / QUERIES_DIR):
        for first, path in _blocks(folder):
            if iterations is None or int(path.name[2:10]) <= iterations:
                with zipfile.ZipFile(path) as archive, archive.open("images.npy") as member:
                    version = np.lib.format.read_magic(member)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)(member)
                found.append((first, int(header[0][0]), path))
    return sorted(found)


def missing_queries(blocks: list[tuple[int, int, Path]], count: int) -> list[tuple[int, int]]:
    """The ranges [start, stop) of the query numbers 0..count-1 that no block of `blocks`
    (`query_blocks`) holds."""
    held = np.zeros(count, bool)
    for first, n, _ in blocks:
        held[first:first + n] = True
    edges = np.flatnonzero(np.diff(np.concatenate([[1], held.astype(np.int8), [1]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def stored_queries(run_dir: Path, count: int) -> np.ndarray:
    """The uint8 images of queries 0..count-1 in query order, from RUN_DIR's stored blocks
    (what the final pass trains on); `RuntimeError` naming the missing queries."""
    blocks = query_blocks(run_dir)
    missing = missing_queries(blocks, count)
    if missing:
        raise RuntimeError(f"{run_dir}: no stored images for queries " + ", ".join(
            f"{a}-{b - 1}" for a, b in missing[:5]) + (" ..." if len(missing) > 5 else ""))
    images = None
    for first, n, path in blocks:
        if first >= count:
            continue
        with np.load(path) as stored:
            block = stored["images"][:count - first]
        if images is None:
            images = np.empty((count, *block.shape[1:]), np.uint8)
        images[first:first + len(block)] = block
    return images


def _check_kind_fits(method: str, kind: str | None) -> None:
    """`UsageError` when `method` needs scores and the victim answers labels only (known from
    the signature or a flag before anything is written, else from the probe before a paid
    query): the zeroth-order estimate of a label sees no change under small perturbations."""
    if kind == "labels" and method != "dfms-hl":
        raise invalid("method", method, "dfms-hl: the victim answers top-1 labels only, and "
                      f"{method}'s victim gradient needs scores (probabilities, logits or "
                      "top-k)")


def _at_size(images: np.ndarray, info, size: tuple[int, int]) -> np.ndarray:
    """Natural images as the victim sees them, at the generated images' size."""
    if getattr(info, "image_size", None) is not None and tuple(info.image_size) == size:
        return as_seen_by_victim(images, info)
    if tuple(images.shape[1:3]) == size:
        return images
    import tensorflow as tf

    resized = tf.image.resize(images.astype(np.float32), size, antialias=True).numpy()
    return quantize(resized)


# -- command line ----------------------------------------------------------------------------------
PROG = "python -m attack.datafree"
EPILOG = """\
example (DFME against the quick start's CIFAR-10 victim, 200,000 queries, no natural images):
  python -m attack.datafree --method dfme --grpc localhost:8500 --model cifar10_cnn \\
      --budget 200000 --backbone cnn --weights none --input-size 32 \\
      --test-set ../shared/data/cifar10_jpeg_q75.zip --out runs/dfme_cifar10
  # label-only victim: --method dfms-hl; hybrid: --natural-share 0.5 --transfer-set SPEC
  # interrupted? the same command with --resume continues without re-sending answered queries
"""


def main(argv=None) -> int:
    """Run the attack with `argv` (default sys.argv[1:]); return the exit code (2: bad input)."""
    from attack.pipeline import attack_main

    return attack_main(DataFreeConfig, run_datafree, argv, prog=PROG, epilog=EPILOG)


if __name__ == "__main__":
    sys.exit(main())
