"""`benchmarks.art_compare`: its command line refuses bad input before serving or training,
and both libraries' rows start from the same surrogate and never share another run's answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks import art_compare
from serving.testing import export_tiny_classifier


@pytest.fixture(scope="module")
def victim_dir(tmp_path_factory):
    return export_tiny_classifier(tmp_path_factory.mktemp("models"), "tiny")


@pytest.mark.parametrize(("flags", "flag", "words"), [
    (["--budgets", "0"], "--budgets", "a positive integer"),
    (["--methods", "art-jbda"], "--methods", "invalid choice"),
    (["--seeds", "1", "1"], "--seeds", "distinct seeds"),
    (["--epochs", "0"], "--epochs", "a positive integer"),
    (["--art-learning-rate", "0"], "--art-learning-rate", "0"),
])
def test_bad_flags_are_one_line_and_exit_2(victim_dir, tmp_path, capsys, flags, flag,
                                           words) -> None:
    argv = ["--victim", str(victim_dir), "--test-set", "x.npz", "--transfer-set", "y.npz",
            "--out", str(tmp_path / "out"), *flags]
    assert art_compare.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and words in err[0]
    assert not (tmp_path / "out").exists()


def test_a_folder_without_a_savedmodel_is_refused(tmp_path, capsys) -> None:
    argv = ["--victim", str(tmp_path), "--test-set", "x.npz", "--transfer-set", "y.npz",
            "--out", str(tmp_path / "out")]
    assert art_compare.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--victim" in err and "saved_model.pb" in err


def test_summary_reports_mean_spread_and_seeds_per_label_and_budget() -> None:
    rows = [{"label": "ours-knockoff", "budget": 10, "seed": s, "accuracy": a, "ratio": a / 0.5}
            for s, a in enumerate((0.30, 0.40, 0.50))]
    rows.append({"label": "ours-knockoff[mixup=0.2]", "budget": 10, "seed": 0, "accuracy": 0.6,
                 "ratio": 1.2})
    summary = art_compare._summary(rows)
    assert list(summary) == ["ours-knockoff@10", "ours-knockoff[mixup=0.2]@10"]
    s = summary["ours-knockoff@10"]
    assert s["seeds"] == 3
    assert s["accuracy_mean"] == pytest.approx(0.40)
    assert s["accuracy_sd"] == pytest.approx(0.10)
    assert s["ratio_mean"] == pytest.approx(0.80)
    assert s["per_seed"] == {"0": 0.30, "1": 0.40, "2": 0.50}
    assert summary["ours-knockoff[mixup=0.2]@10"]["accuracy_sd"] == 0.0


def test_recipes_parse_to_trainer_settings_and_name_what_differs(victim_dir) -> None:
    config = art_compare.CompareConfig(victim=str(victim_dir), test_set="x", transfer_set="y",
                                       recipes=("default", "mixup=0.2,batch_size=32"))
    assert art_compare.parse_recipe("default") == {}
    assert art_compare.parse_recipe("mixup=0.2,batch_size=32") == {"mixup": 0.2,
                                                                   "fit_batch_size": 32}
    legacy = {"target_temperature": 1, "mixup": 0, "label_smoothing": 0, "warmup": 0,
              "ema": 0, "color_jitter": 0, "augment": "crop+flip", "learning_rate": 1e-3,
              "batch_size": 64}
    assert art_compare.label("ours-copycat", legacy) == "ours-copycat"
    assert art_compare.label("art-copycat", {"batch_size": 64}) == "art-copycat"
    assert art_compare.label("art-copycat", {"batch_size": 32}) == "art-copycat[batch_size=32]"
    # ART's rate is named only when it is not the first comparison's 0.001 (rows stay reused)
    assert art_compare.label("art-knockoff", {"batch_size": 32, "learning_rate": 1e-3}) == (
        "art-knockoff[batch_size=32]")
    assert art_compare.label("art-knockoff", {"batch_size": 32, "learning_rate": 2e-3}) == (
        "art-knockoff[learning_rate=0.002,batch_size=32]")
    recipe = art_compare.resolved_recipe(config, "target_temperature=1,mixup=0.2,"
                                                 "batch_size=32,ema=0,learning_rate=0.001,"
                                                 "augment=crop+flip")
    assert recipe == {**legacy, "mixup": 0.2, "batch_size": 32}
    assert art_compare.label("ours-knockoff", recipe) == "ours-knockoff[mixup=0.2,batch_size=32]"
    # rows measured before color_jitter existed carry no such key and keep their names
    del recipe["color_jitter"], recipe["augment"]
    assert art_compare.label("ours-knockoff", recipe) == "ours-knockoff[mixup=0.2,batch_size=32]"
    jitter = art_compare.resolved_recipe(config, "color_jitter=0.1,ema=0,learning_rate=0.001,"
                                                 "augment=crop+flip")
    assert art_compare.label("ours-knockoff", jitter) == (
        "ours-knockoff[target_temperature=0.5,color_jitter=0.1,batch_size=32]")
    # 'default' is what attack.knockoff and attack.copycat train with: the committed rows of
    # that recipe (measured when it was spelt out) keep their name and are reused
    default = art_compare.resolved_recipe(config, "default")
    assert default == art_compare.resolved_recipe(config, "ema=0.99,learning_rate=0.002,"
                                                          "augment=none")
    assert art_compare.label("ours-knockoff", default) == (
        "ours-knockoff[target_temperature=0.5,ema=0.99,augment=none,learning_rate=0.002,"
        "batch_size=32]")
    assert art_compare.label("ours-knockoff", art_compare.resolved_recipe(
        config, "mixup=0.2")) == ("ours-knockoff[target_temperature=0.5,mixup=0.2,ema=0.99,"
                                  "augment=none,learning_rate=0.002,batch_size=32]")


@pytest.mark.parametrize("recipe", ["mixup", "speed=2", "mixup=0.1,mixup=0.2", "mixup=x",
                                    "target_temperature=0", "warmup=1.5", "augment=rotate",
                                    "color_jitter=1"])
def test_bad_recipes_are_refused_before_anything_runs(victim_dir, tmp_path, capsys,
                                                      recipe) -> None:
    argv = ["--victim", str(victim_dir), "--test-set", "x.npz", "--transfer-set", "y.npz",
            "--out", str(tmp_path / "out"), "--recipes", recipe]
    assert art_compare.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--recipes" in err[0] and recipe in err[0]
    assert not (tmp_path / "out").exists()


def test_rows_of_other_runs_are_read_back_only_when_they_carry_settings(tmp_path) -> None:
    path = tmp_path / "rows.json"
    assert art_compare._load_rows(path) == []
    path.write_text('[{"label": "art-knockoff", "settings": {"epochs": 5}}, {"label": "x"}]')
    assert art_compare._load_rows(path) == [{"label": "art-knockoff",
                                             "settings": {"epochs": 5}}]
    path.write_text("[{")
    with pytest.raises(art_compare.UsageError, match="rows.json"):
        art_compare._load_rows(path)


def test_machine_line_gives_the_load_range_of_the_rows() -> None:
    rows = [{"load": None}, {"load": 4.97}, {"load": 19.69}, {}]
    text = art_compare._machine(rows)
    assert "load 5.0-19.7 as the rows finished" in text and "at the end" in text
    assert "as the rows finished" not in art_compare._machine([{"load": None}])


def test_our_run_folders_differ_with_the_settings_and_the_transfer_images() -> None:
    settings = {"victim": "cifar10_cnn", "victim_accuracy": 0.6888, "epochs": 5}
    transfer = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
    label = "ours-copycat[ema=0.99,batch_size=32]"
    name = art_compare.run_folder(label, 4, 1, settings, transfer)
    assert name.startswith("ours-copycat_ema=0.99,batch_size=32_-4-1-")
    # the same row resumes its own journal (key order and array identity do not matter)
    assert art_compare.run_folder(label, 4, 1, dict(reversed(settings.items())),
                                  transfer.copy()) == name
    # another victim served under the same folder name: its answers are not this row's
    assert art_compare.run_folder(label, 4, 1, {**settings, "victim_accuracy": 0.634},
                                  transfer) != name
    changed = transfer.copy()
    changed[3, 7, 7, 2] ^= 1  # another transfer file of the same size
    assert art_compare.run_folder(label, 4, 1, settings, changed) != name
    assert art_compare.run_folder(label, 4, 2, settings, transfer) != name


@pytest.mark.slow
def test_ours_and_arts_surrogates_start_from_the_same_weights(victim_dir, tmp_path) -> None:
    """The network ART trains (`_network`) and the one our attacks' trainer builds from
    `our_surrogate` hold the same initial weights for a seed, whichever is built first."""
    from attack.config import CopycatConfig
    from attack.pipeline import trainer_kwargs
    from attack.surrogate import SurrogateTrainer

    config = art_compare.CompareConfig(victim=str(victim_dir), test_set="x", transfer_set="y",
                                       weights="none", input_size=32)
    recipe = art_compare.resolved_recipe(config, "ema=0.99,learning_rate=0.002,augment=none")
    surrogate = art_compare.our_surrogate(config, recipe)

    def ours(seed: int) -> list[np.ndarray]:
        attack_config = CopycatConfig(transfer_set="unused.npz", out=str(tmp_path / "run"),
                                      seed=seed, **dataclasses.asdict(surrogate))
        return SurrogateTrainer(**trainer_kwargs(attack_config, 10)).model.get_weights()

    def arts(seed: int) -> list[np.ndarray]:
        network = art_compare._network(config, 10, (32, 32, 3), seed)
        return network.get_layer(index=-1).get_weights()  # the classifier behind the resize

    first, second = ours(3), arts(3)
    assert len(first) == len(second) > 2
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    other = ours(4)
    assert not all(np.array_equal(a, b) for a, b in zip(other, second))  # the seed matters
    assert all(np.array_equal(a, b) for a, b in zip(arts(4), other))


class _CountingVictim:
    """Answers a fixed probability row per image and keeps every image it was sent."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def predict(self, images: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8
        self.seen.extend(images)
        return np.eye(10, dtype=np.float32)[images[:, 0, 0, 0] % 10]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["art-knockoff", "art-copycat"])
def test_art_sends_each_transfer_image_once_as_ours_does(victim_dir, monkeypatch,
                                                        method) -> None:
    """With the budget equal to the seed's transfer sample (as `run` gives it), ART's random
    selection sends exactly that sample, each image once and unchanged: the queries ours send
    (the surrogate is a one-layer stand-in here: what is checked is what reaches the victim)."""
    pytest.importorskip("art", reason="ART is a benchmark dependency "
                                      "(pip install -r requirements-bench.txt)")
    import keras

    def tiny_network(config, num_classes, image_shape, seed):
        inputs = keras.Input(image_shape)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(
            keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))))

    monkeypatch.setattr(art_compare, "_network", tiny_network)
    config = art_compare.CompareConfig(victim=str(victim_dir), test_set="x", transfer_set="y",
                                       epochs=1, batch_size=4)
    transfer = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    victim = _CountingVictim()
    art_compare._art_attack(method, config, victim, transfer, len(transfer), 0, 10)
    assert sorted(image.tobytes() for image in victim.seen) == sorted(
        image.tobytes() for image in transfer)
