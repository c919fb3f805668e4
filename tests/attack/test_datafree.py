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
    DataFreeConfig,
    ReplayBuffer,
    main,
    perturb,
    plan_iteration,
    quantize,
    victim_spread,
    zo_gradient,
)
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
])
def test_bad_flags_are_one_line_and_exit_2_before_anything_is_written(args, named, capsys,
                                                                      tmp_path):
    out = tmp_path / "run"
    code, err = _run_cli([*args, "--out", str(out)], capsys)
    assert code == 2
    assert len(err) == 1 and named.replace("_", "-") in err[0].replace("_", "-"), err
    assert not out.exists()
