"""The procedural-prior thief (`attack.prior`, `attack.synthetic`): renderer, elites, resume.

The renderer and the search's pure parts are checked on hand-made inputs (no TensorFlow): the
same theta gives the same pixels, the elites keep the best-scoring theta per class, the rarely
answered classes get the most mutations. End to end (slow: a surrogate is trained and
exported), an in-process colour victim is killed mid-run and resumed without paying an answered
query twice, and two victims of `tests.victim_matrix` with foreign signatures (float input in
[-1, 1]; a named signature answering top-2 pairs) are stolen well above chance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from attack.prior import DIM, KINDS, ImagePrior, glyph_atlas, hsv_to_rgb
from attack.synthetic import (
    Elites,
    SyntheticConfig,
    main,
    plan_round,
    select_screened,
    shift_images,
)
from common.errors import UsageError
from serving.testing import COLOUR_CLASSES, colour_images
from tests.attack.helpers import colour_test, extract_synthetic, killed_keras_victim


# -- the renderer ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prior():
    return ImagePrior((16, 16))


def test_render_is_deterministic_uint8_of_the_requested_size(prior):
    theta = prior.sample(40, np.random.default_rng(0))
    images = prior.render(theta)
    assert images.dtype == np.uint8 and images.shape == (40, 16, 16, 3)
    again = ImagePrior((16, 16)).render(theta.copy())
    np.testing.assert_array_equal(images, again)  # a new prior with the same seed: same pixels
    np.testing.assert_array_equal(prior.render(theta[5:9]), images[5:9])  # batch-independent
    assert prior.render(theta, chunk=7).tobytes() == images.tobytes()
    # the images differ from each other and use the range
    assert len({im.tobytes() for im in images}) == 40
    assert images.min() < 30 and images.max() > 225
    # out-of-range values are clipped, not extrapolated
    np.testing.assert_array_equal(prior.render(theta * 3 - 1), prior.render(np.clip(
        theta * 3 - 1, 0, 1)))


def test_render_sizes_and_natural_backgrounds():
    rect = ImagePrior((12, 20))
    assert rect.render(rect.sample(3, np.random.default_rng(1))).shape == (3, 12, 20, 3)
    natural = np.full((2, 16, 16, 3), 77, np.uint8)
    with_bg = ImagePrior((16, 16), natural)
    theta = np.full((1, DIM), 0.5, np.float32)
    theta[0, 0] = 0.99  # background kind: natural (a gradient without natural images)
    plain = ImagePrior((16, 16)).render(theta)
    assert not np.array_equal(with_bg.render(theta), plain)
    with pytest.raises(Exception, match="backgrounds"):
        ImagePrior((16, 16), np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(Exception, match="theta"):
        ImagePrior((16, 16)).render(np.zeros((2, DIM + 1)))


def test_each_shape_kind_changes_the_picture(prior):
    theta = np.full((len(KINDS), DIM), 0.5, np.float32)
    from attack.prior import LAYOUT

    theta[:, LAYOUT["s0_kind"]] = ((np.arange(len(KINDS)) + 0.5) / len(KINDS))[:, None]
    theta[:, LAYOUT["s0_size"]] = 0.5
    theta[:, LAYOUT["s0_fill"]] = (0.0, 1.0, 1.0)  # red on a grey background
    theta[:, LAYOUT["s0_border"]] = (0.6, 1.0, 1.0)
    theta[:, LAYOUT["bg_colour"]] = (0.0, 0.0, 0.5)
    for name in ("s1_on", "s2_on", "g0_on", "g1_on"):
        theta[:, LAYOUT[name]] = 1.0  # off
    images = prior.render(theta)
    assert len({im.tobytes() for im in images}) == len(KINDS)


def test_glyph_atlas_and_colours():
    atlas = glyph_atlas(32)
    assert atlas.dtype == np.float32 and atlas.shape[1:] == (32, 32)
    assert atlas.min() >= 0 and atlas.max() <= 1
    assert (atlas.reshape(len(atlas), -1).max(axis=1) > 0.5).all()  # no empty glyph
    np.testing.assert_allclose(hsv_to_rgb(np.array([[0.0, 1, 1], [1 / 3, 1, 1], [0, 0, 1]])),
                               [[1, 0, 0], [0, 1, 0], [1, 1, 1]], atol=1e-6)


# -- the search --------------------------------------------------------------------------------
def test_elites_keep_the_best_theta_per_class_and_count_top_answers():
    elites = Elites(num_classes=3, size=2, dim=4)
    theta = np.arange(20, dtype=np.float32).reshape(5, 4) / 20
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1],
                      [0.9, 0.05, 0.05], [0.2, 0.7, 0.1]], np.float32)
    elites.update(theta, probs)
    assert elites.seen.tolist() == [3, 2, 0]
    np.testing.assert_array_equal(elites.theta[0], theta[[3, 0]])  # 0.9 then 0.7
    np.testing.assert_array_equal(elites.theta[1], theta[[1, 4]])
    np.testing.assert_allclose(elites.score[2], [0.1, 0.1])  # never top-1, still pursued
    # a tie keeps the elite that was there first ahead; a better one enters, the worst leaves
    elites.update(theta[:1] + 0.5, np.array([[0.9, 0.95, 0.0]], np.float32))
    np.testing.assert_array_equal(elites.theta[0], [theta[3], theta[0] + 0.5])
    np.testing.assert_array_equal(elites.theta[1, 0], theta[0] + 0.5)
    assert elites.seen.tolist() == [3, 3, 0]


def test_label_only_answers_make_elites_only_of_the_answered_class():
    elites = Elites(num_classes=3, size=4, dim=2)
    elites.update(np.ones((2, 2), np.float32), np.eye(3, dtype=np.float32)[[0, 0]])
    assert elites.counts().tolist() == [2, 0, 0]
    w = elites.weights(1.0)
    assert w.tolist() == [1.0, 0.0, 0.0]  # a class with no elite gets no mutation


def test_plan_round_balances_towards_the_classes_seen_least():
    config = SyntheticConfig(explore=0.25, balance=1.0, elites=4)
    elites = Elites(num_classes=3, size=4, dim=DIM)
    theta0, target0 = plan_round(200, elites, DIM, config, np.random.default_rng(0))
    assert (target0 == -1).all() and theta0.shape == (200, DIM)  # no elite yet: all fresh
    assert theta0.dtype == np.float32
    np.testing.assert_array_equal(theta0, theta0.astype(np.float16).astype(np.float32))
    probs = np.zeros((200, 3), np.float32)
    probs[:, 0] = 0.9
    probs[:10, 0], probs[:10, 1] = 0.1, 0.9  # class 1 answered 10 times, class 0 190
    probs[10:12, 2] = 0.05  # class 2 never top-1, but an elite
    elites.update(theta0, probs)
    theta, target = plan_round(4000, elites, DIM, config, np.random.default_rng(1))
    assert (target == -1).sum() == 1000  # the explore share
    counts = np.bincount(target[target >= 0], minlength=3)
    assert counts[2] > counts[1] > counts[0] > 0  # 1/1, 1/11, 1/191
    # a mutation stays near its parent: most coordinates unchanged
    moved = (theta[target == 2][:, None, :] != elites.theta[2][None, :2, :]).mean(axis=2)
    assert moved.min(axis=1).mean() < 0.5
    again, _ = plan_round(4000, elites, DIM, config, np.random.default_rng(1))
    np.testing.assert_array_equal(theta, again)


def test_screen_sends_the_most_uncertain_or_the_rarest_candidates():
    probs = np.array([[1.0, 0.0, 0.0],     # sure of class 0
                      [0.34, 0.33, 0.33],  # least sure
                      [0.5, 0.5, 0.0],
                      [0.1, 0.1, 0.8],     # mostly class 2
                      [0.5, 0.5, 0.0]], np.float32)  # ties with row 2
    assert select_screened(probs, 2, "entropy", np.zeros(3)).tolist() == [1, 2]
    assert select_screened(probs, 5, "entropy", np.zeros(3)).tolist() == [0, 1, 2, 3, 4]
    seen = np.array([100, 100, 0])  # class 2 never answered: its mass wins
    assert select_screened(probs, 1, "rare", seen).tolist() == [3]
    assert select_screened(probs, 2, "rare", seen).tolist() == [1, 3]
    assert select_screened(probs, 1, "rare", np.array([0, 100, 100])).tolist() == [0]
    with pytest.raises(Exception, match="screen_by"):
        select_screened(probs, 1, "margin", seen)


def test_shift_images_moves_whole_images():
    images = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
    assert shift_images(images, 0, np.random.default_rng(0)) is images
    shifted = shift_images(images, 2, np.random.default_rng(0))
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    assert set(np.unique(shifted)) <= set(np.unique(images))
    flipped = shift_images(images, 0, np.random.default_rng(3), flip=True)
    assert all(np.array_equal(f, i) or np.array_equal(f, i[:, ::-1])
               for f, i in zip(flipped, images, strict=True))


# -- the attack --------------------------------------------------------------------------------
@pytest.mark.slow  # ~20 s each: two runs, a surrogate trained and exported
@pytest.mark.parametrize("screen,natural_share", [(1, 0.0), (3, 0.3)])
def test_killed_run_resumes_without_paying_and_spends_the_exact_budget(colour_model, tmp_path,
                                                                       screen, natural_share):
    from attack.journal import QueryJournal

    budget, run_dir = 250, tmp_path / "run"  # rounds of 100, 100, 50
    hyper = dict(budget=budget, round_size=100, screen=screen, natural_share=natural_share,
                 natural=colour_images(120, seed=5) if natural_share else None)
    first = killed_keras_victim(colour_model, calls=9)  # 16 per call: dies in round 2
    with pytest.raises(KeyboardInterrupt):
        extract_synthetic(first, run_dir, **hyper)
    if screen > 1:  # round 2's chosen theta were written before any was sent
        with np.load(run_dir / "queries" / "r000002.npz") as block:
            chosen = block["theta"].copy()
        assert chosen.shape == (100, DIM)
    with QueryJournal.open(run_dir) as journal:
        answered_first = journal.num_answered
        pending = journal.pending().tolist()
        first_answers = dict(zip(journal.answered_indices().tolist(),
                                 journal.responses().copy(), strict=True))
    assert 100 < answered_first < 200 and pending
    assert first.queries == answered_first
    assert (run_dir / "synthetic_state.npz").is_file()  # after round 1
    assert (run_dir / "queries" / "r000002.npz").is_file()  # round 2's theta, kept

    second = killed_keras_victim(colour_model, calls=None)
    result = extract_synthetic(second, run_dir, resume=True, **hyper)
    if screen > 1:  # the resumed run sent the stored choice, not a new screen's
        with np.load(run_dir / "queries" / "r000002.npz") as block:
            np.testing.assert_array_equal(block["theta"], chosen)
    assert result.queries == budget
    assert second.queries == budget - answered_first  # answered queries were not sent again
    with QueryJournal.open(run_dir) as journal:
        assert journal.num_answered == budget
        assert sorted(journal.answered_indices().tolist()) == list(range(budget))
        index = journal.answered_indices().tolist()
        for k, answer in first_answers.items():
            np.testing.assert_array_equal(journal.responses()[index.index(k)], answer)
    import json

    report = json.loads((run_dir / "report.json").read_text())
    assert report["extra"]["rounds"] == 3
    assert sum(report["extra"]["answers_per_class"].values()) == budget
    assert report["extra"]["sent_this_session"] == budget - answered_first
    # rounds 2 and 3 screened (300 and 150 candidates), by the first session or the second
    assert report["extra"]["screened_candidates"] in ((0,) if screen == 1 else (105, 315))
    # natural images: 30 + 30 + 15, the next ones of one permutation of the pool each round
    assert report["extra"]["natural_queries"] == (75 if natural_share else 0)
    natural = []
    for r in (1, 2, 3):
        with np.load(run_dir / "queries" / f"r{r:06d}.npz") as block:
            natural.append(block["natural"])
    natural = np.concatenate(natural)
    assert (natural >= 0).sum() == report["extra"]["natural_queries"]
    assert len(np.unique(natural[natural >= 0])) == (natural >= 0).sum()


@pytest.mark.slow  # ~15 s
def test_agrees_with_the_colour_victim_well_above_chance(colour_model, tmp_path):
    from attack import KerasVictim

    victim = KerasVictim(colour_model, input_range="0,255", batch_size=64)
    result = extract_synthetic(victim, tmp_path / "run", budget=600, round_size=200, curve_points=2,
                               test=colour_test(colour_model), seed=3)
    assert result.queries == 600
    assert result.headline["fidelity_test"] > 0.8  # chance: 1/3
    import json

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["evaluation"]["per_class_surrogate"]) == set(COLOUR_CLASSES)
    assert [p["queries"] for p in report["curve"]] == [400, 600]  # rounds end at 200, 400, 600
    assert report["extra"]["classes_never_answered"] == []
    assert "per-class accuracy" in result.report.read_text().lower()


def _recording_victim(model, calls: int):
    """A `KerasVictim` that keeps every journaled request's images (``received``, in the order
    sent) and is killed at its model's call number `calls` (no surrogate is ever trained)."""
    from attack.victim import KerasVictim

    class Victim(KerasVictim):
        received: list[np.ndarray] = []
        made = 0

        def predict(self, images, *, on_send=None, on_result=None):
            if on_send is not None:  # a paid query (the probe of `understand` is not)
                Victim.received.append(np.array(images))
            return super().predict(images, on_send=on_send, on_result=on_result)

        def _call(self, batch):
            if Victim.made >= calls:
                raise KeyboardInterrupt("killed")
            Victim.made += 1
            return super()._call(batch)

    return Victim(model, input_range="0,255", output_kind="logits", batch_size=16)


