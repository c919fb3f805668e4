"""`kill -9` a Knockoff run while it queries, then `--resume` it: what was kept, what was re-sent.

    python -m benchmarks.kill_resume --victims victims --model cifar10_cnn \\
        --transfer-set ../shared/data/tinyimagenet200_val10k_train50pc.zip --split train+val \\
        --exclude-classes ../shared/data/tinyimagenet_cifar10_overlap_wnids.txt --budget 16000

It serves the victims with the embedded server, starts `python -m attack.knockoff`, sends it
SIGKILL `--delay` seconds after its journal first grows, reads the journal (answered, pending =
sent but never answered), resumes with `--resume` until the query phase is over (then stops
it: training is not measured here), and prints the counts before and after, whether the first
answers are byte-for-byte unchanged, and how many queries were sent again.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from attack.journal import QueryJournal
from serving import testing

ROOT = Path(__file__).resolve().parents[1]



def _wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kill_resume",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--victims", required=True, help="folder with models.config")
    parser.add_argument("--model", required=True)
    parser.add_argument("--transfer-set", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--exclude-classes", default=None)
    parser.add_argument("--budget", type=int, default=16000)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds before SIGKILL")
    ns = parser.parse_args(argv)
    config = Path(ns.victims) / "models.config"
    if not config.is_file():
        print(f"{parser.prog}: error: Invalid value for argument `victims`. Received: "
              f"victims={ns.victims!r}. Expected a folder holding models.config.",
              file=sys.stderr)
        return 2

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    server = testing.model_server(config_file=config, process=True)
    port = server.port
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "attack.knockoff", "--grpc", f"127.0.0.1:{port}",
               "--model", ns.model, "--transfer-set", ns.transfer_set, "--transfer-split",
               ns.split, "--budget", str(ns.budget), "--heldout", "0", "--backbone", "cnn",
               "--weights", "none", "--epochs", "1", "--curve-points", "1", "--out", str(run)]
        if ns.exclude_classes:
            cmd += ["--exclude-classes", ns.exclude_classes]
        journal = run / "journal.bin"
        try:
            attack = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            _wait(lambda: journal.exists() and journal.stat().st_size > 4096, 300)
            time.sleep(ns.delay)
            attack.send_signal(signal.SIGKILL)
            attack.wait()
            with QueryJournal.open(run) as j:
                answered, pending = j.num_answered, len(j.pending())
                kept_idx = j.answered_indices().copy()
                kept_resp = j.responses().copy()
            print(f"after kill -9: {answered} answered queries in the journal, {pending} sent "
                  f"but unanswered (in flight at the kill)")
            attack = subprocess.Popen(cmd + ["--resume"], env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait(lambda: (run / "checkpoints").exists() or attack.poll() is not None, 600)
            attack.send_signal(signal.SIGKILL)
            attack.wait()
            with QueryJournal.open(run) as j:
                indices = j.answered_indices()
                same = (np.array_equal(indices[:answered], kept_idx)
                        and np.array_equal(j.responses()[:answered], kept_resp))
                print(f"after --resume: {j.num_answered} answered ({len(np.unique(indices))} "
                      f"distinct images), {len(j.pending())} pending; the first {answered} "
                      f"answers unchanged: {same}; the resumed run sent "
                      f"{j.num_answered - answered} queries, {pending} of them again (those "
                      f"in flight at the kill)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
