"""A run cut short resumes to the end (issue 17, cases 3 and 4), against the embedded server.

* A journal cut short (a torn copy, a full disk) with a budget equal to the transfer set, the
  README's own setting: the images whose answers were lost go back to the strategy, so the
  resumed run asks them again and reaches its budget, paying only for what was lost.
* Ctrl-C during the query phase of ``python -m attack.knockoff`` (a real SIGINT to a real
  process): one line that gives the resume command, exit code 130, no traceback; that command
  then finishes the run without asking an answered query again.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from attack.config import KnockoffConfig
from attack.journal import JOURNAL_NAME, QueryJournal
from attack.knockoff import extract, prepare_run_dir

REPO = Path(__file__).resolve().parents[2]


def test_a_cut_short_journal_still_reaches_a_budget_equal_to_the_transfer_set(
        served_victim, data_files, tmp_path):
    from common.data import load_dataset
    from serving.client import ServingClient

    transfer_path, _ = data_files
    transfer = load_dataset(str(transfer_path), "train")
    config = KnockoffConfig(transfer_set=str(transfer_path), grpc=served_victim, model="colours",
                            budget=len(transfer), heldout=0, backbone="cnn", weights="none",
                            query_batch=32, in_flight=2, out=str(tmp_path / "run"))
    run_dir = prepare_run_dir(config)
    with ServingClient(served_victim, "colours", batch_size=32, max_in_flight=2) as client:
        extract(client, transfer, config, run_dir)
    journal_path = run_dir / JOURNAL_NAME
    whole = journal_path.read_bytes()
    journal_path.write_bytes(whole[:len(whole) * 2 // 5 + 5])  # a torn copy: 3/5 lost
    with QueryJournal.open(run_dir) as journal:
        kept = set(journal.answered_indices().tolist()) | set(journal.pending().tolist())
        answered_before = journal.answered_indices().copy()
    assert 0 < len(answered_before) < len(transfer)

    resumed = KnockoffConfig(**{**config.__dict__, "resume": True})
    prepare_run_dir(resumed)
    with ServingClient(served_victim, "colours", batch_size=32, max_in_flight=2) as client:
        stats = extract(client, transfer, resumed, run_dir)
        asked = client.queries
    assert stats["answered"] == len(transfer)  # the budget is reached
    assert asked == len(transfer) - len(answered_before)  # only what was lost, asked once
    with QueryJournal.open(run_dir) as journal:
        indices = journal.answered_indices()
    assert sorted(indices.tolist()) == list(range(len(transfer)))
    assert np.array_equal(indices[:len(answered_before)], answered_before)
    assert kept <= set(indices.tolist())


def _knockoff(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "attack.knockoff", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow  # two CLI processes (TensorFlow start-ups, a tiny surrogate): 113 s here
def test_ctrl_c_in_the_query_phase_is_one_line_with_the_resume_command(
        served_victim, data_files, tmp_path):
    transfer, test = data_files
    run_dir = tmp_path / "run"
    args = ["--grpc", served_victim, "--model", "colours", "--transfer-set", str(transfer),
            "--budget", "500", "--heldout", "50", "--backbone", "cnn", "--weights", "none",
            "--input-size", "16", "--epochs", "1", "--curve-points", "1", "--noise", "0",
            "--query-batch", "1", "--in-flight", "1", "--test-set", str(test),
            "--out", str(run_dir)]
    process = _knockoff(args)
    journal = run_dir / JOURNAL_NAME
    deadline = time.monotonic() + 120
    while not (journal.is_file() and journal.stat().st_size > 2000):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    prefix = f"python -m attack.knockoff: interrupted; the run in {run_dir} is kept; " \
             "continue it with: python -m attack.knockoff "
    assert last.startswith(prefix) and last.endswith(" --resume")
    with QueryJournal.open(run_dir) as stopped:
        answered = set(stopped.answered_indices().tolist())
    assert 0 < len(answered) < 500

    again = _knockoff(shlex.split(last[len(prefix):]))
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith("500 queries -> ")
    with QueryJournal.open(run_dir) as finished:
        indices = finished.answered_indices().tolist()
    assert len(indices) == len(set(indices)) == 500 and answered <= set(indices)
