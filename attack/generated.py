"""The shared base of the attacks whose queries are generated rather than drawn from a pool.

`attack.datafree` (a generator trained against the surrogate: Truong et al.'s DFME, Kariyappa
et al.'s MAZE, Sanyal et al.'s label-only idea) and `attack.synthetic` (a procedural image prior
steered by the victim's answers) make every query themselves, block by block, and train their
surrogate online. What is not the search itself is the same in both and lives here:

* `GeneratedAttack`: the attack object's data (optional natural images, the test set) and
  `run_generated`, the CLI's loader (natural images, test set, the victim of the config);
* `GeneratedRun`: one run's scaffolding. The victim's signature and the size of the images to
  make (``--image-size`` or the victim's fixed input size), the per-part clock (wall and CPU
  seconds: `GeneratedRun._add`), the read-back-or-send `GeneratedRun._ask` over the journal
  (a query journaled before a crash is read back, never sent again; the first paid batch is
  checked), the curve of the online surrogate against queries (``curve.json``, the victim's
  answers on the test set and noise asked once) and the checkpoint file (arrays and a JSON
  ``meta`` in one atomically written ``.npz``, the per-part seconds restored on resume).

Each attack keeps its own search, its state's contents and its report's extras; the run
directory's layout (``queries/``, the state file, ``curve.json``, the journal) is theirs, read
and written through these helpers unchanged.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from attack.base import Attack, as_transfer, dataset_source
from attack.journal import QueryJournal
from attack.pipeline import (
    ExtractionResult,
    cached_victim_probs,
    clock,
    load_test_set,
    open_victim,
    save_npz,
    send_journaled,
    trainer_kwargs,
    victim_signature,
)
from common.errors import invalid
from common.fileio import write_json_atomic

__all__ = ["GeneratedAttack", "GeneratedRun", "prefixed", "read_state", "run_generated",
           "write_state"]

log = logging.getLogger(__name__)


# -- the attack object and the CLI's loader --------------------------------------------------------
class GeneratedAttack(Attack):
    """An attack that makes its own queries; `transfer` (optional) is natural images it may mix
    in or draw backgrounds from, `test` the labelled test set of the curve and the report."""

    data_fields = ("transfer_set", "transfer_split")

    def _prepare_data(self, transfer, test) -> dict:
        natural = None if transfer is None else as_transfer(transfer)
        return {"fields": {"transfer_set": None if natural is None else dataset_source(natural),
                           "test_set": None if test is None else dataset_source(test)},
                "natural": natural, "test": test}


def run_generated(attack_class: type[GeneratedAttack], config: Any, *,
                  transfer_limit: int | None = None, on_progress=None) -> ExtractionResult:
    """The CLI's attack: load the natural images (``--transfer-set``, at most
    `transfer_limit`) and the test set of `config`, open its victim, run `attack_class`."""
    from common.data import load_dataset

    limit = {} if transfer_limit is None else {"limit": transfer_limit}
    natural = (load_dataset(config.transfer_set, config.transfer_split, seed=config.seed,
                            **limit) if config.transfer_set else None)
    test = load_test_set(config)
    attack = attack_class.from_config(config)
    with open_victim(config) as victim:
        return attack._run(victim, config, {"natural": natural, "test": test}, on_progress)


# -- the run's checkpoint file ---------------------------------------------------------------------
def write_state(path: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """`arrays` and `meta` (JSON, stored as the uint8 array ``meta``) to `path`, atomically."""
    save_npz(path, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))


def read_state(path: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, arrays) of a state file `write_state` wrote; None when there is none."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    return json.loads(bytes(arrays.pop("meta")).decode()), arrays


def prefixed(arrays: Mapping[str, np.ndarray], name: str) -> list[np.ndarray]:
    """The arrays ``<name>_0000``, ``<name>_0001``... in order (a model's weights, an
    optimizer's variables): what ``{f"{name}_{k:04d}": w}`` stored."""
    return [arrays[k] for k in sorted(arrays) if k.startswith(name + "_")]


# -- one run ---------------------------------------------------------------------------------------
class GeneratedRun:
    """One run's scaffolding: the victim and the image size, the timers, the journal, the
    curve and the state file. Subclasses set `parts` (where the time goes), `made` (what the
    images are, for the error without a size) and `state_name` (the state file in RUN_DIR)."""

    parts: ClassVar[tuple[str, ...]]
    made: ClassVar[str] = "generated"
    state_name: ClassVar[str]

    def __init__(self, victim, config: Any, test, on_progress) -> None:
        self.victim, self.config, self.test, self.on_progress = victim, config, test, on_progress
        self.info, self.num_classes = victim_signature(victim, config)
        size = (self.info.image_size if config.image_size is None
                else (config.image_size, config.image_size))
        if size is None:
            raise invalid("image_size", None, f"the side of the {self.made} images: the "
                          "victim's input has no fixed size")
        self.size = tuple(int(v) for v in size)
        self.kwargs = trainer_kwargs(config, self.num_classes)
        self.seconds = dict.fromkeys(self.parts, 0.0)  # wall-clock seconds per part
        self.cpu = dict.fromkeys(self.parts, 0.0)  # this process's CPU seconds per part
        self.sent = 0  # queries paid for in this session
        self.lock = threading.Lock()

    def _refuse_unprobed_range(self, images: str, natural_flags: str) -> None:
        """`UsageError` before any query when the victim's float input has ``--input-range
        auto`` and the run has no natural image to probe it with: `images` (what the run makes,
        "synthetic images cannot tell it") can not tell the range reliably (benchmarks.victim_matrix
        --probe-source: noise 16 of 32 float victims right, the prior's renders 29 of 32,
        natural images 32 of 32). A uint8 input needs no probe (0..255)."""
        if getattr(self.victim, "input_range_flag", None) == "auto" \
                and self.info.input_dtype != np.uint8:
            raise invalid("input_range", "auto", f"the range of the float input "
                          f"'{self.info.input_name}' ({np.dtype(self.info.input_dtype).name}): "
                          f"{images}; pass --input-range 0,1, -1,1 or 0,255, or natural images "
                          f"({natural_flags}) to probe with")

    def _add(self, part: str, started: tuple[float, float]) -> None:
        """Add the time since `started` (a `clock()`) to `part`."""
        wall, cpu = clock()
        self.seconds[part] += wall - started[0]
        self.cpu[part] += cpu - started[1]

    # -- the state file ------------------------------------------------------------------------
    def _write_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """RUN_DIR/`state_name` with `arrays`, and `meta` with the seconds per part so far."""
        write_state(self.run_dir / self.state_name, arrays,
                    {**meta, "seconds": self.seconds, "cpu": self.cpu})

    def _read_state(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, arrays) of RUN_DIR/`state_name`, the seconds per part restored; None: none."""
        state = read_state(self.run_dir / self.state_name)
        if state is not None:
            self.seconds.update(state[0]["seconds"])
            self.cpu.update(state[0].get("cpu", {}))
        return state

    # -- the journal and the victim ------------------------------------------------------------
    @contextmanager
    def _journal(self, since: int = 0) -> Iterator[QueryJournal]:
        """RUN_DIR's journal, open; its answers to query numbers >= `since` wait in
        ``self.answered`` for `_ask` to read back."""
        with QueryJournal.open(self.run_dir) as journal:
            self.journal = journal
            indices = journal.answered_indices()
            mask = indices >= since
            self.answered = dict(zip(indices[mask].tolist(), journal.responses()[mask],
                                     strict=True))
            yield journal

    def _ask(self, first: int, images: np.ndarray, timed: bool = True) -> np.ndarray:
        """The victim's journal-form answers to query numbers first..first+n-1 (`images`):
        journaled ones read back, the others sent (the first paid batch alone, checked).
        `timed`: count the time as the victim's (not when it runs beside other work)."""
        started = clock()
        n = len(images)
        indices = np.arange(first, first + n, dtype=np.int64)
        raw = np.zeros((n, self.num_classes), np.float32)
        todo = []
        for row, index in enumerate(indices.tolist()):
            answer = self.answered.pop(index, None)
            if answer is None:
                todo.append(row)
            else:
                raw[row] = answer
        todo = np.asarray(todo, np.int64)
        sent = 0
        while sent < len(todo):
            rows = todo[sent:sent + self.check.limit(len(todo) - sent)]
            raw[rows] = send_journaled(self.victim, self.journal, images[rows], indices[rows],
                                       lock=self.lock, budget=self.config.budget,
                                       on_progress=self.on_progress)
            self.check(raw[rows], journaled=self.journal.num_answered)
            sent += len(rows)
        self.sent += sent
        if timed:
            self._add("victim", started)
        return raw

    # -- the curve -----------------------------------------------------------------------------
    def _begin_curve(self) -> list[int]:
        """The curve so far (``curve.json``'s points up to ``self.assigned``), the victim's
        answers on the test images and the noise (asked once, cached in RUN_DIR/eval/); the
        budgets below the budget at which a point is due."""
        from attack.evaluate import default_budgets, uniform_noise_images

        config = self.config
        path = self.run_dir / "curve.json"
        self.curve = [p for p in (json.loads(path.read_text()) if path.is_file() else [])
                      if p["queries"] <= self.assigned]
        self.victim_test = self.noise = None
        if self.test is not None:
            self.victim_test = cached_victim_probs(self.victim, self.run_dir, "test",
                                                   self.test.images)
            if config.noise:
                noise = uniform_noise_images(config.noise, self.test.images.shape[1:],
                                             seed=config.seed)
                self.noise = (noise, cached_victim_probs(self.victim, self.run_dir, "noise",
                                                         noise))
        return [b for b in default_budgets(config.budget, config.curve_points)
                if b < config.budget]

    def _point_due(self, milestones: list[int]) -> bool:
        """Whether ``self.assigned`` passed a milestone the curve has no point at or after."""
        return any(m <= self.assigned and not any(p["queries"] >= m for p in self.curve)
                   for m in milestones)

    def _measure(self, what: str = "surrogate", **more: Any) -> dict:
        """The surrogate as it is now on the test set: a curve point at ``self.assigned``
        queries (with `more` keys), logged as `what`'s accuracy."""
        from attack.evaluate import evaluate

        started = clock()
        result = evaluate(self.trainer.predict_probs, self.victim_test, self.test.labels,
                          test_images=self.test.images, noise=self.noise,
                          n_queries=self.assigned)
        point = {"queries": self.assigned, **result.headline(),
                 "seconds": round(sum(self.seconds.values()), 3), **more}
        log.info("%d queries: %s accuracy %.4f, fidelity %.4f", self.assigned, what,
                 point["surrogate_acc"], point["fidelity_test"])
        self._add("evaluation", started)
        return point

    def _add_point(self, point: dict) -> None:
        """`point` into the curve (replacing one at the same count) and ``curve.json``."""
        self.curve = [p for p in self.curve if p["queries"] != point["queries"]] + [point]
        write_json_atomic(self.run_dir / "curve.json", self.curve)