@pytest.mark.parametrize("given", ["array", "file"])
def test_sent_queries_replays_the_stream_the_victim_received(colour_model, tmp_path, given):
    from attack.journal import QueryJournal
    from attack.synthetic import sent_queries
    from common.data import load_dataset

    pool = colour_images(90, seed=5)
    natural = pool
    if given == "file":  # a data-layer spec: the replay loads it again as the run did
        np.savez(tmp_path / "natural.npz", x=pool, y=np.zeros(len(pool), np.int64))
        natural = load_dataset(str(tmp_path / "natural.npz"), "all")
    run_dir = tmp_path / "run"
    victim = _recording_victim(colour_model, calls=16)  # 7 calls a round: dies in round 3
    with pytest.raises(KeyboardInterrupt):  # rendered shapes on natural crops, natural images
        extract_synthetic(victim, run_dir, budget=300, round_size=100, natural_share=0.3,
                          online_passes=0, natural=natural, seed=4)
    received = np.concatenate(victim.received)
    with QueryJournal.open(run_dir) as journal:
        answered = np.sort(journal.answered_indices())
    assert 200 < len(answered) < 300 and answered.tolist() == list(range(len(answered)))
    blocks = list(sent_queries(run_dir, natural=pool if given == "array" else None))
    assert [first for first, _ in blocks] == [0, 100, 200]
    replayed = np.concatenate([images for _, images in blocks])
    assert replayed.shape == (300, 16, 16, 3) and replayed.dtype == np.uint8
    np.testing.assert_array_equal(replayed[answered], received[answered])
    with np.load(run_dir / "queries" / "r000002.npz") as block:
        natural_rows = block["natural"]
    assert (natural_rows >= 0).sum() == 30  # the natural images are in the stream too
    np.testing.assert_array_equal(replayed[100:200][natural_rows >= 0],
                                  pool[natural_rows[natural_rows >= 0]])
    if given == "array":  # images given to the API are not in the run: asked for by name
        with pytest.raises(Exception, match="natural"):
            next(sent_queries(run_dir))
    with pytest.raises(Exception, match="natural images the run drew from"):
        next(sent_queries(run_dir, natural=pool[::-1]))


