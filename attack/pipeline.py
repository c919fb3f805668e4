"""The pipeline every extraction attack shares: run directory, journaled queries, surrogate, report.

Knockoff Nets (Orekondy et al. 2019), Copycat CNN (da Silva et al. 2018) and JBDA (Papernot et
al. 2017) differ in *which* images they send; everything around that is the same and lives here
(ARCHITECTURE.md, contract 4):

* `prepare_run_dir`: create RUN_DIR with the config, or check it on ``--resume`` (a config that
  differs from the saved one is refused, nothing is written on error);
* `open_victim`: the victim of the config's endpoint (`attack.victim`: gRPC, REST), its
  signature read with GetModelMetadata (an image classifier with a fixed number of classes, or a
  `UsageError`);
* `send_journaled` / `query_in_order`: every query journaled before it goes on the wire and
  every RAW answer (the victim's journal form: probabilities, logits, one-hot labels or top-k
  rows as received) journaled as it arrives (`attack.journal.QueryJournal`), so Ctrl-C, a crash
  or ``kill -9`` loses nothing and a resumed run never sends an answered query again;
  `AnswerCheck` checks the first paid batch (or, on resume, the journaled answers) with
  `Victim.check_answers` before the rest of the budget is spent;
* `answers_as_probabilities`: the journal read through the victim's interpretation
  (`Victim.to_probabilities`), so ``--resume --output-kind logits`` re-reads the same answers;
* `surrogate_trainer` and `finish`: the surrogate trained (resumably) on the answers, evaluated
  on the test set, held-out transfer images and uniform noise through the same victim path, its
  accuracy and fidelity against the number of queries, exported in the victim layout, and
  ``report.{json,md}`` with the plots and the victim section (how it was queried, the victim
  accuracy measured that way, `attack.victim.consistency` warnings).

`attack.base` builds the attack objects on these; the ``run_*`` functions of the attack modules
are the CLIs' entry points over them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attack import victim as _victim
from attack.config import RESUME_CHANGES, same_setting
from attack.evaluate import default_budgets, evaluate, prefix_curve, uniform_noise_images
from attack.journal import QueryJournal
from attack.report import write_report
from common.cli import (
    as_flags,
    config_to_dict,
    configure_logging,
    parse_config,
    run_cli,
    save_config,
)
from common.constraints import is_number
from common.data import load_dataset
from common.errors import UsageError, invalid
from common.fileio import check_writable, write_atomic, write_error, write_json_atomic
from common.progress import Progress

__all__ = [
    "AnswerCheck",
    "AttackResult",
    "ExtractionResult",
    "answers_as_probabilities",
    "as_seen_by_victim",
    "attack_main",
    "begin_run",
    "cached_victim_probs",
    "clock",
    "describe_victim",
    "finish",
    "journal_answers",
    "load_test_set",
    "open_victim",
    "prepare_run_dir",
    "probe_images",
    "query_in_order",
    "run_attack_cli",
    "save_npz",
    "send_journaled",
    "summary_line",
    "surrogate_trainer",
    "trainer_kwargs",
    "victim_signature",
]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""``on_progress(answered, budget)``, called from the client's worker threads."""


@dataclass(frozen=True)
class ExtractionResult:
    """What an attack returns (`Attack.extract` and the ``run_*`` functions).

    `run_dir` holds everything (config.json, journal.bin, checkpoints, report); `queries` the
    answered queries the surrogate learnt from; `headline` the report's scalar figures
    (victim and surrogate accuracy, ratio, fidelities; empty without a test set); `surrogate`
    the trained Keras model; `journal` the journal's path; `report` report.md; `figures` the
    PNG plots; `victim` what `Victim.describe()` said (how the victim was queried); `notes`
    the consistency warnings about the victim accuracy (empty when none fired).
    """

    run_dir: Path
    queries: int
    headline: dict
    surrogate: Any = None
    journal: Path | None = None
    report: Path | None = None
    figures: tuple[Path, ...] = ()
    victim: dict = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()


AttackResult = ExtractionResult  # the name the run_* functions returned before the objects


