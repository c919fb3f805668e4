"""Jacobian-based dataset augmentation: `python -m attack.jbda --grpc host:8500 ...` or `JBDA`.

Papernot et al., "Practical Black-Box Attacks against Machine Learning" (AsiaCCS 2017): the
attacker holds a small seed set of in-domain images, has the victim label them, trains a
substitute, and grows the set round by round with synthetic neighbours that move each image
along the sign of the substitute's Jacobian row for the victim's label:

    x' = clip(x + lambda_r * sign(dF_{O(x)}(x) / dx))

where F is the substitute's softmax and O(x) the victim's label for x. The step's sign flips
every `tau` rounds (lambda_r = lambda * (-1)^floor(r / tau), Papernot et al.'s periodic step
size). Juuti et al. (PRADA, EuroS&P 2019) bound the queries per round by augmenting a reservoir
sample of `per_round` images of the set (Vitter's algorithm R) instead of all of them, so the
set grows linearly rather than doubling. The victim labels each new round through the plain
Predict API; the substitute trains on its top-1 labels (Papernot et al.'s threat model).

Images stay uint8 on the wire (the victim's signature). The continuous step is quantised once:
lambda on the 0..1 pixel scale becomes the integer pixel step s = round(255 * lambda) (0.1 ->
26), and x' = clip(x + s * sign(g), 0, 255) is exact in uint8, with no per-pixel rounding; a
pixel whose gradient is exactly zero stays put. The gradient is taken with respect to the
image as it is sent (the victim's size), through the surrogate's own resize.

The queries are not a fixed transfer set, so the run directory also keeps them: each round's
images go to ``RUN_DIR/queries/round_NNN.npy`` (written atomically, before any of them is
sent), and the journal's query numbers are rows of those files in order. A resumed run reloads
them and sends only rows without an answer; a round not yet written is generated again from
the same surrogate (its checkpoint is reloaded, not retrained) and the same reservoir seed, so
it is the same round.

Python API: ``JBDA(seeds=150, rounds=4, per_round=400, budget=1750).extract(victim, seed_pool,
surrogate=..., test=...)``: the seeds are `seeds` images of `seed_pool` drawn with `seed`
(uniformly; ``--seed-set`` draws them class-stratified, through the data layer's ``limit``). Pass
exactly the seeds to use them all.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

from attack.base import Attack, as_transfer, dataset_source
from attack.config import JBDAConfig, keep_run_settings
from attack.pipeline import (
    ExtractionResult,
    attack_main,
    begin_run,
    finish,
    journal_answers,
    load_test_set,
    open_victim,
    probe_images,
    query_in_order,
    surrogate_trainer,
    trainer_kwargs,
    victim_signature,
)
from common.data import load_dataset
from common.errors import UsageError

__all__ = [
    "JBDA",
    "JBDAConfig",
    "jacobian_augment",
    "jacobian_signs",
    "load_rounds",
    "reservoir_sample",
    "run_jbda",
    "step_sign",
]

log = logging.getLogger(__name__)

QUERIES_DIR = "queries"


# -- the pure parts --------------------------------------------------------------------------------
def step_sign(round_index: int, tau: int) -> int:
    """+1 or -1: the sign of lambda at substitute round `round_index` (0-based),
    (-1)^floor(round_index / tau)."""
    return -1 if (int(round_index) // int(tau)) % 2 else 1


def reservoir_sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """`k` of the items 0..n-1, uniformly without replacement, by one pass over the stream
    (Vitter's algorithm R, as Juuti et al. bound JBDA's rounds); all n when n <= k. Sorted."""
    if n < 0 or k < 0:
        raise ValueError(f"n and k must be >= 0, got n={n}, k={k}")
    reservoir = list(range(min(n, k)))
    for i in range(k, n):
        j = int(rng.integers(0, i + 1))
        if j < k:
            reservoir[j] = i
    return np.sort(np.asarray(reservoir, dtype=np.int64))


def jacobian_signs(model, images: np.ndarray, classes: np.ndarray, *,
                   batch: int = 128) -> np.ndarray:
    """sign(dF_c(x)/dx) as int8 [N, H, W, 3], F the softmax of `model` and c = `classes`.

    `model` takes float pixels (0..255) at its own input size and returns logits; `images`
    (uint8 [N, H, W, 3]) are resized to it (bilinear, antialiased, not rounded, so the
    gradient flows back to the pixels as they are sent).
    """
    import tensorflow as tf

    images = np.asarray(images)
    classes = np.asarray(classes, dtype=np.int64)
    size = tuple(int(d) for d in model.input_shape[1:3])
    out = np.zeros(images.shape, np.int8)
    for start in range(0, len(images), batch):
        x = tf.convert_to_tensor(images[start:start + batch], tf.float32)
        c = tf.convert_to_tensor(classes[start:start + batch])
        with tf.GradientTape() as tape:
            tape.watch(x)
            inputs = x if tuple(x.shape[1:3]) == size else tf.image.resize(x, size,
                                                                           antialias=True)
            probs = tf.nn.softmax(model(inputs, training=False), axis=-1)
            chosen = tf.gather(probs, c, axis=1, batch_dims=1)
        grads = tape.gradient(chosen, x)  # rows are independent: d(sum)/dx_i = dF_c(x_i)/dx_i
        out[start:start + batch] = np.sign(grads.numpy()).astype(np.int8)
    return out


def jacobian_augment(model, images: np.ndarray, classes: np.ndarray,
                     pixel_step: int) -> np.ndarray:
    """x' = clip(x + pixel_step * sign(dF_c(x)/dx), 0, 255) as uint8 (a signed integer step)."""
    signs = jacobian_signs(model, images, classes).astype(np.int16)
    moved = np.asarray(images, np.int16) + int(pixel_step) * signs
    return np.clip(moved, 0, 255).astype(np.uint8)