@pytest.mark.slow  # ~20 s: three final passes and exports
def test_resume_with_other_epochs_retrains_the_final_pass_without_a_query(colour_model,
                                                                         tmp_path):
    from attack.journal import QueryJournal
    from common.errors import UsageError

    run_dir, test = tmp_path / "run", colour_test(colour_model)
    hyper = dict(budget=200, round_size=100, online_passes=0, curve_points=2, test=test)
    first = killed_keras_victim(colour_model, calls=None)
    extract_synthetic(first, run_dir, epochs=1, **hyper)
    with QueryJournal.open(run_dir) as journal:
        answers = journal.responses().copy()
    assert json.loads((run_dir / "report.json").read_text())["extra"]["final_pass"] == {
        "epochs": 1, "examples": 200, "retrained_on_resume": None}

    second = killed_keras_victim(colour_model, calls=None)
    result = extract_synthetic(second, run_dir, resume=True, epochs=3, final_balance=1.0,
                               **hyper)
    assert second.queries == 0 and result.queries == 200  # every answer read back
    with QueryJournal.open(run_dir) as journal:
        np.testing.assert_array_equal(journal.responses(), answers)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["config"]["epochs"] == 3
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3
    assert report["extra"]["final_pass"]["retrained_on_resume"] == {  # and class-balanced
        "from": {"epochs": 1, "final_balance": 0.0}, "to": {"epochs": 3, "final_balance": 1.0}}
    assert report["extra"]["final_pass"]["balance"] == 1.0
    history = json.loads((run_dir / "checkpoints" / "final" / "fit_state.json").read_text())
    assert len(history["history"]["loss"]) == 3  # trained again from the start, 3 epochs
    curve = json.loads((run_dir / "curve.json").read_text())
    assert [p["queries"] for p in curve] == [100, 200]
    prefix = run_dir / "checkpoints" / "prefix_100" / "fit_state.json"
    assert len(json.loads(prefix.read_text())["history"]["loss"]) == 3  # trained again too
    with pytest.raises(UsageError, match="round-size"):  # what decides the queries: refused
        extract_synthetic(second, run_dir, resume=True, epochs=3, final_balance=1.0,
                          **{**hyper, "round_size": 50})

    # no online updates: the surrogate's recipe too is the final pass's, learnt again for free
    fingerprint = history["fingerprint"]
    third = killed_keras_victim(colour_model, calls=None)
    extract_synthetic(third, run_dir, resume=True, epochs=3, final_balance=1.0,
                      learning_rate=0.01, mixup=0.2, **hyper)
    assert third.queries == 0
    with QueryJournal.open(run_dir) as journal:
        np.testing.assert_array_equal(journal.responses(), answers)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["extra"]["final_pass"]["retrained_on_resume"] == {
        "from": {"learning_rate": 0.001, "mixup": 0.0},
        "to": {"learning_rate": 0.01, "mixup": 0.2}}
    assert (report["config"]["learning_rate"], report["config"]["mixup"]) == (0.01, 0.2)
    state = json.loads((run_dir / "checkpoints" / "final" / "fit_state.json").read_text())
    assert state["completed"] and state["fingerprint"] != fingerprint  # trained, not loaded


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    from serving import testing
    from tests import victim_matrix as vm

    base = tmp_path_factory.mktemp("matrix")
    paths, _ = vm.export_matrix(base, vm.train_core())
    with testing.model_server(config_file=base / "models.config") as server:
        yield server, vm


