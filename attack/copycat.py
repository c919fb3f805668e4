"""Copycat CNN: `python -m attack.copycat --grpc host:8500 ...` or `Copycat(...).extract`.

da Silva et al., "Copycat CNN: Stealing Knowledge by Persuading Confession with Random
Non-Labeled Data" (IJCNN 2018): the attacker labels natural images from *outside* the victim's
problem domain (the "non-problem-domain" or fake dataset) with the victim's top-1 answers only
and trains a copy on those hard labels; an optional second phase fine-tunes the copy on a few
problem-domain images, also labelled by the victim. Whatever the victim returns (probabilities,
top-k, a label), Copycat keeps only the arg-max: its targets are one-hot.

The run directory, journal, resume, surrogate, evaluation and report are the shared base's
(`attack.base`, `attack.pipeline`, as `attack.knockoff`). Python API:
``Copycat(budget=8000, pd_budget=500).extract(victim, fake_images, problem_domain=pd_images,
surrogate=..., test=...)``. Query numbers in the journal: 0..P-1 are the
non-problem-domain pool (transfer images not held out), P.. the problem-domain set; phase 2
starts when phase 1's budget is answered. The curve trains on phase-1 prefixes and ends with
the final surrogate after phase 2, so the report shows what the problem-domain images added.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from attack.base import Attack, as_transfer, dataset_source
from attack.config import CopycatConfig, keep_run_settings
from attack.evaluate import default_budgets
from attack.pipeline import (
    ExtractionResult,
    answers_as_probabilities,
    as_seen_by_victim,
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
from attack.responses import Granularity, apply_granularity, detect_granularity
from common.data import load_dataset
from common.errors import invalid

__all__ = ["Copycat", "CopycatConfig", "one_hot_top1", "run_copycat"]

log = logging.getLogger(__name__)

FINE_TUNE_LR_FACTOR = 0.1  # phase 2 fine-tunes at a tenth of the training learning rate


def one_hot_top1(responses: np.ndarray) -> np.ndarray:
    """Copycat's targets: one-hot rows at the arg-max of whatever the victim returned."""
    return apply_granularity(responses, Granularity("top1"))


class Copycat(Attack):
    """Copycat CNN (da Silva et al. 2018): top-1 labels of non-problem-domain images, then an
    optional fine-tuning phase on a few problem-domain images (``extract(...,
    problem_domain=images)`` with ``pd_budget`` > 0).

    Hyper-parameters (keyword-only; the ``python -m attack.copycat`` flags of the same names):
    ``budget``, ``heldout``, ``pd_budget``, ``pd_epochs``, ``noise``, ``curve_points``,
    ``seed``.
    """

    config_class = CopycatConfig
    data_fields = ("transfer_set", "transfer_split", "exclude_classes", "pd_set", "pd_split")
    name = "copycat"

    def _placeholders(self) -> dict:
        return {**super()._placeholders(),
                **({"pd_set": "<given to extract>"} if self.params.get("pd_budget") else {})}

    def _prepare_data(self, transfer, test, *, problem_domain=None) -> dict:
        transfer = as_transfer(transfer)
        pd = None if problem_domain is None else as_transfer(problem_domain, "problem_domain")
        if self.params.get("pd_budget") and pd is None:
            raise invalid("problem_domain", None,
                          f"problem-domain images for pd_budget={self.params['pd_budget']}")
        return {"fields": {"transfer_set": dataset_source(transfer),
                           "pd_set": dataset_source(pd),
                           "test_set": dataset_source(test)},
                "transfer": transfer, "test": test,
                "problem_domain": None if pd is None else pd.images}

    def _run(self, victim, config: CopycatConfig, data: dict, on_progress=None
             ) -> ExtractionResult:
        """Phase 1 (non-problem-domain images), optional phase 2 (problem-domain images),
        train, evaluate, export, report. Resumable at every stage (a run started under
        earlier defaults resumes with its own: `keep_run_settings`)."""
        config = keep_run_settings(config)
        return _run_copycat(victim, config, data["transfer"], data["test"],
                            data["problem_domain"] if config.pd_budget else None, on_progress)


def run_copycat(config: CopycatConfig, *, on_progress=None) -> ExtractionResult:
    """The CLI's attack: load the data of `config`, open its victim, run `Copycat`."""
    transfer = load_dataset(config.transfer_set, config.transfer_split,
                            exclude_classes=config.exclude_classes)
    test = load_test_set(config)
    pd_images = None
    if config.pd_budget:
        pd_images = load_dataset(config.pd_set, config.pd_split).images
    attack = Copycat.from_config(config)
    with open_victim(config) as victim:
        return attack._run(victim, config, {"transfer": transfer, "test": test,
                                            "problem_domain": pd_images}, on_progress)


