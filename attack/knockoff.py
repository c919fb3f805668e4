"""Knockoff Nets: `python -m attack.knockoff --grpc host:8500 ...` or `Knockoff(...).extract`.

Orekondy et al., "Knockoff Nets: Stealing Functionality of Black-Box Models" (CVPR 2019), as
reproduced by Atli et al. (2020): the attacker sends natural images (the transfer set) to the
victim's TF Serving Predict API, records the answers, and fine-tunes a pre-trained backbone on
them. Nothing is asked of the server beyond the plain API: the victim (`attack.victim`: gRPC,
REST with ``--rest``) reads the signature with GetModelMetadata, adapts the images to it,
decides an unknown input range and output kind from a few probe queries (``victim.json``), and
the first paid batch is checked before the rest of the budget is spent.

The Python API is the `Knockoff` object (`attack.base.Attack`)::

    Knockoff(budget=2000, strategy="random").extract(KerasVictim(model), transfer,
                                                     surrogate=Surrogate(...), test=test)

`SemiSupervisedKnockoff` is Knockoff with Jagielski et al.'s semi-supervised training on the
transfer images never queried. The CLI is a thin layer: config -> `open_victim` -> `Knockoff`.

A run is a directory (ARCHITECTURE.md, contract 4):

    RUN_DIR/config.json      the KnockoffConfig it ran with (--resume refuses another)
    RUN_DIR/journal.bin      every answered query (raw answers), appended and fsynced
    RUN_DIR/victim.json      how the victim is queried: input range, output and the evidence
    RUN_DIR/strategy.json    the sampling strategy's state (adaptive: the bandit's preferences)
    RUN_DIR/policy.jsonl     adaptive: rewards and policy summary, one line per step
    RUN_DIR/checkpoints/     surrogate checkpoints (training resumes from the last epoch)
    RUN_DIR/eval/            the evaluator's cached victim answers (test, held-out, noise)
    RUN_DIR/surrogate/       the stolen model, exported in the victim's layout (servable)
    RUN_DIR/report.{json,md} + PNG plots

Ctrl-C, a crash or `kill -9` loses no answered query; `--resume` sends only what is missing.
Queries that were in flight at a crash (sent, never answered) are sent again and counted in the
report as possibly paid twice: no client can know whether the server charged them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from attack.base import Attack, as_transfer, dataset_source
from attack.config import KnockoffConfig, keep_run_settings
from attack.hierarchy import hierarchy_for
from attack.journal import QueryJournal, release_unjournaled
from attack.papers import ATLI_ANCHORS, ATLI_SOURCE
from attack.pipeline import (
    AnswerCheck,
    ExtractionResult,
    answers_as_probabilities,
    as_seen_by_victim,
    attack_main,
    begin_run,
    finish,
    journal_answers,
    load_test_set,
    open_victim,
    prepare_run_dir,
    probe_images,
    send_journaled,
    surrogate_trainer,
    trainer_kwargs,
    victim_signature,
)
from attack.responses import (
    apply_granularity,
    check_granularity,
    detect_granularity,
    parse_granularity,
)
from attack.strategies import ACTIVE, ActiveStrategy, AdaptiveStrategy, RandomStrategy
from common.data import load_dataset
from common.errors import invalid
from common.fileio import write_json_atomic

__all__ = ["Knockoff", "KnockoffConfig", "KnockoffResult", "SemiSupervisedKnockoff", "extract",
           "prepare_run_dir", "run_knockoff"]

log = logging.getLogger(__name__)

KnockoffResult = ExtractionResult  # what `run_knockoff` returns (the shared result type)


# -- querying --------------------------------------------------------------------------------------
def _targets(responses: np.ndarray, granularity: str) -> np.ndarray:
    return apply_granularity(responses, parse_granularity(granularity))


def extract(client, transfer, config: KnockoffConfig, run_dir: Path, *,
            surrogate=None, on_progress: Callable[[int, int], None] | None = None,
            check: AnswerCheck | None = None) -> dict:
    """Spend the query budget on `transfer` through `client` (a `Victim`, or a plain
    `ServingClient`), journaling every raw answer.

    Returns a dict of query statistics. With the adaptive strategy, `surrogate` (a
    `SurrogateTrainer`) is updated online after each batch and feeds the loss reward; on resume
    it is first replayed over the answers already in the journal. With uncertainty, kcenter
    or dfal, `surrogate` is retrained from scratch on every answer before each round's plan.
    `on_progress(done, budget)` is called from the client's worker threads as answers are
    journaled. `check` (default: `AnswerCheck.for_run`) checks the first batch's answers
    before anything else is sent.
    """
    if check is None:
        check = AnswerCheck.for_run(client, run_dir, config.query_batch)
    journal = QueryJournal.open(run_dir)
    try:
        answered = journal.answered_indices()
        pending = journal.pending()
        state_path = run_dir / "strategy.json"
        if config.strategy == "adaptive":
            strategy = AdaptiveStrategy(transfer.labels, hierarchy_for(transfer),
                                        reward=config.reward, seed=config.seed, exclude=answered)
        elif config.strategy in ACTIVE:
            strategy = ActiveStrategy(config.strategy, len(transfer), seed=config.seed,
                                      exclude=answered, candidates=config.active_pool or None)
        else:
            strategy = RandomStrategy(len(transfer), seed=config.seed, exclude=answered)
        if state_path.is_file():  # the saved state may lag the journal by one batch
            # images a cut-short journal lost go back to the pool (asked again)
            state, _ = release_unjournaled(json.loads(state_path.read_text()), journal)
            strategy.load_state(state)
        strategy.exclude(answered)
        strategy.exclude(pending)  # re-sent below, never selected again as new queries
        if config.strategy == "adaptive" and surrogate is not None and len(answered):
            # resumed adaptive run: bring the online surrogate back to what it had seen
            responses = answers_as_probabilities(client, journal.responses())
            for start in range(0, len(answered), config.query_batch):
                rows = slice(start, start + config.query_batch)
                surrogate.partial_fit(transfer.images[answered[rows]],
                                      _targets(responses[rows], config.granularity))
        resent = 0
        if len(pending):  # in flight at a crash: answer unknown, send again (maybe paid twice)
            resent = len(pending)
            log.warning("%d queries were in flight when the run stopped; sending them again",
                        resent)
        # Random sampling sends big chunks (answers are journaled batch by batch as they
        # arrive, so the pipeline of requests in flight rarely drains); adaptive sampling must
        # see each answer before choosing the next images.
        lock = threading.Lock()
        chunk = config.query_batch * config.in_flight
        if config.strategy == "random" or config.strategy in ACTIVE:
            chunk *= 16
        started = time.perf_counter()
        sent_now = 0
        policy_log = (run_dir / "policy.jsonl").open("a") if config.strategy == "adaptive" else None
        try:
            while journal.num_answered < config.budget:
                want = check.limit(min(chunk, config.budget - journal.num_answered))
                if len(pending):
                    indices, pending = pending[:want], pending[want:]
                elif config.strategy in ACTIVE:
                    if not strategy.queued:
                        _plan_round(strategy, client, journal, transfer, config, surrogate)
                    indices = strategy.select(min(want, strategy.queued))
                else:
                    indices = strategy.select(want)
                raw = send_journaled(client, journal, transfer.images[indices], indices,
                                     lock=lock, budget=config.budget, on_progress=on_progress)
                sent_now += len(indices)
                check(raw, journaled=journal.num_answered)  # the first batch, before the rest
                probs = answers_as_probabilities(client, raw)
                if config.strategy == "adaptive":
                    images = transfer.images[indices]
                    info = strategy.update(indices, probs, surrogate.predict_log_probs(images))
                    surrogate.partial_fit(images, _targets(probs, config.granularity))
                    policy_log.write(json.dumps({"answered": journal.num_answered, **info},
                                                default=float) + "\n")
                    policy_log.flush()
                write_json_atomic(state_path, strategy.state())
        finally:
            if policy_log is not None:
                policy_log.close()
        seconds = time.perf_counter() - started
        return {"answered": journal.num_answered, "sent_this_session": sent_now,
                "resent_after_crash": resent, "seconds": seconds,
                "queries_per_second": sent_now / seconds if seconds > 0 else None}
    finally:
        journal.close()


def _plan_round(strategy, client, journal, transfer, config: KnockoffConfig, surrogate) -> None:
    """ActiveThief's round: retrain `surrogate` from scratch on every answer so far (none before
    the random seed set), then let `strategy` plan the images up to the next round's end (the
    budget split into ``active_rounds + 1`` equal parts)."""
    answered = journal.num_answered
    parts = config.active_rounds + 1
    end = next(e for e in (config.budget * (r + 1) // parts for r in range(parts)) if e > answered)
    if answered and surrogate is not None:
        indices = journal.answered_indices()
        probs = answers_as_probabilities(client, journal.responses())
        surrogate.fit(transfer.images[indices], _targets(probs, config.granularity))
    strategy.plan(end - answered, surrogate, transfer.images)


# -- the whole attack ------------------------------------------------------------------------------
def _unlabelled_indices(config: KnockoffConfig, pool_size: int,
                        answered: np.ndarray) -> np.ndarray:
    """The `config.unlabelled` pool images never queried, in a seeded order."""
    rng = np.random.default_rng([config.seed, 7])
    left = np.setdiff1d(np.arange(pool_size), answered)
    return np.sort(rng.permutation(left)[:config.unlabelled])


class Knockoff(Attack):
    """Knockoff Nets (Orekondy et al. 2019): query natural images, learn from the answers.

    Hyper-parameters (keyword-only; the ``python -m attack.knockoff`` flags of the same names):
    ``budget``, ``strategy`` (random | adaptive | uncertainty | kcenter | dfal: ActiveThief's
    rounds, ``active_rounds``/``active_pool``), ``reward``, ``granularity`` (probs | top1 |
    topk:K), ``heldout``, ``semi_supervised``/``unlabelled``/``confidence``/
    ``consistency_weight``, ``noise``, ``curve_points``, ``seed``. The adaptive strategy needs a
    `transfer` dataset with real class labels (its hierarchy).
    """

    config_class = KnockoffConfig
    data_fields = ("transfer_set", "transfer_split", "exclude_classes")
    name = "knockoff"

    def _prepare_data(self, transfer, test) -> dict:
        transfer = as_transfer(transfer)
        return {"fields": {"transfer_set": dataset_source(transfer),
                           "test_set": dataset_source(test)},
                "transfer": transfer, "test": test}

    def _run(self, victim, config: KnockoffConfig, data: dict, on_progress=None
             ) -> ExtractionResult:
        """The whole attack: query, train, evaluate, export, report. Resumable at every
        stage (a run started under earlier defaults resumes with its own: `keep_run_settings`)."""
        config = keep_run_settings(config)
        transfer, test = data["transfer"], data["test"]
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(transfer))
        heldout_idx = np.sort(order[:config.heldout])
        pool_idx = np.sort(order[config.heldout:])
        if config.budget > len(pool_idx):
            raise invalid("budget", config.budget,
                          f"at most {len(pool_idx)} (transfer images not held out for "
                          "evaluation)")
        if config.semi_supervised and config.budget + config.unlabelled > len(pool_idx):
            raise invalid("unlabelled", config.unlabelled,
                          f"at most {len(pool_idx) - config.budget} (transfer images neither "
                          f"held out nor queried)")
        info, num_classes = victim_signature(victim, config)
        check_granularity(config.granularity, num_classes)
        # queried, learned from and evaluated as the victim sees them (see as_seen_by_victim)
        transfer = dataclasses.replace(transfer,
                                       images=as_seen_by_victim(transfer.images, info))
        pool = transfer.subset(pool_idx)
        kwargs = trainer_kwargs(config, num_classes)
        # Building the surrogate checks backbone, weights file, size and arch_args; the
        # adaptive strategy then uses it as its online surrogate.
        online = surrogate_trainer(None, kwargs, None)
        run_dir, check = begin_run(victim, config, probe_images(pool.images, config.seed))
        stats = extract(victim, pool, config, run_dir,
                        surrogate=online if config.strategy != "random" else None,
                        on_progress=on_progress, check=check)
        del online

        indices, responses = journal_answers(run_dir)
        indices, responses = indices[:config.budget], responses[:config.budget]
        probs = answers_as_probabilities(victim, responses)
        received = detect_granularity(probs)
        targets = _targets(probs, config.granularity)
        images = pool.images[indices]
        unlabelled = None
        if config.semi_supervised:
            unlabelled = pool.images[_unlabelled_indices(config, len(pool), indices)]

        def train(n: int, tag: str):
            trainer = surrogate_trainer(run_dir, kwargs, tag)
            if unlabelled is None:
                trainer.fit(images[:n], targets[:n])
            else:
                from attack.semisupervised import fit_semi_supervised

                fit_semi_supervised(trainer, images[:n], targets[:n], unlabelled,
                                    confidence=config.confidence,
                                    weight=config.consistency_weight)
            return trainer

        extra = {"query_stats": stats, "received_granularity": received,
                 "anchors": ATLI_ANCHORS, "anchors_source": ATLI_SOURCE}
        if unlabelled is not None:
            extra["semi_supervised"] = {"unlabelled": len(unlabelled),
                                        "confidence": config.confidence,
                                        "consistency_weight": config.consistency_weight}
        return finish(victim, info, config, run_dir, queries=len(indices), train=train,
                      test=test, heldout_images=transfer.images[heldout_idx], extra=extra)


class SemiSupervisedKnockoff(Knockoff):
    """Knockoff with Jagielski et al. (2020)'s semi-supervised training: also learns from
    `unlabelled` transfer images never queried (FixMatch-style pseudo-labels,
    `attack.semisupervised`). ``SemiSupervisedKnockoff(unlabelled=2000)`` is
    ``Knockoff(semi_supervised=True, unlabelled=2000)``."""

    name = "semisupervised-knockoff"

    def __init__(self, **hyper) -> None:
        if hyper.get("semi_supervised") is False:
            raise invalid("semi_supervised", False, "True (or Knockoff for the plain attack)")
        super().__init__(**{**hyper, "semi_supervised": True})


def run_knockoff(config: KnockoffConfig, *, on_progress=None) -> KnockoffResult:
    """The CLI's attack: load the data of `config`, open its victim, run `Knockoff`."""
    transfer = load_dataset(config.transfer_set, config.transfer_split,
                            exclude_classes=config.exclude_classes)
    test = load_test_set(config)
    attack = Knockoff.from_config(config)
    with open_victim(config) as victim:
        return attack._run(victim, config, {"transfer": transfer, "test": test}, on_progress)