@pytest.mark.slow  # ~1 min: the matrix is trained and exported, three runs over gRPC
@pytest.mark.parametrize("name,hyper", [
    ("float11", {}), ("named_topk", {}),
    # the thief who adapts: screened rounds and a quarter of its natural images, float input
    ("float11", {"screen": 2, "natural_share": 0.25}),
], ids=["float11", "named_topk", "float11-screen-natural"])
def test_matrix_victims_with_foreign_signatures(matrix, name, hyper, tmp_path):
    from attack import ServingVictim
    from common.data import ImageDataset

    server, vm = matrix
    entry = next(e for e in vm.MATRIX if e.name == name)
    images, labels = vm.pattern_images(200, seed=21)
    test = ImageDataset(images, labels, tuple(str(i) for i in range(vm.K)), "patterns")
    with ServingVictim(server.target, name, signature=entry.signature,
                       num_classes=entry.num_classes) as victim:
        # a float input: its range is probed with the thief's natural images (backgrounds of
        # the prior too; sent as queries only with --natural-share)
        natural = vm.pattern_images(600, seed=20)[0]
        result = extract_synthetic(victim, tmp_path / "run", budget=1200, round_size=300, test=test,
                                   natural=natural, **hyper)
    assert result.victim["input_range"] == entry.input_range
    assert result.victim["output_kind"] == entry.kind
    assert result.queries == 1200
    # The victim's most common answer is already 0.47 of these 200 images: a surrogate that
    # answered one class would pass a bar at chance (1/5); measured 0.62-0.725.
    assert result.headline["fidelity_test"] > 0.57, result.headline
    if hyper:  # 4 rounds of 300: 75 natural each; rounds 2-4 screen 2 x 225 rendered
        extra = json.loads((tmp_path / "run" / "report.json").read_text())["extra"]
        assert (extra["natural_queries"], extra["screened_candidates"]) == (300, 1350), extra


