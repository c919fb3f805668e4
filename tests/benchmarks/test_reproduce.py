"""`python -m benchmarks.reproduce`: the plan, its resumability and its results page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from attack.papers import PAPER_DETECTOR, PAPER_KNOCKOFF
from benchmarks import reproduce
from benchmarks.full_scale import RESNET50_WEIGHTS, data_file
from benchmarks.harness import Command, Context, Step, run_step
from benchmarks.results_page import write_results_page
from tests.benchmarks.probe_command import ProbeConfig

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_list_prints_every_step_in_dependency_order(capsys):
    assert reproduce.main(["--list", "--scale", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names[0].startswith("victim_")
    plan = {s.name: s for s in reproduce.build_plan(reproduce.SCALES["cpu"])}
    for i, name in enumerate(names):
        step = plan[name]
        assert all(need in names[:i] for need in step.needs), name


def test_only_pulls_in_what_a_step_needs(capsys):
    assert reproduce.main(["--list", "--only", "knockoff_gtsrb_resnet34_probs"]) == 0
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["victim_gtsrb_resnet34", "knockoff_gtsrb_resnet34_probs"]


@pytest.mark.parametrize("argv, argument", [
    (["--scale", "huge", "--list"], "scale"),
    (["--only", "nope", "--list"], "only"),
    (["--data-dir", "/no/such/folder"], "data-dir"),
    (["--out", "{file}/results", "--data-dir", "{data}"], "`--out`"),  # before any step runs
    (["--seeed", "1"], "unrecognized arguments: --seeed 1 (see python -m benchmarks.reproduce"),
])
def test_bad_arguments_exit_2_with_one_line(argv, argument, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    argv = [a.format(file=tmp_path / "file", data=tmp_path) for a in argv]
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and argument in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def _argvs(step):
    return [command.argv() for command in step.resolved()]


def _flag(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def _probe_step(name, summarize=lambda ctx: {}, **values):
    return Step(name, name, (), (Command("tests.benchmarks.probe_command", ProbeConfig, values),),
                summarize)


def test_a_finished_step_is_not_run_again(tmp_path):
    calls = []

    def summarize(ctx):
        calls.append(1)
        return {"value": 1}

    step = _probe_step("probe", summarize, message="ran")
    ctx = Context(data=tmp_path, out=tmp_path)
    first = run_step(ctx, step)
    second = run_step(ctx, step)
    assert first == second and len(calls) == 1
    assert json.loads((tmp_path / "probe" / "done.json").read_text())["figures"] == {"value": 1}
    assert "ran" in (tmp_path / "probe" / "log.txt").read_text()
    assert first["commands"] == ["python -m tests.benchmarks.probe_command --message ran"]


def test_a_failing_step_raises_and_leaves_no_done_file(tmp_path):
    step = _probe_step("bad", exit_code=3)
    ctx = Context(data=tmp_path, out=tmp_path)
    with pytest.raises(RuntimeError, match="exit 3"):
        run_step(ctx, step)
    assert not (tmp_path / "bad" / "done.json").exists()


def test_results_page_puts_the_paper_beside_the_measurement(tmp_path):
    results = {
        "victim_cifar10_cnn": {"title": "victim cifar10_cnn", "seconds": 1, "commands": ["x"],
                               "figures": {"test_accuracy": 0.8, "epochs": 3, "seconds": 9}},
        "knockoff_cifar10_cnn_probs": {
            "title": "Knockoff, CIFAR-10 CNN, probabilities", "seconds": 2, "commands": ["y"],
            "figures": {"victim_acc": 0.8, "surrogate_acc": 0.6, "ratio": 0.75,
                        "fidelity_test": 0.7, "n_queries": 100,
                        "curve": [{"queries": 50, "surrogate_acc": 0.5},
                                  {"queries": 100, "surrogate_acc": 0.6}]}},
    }
    page = write_results_page(tmp_path, "smoke", results, ["knockoff_x"], versions={"a": "1"},
                              machine="m", wall_seconds=60,
                              paper_knockoff=PAPER_KNOCKOFF,
                              paper_detector=PAPER_DETECTOR)
    text = page.read_text()
    assert "| Knockoff, CIFAR-10 CNN, probabilities | 80.0% | 60.0% | 0.75x |" in text
    assert "0.81x (100,000 ImageNet queries)" in text
    assert "knockoff_x" in text and (tmp_path / "curves.png").is_file()


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
def test_smoke_scale_runs_end_to_end(tmp_path):
    code = reproduce.main(["--scale", "smoke", "--data-dir", str(DATA), "--out", str(tmp_path),
                           "--only", "knockoff_cifar10_cnn_probs"])
    assert code == 0
    figures = json.loads((tmp_path / "knockoff_cifar10_cnn_probs" / "done.json").read_text())
    assert figures["figures"]["n_queries"] == reproduce.SCALES["smoke"].budget


def test_results_page_renders_detector_exact_and_defended_tables(tmp_path):
    results = {
        "detector_cifar10": {"title": "OOD query detector, cifar10", "seconds": 1,
                             "commands": ["d"], "figures": {
                                 "rows": {"calibrated": {"benign_accuracy": 0.99,
                                                         "anomalous_accuracy": 0.875}},
                                 "roc_auc": 0.99, "target_fpr": 0.01}},
        "fee_mnist_mlp16": {"title": "Functionally-equivalent extraction, mnist_mlp16",
                            "seconds": 1, "commands": ["f"],
                            "figures": {"queries": 30669, "fidelity_test": 1.0,
                                        "fidelity_noise": 1.0, "max_parameter_error": 1.1e-8}},
        "realistic_cifar10_cnn": {"title": "Realistic adversary", "seconds": 1, "commands": ["r"],
                                  "figures": {"rows": [
                                      {"attacker": "naive", "flagged_at": 64,
                                       "ood_flag_rate": 0.93, "label_only_answers": 3000,
                                       "ratio": 0.65, "fidelity_test": 0.57},
                                      {"attacker": "realistic", "flagged_at": None,
                                       "ood_flag_rate": 0.008, "label_only_answers": 0,
                                       "ratio": 0.79, "fidelity_test": 0.69}]}},
    }
    text = write_results_page(tmp_path, "smoke", results, [], versions={}, machine="m",
                              wall_seconds=1, paper_knockoff=PAPER_KNOCKOFF,
                              paper_detector=PAPER_DETECTOR).read_text()
    assert "| cifar10 | calibrated (benign FPR 0.01) | 99.0% | 87.5% | 0.9900 | 96.0% / 96.0% |" \
        in text
    assert ("| Functionally-equivalent extraction, mnist_mlp16 | 30669 | 100.0% | 100.0% "
            "| 1.1e-08 |") in text
    assert "| realistic | never | 0.8% | 0 | 0.79x | 69.0% |" in text


def test_prada_step_needs_the_victim_and_follows_the_scale(tmp_path):
    plan = {s.name: s for s in reproduce.build_plan(reproduce.SCALES["smoke"])}
    step = plan["prada_cifar10_cnn"]
    assert step.needs == ("victim_cifar10_cnn",)
    names = list(plan)
    assert names.index("prada_cifar10_cnn") > names.index("detector_gtsrb")
    ctx = Context(data=tmp_path, out=tmp_path, seed=3)
    step = {s.name: s for s in reproduce.build_plan(reproduce.SCALES["smoke"], ctx)}[step.name]
    (cmd,) = _argvs(step)
    assert cmd[:2] == ["-m", "benchmarks.prada_bench"]
    assert cmd[cmd.index("--max-queries") + 1] == "300"
    assert cmd[cmd.index("--victims") + 1] == str(tmp_path / "victims")
    assert cmd[cmd.index("--seed") + 1] == "3"
    run = tmp_path / "prada_cifar10_cnn" / "run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "rows": [{"stream": "jbda", "flagged": True, "flagged_at": 130}],
        "config": {"delta": 0.9, "min_samples": 100, "batch": 10, "max_queries": 300}}))
    figures = step.summarize(ctx)
    assert figures["rows"][0]["flagged_at"] == 130 and figures["delta"] == 0.9
    assert reproduce.SCALES["cpu"].prada_queries == 2000


def test_results_page_renders_prada_streams_and_the_papers_claims(tmp_path):
    results = {"prada_cifar10_cnn": {
        "title": "PRADA against JBDA and natural-image streams, cifar10_cnn", "seconds": 1,
        "commands": ["p"], "figures": {"delta": 0.9, "min_samples": 100, "batch": 10, "rows": [
            {"stream": "jbda", "source": "50 seeds", "answered": 120, "flagged": True,
             "flagged_at": 130, "statistic": 0.71234, "min_statistic": 0.71234},
            {"stream": "knockoff", "source": "tiny", "answered": 2000, "flagged": False,
             "flagged_at": None, "statistic": 0.97, "min_statistic": 0.93}]}}}
    text = write_results_page(tmp_path, "smoke", results, [], versions={}, machine="m",
                              wall_seconds=1, paper_knockoff=PAPER_KNOCKOFF,
                              paper_detector=PAPER_DETECTOR).read_text()
    assert "| jbda | 50 seeds | 120 | 130 | 0.712 | 0.712 |" in text
    assert "| knockoff | tiny | 2000 | never | 0.970 | 0.930 |" in text
    assert "delta 0.9" in text and "Atli et al. (2020) note that PRADA does not flag" in text


# -- --scale full: the paper's setting ------------------------------------------------------------
FULL = reproduce.SCALES["full"]


def _full_ctx(tmp_path, data=None):
    data = data or tmp_path / "data"
    data.mkdir(exist_ok=True)
    return Context(data=data, out=tmp_path / "out")


def _full_plan(ctx):
    return {s.name: s for s in reproduce.build_plan(FULL, ctx)}


@pytest.fixture
def offline_tfds(monkeypatch, tmp_path):
    """No network and an empty tensorflow-datasets folder: nothing is prepared, nothing loads."""
    monkeypatch.setenv("MEXT_OFFLINE", "1")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))


def test_full_plan_trains_resnet34_victims_on_the_papers_four_datasets(tmp_path):
    ctx = _full_ctx(tmp_path)
    plan = _full_plan(ctx)
    stems = {"cifar10": "cifar", "gtsrb": "imagenet", "caltech256": "imagenet",
             "cubs200": "imagenet"}
    for dataset, stem in stems.items():
        step = plan[f"victim_{dataset}_resnet34"]
        (cmd,) = _argvs(step)
        assert step.needs == (f"data_{dataset}",)
        assert _flag(cmd, "--arch") == "resnet34"
        assert _flag(cmd, "--dataset") == data_file(ctx, dataset)
        assert _flag(cmd, "--epochs") == str(FULL.victim_epochs[f"{dataset}_resnet34"])
        assert cmd[cmd.index("--arch-args") + 1:] == [f"stem={stem}", "width=64"]
    (cnn,) = _argvs(plan["victim_cifar10_cnn"])
    assert _flag(cnn, "--arch") == "cnn"
    assert not any(name.startswith("data_") for name in
                   (s.name for s in reproduce.build_plan(reproduce.SCALES["cpu"])))


def test_full_knockoff_sends_100000_imagenet_queries_to_an_imagenet_resnet50(tmp_path):
    ctx = _full_ctx(tmp_path)
    plan = list(_full_plan(ctx).values())
    knockoffs = [s for s in plan if s.name.startswith("knockoff_")]
    victims = {s.needs[0] for s in knockoffs}
    assert {"victim_caltech256_resnet34", "victim_cubs200_resnet34", "victim_cifar10_resnet34",
            "victim_gtsrb_resnet34", "victim_cifar10_cnn"} <= victims
    assert {"probs", "top1"} <= {s.name.rsplit("_", 1)[1] for s in knockoffs}
    for step in knockoffs:
        (cmd,) = _argvs(step)
        assert "data_imagenet" in step.needs
        assert _flag(cmd, "--budget") == "100000"
        assert _flag(cmd, "--transfer-set") == data_file(ctx, "imagenet")
        if step.name.endswith("same_arch"):
            assert (_flag(cmd, "--backbone"), _flag(cmd, "--input-size")) == ("cnn", "32")
            continue
        assert (_flag(cmd, "--backbone"), _flag(cmd, "--weights")) == ("ResNet50", "imagenet")
        assert _flag(cmd, "--input-size") == "224"
    # the ImageNet copy holds the queries and the held-out images; Keras' weights file is used
    # when --data-dir has it
    (data,) = _argvs(_full_plan(_full_ctx(tmp_path, _imagenet_folder(tmp_path)))["data_imagenet"])
    assert _flag(data, "--train-count") == str(FULL.budget + FULL.heldout) == "102000"
    (ctx.data / RESNET50_WEIGHTS).write_bytes(b"")
    (cmd,) = _argvs(_full_plan(ctx)["knockoff_cifar10_cnn_probs"])
    assert _flag(cmd, "--weights") == str(ctx.data / RESNET50_WEIGHTS)


def _imagenet_folder(tmp_path):
    data = tmp_path / "with_imagenet"
    (data / "imagenet" / "train" / "n01440764").mkdir(parents=True)
    return data


def test_full_detectors_cover_the_papers_table_against_imagenet(tmp_path):
    ctx = _full_ctx(tmp_path)
    plan = _full_plan(ctx)
    for name in ("cubs200", "gtsrb", "cifar10", "diabetic5", "caltech256"):
        train, evaluate = _argvs(plan[f"detector_{name}"])
        assert _flag(train, "--benign") == data_file(ctx, name)
        assert (_flag(train, "--attack"), _flag(train, "--attack-split")) == \
            (data_file(ctx, "imagenet"), "val")
        assert (_flag(evaluate, "--attack"), _flag(evaluate, "--attack-split")) == \
            (data_file(ctx, "imagenet"), "test")
    (realistic,) = _argvs(plan["realistic_cifar10_cnn"])
    assert "detector_cifar10" in plan["realistic_cifar10_cnn"].needs
    assert _flag(realistic, "--budget") == "5000"  # the attacker's half of the CIFAR-10 test set
    assert "prada_cifar10_cnn" in plan and "policies_cifar10_cnn" in plan


def test_resolver_prefers_a_local_copy_and_falls_back_to_tfds(tmp_path):
    from benchmarks.full_data import resolve

    assert resolve("cubs200", tmp_path) == "tfds:caltech_birds2011"
    assert resolve("cifar10", tmp_path) == "tfds:cifar10"
    assert resolve("diabetic5", tmp_path) == "tfds:diabetic_retinopathy_detection/250K"
    assert resolve("imagenet", tmp_path) == "tfds:imagenet2012"
    (tmp_path / "CUB_200_2011").mkdir()
    assert resolve("cubs200", tmp_path) == str(tmp_path / "CUB_200_2011")
    (tmp_path / "cifar10_jpeg_q75.zip").write_bytes(b"")
    assert resolve("cifar10", tmp_path) == str(tmp_path / "cifar10_jpeg_q75.zip")
    (tmp_path / "cifar10").mkdir()  # the registry's first name wins
    assert resolve("cifar10", tmp_path) == str(tmp_path / "cifar10")
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    assert resolve("imagenet", tmp_path) == str(tmp_path / "imagenet" / "train")


@pytest.mark.parametrize("key, folder", [("gtsrb", "gtsrb"), ("caltech256", "caltech256")])
def test_a_dataset_tfds_lacks_must_be_local_and_says_which_folder(tmp_path, key, folder):
    from benchmarks.full_data import DatasetUnavailable, resolve

    with pytest.raises(DatasetUnavailable) as err:
        resolve(key, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "tensorflow-datasets has no" in message
    assert f"provide the folder {tmp_path / folder}" in message


def test_unprepared_tfds_datasets_fail_in_one_line_offline(tmp_path, offline_tfds):
    from benchmarks.full_data import DatasetUnavailable, check_available

    with pytest.raises(DatasetUnavailable, match="cannot download it") as err:
        check_available("cubs200", "tfds:caltech_birds2011", tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path / "cubs200") in str(err.value)
    with pytest.raises(DatasetUnavailable, match="manual download: put ILSVRC2012_img_train.tar"):
        check_available("imagenet", "tfds:imagenet2012", tmp_path)
    with pytest.raises(DatasetUnavailable, match="manual download: put Kaggle"):
        check_available("diabetic5", "tfds:diabetic_retinopathy_detection/250K", tmp_path)
    check_available("cubs200", str(tmp_path), tmp_path)  # a local copy needs nothing else


def test_full_dry_run_prints_the_commands_and_runs_nothing(tmp_path, capsys, offline_tfds):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "gtsrb32_uint8_npy.tar.xz").write_bytes(b"")
    assert reproduce.main(["--scale", "full", "--dry-run", "--data-dir", str(data),
                           "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    headers = [line for line in text.splitlines() if re.match(r"# \w+: ", line)]
    assert len(headers) == len(reproduce.build_plan(FULL))
    unavailable = [line for line in text.splitlines() if line.startswith("#   cannot run here")]
    assert len(unavailable) == 6  # without network only the local GTSRB copy can be had
    assert (f"python -m benchmarks.full_data --dataset gtsrb --source "
            f"{data / 'gtsrb32_uint8_npy.tar.xz'}") in text
    assert "--grpc '127.0.0.1:<port>'" in text and "--budget 100000" in text
    assert "#   cannot run here: Caltech256: no local copy" in text
    assert "#   cannot run here: ImageNet: " in text and "manual download" in text


def test_full_run_offline_records_each_failure_with_its_reason(tmp_path, capsys, offline_tfds):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    code = reproduce.main(["--scale", "full", "--data-dir", str(data), "--out", str(out),
                           "--only", "knockoff_gtsrb_resnet34_probs"])
    assert code == 1
    err = capsys.readouterr().err
    lines = {line.split("]")[0].lstrip("["): line for line in err.splitlines()
             if line.startswith("[")}
    assert f"provide the folder {data / 'gtsrb'}" in lines["data_gtsrb"]
    assert "manual download" in lines["data_imagenet"]
    assert "skipped: needs data_gtsrb, which failed" in lines["victim_gtsrb_resnet34"]
    assert "skipped" in lines["knockoff_gtsrb_resnet34_probs"]
    page = (out / "results.md").read_text()
    assert "`data_gtsrb`" in page and "`knockoff_gtsrb_resnet34_probs`" in page
    assert "manual download" in (out / "data_imagenet" / "log.txt").read_text()


def test_a_failed_command_reports_its_one_line_error(tmp_path):
    step = _probe_step("bad", message="noise", error="prog: error: bad --x", exit_code=2)
    ctx = Context(data=tmp_path, out=tmp_path)
    with pytest.raises(RuntimeError, match=r"failed \(exit 2\): prog: error: bad --x; see "):
        run_step(ctx, step)


def test_dry_run_of_the_cpu_plan_starts_no_server(tmp_path, capsys):
    out = tmp_path / "out"
    assert reproduce.main(["--scale", "smoke", "--dry-run", "--data-dir", str(tmp_path),
                           "--out", str(out), "--only", "knockoff_cifar10_cnn_probs"]) == 0
    text = capsys.readouterr().out
    assert "python -m victim_export --dataset " in text
    assert "python -m attack.knockoff --grpc '127.0.0.1:<port>' --model cifar10_cnn" in text
    assert not out.exists()