# -- command line ----------------------------------------------------------------------------------
PROG = "python -m attack.knockoff"
EPILOG = """\
example (steal the CIFAR-10 victim served by the embedded server or TF Serving):
  python -m attack.knockoff --grpc localhost:8500 --model cifar10_cnn \\
      --transfer-set ../shared/data/tinyimagenet200_val10k_train50pc.zip \\
      --transfer-split train+val \\
      --exclude-classes ../shared/data/tinyimagenet_cifar10_overlap_wnids.txt \\
      --budget 17600 --heldout 0 --strategy random \\
      --backbone mobilenet --arch-args alpha=0.25 --input-size 96 \\
      --weights ../shared/data/mobilenet_2_5_224_tf_no_top.h5 \\
      --test-set ../shared/data/cifar10_jpeg_q75.zip --out runs/knockoff_cifar10
  # interrupted? the same command with --resume continues without re-sending answered queries
  # the surrogate's defaults: --ema 0.99 --learning-rate 0.002 --augment none (docs/attacks.md);
  # --ema 0 --learning-rate 0.001 --augment crop+flip trains as before they changed
"""


def main(argv=None) -> int:
    """Run the attack with `argv` (default sys.argv[1:]); return the exit code (2: bad input)."""
    return attack_main(KnockoffConfig, run_knockoff, argv, prog=PROG, epilog=EPILOG)


if __name__ == "__main__":
    sys.exit(main())