# -- the input range of a float victim --------------------------------------------------------
@pytest.fixture(scope="module")
def float_model():
    """An untrained 8x8 softmax classifier in-process taking float32 pixels of unknown range."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3), dtype="float32")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_a_float_input_of_unknown_range_is_refused_without_natural_images(float_model,
                                                                          tmp_path):
    """The prior's renders chose the wrong range for 3 of 32 float victims
    (benchmarks.victim_matrix --probe-source prior): stop before any query instead."""
    from attack import KerasVictim

    victim = KerasVictim(float_model)
    with pytest.raises(UsageError, match=r"`input_range`.*'auto'.*float input.*float32.*"
                                         r"--input-range 0,1.*--transfer-set"):
        extract_synthetic(victim, tmp_path / "run", budget=64, round_size=32)
    assert victim.queries == 0 and not (tmp_path / "run").exists()


def test_natural_images_probe_a_float_input_of_unknown_range(float_model, tmp_path,
                                                             monkeypatch):
    """Given natural images, the range probe sends 64 of them (natural images chose right for
    32 of 32), not renders; the run goes on with the range decided."""
    from attack import KerasVictim
    from attack.victim import Victim

    probed, understand = [], Victim.understand

    def recorded(self, probe_images, *args, **kwargs):
        probed.append(np.array(probe_images, copy=True))
        return understand(self, probe_images, *args, **kwargs)

    monkeypatch.setattr(Victim, "understand", recorded)
    natural = np.random.default_rng(0).integers(0, 256, (100, 8, 8, 3), dtype=np.uint8)
    victim = KerasVictim(float_model)
    result = extract_synthetic(victim, tmp_path / "run", budget=64, round_size=32,
                               natural=natural, epochs=1)
    assert len(probed) == 1 and probed[0].shape == (64, 8, 8, 3)
    pool = {image.tobytes() for image in natural}
    assert all(image.tobytes() in pool for image in probed[0])
    assert result.queries == 64 and victim.probe_queries == 63  # 21 images x 3 ranges
    assert result.victim["input_range_decided_by"].startswith("auto: ")


def test_a_float_input_of_a_given_range_needs_no_natural_images(float_model, tmp_path):
    from attack import KerasVictim

    victim = KerasVictim(float_model, input_range="-1,1")
    result = extract_synthetic(victim, tmp_path / "run", budget=64, round_size=32, epochs=1)
    assert result.queries == 64 and result.victim["input_range"] == "-1,1"
    assert victim.probe_queries == 16  # the output kind only


# -- the command line --------------------------------------------------------------------------
@pytest.mark.parametrize("args,named", [
    (["--budget", "0"], "budget"),
    (["--round-size", "0"], "round_size"),
    (["--explore", "1.5"], "explore"),
    (["--mutation-scale", "0"], "mutation_scale"),
    (["--elites", "0"], "elites"),
    (["--balance", "-1"], "balance"),
    (["--shift", "-1"], "shift"),
    (["--online-passes", "-0.5"], "online_passes"),
    (["--screen", "0"], "screen"),
    (["--screen", "2", "--online-passes", "0"], "screen"),
    (["--screen-by", "margin"], "screen_by"),
    (["--natural-share", "0.3"], "natural_share"),
    (["--natural-share", "1.5", "--transfer-set", "x"], "natural_share"),
    (["--distribute", "mirrored"], "distribute"),
])
def test_bad_flags_are_one_line_and_exit_2_before_anything_is_written(args, named, capsys,
                                                                      tmp_path):
    out = tmp_path / "run"
    code = main([*args, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and named.replace("_", "-") in err[0].replace("_", "-"), err
    assert not out.exists()
