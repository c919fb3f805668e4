"""Commands start fast and quiet (issue 17): every CLI's ``--help`` and a wrong flag answer
without importing TensorFlow, so do a port in use and a mistyped gateway state; TensorFlow's
C++/absl start-up lines are filtered (and come back with MEXT_VERBOSE=1); progress is a bar on a
terminal and plain lines otherwise. Wall-clock times are measured by
``python -m benchmarks.startup_bench``, not asserted here."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.startup_bench import COMMANDS
from common import progress, quiet

ROOT = Path(__file__).resolve().parents[2]

# Runs every command of the start-up benchmark in ONE fresh interpreter (one start-up for all),
# and records after each whether TensorFlow (or Keras) has been imported so far.
_ALL_IN_ONE = r"""
import contextlib, io, json, runpy, sys, warnings
warnings.simplefilter("ignore")  # runpy's "found in sys.modules" notes
commands = json.loads(sys.argv[1])
rows = []
for label, target, argv in commands:
    sys.argv = [target, *argv]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if target.endswith(".py"):
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=False)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    rows.append({"label": label, "argv": argv, "exit": code, "out": out.getvalue(),
                 "err": err.getvalue(), "tensorflow": "tensorflow" in sys.modules,
                 "keras": "keras" in sys.modules})
print(json.dumps(rows))
"""


def _run_all(commands: list[tuple[str, str, list[str]]]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", _ALL_IN_ONE, json.dumps(commands)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != quiet.VERBOSE_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def help_and_bad_flag():
    commands = [(f"{label} {case}", target, [*argv, extra])
                for label, target, argv in COMMANDS
                for case, extra in (("--help", "--help"), ("bad flag", "--no-such-flag"))]
    return _run_all(commands)


def test_every_cli_is_in_the_list():
    """A new CLI (a module with a __main__ block) must join benchmarks.startup_bench.COMMANDS."""
    listed = {target for _, target, _ in COMMANDS}
    found = set()
    for package in ("victim_export", "serving", "attack", "detector"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if 'if __name__ == "__main__":' not in text or path.name == "testing.py":
                continue
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found.add(module.removesuffix(".__main__"))
    found.discard("serving.deploy.healthcheck")  # the container's health probe, not a CLI
    assert found <= listed, f"not measured by benchmarks.startup_bench: {sorted(found - listed)}"


def test_help_and_bad_flags_answer_without_tensorflow(help_and_bad_flag):
    for row in help_and_bad_flag:
        assert not row["tensorflow"] and not row["keras"], (
            f"`{row['label']}` imported TensorFlow before answering")
        if row["argv"][-1] == "--help":
            assert row["exit"] == 0 and "usage:" in row["out"], row["label"]
        else:
            assert row["exit"] == 2, row["label"]
        assert "\x1b[" not in row["out"] + row["err"]
        assert not [line for line in row["err"].splitlines() if quiet.is_startup_noise(line)]


def test_verbose_flag_is_offered(help_and_bad_flag):
    for row in help_and_bad_flag:
        target = row["label"].split()[0]
        if row["argv"][-1] == "--help" and target in (
                "victim_export", "serving.model_server", "attack.knockoff", "detector.train"):
            assert "--verbose" in row["out"], row["label"]


def test_port_in_use_and_missing_state_answer_without_tensorflow(tmp_path):
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        rows = _run_all([
            ("model server", "serving.model_server",
             [f"--port={port}", "--host=127.0.0.1", "--model_name=m",
              f"--model_base_path={tmp_path}"]),
            ("gateway", "serving.gateway",
             ["--upstream", "127.0.0.1:8500", "--host", "127.0.0.1", "--port", str(port),
              "--state", f"sqlite:{tmp_path / 'gw.db'}"]),
            ("keys list", "serving.gateway",
             ["keys", "list", "--state", f"sqlite:{tmp_path / 'mistyped.db'}"]),
        ])
    for row in rows:
        assert row["exit"] == 2 and len(row["err"].splitlines()) == 1, row
        assert not row["tensorflow"], f"{row['label']} imported TensorFlow before answering"
    assert "Failed to BuildAndStart gRPC server" in rows[0]["err"]
    assert "does not exist" in rows[2]["err"]
    assert not (tmp_path / "mistyped.db").exists() and not (tmp_path / "gw.db").exists()


def test_backbone_specs_and_configs_are_tensorflow_free():
    code = ("import sys; import common.backbone_specs, attack.config, victim_export.config, "
            "serving.gateway.config; print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_backbone_specs_match_the_registry():
    from common import backbone_specs, backbones

    for spec in backbone_specs.BACKBONE_SPECS:
        entry = backbones.get_backbone(spec.name)
        assert (entry.name, entry.default_size, entry.min_size, entry.pretrained) == (
            spec.name, spec.default_size, spec.min_size, spec.pretrained)
    assert backbones.backbone_names() == backbone_specs.backbone_names()
    with pytest.raises(Exception, match="`arch`.*nosuchnet.*MobileNet"):
        backbone_specs.get_backbone_spec("nosuchnet", argument="arch")


# -- quiet ------------------------------------------------------------------------------------
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796161044.760083   25969 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results",
    "I0000 00:00:1796161044.761130   25969 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796161062.643437   25969 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1796161076.252846   27448 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
]
KEPT = [
    "E1201 21:37:43.960768   25969 add_port.cc:83] Failed to add port to server",
    "2026-12-01 21:37:43,848 WARNING serving.manager: No versions of servable tiny found",
    "Traceback (most recent call last):",
    "W0000 00:00:1 op_level_cost_estimator.cc:699] Error in PredictCost() for the op",
]


def test_startup_noise_is_recognised_and_nothing_else():
    assert all(quiet.is_startup_noise(line) for line in NOISE)
    assert not any(quiet.is_startup_noise(line) for line in KEPT)


def test_filtered_stderr_drops_noise_and_writes_the_rest_back(capfd):
    with quiet.filtered_stderr():
        os.write(2, ("\n".join(NOISE[:3] + KEPT[:1] + NOISE[3:] + KEPT[1:]) + "\n").encode())
    assert capfd.readouterr().err.splitlines() == KEPT


def test_verbose_switch(monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    assert not quiet.is_verbose()
    for word in ("1", "true", "yes"):
        monkeypatch.setenv(quiet.VERBOSE_ENV, word)
        assert quiet.is_verbose()
    monkeypatch.setenv(quiet.VERBOSE_ENV, "0")
    assert not quiet.is_verbose()
    assert quiet.configure(verbose=True) is True
    assert os.environ[quiet.VERBOSE_ENV] == "1"  # inherited by the processes a command starts


_IMPORT_TF = ("from common import quiet; quiet.configure(); import tensorflow as tf; "
              "print(tf.add(1, 1).numpy())")


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflow_import_is_quiet_unless_verbose(verbose):
    env = {k: v for k, v in os.environ.items()
           if k not in (quiet.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    if verbose:
        env[quiet.VERBOSE_ENV] = "1"
    proc = subprocess.run([sys.executable, "-c", _IMPORT_TF], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    noise = [line for line in proc.stderr.splitlines() if quiet.is_startup_noise(line)]
    assert bool(noise) == verbose, proc.stderr


# -- progress ---------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_redirected_is_plain_periodic_lines(caplog):
    clock = _Clock()
    redirected = io.StringIO()
    assert not progress.interactive(redirected) and progress.keras_verbose(redirected) == 2
    with caplog.at_level(logging.INFO, logger="common.progress"):
        with progress.Progress(1000, unit="query", what="knockoff", interval_s=10,
                               stream=redirected, clock=clock) as bar:
            for done in range(0, 1001, 50):  # 5 s apart: a line every second update
                bar.update(done)
                clock.now += 5
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("knockoff: 0/1,000 queries (0%)")
    assert "knockoff: 100/1,000 queries (10%), 10.0 queries/s, ETA 1m30s" in lines
    assert lines[-1].startswith("knockoff: 1,000/1,000 queries (100%)") and "in all" in lines[-1]
    assert len(lines) == 11  # 0, 100, ..., 1000: every 10 s, the end included
    assert not any("\x1b" in line or "\r" in line for line in lines)
    assert redirected.getvalue() == ""


def test_progress_close_reports_an_unfinished_job(caplog):
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="common.progress"):
        bar = progress.Progress(10, unit="image", interval_s=60, stream=io.StringIO(),
                                clock=clock)
        clock.now += 1
        bar.update(1)
        clock.now += 1
        bar.update(4)  # within the interval: not logged yet
        bar.close()
        bar.close()  # nothing new: no second line
    assert [r.getMessage() for r in caplog.records] == [
        "1/10 images (10%), 1.0 images/s, ETA 9s", "4/10 images (40%), 2.0 images/s, ETA 3s"]


def test_progress_on_a_terminal_is_the_keras_bar():
    primary, secondary = os.openpty()
    try:
        with os.fdopen(secondary, "w") as tty:
            assert progress.interactive(tty) and progress.keras_verbose(tty) == 1
    finally:
        os.close(primary)
