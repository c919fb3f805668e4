"""Knockoff Nets over gRPC: `python -m attack.knockoff --grpc host:8500 ...`.

Orekondy et al., "Knockoff Nets: Stealing Functionality of Black-Box Models" (CVPR 2019), as
reproduced by Atli et al. (2020): the attacker sends natural images (the transfer set) to the
victim's TF Serving Predict API, records the answers, and fine-tunes a pre-trained backbone on
them. Nothing is asked of the server beyond the plain API: the client reads the signature with
GetModelMetadata and adapts the images to it.

A run is a directory (ARCHITECTURE.md, contract 4):

    RUN_DIR/config.json      the KnockoffConfig it ran with (--resume refuses another)
    RUN_DIR/journal.bin      every answered query, appended and fsynced as it arrives
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

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attack.config import RESUME_NEUTRAL_FIELDS, KnockoffConfig
from common.cli import config_to_dict, save_config
from common.errors import UsageError, invalid
from common.fileio import write_json_atomic

__all__ = ["KnockoffConfig", "KnockoffResult", "extract", "run_knockoff"]

log = logging.getLogger(__name__)

ATLI_SOURCE = "Atli et al. 2020, Knockoff Nets with 100,000 ImageNet queries"
ATLI_ANCHORS = {
    "CIFAR10 (CNN)": {"victim": 0.87, "surrogate": 0.71, "ratio": 0.81},
    "CIFAR10 (ResNet-34)": {"victim": 0.94, "surrogate": 0.73, "ratio": 0.77},
    "GTSRB (ResNet-34)": {"victim": 0.98, "surrogate": 0.61, "ratio": 0.62},
}


@dataclass(frozen=True)
class KnockoffResult:
    """What `run_knockoff` returns: the run directory and the headline figures."""

    run_dir: Path
    queries: int
    headline: dict


# -- run directory ---------------------------------------------------------------------------------
def prepare_run_dir(config: KnockoffConfig) -> Path:
    """Create RUN_DIR with config.json, or check it on --resume; nothing is written on error."""
    run_dir = Path(config.out)
    saved_path = run_dir / "config.json"
    if config.resume:
        if not saved_path.is_file():
            raise invalid("resume", True, f"a run directory with config.json; {run_dir} has none")
        saved = json.loads(saved_path.read_text())
        current = config_to_dict(config)
        differing = sorted(k for k in current if k not in RESUME_NEUTRAL_FIELDS
                           and saved.get(k) != current[k])
        if differing:
            detail = ", ".join(f"{k}={saved.get(k)!r} (now {current[k]!r})" for k in differing)
            raise UsageError(
                f"Invalid value for argument `resume`. The run in {run_dir} was started with "
                f"another config: {detail}. Expected the same settings, or a new --out.")
        return run_dir
    if saved_path.exists() or (run_dir / "journal.bin").exists():
        raise invalid("out", str(run_dir),
                      "a new run directory (this one holds a run: pass --resume to continue it)")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, saved_path)
    return run_dir


# -- querying --------------------------------------------------------------------------------------
def _targets(responses: np.ndarray, granularity: str) -> np.ndarray:
    from attack.responses import apply_granularity, parse_granularity

    return apply_granularity(responses, parse_granularity(granularity))


def extract(client, transfer, config: KnockoffConfig, run_dir: Path, *,
            surrogate=None, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Spend the query budget on `transfer` through `client`, journaling every answer.

    Returns a dict of query statistics. With the adaptive strategy, `surrogate` (a
    `SurrogateTrainer`) is updated online after each batch and feeds the loss reward; on resume
    it is first replayed over the answers already in the journal. `on_progress(done, budget)`
    is called from the client's worker threads as answers are journaled.
    """
    from attack.hierarchy import hierarchy_for
    from attack.journal import QueryJournal
    from attack.strategies import AdaptiveStrategy, RandomStrategy

    journal = QueryJournal.open(run_dir)
    try:
        answered = journal.answered_indices()
        pending = journal.pending()
        state_path = run_dir / "strategy.json"
        if config.strategy == "adaptive":
            strategy = AdaptiveStrategy(transfer.labels, hierarchy_for(transfer),
                                        reward=config.reward, seed=config.seed, exclude=answered)
        else:
            strategy = RandomStrategy(len(transfer), seed=config.seed, exclude=answered)
        if state_path.is_file():  # the saved state may lag the journal by one batch
            strategy.load_state(json.loads(state_path.read_text()))
        strategy.exclude(answered)
        strategy.exclude(pending)  # re-sent below, never selected again as new queries
        if surrogate is not None and len(answered):
            # resumed adaptive run: bring the online surrogate back to what it had seen
            responses = journal.responses()
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
        if config.strategy == "random":
            chunk *= 16
        started = time.perf_counter()
        sent_now = 0
        policy_log = (run_dir / "policy.jsonl").open("a") if config.strategy == "adaptive" else None
        try:
            while journal.num_answered < config.budget:
                want = min(chunk, config.budget - journal.num_answered)
                if len(pending):
                    indices, pending = pending[:want], pending[want:]
                else:
                    indices = strategy.select(want)

                def intent(first: int, rows: int, indices=indices) -> None:
                    with lock:  # journaled before the batch goes on the wire
                        journal.record_sent(indices[first:first + rows])

                def record(first: int, answer: np.ndarray, indices=indices) -> None:
                    with lock:  # called from the client's worker threads
                        journal.record_answers(indices[first:first + len(answer)], answer)
                        done = journal.num_answered
                    if on_progress is not None:
                        on_progress(done, config.budget)

                probs = client.predict(transfer.images[indices], on_send=intent,
                                       on_result=record)
                sent_now += len(indices)
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