# -- run directory ---------------------------------------------------------------------------------
def prepare_run_dir(config: Any) -> Path:
    """Create RUN_DIR with config.json, or check it on --resume; nothing is written on error.

    A field the saved config lacks (a run started before the field existed) counts as its
    default, so adding an option never locks older runs out of ``--resume``; a surrogate
    setting whose default changed since counts as what the run trained with (the config's
    ``run_legacy``, `attack.config.RUN_LEGACY`). The fields the config's ``resume_changes``
    declares (`attack.config.RESUME_CHANGES`) are not compared: the attack carries out what
    their change needs (a final pass trained again, more queries). The run folder is
    the one that holds the config.json read (so ``runs/k``, ``runs/k/``, ``./runs/k``, its
    absolute path or a symlink to it are the same run), and path settings compare as the files
    they name. A refused resume says which flags to give back, never to start over.
    """

    run_dir = Path(config.out)
    saved_path = run_dir / "config.json"
    if config.resume:
        if not saved_path.is_file():
            raise invalid("resume", True, f"a run directory with config.json; {run_dir} has "
                          "none (start the run without --resume)")
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise invalid("resume", True, f"a readable config.json in {run_dir} ({err})") from None
        current = config_to_dict(config)
        defaults = {**config_to_dict(_defaults_like(config)),
                    **getattr(config, "run_legacy", {})}
        may_change = getattr(config, "resume_changes", RESUME_CHANGES)  # the attack redoes them
        differing = sorted(k for k in current if k not in may_change and k != "out"
                           and not same_setting(saved.get(k, defaults.get(k)), current[k]))
        if differing:
            was = {k: saved.get(k, defaults.get(k)) for k in differing}
            detail = ", ".join(
                f"{as_flags(config, {k: v})} (now {as_flags(config, {k: current[k]})})"
                for k, v in was.items())
            raise UsageError(
                f"Invalid value for argument `--resume`. The run in {run_dir} was started with "
                f"other settings: {detail}. Expected the run's own settings: resume with "
                f"{as_flags(config, was)} (every answer in its journal is kept, none is paid "
                "again).")
        check_writable(run_dir, "out")
        return run_dir
    if saved_path.exists() or (run_dir / "journal.bin").exists():
        raise invalid("out", str(run_dir),
                      "a new run directory (this one holds a run: pass --resume to continue it)")
    check_writable(run_dir, "out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, saved_path)
    except OSError as err:
        raise write_error(err, "out", run_dir) from None
    return run_dir


def _defaults_like(config: Any) -> Any:
    """`config` with every field that has a default set back to it (required ones kept)."""
    changes = {f.name: f.default for f in dataclasses.fields(config)
               if f.init and f.default is not dataclasses.MISSING}
    try:
        return dataclasses.replace(config, **changes)
    except UsageError:  # defaults that do not validate together: compare without them
        return config


# -- the victim ------------------------------------------------------------------------------------
def open_victim(config: Any):
    """The `attack.victim.Victim` of the config's endpoint (gRPC, or REST with ``--rest``);
    use it as a context manager."""

    return _victim.open_victim(config)


def victim_signature(victim, config: Any):
    """(signature info, number of classes) of the victim; `UsageError` when K is not fixed."""
    info = victim.metadata()  # reachable, and an image classifier
    if not info.num_classes:
        where = getattr(config, "rest", None) or getattr(config, "grpc", "")
        raise UsageError(f"model {getattr(config, 'model', '?')!r} at {where}: the output "
                         f"{info.probabilities!r} has no fixed number of classes")
    return info, int(info.num_classes)


def answers_as_probabilities(victim, raw: np.ndarray) -> np.ndarray:
    """Journal-form answers as rows summing to 1, read the way `victim` reads its output
    (softmax for logits, identity for probabilities and one-hot labels); a plain client
    (`serving.client.ServingClient`) already answers probabilities."""
    convert = getattr(victim, "to_probabilities", None)
    return np.asarray(raw, np.float32) if convert is None else convert(raw)


class AnswerCheck:
    """The first paid batch's answers checked before the rest of the budget is spent.

    `Victim.check_answers` raises a `UsageError` naming the flag to use when the answers do not
    fit the output kind; the answers are journaled by then (nothing paid is lost) and the error
    says how to use them (`--resume` with that flag). On resume, the journal's answers are
    checked first, under the interpretation of this run's flags. A plain client without
    `check_answers` is not checked.
    """

    def __init__(self, victim, run_dir: Path, query_batch: int) -> None:
        self._check = getattr(victim, "check_answers", None)
        self.run_dir = Path(run_dir)
        self.query_batch = int(query_batch)
        self.done = self._check is None

    @classmethod
    def for_run(cls, victim, run_dir: Path, query_batch: int) -> AnswerCheck:
        """The check of a run: on resume, the journal's answers are checked at once (before
        anything is sent), under this run's interpretation of them."""

        check = cls(victim, run_dir, query_batch)
        if not check.done and (Path(run_dir) / "journal.bin").is_file():
            with QueryJournal.open(run_dir) as journal:
                if journal.num_answered:
                    check(journal.responses().copy(), journaled=journal.num_answered)
        return check

    def limit(self, want: int) -> int:
        """How many of `want` images to send now: one batch until the answers are checked."""
        return want if self.done else min(want, self.query_batch)

    def __call__(self, raw: np.ndarray, *, journaled: int) -> None:
        """Check `raw` (journal form) unless done; `journaled`: answers in the journal now."""
        if self.done or not len(raw):
            return
        try:
            self._check(raw)
        except UsageError as err:
            raise UsageError(
                f"{str(err).rstrip('.')}. The {journaled} answers paid so far are kept in "
                f"{self.run_dir / 'journal.bin'}: run the same command with --resume and that "
                "flag to learn from them.") from err
        self.done = True


def as_seen_by_victim(images: np.ndarray, info) -> np.ndarray:
    """The uint8 RGB images exactly as the victim receives them: resized to its input size the
    way the client does it before sending (bilinear, antialiased, rounded).

    The surrogate learns from these, not from the originals: the victim's answers describe the
    images it saw, and the test images the surrogate is judged on are at the victim's
    resolution too. Training on the 64 px Tiny-ImageNet originals against a 32 px CIFAR-10
    victim cost 8 points of surrogate accuracy (68.4% against 76.7%, same 17,000 answers,
    MobileNet alpha 0.25 at 128 px, 12 epochs). Only the size is adapted (channels and dtype
    stay uint8 RGB, what the surrogate's own preprocessing takes); images already at the
    victim's size, and victims without a fixed size, are returned unchanged.
    """
    size = getattr(info, "image_size", None)
    if size is None or tuple(images.shape[1:3]) == tuple(size):
        return images
    import tensorflow as tf

    out = np.empty((len(images), *size, images.shape[3]), np.uint8)
    for start in range(0, len(images), 1024):
        part = tf.image.resize(images[start:start + 1024].astype(np.float32), size,
                               method="bilinear", antialias=True).numpy()
        out[start:start + 1024] = np.clip(np.rint(part), 0, 255)
    return out


def save_npz(path: Path, **arrays) -> None:
    """`arrays` to `path` as an ``.npz``, atomically (`common.fileio.write_atomic`), creating its
    folder: the run state and query blocks of the generated-query attacks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: np.savez(handle, **arrays))


def clock() -> tuple[float, float]:
    """(wall, process CPU) seconds now: the start of a timed part of a run."""
    return time.perf_counter(), time.process_time()


def load_test_set(config: Any):
    """The labelled test set of `config` (None without ``--test-set``)."""

    if not config.test_set:
        return None
    return load_dataset(config.test_set, config.test_split, limit=config.test_limit,
                        seed=config.seed)


def begin_run(victim, config: Any, probe_images: np.ndarray) -> tuple[Path, AnswerCheck]:
    """Create (or, on resume, check) RUN_DIR, the first side effect after every check; then
    let the victim decide what ``auto`` leaves open from a few probe images (not journaled;
    evidence in RUN_DIR/victim.json) and return the run's `AnswerCheck`."""
    run_dir = prepare_run_dir(config)
    understand = getattr(victim, "understand", None)
    if understand is not None:
        understand(probe_images, run_dir / "victim.json")
    return run_dir, AnswerCheck.for_run(victim, run_dir, config.query_batch)


def probe_images(images: np.ndarray, seed: int, count: int = 64) -> np.ndarray:
    """`count` images of `images` in a seeded order: what `Victim.understand` probes with."""
    order = np.random.default_rng([seed, 11]).permutation(len(images))[:count]
    return images[np.sort(order)]


# -- querying --------------------------------------------------------------------------------------
def send_journaled(client, journal, images: np.ndarray, indices: np.ndarray, *,
                   lock: threading.Lock, budget: int,
                   on_progress: ProgressFn | None = None) -> np.ndarray:
    """Send `images` (the queries numbered `indices`) and return the answers, in order.

    Each batch's indices are journaled as sent before it goes on the wire and its answers as
    they arrive, from the client's worker threads (under `lock`); `on_progress(answered,
    budget)` follows each journaled batch.
    """
    indices = np.asarray(indices, dtype=np.int64)

    def intent(first: int, rows: int) -> None:
        with lock:
            journal.record_sent(indices[first:first + rows])

    def record(first: int, answer: np.ndarray) -> None:
        with lock:
            journal.record_answers(indices[first:first + len(answer)], answer)
            done = journal.num_answered
        if on_progress is not None:
            on_progress(done, budget)

    return client.predict(images, on_send=intent, on_result=record)


def query_in_order(client, run_dir: Path, images: Callable[[np.ndarray], np.ndarray],
                   order: Sequence[int] | np.ndarray, budget: int, *, chunk: int,
                   on_progress: ProgressFn | None = None,
                   check: AnswerCheck | None = None) -> dict:
    """Answer the queries of `order` until the journal holds `budget` answers.

    `images(indices)` returns the uint8 images of those query numbers. Indices already answered
    are skipped; those in flight at a crash (sent, no answer) go first (they may be paid twice:
    no client can know whether the server charged them). With `check`, the first batch is sent
    alone and its answers checked before anything else is sent. Returns query statistics.
    """

    order = np.asarray(order, dtype=np.int64)
    with QueryJournal.open(run_dir) as journal:
        pending = journal.pending()
        if len(pending):
            log.warning("%d queries were in flight when the run stopped; sending them again",
                        len(pending))
        answered = np.fromiter((journal.is_answered(i) for i in order.tolist()), bool,
                               count=len(order))
        todo = order[~answered]
        todo = np.concatenate([pending[np.isin(pending, todo)], todo[~np.isin(todo, pending)]])
        lock = threading.Lock()
        started = time.perf_counter()
        sent = 0
        while journal.num_answered < budget and sent < len(todo):
            want = min(chunk, budget - journal.num_answered, len(todo) - sent)
            if check is not None:
                want = check.limit(want)
            batch = todo[sent:sent + want]
            raw = send_journaled(client, journal, images(batch), batch, lock=lock,
                                 budget=budget, on_progress=on_progress)
            sent += want
            if check is not None:
                check(raw, journaled=journal.num_answered)
        seconds = time.perf_counter() - started
        return {"answered": journal.num_answered, "sent_this_session": sent,
                "resent_after_crash": int(min(len(pending), sent)), "seconds": seconds,
                "queries_per_second": sent / seconds if seconds > 0 and sent else None}


def journal_answers(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(indices, responses) of the journal, in answer order."""

    with QueryJournal.open(run_dir) as journal:
        return journal.answered_indices().copy(), journal.responses().copy()


# -- surrogate, evaluation, report -----------------------------------------------------------------
def trainer_kwargs(config: Any, num_classes: int) -> dict:
    """`SurrogateTrainer` keyword arguments from an attack config."""
    return dict(backbone=config.backbone, weights=config.weights, input_size=config.input_size,
                num_classes=num_classes, epochs=config.epochs, batch_size=config.batch_size,
                lr=config.learning_rate, seed=config.seed, arch_kwargs=config.arch_kwargs(),
                distribute=config.distribute, **config.recipe_kwargs())


def surrogate_trainer(run_dir: Path | None, kwargs: Mapping[str, Any], tag: str | None):
    """A `SurrogateTrainer` checkpointing in RUN_DIR/checkpoints/<tag> (none when tag is None).

    A finished fit on the same data is loaded from there instead of trained again, so every
    attack's resume, and its curve, reuse what was trained before.
    """
    from attack.surrogate import SurrogateTrainer

    checkpoint = None if tag is None or run_dir is None else run_dir / "checkpoints" / tag
    return SurrogateTrainer(**kwargs, checkpoint_dir=checkpoint)


def cached_victim_probs(client, run_dir: Path, name: str, images: np.ndarray) -> np.ndarray:
    """The victim's answers on evaluation images as probabilities, asked once: the raw answers
    (journal form) are kept in RUN_DIR/eval/ and read through the victim's interpretation."""
    path = run_dir / "eval" / f"{name}.npy"
    raw = None
    if path.is_file():
        cached = np.load(path)
        if len(cached) == len(images):
            raw = cached
    if raw is None:
        raw = client.predict(images)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, raw)
        tmp.replace(path)
    return answers_as_probabilities(client, raw)


TrainFn = Callable[[int, str], Any]
"""``train(n, tag) -> SurrogateTrainer``: a surrogate trained on the first n answered queries."""


def finish(client, info, config: Any, run_dir: Path, *, queries: int, train: TrainFn,
           test=None, heldout_images: np.ndarray | None = None,
           curve_budgets: Sequence[int] | None = None,
           extra: Mapping[str, Any] | None = None) -> ExtractionResult:
    """Train the final surrogate, evaluate it, draw the curve, export it, write the report.

    `train(queries, "final")` is the final surrogate; with a test set, `train(n, f"prefix_{n}")`
    gives the curve's points (`curve_budgets`, default `config.curve_points` halvings of
    `queries`); finished points are kept in RUN_DIR/curve.json and never trained again.
    """
    from attack.surrogate import export_surrogate

    final = train(queries, "final")
    evaluation = None
    curve: list[dict] = []
    victim_test = None
    if test is not None:
        noise_images = uniform_noise_images(config.noise, test.images.shape[1:],
                                            seed=config.seed)
        held = None
        if heldout_images is not None and len(heldout_images):
            held = (heldout_images,
                    cached_victim_probs(client, run_dir, "heldout", heldout_images))
        noise = ((noise_images, cached_victim_probs(client, run_dir, "noise", noise_images))
                 if config.noise else None)
        victim_test = cached_victim_probs(client, run_dir, "test", test.images)
        common_args = dict(
            victim_probs_test=victim_test,
            test_labels=test.labels, test_images=test.images, transfer_heldout=held,
            noise=noise)
        evaluation = evaluate(final.predict_probs, class_names=test.class_names,
                              n_queries=queries, **common_args)
        curve_path = run_dir / "curve.json"
        completed = json.loads(curve_path.read_text()) if curve_path.is_file() else []
        completed = [p for p in completed if p["queries"] != queries] + [
            {"queries": queries, **evaluation.headline()}]

        def save_point(point: dict) -> None:
            completed.append(point)
            write_json_atomic(curve_path, sorted(completed, key=lambda p: p["queries"]))

        budgets = (sorted({int(b) for b in curve_budgets if 0 < b <= queries} | {queries})
                   if curve_budgets is not None
                   else default_budgets(queries, config.curve_points))
        curve = prefix_curve(budgets, lambda n: train(n, f"prefix_{n}").predict_probs,
                             completed=completed, on_point=save_point, **common_args)
        write_json_atomic(curve_path, curve)
    rgb_fixed = info.image_size is not None and (getattr(info, "channels", 3) in (3, None))
    exported = export_surrogate(
        final.model, run_dir, class_names=test.class_names if test is not None else None,
        input_shape=(*info.image_size, 3) if rgb_fixed else None)
    described = describe_victim(client, info, config)
    notes: list[str] = []
    if victim_test is not None:

        notes = _victim.consistency(evaluation.victim_acc, victim_test, info.num_classes)
        for note in notes:
            log.warning("victim accuracy: %s", note)
        described["accuracy_measured"] = evaluation.victim_acc
        described["accuracy_test_images"] = int(len(test.images))
    described["consistency_warnings"] = notes
    extra = {**dict(extra or {}), "victim": described, "surrogate_export": str(exported)}
    paths = write_report(run_dir, config=config_to_dict(config), evaluation=evaluation,
                         curve=curve, extra=extra)
    headline = evaluation.headline() if evaluation is not None else {}
    figures = tuple(path for kind, path in paths.items() if kind.endswith("_plot"))
    return ExtractionResult(run_dir, queries, headline, surrogate=final.model,
                            journal=run_dir / "journal.bin", report=paths.get("markdown"),
                            figures=figures, victim=described, notes=tuple(notes))


def describe_victim(victim, info, config: Any) -> dict:
    """What the report states about the victim: `Victim.describe()` (interface, signature,
    input range and how it was decided, output and kind, probe queries), or for a plain
    client what its metadata says."""
    describe = getattr(victim, "describe", None)
    if describe is not None:
        return dict(describe())
    return {"interface": "grpc", "target": getattr(config, "grpc", None),
            "model": getattr(config, "model", None), "signature": getattr(info, "name", None),
            "input": [info.input_name, str(info.input_dtype), list(info.input_shape)],
            "output": info.probabilities, "output_kind": "probabilities",
            "num_classes": info.num_classes}


def summary_line(result: AttackResult) -> str:
    """The line a CLI prints at the end: queries, report path and the headline figures."""
    shown = ("victim_acc", "surrogate_acc", "ratio", "fidelity_test",
             "fidelity_transfer_heldout", "fidelity_noise")
    figures = "  ".join(f"{k}={result.headline[k]:.4f}" for k in shown
                        if isinstance(result.headline.get(k), float))
    return f"{result.queries} queries -> {result.run_dir / 'report.md'}  {figures}"


def run_attack_cli(body: Callable[[Any], int], argv, *, prog: str) -> int:
    """`common.cli.run_cli` plus a `ServingError` (unreachable host, unknown model) as one
    line on stderr and exit code 2."""


    try:
        return run_cli(body, argv, prog=prog)
    except Exception as err:
        # no ServingError exists unless serving.client was imported (it imports TensorFlow,
        # which --help and a bad flag must not wait for)
        client = sys.modules.get("serving.client")
        if client is None or not isinstance(err, client.ServingError):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


def attack_main(config_cls: type, run: Callable[..., AttackResult], argv, *, prog: str,
                epilog: str, total: Callable[[Any], int] | None = None) -> int:
    """The shared `main` of the learning attacks: parse the config from `argv`, run the attack
    with a progress bar counted in queries (`total(config)`, default the budget), print the
    summary line; bad input is one line on stderr and exit code 2."""

    def body(args) -> int:

        config = parse_config(config_cls, args, prog=prog, epilog=epilog)
        configure_logging()

        target = total(config) if total is not None else config.budget
        with Progress(target, unit="query", what=prog.split(".")[-1]) as bar:
            result = run(config, on_progress=lambda done, _total: bar.update(done))
        print(summary_line(result))
        return 0

    return run_attack_cli(body, argv, prog=prog)


def exact_main(config_cls: type, run: Callable[[Any], AttackResult], argv, *, prog: str,
               epilog: str) -> int:
    """The shared `main` of the exact attacks (equation solving, FEE): parse the config, run
    the attack, print the queries, the report path and every numeric headline figure."""

    def body(args) -> int:

        config = parse_config(config_cls, args, prog=prog, epilog=epilog)
        configure_logging()
        result = run(config)
        figures = "  ".join(f"{key}={value:.6g}" for key, value in result.headline.items()
                            if is_number(value))
        print(f"{result.queries} queries -> {result.run_dir / 'report.md'}  {figures}")
        return 0

    return run_attack_cli(body, argv, prog=prog)
