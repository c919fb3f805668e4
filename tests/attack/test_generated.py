"""The generated-query run base (`attack.generated`): read back or send, the clock, the state.

No TensorFlow: a hand-made victim (three classes, the answer a function of the pixels, every
query it is asked counted) behind the real journal and `AnswerCheck`. A query journaled before
a kill is read back and never sent again, the first paid batch goes alone until it is checked,
the per-part clock adds what it is given, the state file keeps its old layout (a file written
before `attack.generated` existed reads back the same) and the curve resumes at its last point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from attack.config import AttackConfig
from attack.generated import GeneratedRun, prefixed, read_state, write_state
from attack.journal import QueryJournal
from attack.pipeline import AnswerCheck, clock
from common.errors import UsageError

K = 3


@dataclass(frozen=True)
class TinyConfig(AttackConfig):
    budget: int = field(default=40, metadata={"min": 1})
    image_size: int | None = field(default=None, metadata={"min": 8})


class Victim:
    """Answers one-hot rows of (first pixel mod 3) + `shift`, in batches of `batch`; records
    every query number it is sent (through `on_send`) and every batch checked; raises
    KeyboardInterrupt on the call after `calls` batches (a kill mid-request)."""

    def __init__(self, image_size=(8, 8), shift: int = 0, batch: int = 4,
                 calls: int | None = None) -> None:
        self.image_size, self.shift, self.batch, self.calls = image_size, shift, batch, calls
        self.sizes: list[int] = []
        self.checked: list[int] = []

    def metadata(self):
        return SimpleNamespace(num_classes=K, image_size=self.image_size)

    def answer(self, images: np.ndarray) -> np.ndarray:
        return np.eye(K, dtype=np.float32)[(images[:, 0, 0, 0].astype(int) + self.shift) % K]

    def check_answers(self, raw: np.ndarray) -> None:
        self.checked.append(len(raw))

    def predict(self, images, on_send=None, on_result=None):
        self.sizes.append(len(images))
        out = []
        for start in range(0, len(images), self.batch):
            part = images[start:start + self.batch]
            on_send(start, len(part))  # journaled as sent: in flight if killed now
            if self.calls is not None and self.calls <= 0:
                raise KeyboardInterrupt("killed")
            if self.calls is not None:
                self.calls -= 1
            out.append(self.answer(part))
            on_result(start, out[-1])
        return np.concatenate(out)


class Run(GeneratedRun):
    parts, made, state_name = ("victim", "search", "evaluation"), "made-up", "tiny_state.npz"


def _run(victim, tmp_path, **values) -> Run:
    run = Run(victim, TinyConfig(model="tiny", out=str(tmp_path), query_batch=4, **values),
              None, None)
    run.run_dir = tmp_path
    run.check = AnswerCheck.for_run(victim, tmp_path, 4)
    return run


def _images(n: int) -> np.ndarray:
    images = np.zeros((n, 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


def test_ask_reads_back_what_was_answered_before_a_kill_and_sends_only_the_rest(tmp_path):
    images = _images(20)
    first = Victim(calls=3)  # answers 12 queries (4 each), killed on the 4th batch
    run = _run(first, tmp_path)
    with run._journal(), pytest.raises(KeyboardInterrupt):
        run._ask(0, images)
    assert first.sizes == [4, 16]  # the first paid batch alone, the rest once it was checked
    with QueryJournal.open(tmp_path) as journal:
        assert sorted(journal.answered_indices().tolist()) == list(range(12))
        assert journal.pending().tolist() == [12, 13, 14, 15]  # in flight when it died

    second = Victim(shift=1)  # answers differently: a read-back row is the first victim's
    resumed = _run(second, tmp_path)
    with resumed._journal():
        raw = resumed._ask(0, images)
    assert second.sizes == [8]  # only the 8 never answered, in one go (checked on resume)
    assert resumed.sent == 8
    np.testing.assert_array_equal(raw[:12], first.answer(images[:12]))
    np.testing.assert_array_equal(raw[12:], second.answer(images[12:]))
    with QueryJournal.open(tmp_path) as journal:
        assert sorted(journal.answered_indices().tolist()) == list(range(20))
        assert len(journal.answered_indices()) == 20  # nothing answered twice


def test_answers_before_since_are_not_held_and_a_block_is_asked_by_its_numbers(tmp_path):
    victim = Victim()
    run = _run(victim, tmp_path)
    with run._journal():
        run._ask(0, _images(12))
    again = _run(Victim(), tmp_path)
    with again._journal(since=8):
        assert sorted(again.answered) == [8, 9, 10, 11]
        raw = again._ask(8, _images(12)[8:])  # read back, nothing sent
    assert again.sent == 0
    np.testing.assert_array_equal(raw, victim.answer(_images(12)[8:]))


def test_the_clock_adds_wall_and_cpu_seconds_to_a_part(tmp_path):
    run = _run(Victim(), tmp_path)
    assert run.seconds == run.cpu == {"victim": 0.0, "search": 0.0, "evaluation": 0.0}
    wall, cpu = clock()
    run._add("search", (wall - 2.0, cpu - 0.5))
    run._add("search", clock())
    assert 2.0 <= run.seconds["search"] < 2.5
    assert 0.5 <= run.cpu["search"] < 1.0
    assert run.seconds["victim"] == run.cpu["victim"] == 0.0
    with run._journal():
        run._ask(0, _images(4), timed=False)  # beside other work: not the victim's time
        assert run.seconds["victim"] == 0.0
        run._ask(4, _images(8)[4:])
        assert run.seconds["victim"] > 0.0


def test_the_image_size_is_the_flag_or_the_victims_and_none_is_refused(tmp_path):
    assert _run(Victim(image_size=(8, 8)), tmp_path).size == (8, 8)
    assert _run(Victim(image_size=(8, 8)), tmp_path, image_size=16).size == (16, 16)
    assert _run(Victim(image_size=None), tmp_path, image_size=12).size == (12, 12)
    with pytest.raises(UsageError, match="image_size.*the side of the made-up images"):
        _run(Victim(image_size=None), tmp_path)


def test_state_round_trip_restores_the_seconds_and_reads_the_old_layout(tmp_path):
    run = _run(Victim(), tmp_path)
    assert run._read_state() is None
    run.seconds["search"], run.cpu["search"] = 3.5, 1.25
    weights = [np.full((2,), k, np.float32) for k in range(12)]  # _0010 sorts after _0009
    run._write_state({f"s_{k:04d}": w for k, w in enumerate(weights)}, {"round": 4})
    back = _run(Victim(), tmp_path)
    meta, arrays = back._read_state()
    assert meta["round"] == 4 and back.seconds["search"] == 3.5 and back.cpu["search"] == 1.25
    assert [float(w[0]) for w in prefixed(arrays, "s")] == list(range(12))
    # a state file as the attacks wrote it before this module (np.savez, meta as uint8 JSON)
    old = {"meta": np.frombuffer(json.dumps({"iteration": 2, "seconds": {}}).encode(),
                                 np.uint8), "g_0000": np.ones(3), "og_0000": np.zeros(2)}
    np.savez(tmp_path / "old.npz", **old)
    meta, arrays = read_state(tmp_path / "old.npz")
    assert meta == {"iteration": 2, "seconds": {}}
    assert [a.tolist() for a in prefixed(arrays, "g")] == [[1.0, 1.0, 1.0]]
    assert [a.tolist() for a in prefixed(arrays, "og")] == [[0.0, 0.0]]
    write_state(tmp_path / "new.npz", {"g_0000": np.ones(3)}, {"iteration": 2})
    with np.load(tmp_path / "new.npz") as data:  # what an older reader expects
        assert json.loads(bytes(data["meta"]).decode()) == {"iteration": 2}


def test_the_curve_resumes_at_the_last_point_and_a_point_is_due_once(tmp_path):
    (tmp_path / "curve.json").write_text(json.dumps(
        [{"queries": q, "surrogate_acc": 0.5} for q in (5, 10, 20)]))
    run = _run(Victim(), tmp_path, curve_points=3)
    run.assigned = 10  # the checkpoint: the point at 20 was measured after it, it goes
    milestones = run._begin_curve()
    assert milestones == [10, 20]  # below the budget of 40
    assert [p["queries"] for p in run.curve] == [5, 10]
    assert not run._point_due(milestones)
    run.assigned = 24
    assert run._point_due(milestones)
    run._add_point({"queries": 24, "surrogate_acc": 0.6})
    assert not run._point_due(milestones)
    assert [p["queries"] for p in json.loads((tmp_path / "curve.json").read_text())] == [
        5, 10, 24]
