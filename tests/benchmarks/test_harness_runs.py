"""benchmarks.harness.runs: the serve-and-loop of the generated-query benchmarks and the replay
of a query stream through the gateway's detectors (hand-made monitors and rows: no server is
started, no attack is run)."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import numpy as np

from benchmarks.harness import runs
from benchmarks.harness.runs import run_rows, serve_rows, stream_flags


class Counting:
    """A monitor that flags once `when(images seen so far)` holds; checks that each batch's
    answers are those of its own queries (pixel 0 and answer column 0 hold the query number)."""

    def __init__(self, when) -> None:
        self.when, self.seen, self.batches = when, [], []

    def observe(self, state, images, answers, client=None):
        assert client == "thief"
        np.testing.assert_array_equal(images[:, 0, 0, 0], answers[:, 0])
        self.seen.extend(images[:, 0, 0, 0].tolist())
        self.batches.append(len(images))
        state.flagged = state.flagged or bool(self.when(self.seen))
        return SimpleNamespace(flagged=state.flagged)


def _stream(n: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    answers = np.zeros((n, 3), np.float32)
    answers[:, 0] = np.arange(n)
    return images, answers


def test_each_monitor_flags_at_the_end_of_its_batch_within_a_block():
    images, answers = _stream(200)
    made = []

    def blocks():  # 100, 60 and 40 queries
        for first, end in ((0, 100), (100, 160), (160, 200)):
            made.append(first)
            yield first, images[first:end]

    monitors = {"many": Counting(lambda seen: len(seen) >= 70),
                "late": Counting(lambda seen: max(seen) >= 130),
                "never": Counting(lambda seen: False)}
    flags = stream_flags(blocks(), answers, monitors, batch=64)
    assert flags == {"stream": 200, "many": 100, "late": 160, "never": None}
    assert list(flags) == ["stream", "many", "late", "never"]
    assert monitors["many"].batches == [64, 36]  # batches start at each block's start
    assert monitors["late"].batches == [64, 36, 60]
    assert made == [0, 100, 160]  # "never" kept the stream going to its end

    made.clear()
    monitors = {"first": Counting(lambda seen: True)}
    assert stream_flags(blocks(), answers, monitors, batch=64)["first"] == 64
    assert made == [0]  # every monitor flagged: no further block is made


def test_one_block_is_batched_from_query_zero_and_the_last_batch_is_cut():
    images, answers = _stream(150)
    monitors = {"all": Counting(lambda seen: len(seen) == 150)}
    assert stream_flags([(0, images)], answers, monitors, batch=64)["all"] == 150
    assert monitors["all"].batches == [64, 64, 22]


def test_rows_run_seed_by_seed_and_results_json_follows_every_row(tmp_path, capsys):
    calls = []

    def run_row(arm, target, seed):
        written = tmp_path / "results.json"
        before = len(json.loads(written.read_text())["rows"]) if written.is_file() else 0
        calls.append((seed, arm, target, before))
        return {"method": arm, "seed": seed, "per_class_x": [1, 2]}

    rows = run_rows("host:1", [0, 1], iter(["a", "b"]), run_row, out=tmp_path, load="load 1",
                    shown=lambda row: {k: v for k, v in row.items() if k != "per_class_x"})
    assert calls == [(0, "a", "host:1", 0), (0, "b", "host:1", 1), (1, "a", "host:1", 2),
                     (1, "b", "host:1", 3)]
    assert [(r["seed"], r["method"]) for r in rows] == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == {"load": "load 1", "rows": rows}
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == [{"method": m, "seed": s} for s, m in ((0, "a"), (0, "b"), (1, "a"),
                                                            (1, "b"))]


def test_serve_rows_serves_the_config_in_its_own_process_and_writes_the_page(
        tmp_path, capsys, monkeypatch):
    from serving import testing

    served = []

    @contextlib.contextmanager
    def model_server(**kwargs):
        served.append(kwargs)
        yield SimpleNamespace(target="served:8500")

    monkeypatch.setattr(testing, "model_server", model_server)
    monkeypatch.setattr(runs, "load_line", lambda: "load 0.5")
    out = tmp_path / "out"
    code = serve_rows(tmp_path / "models.config", [3], ["x"],
                      lambda arm, target, seed: {"arm": arm, "target": target, "seed": seed},
                      out=out, markdown=lambda rows, load: f"# {len(rows)} row, {load}\n")
    assert code == 0
    assert served == [{"config_file": tmp_path / "models.config", "process": True}]
    assert json.loads((out / "results.json").read_text())["rows"] == [
        {"arm": "x", "target": "served:8500", "seed": 3}]
    assert (out / "results.md").read_text() == "# 1 row, load 0.5\n"
    assert capsys.readouterr().out.endswith("# 1 row, load 0.5\n\n")  # the page, printed


def test_flag_lines_name_each_replayed_row_and_nothing_without_one():
    rows = [{"method": "dfme", "seed": 0, "first_flagged": {"stream": 9, "prada": None}},
            {"method": "knockoff", "seed": 0, "first_flagged": None}]
    assert runs.flag_lines(rows) == [
        "", "The gateway's detectors first flag the stream at query (None: never): "
        "dfme s0: {'stream': 9, 'prada': None}"]
    assert runs.flag_lines(rows[1:]) == []


def test_the_served_flags_and_a_victims_folder_without_models_config(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="bench")
    runs.served_arguments(parser, model="m")
    ns = parser.parse_args(["--victims", str(tmp_path)])
    assert (ns.model, ns.data) == ("m", "../shared/data")
    assert runs.victims_error(parser, ns.victims) == 2
    assert capsys.readouterr().err == (f"bench: error: argument --victims: expected a folder "
                                       f"with models.config, received {tmp_path}\n")
    (tmp_path / "models.config").write_text("model_config_list {}\n")
    assert runs.victims_error(parser, ns.victims) is None
    assert capsys.readouterr().err == ""