def _run_copycat(victim, config: CopycatConfig, transfer, test, pd_images,
                 on_progress) -> ExtractionResult:
    order = np.random.default_rng(config.seed).permutation(len(transfer))
    heldout_idx = np.sort(order[:config.heldout])
    pool = transfer.images[np.sort(order[config.heldout:])]
    if config.budget > len(pool):
        raise invalid("budget", config.budget,
                      f"at most {len(pool)} (transfer images not held out for evaluation)")
    if pd_images is not None and config.pd_budget > len(pd_images):
        raise invalid("pd_budget", config.pd_budget,
                      f"at most {len(pd_images)} (images in --pd-set {config.pd_set})")
    offset = len(pool)
    total = config.budget + config.pd_budget

    def images_of(indices: np.ndarray) -> np.ndarray:
        if (indices < offset).all():
            return pool[indices]
        if (indices >= offset).all():
            return pd_images[indices - offset]
        raise AssertionError("a query batch mixes the two phases")  # query_in_order never does

    client = victim
    info, num_classes = victim_signature(client, config)
    # queried, learned from and evaluated as the victim sees them (see as_seen_by_victim)
    pool = as_seen_by_victim(pool, info)
    if pd_images is not None:
        pd_images = as_seen_by_victim(pd_images, info)
    heldout = as_seen_by_victim(transfer.images[heldout_idx], info)
    kwargs = trainer_kwargs(config, num_classes)
    surrogate_trainer(None, kwargs, None)  # checks backbone, weights, size, arch_args
    run_dir, check = begin_run(client, config, probe_images(pool, config.seed))
    rng = np.random.default_rng([config.seed, 1])
    chunk = config.query_batch * config.in_flight * 16
    stats = {"phase1": query_in_order(client, run_dir, images_of, rng.permutation(offset),
                                      config.budget, chunk=chunk,
                                      on_progress=on_progress, check=check)}
    if pd_images is not None:
        pd_order = offset + np.random.default_rng([config.seed, 2]).permutation(
            len(pd_images))
        stats["phase2"] = query_in_order(client, run_dir, images_of, pd_order, total,
                                         chunk=chunk, on_progress=on_progress, check=check)

    indices, responses = journal_answers(run_dir)
    indices, responses = indices[:total], responses[:total]
    probs = answers_as_probabilities(client, responses)
    received = detect_granularity(probs)
    targets = one_hot_top1(probs)
    is_npd = indices < offset
    npd_images, npd_targets = pool[indices[is_npd]], targets[is_npd]
    if pd_images is not None:
        pd_rows, pd_targets = pd_images[indices[~is_npd] - offset], targets[~is_npd]

    def train(n: int, tag: str):
        n_npd = min(n, len(npd_images))
        fine_tune = {**kwargs, "online_lr": kwargs["lr"] * FINE_TUNE_LR_FACTOR}
        # one checkpoint per phase-1 prefix: the final surrogate's phase 1 is the curve's
        # last phase-1 point, trained once
        trainer = surrogate_trainer(run_dir, fine_tune, f"phase1_{n_npd}")
        trainer.fit(npd_images[:n_npd], npd_targets[:n_npd])
        n_pd = n - n_npd
        if n_pd > 0:  # phase 2: fine-tune on the problem-domain answers
            mix = np.random.default_rng([config.seed, 3]).choice(
                n_npd, size=min(n_npd, n_pd), replace=False)
            for _ in range(config.pd_epochs):
                trainer.partial_fit(pd_rows[:n_pd], pd_targets[:n_pd])
                trainer.partial_fit(npd_images[mix], npd_targets[mix])
        return trainer

    budgets = default_budgets(min(config.budget, len(npd_images)), config.curve_points)
    extra = {"query_stats": stats, "received_granularity": received,
             "trained_on": "top1 (one-hot), whatever the victim returned",
             "phases": {"non_problem_domain": int(is_npd.sum()),
                        "problem_domain": int((~is_npd).sum())}}
    return finish(client, info, config, run_dir, queries=len(indices), train=train,
                  test=test, heldout_images=heldout,
                  curve_budgets=budgets, extra=extra)


# -- command line ----------------------------------------------------------------------------------
PROG = "python -m attack.copycat"
EPILOG = """\
example (steal the CIFAR-10 victim from its labels, then fine-tune on 500 CIFAR images):
  python -m attack.copycat --grpc localhost:8500 --model cifar10_cnn \\
      --transfer-set ../shared/data/tinyimagenet200_val10k_train50pc.zip \\
      --transfer-split train+val \\
      --exclude-classes ../shared/data/tinyimagenet_cifar10_overlap_wnids.txt \\
      --budget 8000 --heldout 500 \\
      --pd-set ../shared/data/cifar10_jpeg_q75.zip --pd-split train --pd-budget 500 \\
      --backbone mobilenet --arch-args alpha=0.25 --input-size 96 --epochs 6 \\
      --weights ../shared/data/mobilenet_2_5_224_tf_no_top.h5 \\
      --test-set ../shared/data/cifar10_jpeg_q75.zip --out runs/copycat_cifar10
  # interrupted? the same command with --resume continues without re-sending answered queries
  # the surrogate's defaults: --ema 0.99 --learning-rate 0.002 --augment none (docs/attacks.md);
  # --ema 0 --learning-rate 0.001 --augment crop+flip trains as before they changed
"""


def main(argv=None) -> int:
    """Run the attack with `argv` (default sys.argv[1:]); return the exit code (2: bad input)."""
    return attack_main(CopycatConfig, run_copycat, argv, prog=PROG, epilog=EPILOG,
                       total=lambda c: c.budget + c.pd_budget)


if __name__ == "__main__":
    sys.exit(main())