# -- the query files -------------------------------------------------------------------------------
def _round_path(run_dir: Path, index: int) -> Path:
    return run_dir / QUERIES_DIR / f"round_{index:03d}.npy"


def load_rounds(run_dir: Path) -> list[np.ndarray]:
    """The query images of every round written so far, in order (round_000 = the seeds)."""
    rounds = []
    while _round_path(run_dir, len(rounds)).is_file():
        rounds.append(np.load(_round_path(run_dir, len(rounds))))
    return rounds


def _save_round(run_dir: Path, index: int, images: np.ndarray) -> None:
    """Write a round's images atomically (temp file, fsync, rename, fsync the folder)."""
    path = _round_path(run_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(images, np.uint8))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _labels_in_row_order(run_dir: Path, count: int) -> np.ndarray:
    """The victim's top-1 label of query rows 0..count-1 (every one must be answered)."""
    indices, responses = journal_answers(run_dir)
    labels = np.full(count, -1, np.int64)
    keep = indices < count
    labels[indices[keep]] = np.argmax(responses[keep], axis=1)
    if (labels < 0).any():  # pragma: no cover - query_in_order answered them all
        raise RuntimeError(f"{int((labels < 0).sum())} query rows have no answer")
    return labels


# -- the attack ------------------------------------------------------------------------------------
class JBDA(Attack):
    """Jacobian-based dataset augmentation (Papernot et al. 2017; Juuti et al.'s reservoir).

    Hyper-parameters (keyword-only; the ``python -m attack.jbda`` flags of the same names):
    ``seeds``, ``budget``, ``rounds``, ``per_round``, ``step`` (``--lambda``), ``tau``,
    ``noise``, ``seed``. `transfer` is the pool the seeds are drawn from.
    """

    config_class = JBDAConfig
    data_fields = ("seed_set", "seed_split")
    name = "jbda"

    def _prepare_data(self, transfer, test) -> dict:
        pool = as_transfer(transfer)
        seeds = self.params.get("seeds", JBDA.hyper_parameters()["seeds"])
        seed = self.params.get("seed", 0)
        chosen = np.sort(np.random.default_rng(seed).permutation(len(pool))[:seeds])
        return {"fields": {"seed_set": dataset_source(pool),
                           "test_set": dataset_source(test)},
                "seeds": pool.images[chosen], "test": test}

    def _run(self, victim, config: JBDAConfig, data: dict, on_progress=None
             ) -> ExtractionResult:
        """Seeds, then rounds of Jacobian-based augmentation labelled by the victim; train,
        evaluate, export, report. Resumable at every stage (a run started under earlier
        defaults resumes with its own: `keep_run_settings`)."""
        config = keep_run_settings(config)
        return _run_jbda(victim, config, data["seeds"], data["test"], on_progress)


def run_jbda(config: JBDAConfig, *, on_progress=None) -> ExtractionResult:
    """The CLI's attack: load the data of `config`, open its victim, run `JBDA`."""
    seeds = load_dataset(config.seed_set, config.seed_split, limit=config.seeds,
                         seed=config.seed).images
    test = load_test_set(config)
    attack = JBDA.from_config(config)
    with open_victim(config) as victim:
        return attack._run(victim, config, {"seeds": seeds, "test": test}, on_progress)


