"""Data-free extraction (`attack.datafree`): the zeroth-order estimate, the budget, resume, CLI.

The gradient estimate is checked against the true gradient of a known function; the budget and
resume against an in-process Keras victim (the colour victim: which channel dominates) whose
predict calls are counted, killed mid-run and resumed; each method end to end (slow) must agree
with the victim well above chance (1/3).
"""

from __future__ import annotations

import numpy as np
import pytest

from attack.datafree import (
    STATE_NAME,
    DataFreeConfig,
    ReplayBuffer,
    main,
    missing_queries,
    perturb,
    plan_iteration,
    quantize,
    query_blocks,
    stored_queries,
    victim_spread,
    zo_gradient,
)
from attack.generated import write_state
from attack.pipeline import save_npz
from serving.testing import COLOUR_CLASSES, COLOUR_SIZE, colour_images, colour_victim
from tests.attack.helpers import killed_keras_victim

SMALL = dict(latent_dim=8, generator_width=4, curve_points=1, noise=0)
SURROGATE = dict(backbone="cnn", weights="none", input_size=COLOUR_SIZE, batch_size=16)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _known(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """f(x) = w.x + 0.002 |x|^2 per row (a smooth function of pixels); gradient w + 0.004 x."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    return flat @ w + 0.002 * (flat ** 2).sum(axis=1)


def test_zero_order_estimate_points_along_the_true_gradient():
    rng = np.random.default_rng(0)
    dims, m = 48, 400
    x = rng.uniform(50, 200, size=(3, 4, 4, 3))
    w = rng.standard_normal(dims)
    deltas = rng.standard_normal((3, m, 4, 4, 3))
    points = np.concatenate([x[:, None], x[:, None] + deltas], axis=1)
    losses = _known(points.reshape(-1, 4, 4, 3), w).reshape(3, m + 1)
    estimate = zo_gradient(losses, deltas)
    true = w.reshape(1, 4, 4, 3) + 0.004 * x
    for i in range(3):
        assert _cosine(estimate[i], true[i]) > 0.9
    # magnitude too: the estimate is unbiased, not only aligned
    ratio = np.linalg.norm(estimate) / np.linalg.norm(true)
    assert 0.8 < ratio < 1.5


def test_estimate_on_quantised_uint8_perturbations_still_follows_the_gradient():
    rng = np.random.default_rng(1)
    base = rng.integers(40, 215, size=(2, 4, 4, 3)).astype(np.uint8)
    w = rng.standard_normal(48)
    moved = perturb(base, 400, 0.05, rng)  # RMS about 13 grey levels, rounded on the wire
    assert moved.dtype == np.uint8 and moved.shape == (2, 400, 4, 4, 3)
    points = np.concatenate([base[:, None], moved], axis=1).astype(np.float64)
    losses = _known(points.reshape(-1, 4, 4, 3), w).reshape(2, 401)
    estimate = zo_gradient(losses, moved.astype(np.int16) - base[:, None].astype(np.int16))
    true = w.reshape(1, 4, 4, 3) + 0.004 * base.astype(np.float64)
    assert min(_cosine(estimate[i], true[i]) for i in range(2)) > 0.85
    # a perturbation rounded away entirely contributes nothing (no division by zero)
    flat = zo_gradient(np.zeros((1, 2)), np.zeros((1, 1, 4, 4, 3), np.int16))
    assert not flat.any()


def test_quantize_rounds_and_clips():
    assert quantize(np.array([-3.0, 0.4, 0.6, 254.5, 300.0])).tolist() == [0, 0, 1, 254, 255]


@pytest.mark.parametrize("method,budget", [("dfme", 1000), ("maze", 1234), ("dfms-hl", 77),
                                           ("dfme", 50)])
def test_the_plan_spends_exactly_the_budget(method, budget):
    config = DataFreeConfig(method=method, budget=budget, batch_size=16)
    assigned = 0
    while assigned < budget:
        gen, student = plan_iteration(assigned, config)
        assert gen >= 0 and student > 0
        assigned += gen + student
    assert assigned == budget


def _queries(first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries first..first+n-1 of a made-up stream: 2x2 images and answers named by number."""
    numbers = np.arange(first, first + n)
    images = np.broadcast_to((numbers % 251).astype(np.uint8)[:, None, None, None],
                             (n, 2, 2, 3)).copy()
    return images, np.stack([numbers, -numbers], axis=1).astype(np.float32)


def test_replay_buffer_keeps_the_last_queries_whatever_their_grouping():
    one, other = ReplayBuffer(5, (2, 2, 3), 2), ReplayBuffer(5, (2, 2, 3), 2)
    one.add(0, *_queries(0, 12))
    for first, n in ((0, 3), (3, 1), (4, 6), (10, 2)):
        other.add(first, *_queries(first, n))
    assert one.count == other.count == 12 and len(one) == 5
    assert one.digest() == other.digest()
    images, answers = one.sample(np.random.default_rng(0), 200)
    assert sorted(set(answers[:, 0].tolist())) == [7, 8, 9, 10, 11]  # the last five only
    assert (images[:, 0, 0, 0] == answers[:, 0]).all()  # image and answer stay paired
    with pytest.raises(ValueError, match="first"):
        one.add(11, *_queries(11, 1))  # query 11 is already in
    gap = ReplayBuffer(5, (2, 2, 3), 2)
    gap.add(0, *_queries(0, 6))
    gap.add(8, *_queries(8, 4))  # 6 and 7 never added: their slots are stale
    assert gap.count == 12 and gap.digest() != one.digest()


def test_class_diversity_on_hand_made_predictions():
    from attack.generator import class_diversity

    k = 4
    uniform_mean = np.eye(k)  # each image sure of another class: the mean is uniform
    assert abs(float(class_diversity(uniform_mean))) < 1e-6
    one_class = np.tile([[1.0, 0, 0, 0]], (3, 1))
    assert abs(float(class_diversity(one_class)) - np.log(k)) < 1e-5
    two = np.array([[0.5, 0.5, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # mean: two classes
    assert abs(float(class_diversity(two)) - (np.log(k) - np.log(2))) < 1e-5


def test_victim_spread_terms_have_the_gradient_of_the_batch_mean_entropy():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3))  # a known victim: softmax(x @ w), 3 classes
    x = rng.standard_normal((5, 4))

    def probs(points):
        logits = points @ w
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def entropy(points):
        mean = probs(points).mean(axis=0)
        return -(mean * np.log(mean)).sum()

    h = 1e-5
    for i in range(len(x)):
        for d in range(4):
            step = np.zeros_like(x)
            step[i, d] = h
            true = (entropy(x + step) - entropy(x - step)) / (2 * h)
            # the terms at x_i and at x_i +/- h (columns: base, plus, minus), m fixed at x
            columns = np.stack([probs(x), probs(x + step), probs(x - step)], axis=1)
            terms = victim_spread(columns, floor=0.0)[i]
            assert abs((terms[1] - terms[2]) / (2 * h) / len(x) - true) < 1e-6


_KilledVictim = killed_keras_victim  # a KerasVictim killed after `calls` calls


@pytest.fixture(scope="module")
def victim_model():
    return colour_victim()


def _extract(victim, run_dir, *, resume=False, **hyper):
    from attack import Surrogate
    from attack.datafree import DataFree

    return DataFree(**{**SMALL, **hyper}).extract(
        victim, None, surrogate=Surrogate(**SURROGATE), run_dir=run_dir, resume=resume)


@pytest.mark.slow  # 10-25 s: two runs, a surrogate export
def test_killed_run_resumes_without_paying_an_answered_query_again(victim_model, tmp_path):
    from attack.journal import QueryJournal

    budget, run_dir = 400, tmp_path / "run"
    first = _KilledVictim(victim_model, calls=9)  # dies in iteration 2 (112 queries each)
    with pytest.raises(KeyboardInterrupt):
        _extract(first, run_dir, budget=budget, checkpoint_every=1)
    with QueryJournal.open(run_dir) as journal:
        answered_first = journal.num_answered
        pending = journal.pending().tolist()
        first_answers = dict(zip(journal.answered_indices().tolist(),
                                 journal.responses().copy(), strict=True))
    assert 0 < answered_first < budget and pending  # a batch was in flight when it died
    assert first.queries == answered_first  # the colour victim's uint8 input needs no probe
    assert (run_dir / "datafree_state.npz").is_file()  # the checkpoint after iteration 1
    assert sorted((run_dir / "queries").glob("it00000002_*.npz"))  # iteration 2: replayed

    second = _KilledVictim(victim_model, calls=None)
    result = _extract(second, run_dir, resume=True, budget=budget, checkpoint_every=1)
    assert result.queries == budget
    # only the unanswered queries were sent: the journal's answers were read back
    assert second.queries == budget - answered_first
    with QueryJournal.open(run_dir) as journal:
        assert journal.num_answered == budget
        assert sorted(journal.answered_indices().tolist()) == list(range(budget))
        for index, answer in first_answers.items():
            np.testing.assert_array_equal(
                journal.responses()[journal.answered_indices().tolist().index(index)], answer)


@pytest.mark.slow  # 10-25 s: two runs, a surrogate export
def test_prior_hybrid_sends_renders_only_and_resumes_without_paying_twice(victim_model,
                                                                         tmp_path):
    """The data-free hybrid: the natural share is the procedural prior's renders of theta
    seeded by the iteration (no image read), so a killed run resumes on the same queries."""
    import json

    from attack.journal import QueryJournal
    from attack.prior import ImagePrior

    budget, run_dir = 400, tmp_path / "run"
    hyper = dict(budget=budget, checkpoint_every=1, natural_share=0.5, natural_source="prior",
                 keep_queries=True, replay_steps=2)
    first = _KilledVictim(victim_model, calls=9)
    with pytest.raises(KeyboardInterrupt):
        _extract(first, run_dir, **hyper)
    with QueryJournal.open(run_dir) as journal:
        answered_first = journal.num_answered
    second = _KilledVictim(victim_model, calls=None)
    result = _extract(second, run_dir, resume=True, **hyper)
    assert result.queries == budget and second.queries == budget - answered_first
    extra = json.loads((run_dir / "report.json").read_text())["extra"]
    assert extra["natural_source"] == "prior" and extra["natural_queries"] > 0
    prior = ImagePrior((COLOUR_SIZE, COLOUR_SIZE), seed=0)
    with np.load(run_dir / "queries" / "it00000003_s.npz") as block:
        sent = block["images"]
    rendered = prior.render(prior.sample(len(sent) // 2, np.random.default_rng([0, 3, 4])))
    # half the surrogate round is the prior's renders, in the order drawn; the rest generated
    matches = [int(np.flatnonzero((sent == image).all(axis=(1, 2, 3)))[0])
               for image in rendered]
    assert len(matches) == len(sent) // 2 and matches == sorted(matches)


def _expected_buffer(run_dir, capacity: int, count: int) -> ReplayBuffer:
    """The buffer rebuilt by hand from RUN_DIR/replay/'s blocks and the journal's answers."""
    from attack.journal import QueryJournal

    with QueryJournal.open(run_dir) as journal:
        answers = dict(zip(journal.answered_indices().tolist(), journal.responses().copy(),
                           strict=True))
    blocks = []
    for path in (run_dir / "replay").glob("it*.npz"):
        with np.load(path) as block:
            blocks.append((int(block["first"]), block["images"]))
    buffer = ReplayBuffer(capacity, (COLOUR_SIZE, COLOUR_SIZE, 3), len(COLOUR_CLASSES))
    for first, images in sorted(blocks, key=lambda b: b[0]):
        start = max(first, buffer.count)
        rows = [i for i in range(start, first + len(images)) if i < count]
        buffer.add(start, images[start - first:start - first + len(rows)],
                   np.stack([answers[i] for i in rows]))
    return buffer


@pytest.mark.slow  # 10-25 s: two runs, a surrogate export
def test_replay_buffer_after_a_kill_is_rebuilt_as_it_was_and_nothing_is_paid_twice(
        victim_model, tmp_path):
    import json

    from attack.journal import QueryJournal

    budget, size, run_dir = 400, 150, tmp_path / "run"
    hyper = dict(budget=budget, checkpoint_every=1, replay_steps=2, replay_size=size)
    first = _KilledVictim(victim_model, calls=16)  # 112 queries per iteration: dies in the 3rd
    with pytest.raises(KeyboardInterrupt):
        _extract(first, run_dir, **hyper)
    with np.load(run_dir / "datafree_state.npz") as state:
        saved = json.loads(bytes(state["meta"]).decode())["replay"]
    assert saved["count"] == 224  # two iterations answered and checkpointed
    # the first iteration's generator block (queries 0-31) left the buffer and the disk
    assert sorted(p.name for p in (run_dir / "replay").glob("*.npz")) == [
        "it00000001_s.npz", "it00000002_g0.npz", "it00000002_s.npz"]
    expected = _expected_buffer(run_dir, size, saved["count"])
    assert len(expected) == size and expected.digest() == saved["digest"]
    with QueryJournal.open(run_dir) as journal:
        answered_first = journal.num_answered

    second = _KilledVictim(victim_model, calls=None)
    result = _extract(second, run_dir, resume=True, **hyper)
    assert result.queries == budget
    assert second.queries == budget - answered_first  # no answered query sent again
    report = json.loads((run_dir / "report.json").read_text())["extra"]["replay"]
    assert report["rebuilt_on_resume"] is True  # the digest of the checkpoint, matched
    assert report["kept"] == size
    with QueryJournal.open(run_dir) as journal:  # the budget, exactly, with replay
        assert sorted(journal.answered_indices().tolist()) == list(range(budget))
    assert _expected_buffer(run_dir, size, budget).digest() == report["digest"]


def _test_set(model, n=200):
    from common.data import ImageDataset

    images = colour_images(n, seed=2)
    labels = np.argmax(np.asarray(model(images.astype(np.float32))), axis=1)
    return ImageDataset(images, labels, COLOUR_CLASSES, "colours-test")


@pytest.mark.slow
@pytest.mark.parametrize("method,hyper", [
    ("dfme", {}), ("maze", {"directions": 2}), ("dfms-hl", {}),
    ("dfme", {"natural_share": 0.5}),
    ("dfme", {"natural_share": 0.5, "natural_source": "prior"})])
def test_each_method_agrees_with_the_victim_well_above_chance(victim_model, tmp_path, method,
                                                              hyper):
    from attack import KerasVictim, Surrogate
    from attack.datafree import DataFree

    victim = KerasVictim(victim_model, input_range="0,255", batch_size=64)
    transfer = (colour_images(600, seed=1) if hyper.get("natural_share")
                and hyper.get("natural_source") != "prior" else None)
    result = DataFree(method=method, budget=2000, latent_dim=32, generator_width=16,
                      curve_points=2, noise=200, **hyper).extract(
        victim, transfer, surrogate=Surrogate(**{**SURROGATE, "batch_size": 32}),
        run_dir=tmp_path / "run", test=_test_set(victim_model))
    assert result.queries == 2000
    assert result.headline["fidelity_test"] > 0.55  # chance: 1/3
    assert result.report.is_file()


def _run_cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("args,named", [
    (["--method", "gan"], "method"),
    (["--budget", "0"], "budget"),
    (["--epsilon", "0"], "epsilon"),
    (["--natural-share", "0.5"], "transfer_set"),
    (["--natural-share", "1.5", "--transfer-set", "x.npz"], "natural_share"),
    (["--method", "dfms-hl", "--directions", "2"], "directions"),
    (["--transfer-set", "x.npz"], "natural_share"),
    (["--distribute", "mirrored"], "distribute"),
    (["--method", "dfms-hl", "--diversity-of", "victim"], "diversity_of"),
    (["--replay-steps", "-1"], "replay_steps"),
    (["--replay-size", "0"], "replay_size"),
    (["--natural-source", "web"], "natural_source"),
    (["--natural-source", "prior"], "natural_share"),
    (["--natural-source", "prior", "--natural-share", "0.5", "--transfer-set", "x.npz"],
     "transfer_set"),
    (["--final-epochs", "-1"], "final_epochs"),
    (["--final-epochs", "two"], "final_epochs"),
])
def test_bad_flags_are_one_line_and_exit_2_before_anything_is_written(args, named, capsys,
                                                                      tmp_path):
    out = tmp_path / "run"
    code, err = _run_cli([*args, "--out", str(out)], capsys)
    assert code == 2
    assert len(err) == 1 and named.replace("_", "-") in err[0].replace("_", "-"), err
    assert not out.exists()


# -- the final pass --------------------------------------------------------------------------------
def _block(run_dir, folder: str, iteration: int, phase: str, first: int, n: int) -> None:
    """A stored query block of `n` 2x2 images, query q's first pixel q % 251."""
    images = np.zeros((n, 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(first, first + n) % 251
    (run_dir / folder).mkdir(parents=True, exist_ok=True)
    save_npz(run_dir / folder / f"it{iteration:08d}_{phase}.npz", images=images,
             first=np.int64(first))


def test_the_final_pass_reads_every_stored_query_in_query_order_and_names_a_gap(tmp_path):
    run = tmp_path / "run"
    _block(run, "replay", 1, "g0", 0, 32)  # before the checkpoint: moved to replay/
    _block(run, "replay", 1, "s", 32, 80)
    _block(run, "queries", 2, "g0", 112, 32)  # after it: still in queries/
    _block(run, "queries", 2, "s", 144, 56)
    assert [(first, n, path.parent.name) for first, n, path in query_blocks(run)] == [
        (0, 32, "replay"), (32, 80, "replay"), (112, 32, "queries"), (144, 56, "queries")]
    assert [b[:2] for b in query_blocks(run, 1)] == [(0, 32), (32, 80)]  # iteration 1 only
    images = stored_queries(run, 200)
    assert images.shape == (200, 2, 2, 3) and images.dtype == np.uint8
    assert images[:, 0, 0, 0].tolist() == (np.arange(200) % 251).tolist()
    assert stored_queries(run, 150)[:, 0, 0, 0].tolist() == list(range(150))  # cut at the count
    assert missing_queries(query_blocks(run), 200) == []
    assert missing_queries(query_blocks(run), 230) == [(200, 230)]
    (run / "replay" / "it00000001_s.npz").unlink()
    assert missing_queries(query_blocks(run), 200) == [(32, 112)]
    with pytest.raises(RuntimeError, match="queries 32-111"):
        stored_queries(run, 200)


def _listing(folder) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*"))


def test_a_final_pass_over_deleted_queries_is_refused_in_one_line_before_anything_is_written(
        tmp_path, capsys):
    """A run made with --final-epochs 0 and no replay buffer deleted its query blocks at each
    checkpoint: resuming it with a final pass is refused, naming the flag, read only."""
    run = tmp_path / "run"
    args = ["--grpc", "localhost:1", "--model", "m", "--budget", "400", "--out", str(run)]
    run.mkdir()
    (run / "config.json").write_text("{}")
    write_state(run / STATE_NAME, {}, {"iteration": 2, "assigned": 224})
    _block(run, "queries", 3, "g0", 224, 32)  # iterations 1-2 gone, iteration 3's kept
    before = _listing(run)
    code, err = _run_cli([*args, "--resume", "--final-epochs", "3"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "final-epochs" in err[0].replace("_", "-") and "queries 0-223" in err[0]
    assert _listing(run) == before
    _block(run, "replay", 1, "all", 0, 224)  # every query before the checkpoint is there
    from attack.datafree import check_final_pass

    check_final_pass(DataFreeConfig(resume=True, final_epochs=3, out=str(run)))  # no error
    check_final_pass(DataFreeConfig(resume=True, final_epochs=0, out=str(tmp_path / "x")))


def _recording(victim, sent: list):
    """`victim` whose journaled queries (those with an `on_send`) are appended to `sent`."""
    predict = victim.predict

    def recorded(images, **kwargs):
        if kwargs.get("on_send") is not None:
            sent.append(np.array(images, copy=True))
        return predict(images, **kwargs)

    victim.predict = recorded
    return victim


@pytest.mark.slow  # 30-60 s: three sessions of a run, three final passes, exports
def test_final_pass_trains_on_exactly_the_answered_queries_and_resumes_paying_nothing(
        victim_model, tmp_path, monkeypatch):
    """The final pass trains on every query the victim answered, each once, with no replay
    buffer holding them (the blocks are kept for it); a finished run resumed with another
    final pass sends nothing, and a kill during that pass resumes from its last epoch."""
    import json
    from collections import Counter

    import keras

    from attack.surrogate import SurrogateTrainer

    budget, run_dir, sent, fitted = 224, tmp_path / "run", [], []
    hyper = dict(budget=budget, checkpoint_every=1, replay_steps=0, final_epochs=1, noise=20,
                 curve_points=2)
    fit = SurrogateTrainer.fit

    class Killer(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt("killed in the final pass")

    def recorded_fit(self, images, targets, *, callbacks=(), kill=False):
        fitted.append((np.array(images, copy=True), np.array(targets, copy=True)))
        return fit(self, images, targets, callbacks=[*callbacks, *([Killer()] if kill else [])])

    monkeypatch.setattr(SurrogateTrainer, "fit", recorded_fit)
    test = _test_set(victim_model, 60)
    first = _recording(_KilledVictim(victim_model, calls=None), sent)
    from attack import Surrogate
    from attack.datafree import DataFree

    def extract(victim, **more):
        resume = run_dir.exists()
        return DataFree(**{**SMALL, **hyper, **more}).extract(
            victim, None, surrogate=Surrogate(**SURROGATE), run_dir=run_dir, resume=resume,
            test=test)

    extract(first)
    assert sum(map(len, sent)) == budget and len(fitted) == 1
    images, targets = fitted[0]
    # exactly the answered queries, each once (the multiset of images the victim was sent)
    key = Counter(image.tobytes() for image in np.concatenate(sent))
    assert len(images) == budget and Counter(image.tobytes() for image in images) == key
    assert np.allclose(targets.sum(axis=1), 1)  # dfme: the victim's probabilities
    report = json.loads((run_dir / "report.json").read_text())
    extra = report["extra"]
    assert extra["surrogate_reported"] == "final pass"
    assert extra["final_pass"]["examples"] == budget and extra["final_pass"]["epochs"] == 1
    assert report["evaluation"]["surrogate_acc"] == report["curve"][-1]["surrogate_acc"]
    online = extra["online_surrogate_at_budget"]["surrogate_acc"]

    # resumed with 3 epochs, killed after the first: nothing sent, then the pass resumes
    monkeypatch.setattr(SurrogateTrainer, "fit",
                        lambda self, x, y, callbacks=(): recorded_fit(self, x, y, kill=True))
    sent.clear()
    second = _recording(_KilledVictim(victim_model, calls=None), sent)
    with pytest.raises(KeyboardInterrupt):
        extract(second, final_epochs=3)
    assert second.queries == 0 and not sent  # the test answers cached, no query
    monkeypatch.setattr(SurrogateTrainer, "fit", recorded_fit)
    third = _recording(_KilledVictim(victim_model, calls=None), sent)
    extract(third, final_epochs=3)
    assert third.queries == 0 and not sent and len(fitted) == 3
    np.testing.assert_array_equal(fitted[2][0], images)  # the same images, the same order
    extra = json.loads((run_dir / "report.json").read_text())["extra"]
    assert extra["final_pass"]["epochs"] == 3 and extra["final_pass"]["examples"] == budget
    assert extra["final_pass"]["first_epoch_this_session"] == 1  # epoch 1 was done
    assert extra["sent_this_session"] == 0
    assert extra["online_surrogate_at_budget"]["surrogate_acc"] == online  # restored, same

    # label-only: the final pass trains on the top-1 labels
    fitted.clear()
    label_dir = tmp_path / "hl"
    DataFree(**{**SMALL, **hyper, "method": "dfms-hl", "budget": 96}).extract(
        _KilledVictim(victim_model, calls=None), None, surrogate=Surrogate(**SURROGATE),
        run_dir=label_dir)
    labels = fitted[0][1]
    assert len(labels) == 96 and set(np.unique(labels).tolist()) == {0.0, 1.0}
    assert (labels.sum(axis=1) == 1).all()