# -- evaluation ----------------------------------------------------------------------------------
def _cached_victim_probs(client, run_dir: Path, name: str, images: np.ndarray) -> np.ndarray:
    """The victim's answers on evaluation images, asked once and kept in RUN_DIR/eval/."""
    path = run_dir / "eval" / f"{name}.npy"
    if path.is_file():
        cached = np.load(path)
        if len(cached) == len(images):
            return cached
    probs = client.predict(images)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, probs)
    tmp.replace(path)
    return probs


def run_knockoff(config: KnockoffConfig, *, on_progress=None) -> KnockoffResult:
    """The whole attack: query, train, evaluate, export, report. Resumable at every stage."""
    from attack.evaluate import default_budgets, evaluate, prefix_curve, uniform_noise_images
    from attack.journal import QueryJournal
    from attack.report import write_report
    from attack.responses import detect_granularity
    from attack.surrogate import SurrogateTrainer, export_surrogate
    from common.data import load_dataset
    from serving.client import ServingClient

    transfer = load_dataset(config.transfer_set, config.transfer_split,
                            exclude_classes=config.exclude_classes)
    test = (load_dataset(config.test_set, config.test_split, limit=config.test_limit,
                         seed=config.seed) if config.test_set else None)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(transfer))
    heldout_idx = np.sort(order[:config.heldout])
    pool_idx = np.sort(order[config.heldout:])
    if config.budget > len(pool_idx):
        raise invalid("budget", config.budget,
                      f"at most {len(pool_idx)} (transfer images not held out for evaluation)")
    pool = transfer.subset(pool_idx)
    with ServingClient(config.grpc, config.model, version=config.version,
                       api_key=config.api_key, timeout=config.timeout,
                       max_in_flight=config.in_flight, batch_size=config.query_batch) as client:
        info = client.metadata()  # the victim is reachable and an image classifier
        num_classes = info.num_classes
        if not num_classes:
            raise UsageError(f"model {config.model!r} at {config.grpc}: the output "
                             f"{info.probabilities!r} has no fixed number of classes")
        trainer_kwargs = dict(backbone=config.backbone, weights=config.weights,
                              input_size=config.input_size, num_classes=num_classes,
                              epochs=config.epochs, batch_size=config.batch_size,
                              lr=config.learning_rate, seed=config.seed,
                              arch_kwargs=config.arch_kwargs())
        # Building the surrogate checks backbone, weights file, size and arch_args; the
        # adaptive strategy then uses it as its online surrogate.
        online = SurrogateTrainer(**trainer_kwargs, checkpoint_dir=None)
        run_dir = prepare_run_dir(config)  # the first side effect, after every check
        stats = extract(client, pool, config, run_dir,
                        surrogate=online if config.strategy == "adaptive" else None,
                        on_progress=on_progress)
        del online

        with QueryJournal.open(run_dir) as journal:
            indices = journal.answered_indices()[:config.budget]
            responses = journal.responses()[:config.budget]
        received = detect_granularity(responses)
        targets = _targets(responses, config.granularity)
        images = pool.images[indices]

        def train(n: int, tag: str):
            trainer = SurrogateTrainer(**trainer_kwargs,
                                       checkpoint_dir=run_dir / "checkpoints" / tag)
            trainer.fit(images[:n], targets[:n])
            return trainer

        final = train(len(indices), "final")
        evaluation = None
        curve: list[dict] = []
        if test is not None:
            heldout = transfer.subset(heldout_idx)
            noise_images = uniform_noise_images(config.noise, test.images.shape[1:],
                                                seed=config.seed)
            held = ((heldout.images, _cached_victim_probs(client, run_dir, "heldout",
                                                          heldout.images))
                    if len(heldout) else None)
            noise = ((noise_images, _cached_victim_probs(client, run_dir, "noise", noise_images))
                     if config.noise else None)
            common_args = dict(
                victim_probs_test=_cached_victim_probs(client, run_dir, "test", test.images),
                test_labels=test.labels, test_images=test.images, transfer_heldout=held,
                noise=noise)
            evaluation = evaluate(final.predict_probs, class_names=test.class_names,
                                  n_queries=len(indices), **common_args)
            curve_path = run_dir / "curve.json"
            completed = json.loads(curve_path.read_text()) if curve_path.is_file() else []
            completed = [p for p in completed if p["queries"] != len(indices)] + [
                {"queries": len(indices), **evaluation.headline()}]

            def save_point(point: dict) -> None:
                completed.append(point)
                write_json_atomic(curve_path, sorted(completed, key=lambda p: p["queries"]))

            curve = prefix_curve(
                default_budgets(len(indices), config.curve_points),
                lambda n: train(n, f"prefix_{n}").predict_probs,
                completed=completed, on_point=save_point, **common_args)
            write_json_atomic(curve_path, curve)
        exported = export_surrogate(
            final.model, run_dir, class_names=test.class_names if test is not None else None,
            input_shape=tuple(info.input_shape[1:]) if info.image_size else None)
    extra = {"query_stats": stats, "received_granularity": received,
             "victim": {"target": config.grpc, "model": config.model,
                        "input": [info.input_name, str(info.input_dtype),
                                  list(info.input_shape)],
                        "num_classes": num_classes},
             "surrogate_export": str(exported), "anchors": ATLI_ANCHORS,
             "anchors_source": ATLI_SOURCE}
    write_report(run_dir, config=config_to_dict(config), evaluation=evaluation, curve=curve,
                 extra=extra)
    headline = evaluation.headline() if evaluation is not None else {}
    return KnockoffResult(run_dir, len(indices), headline)


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
"""


def _main(argv) -> int:
    from common.cli import configure_logging, parse_config

    config = parse_config(KnockoffConfig, argv, prog=PROG, epilog=EPILOG)
    configure_logging()
    import keras

    bar = keras.utils.Progbar(target=config.budget, unit_name="query")
    result = run_knockoff(config, on_progress=lambda done, total: bar.update(done))
    shown = ("victim_acc", "surrogate_acc", "ratio", "fidelity_test",
             "fidelity_transfer_heldout", "fidelity_noise")
    figures = "  ".join(f"{k}={result.headline[k]:.4f}" for k in shown
                        if isinstance(result.headline.get(k), float))
    print(f"{result.queries} queries -> {result.run_dir / 'report.md'}  {figures}")
    return 0


def main(argv=None) -> int:
    """Run the attack with `argv` (default sys.argv[1:]); return the exit code (2: bad input)."""
    from common.cli import run_cli
    from serving.client import ServingError

    try:
        return run_cli(_main, argv, prog=PROG)
    except ServingError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