def _run_jbda(victim, config: JBDAConfig, seeds: np.ndarray, test, on_progress
              ) -> ExtractionResult:
    if len(seeds) < config.seeds:
        raise UsageError(f"Invalid value for argument `seeds`. Received: seeds={config.seeds}. "
                         f"Expected at most {len(seeds)} (images in --seed-set "
                         f"{config.seed_set}).")
    chunk = config.query_batch * config.in_flight * 16
    client = victim
    info, num_classes = victim_signature(client, config)
    kwargs = trainer_kwargs(config, num_classes)
    surrogate_trainer(None, kwargs, None)  # checks backbone, weights, size, arch_args
    run_dir, check = begin_run(client, config, probe_images(seeds, config.seed))
    rounds = load_rounds(run_dir)
    if not rounds:
        _save_round(run_dir, 0, seeds)
        rounds = [seeds]
    elif not np.array_equal(rounds[0], seeds):
        raise UsageError(f"{_round_path(run_dir, 0)} is not the seed set this config "
                         "draws: the run directory was changed by hand. Start a new --out.")

    def one_hot(labels: np.ndarray) -> np.ndarray:
        return np.eye(num_classes, dtype=np.float32)[labels]

    def train(n: int, tag: str):
        trainer = surrogate_trainer(run_dir, kwargs, tag)
        images = np.concatenate(rounds)[:n]
        trainer.fit(images, one_hot(_labels_in_row_order(run_dir, n)))
        return trainer

    queries = np.concatenate(rounds)
    sizes = [int(n) for n in np.cumsum([len(r) for r in rounds])]
    # rounds written before a restart are answered first (only their missing rows)
    stats = [query_in_order(client, run_dir, lambda rows: queries[rows],
                            np.arange(len(queries)), len(queries), chunk=chunk,
                            on_progress=on_progress, check=check)]
    while len(rounds) <= config.rounds and config.budget > len(queries):
        index, total = len(rounds), len(queries)
        # substitute round index-1: train on everything so far, then augment
        substitute = train(total, f"prefix_{total}")
        labels = _labels_in_row_order(run_dir, total)
        k = min(config.budget - total,
                total if config.per_round is None else config.per_round)
        chosen = reservoir_sample(total, k, np.random.default_rng([config.seed, index]))
        pixel_step = step_sign(index - 1, config.tau) * config.pixel_step()
        new = jacobian_augment(substitute.model, queries[chosen], labels[chosen],
                               pixel_step)
        log.info("JBDA round %d: %d new queries (step %+d pixels) from %d so far", index,
                 len(new), pixel_step, total)
        _save_round(run_dir, index, new)  # on disk before any of it is sent
        rounds.append(new)
        queries = np.concatenate(rounds)
        sizes.append(len(queries))
        stats.append(query_in_order(client, run_dir, lambda rows: queries[rows],
                                    np.arange(len(queries)), len(queries), chunk=chunk,
                                    on_progress=on_progress, check=check))

    total = sizes[-1]
    extra = {"query_stats": stats, "rounds": sizes,
             "trained_on": "top1 (one-hot): the victim's labels",
             "pixel_step": config.pixel_step(), "tau": config.tau,
             "per_round": config.per_round}
    return finish(client, info, config, run_dir, queries=total, train=train, test=test,
                  curve_budgets=sizes, extra=extra)


# -- command line ----------------------------------------------------------------------------------
PROG = "python -m attack.jbda"
EPILOG = """\
example (150 CIFAR-10 seeds, 4 rounds of at most 400 new queries each):
  python -m attack.jbda --grpc localhost:8500 --model cifar10_cnn \\
      --seed-set ../shared/data/cifar10_jpeg_q75.zip --seed-split train --seeds 150 \\
      --rounds 4 --per-round 400 --budget 1750 --lambda 0.1 --tau 3 \\
      --backbone cnn --weights none --input-size 32 --epochs 20 \\
      --test-set ../shared/data/cifar10_jpeg_q75.zip --out runs/jbda_cifar10
  # interrupted? the same command with --resume continues without re-sending answered queries
"""


def main(argv=None) -> int:
    """Run the attack with `argv` (default sys.argv[1:]); return the exit code (2: bad input)."""
    return attack_main(JBDAConfig, run_jbda, argv, prog=PROG, epilog=EPILOG)


if __name__ == "__main__":
    sys.exit(main())
