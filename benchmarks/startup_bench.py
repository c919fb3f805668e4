"""Start-up cost of every command line: `--help` and a wrong flag, timed in fresh processes.

Each row runs one command as a user would (`python -m MODULE ARGS`, or `python quickstart.py`)
in a new interpreter and reports the wall time, the exit code, the lines it printed on stdout
and stderr, whether TensorFlow was imported on the way, and whether any ANSI escape reached the
redirected output. STYLE.md point 15: `--help` and a wrong flag answer before the heavy imports.

    python -m benchmarks.startup_bench                 # every CLI, --help and a bad flag
    python -m benchmarks.startup_bench --repeat 3 --json startup.json
    python -m benchmarks.startup_bench --only serving.gateway

Times depend on the machine and its load (print `uptime` next to them); compare rows measured
side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["COMMANDS", "main", "measure"]

ROOT = Path(__file__).resolve().parents[1]

# (label, module or script, argv)
COMMANDS: list[tuple[str, str, list[str]]] = [
    ("victim_export", "victim_export", []),
    ("serving.model_server", "serving.model_server", []),
    ("serving.gateway", "serving.gateway", []),
    ("serving.gateway keys", "serving.gateway", ["keys"]),
    ("serving.gateway keys add", "serving.gateway", ["keys", "add"]),
    ("serving.gateway keys list", "serving.gateway", ["keys", "list"]),
    ("serving.gateway keys revoke", "serving.gateway", ["keys", "revoke"]),
    ("serving.gateway keys rotate", "serving.gateway", ["keys", "rotate"]),
    ("attack.knockoff", "attack.knockoff", []),
    ("attack.copycat", "attack.copycat", []),
    ("attack.jbda", "attack.jbda", []),
    ("attack.equation_solving", "attack.equation_solving", []),
    ("attack.fee", "attack.fee", []),
    ("attack.datafree", "attack.datafree", []),
    ("attack.synthetic", "attack.synthetic", []),
    ("detector.train", "detector.train", []),
    ("detector.evaluate", "detector.evaluate", []),
    ("detector.calibrate", "detector.calibrate", []),
    ("detector.misinformation", "detector.misinformation", []),
    ("detector.verify", "detector.verify", []),
    ("detector.fingerprint build", "detector.fingerprint", ["build"]),
    ("benchmarks.reproduce", "benchmarks.reproduce", []),
    ("quickstart", "quickstart.py", []),
]

CASES = {"help": ["--help"], "bad flag": ["--no-such-flag"]}

# Runs the command in-process after recording the interpreter's state, so the probe costs
# nothing extra; prints one marker line on fd 2's last line with what was imported.
_PROBE = r"""
import os, runpy, sys
target, argv = sys.argv[1], sys.argv[2:]
code = 0
try:
    if target.endswith(".py"):
        sys.argv = [target, *argv]
        runpy.run_path(target, run_name="__main__")
    else:
        sys.argv = [target, *argv]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
sys.stdout.flush(); sys.stderr.flush()
os.write(int(os.environ["MEXT_PROBE_FD"]),
         ("%d %d %d" % (code, "tensorflow" in sys.modules, "keras" in sys.modules)).encode())
os._exit(0)
"""


def measure(target: str, argv: list[str], *, env: dict[str, str] | None = None) -> dict:
    """Run `target argv` once in a fresh interpreter; wall time, exit code, lines, imports."""
    read, write = os.pipe()
    environment = dict(os.environ if env is None else env, MEXT_PROBE_FD=str(write))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PROBE, target, *argv], cwd=ROOT,
                          env=environment, capture_output=True, text=True, pass_fds=(write,),
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    os.close(write)
    with os.fdopen(read) as marker:
        fields = marker.read().split()
    if len(fields) != 3:
        raise RuntimeError(f"{target} {' '.join(argv)} died before answering "
                           f"(rc {proc.returncode}): {proc.stderr[-2000:]}")
    code, tf, keras = (int(f) for f in fields)
    return {"seconds": elapsed, "exit": code, "tensorflow": bool(tf), "keras": bool(keras),
            "stdout_lines": len(proc.stdout.splitlines()),
            "stderr_lines": len(proc.stderr.splitlines()),
            "ansi": "\x1b[" in proc.stdout + proc.stderr,
            "stderr_head": proc.stderr.splitlines()[:8]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (median shown)")
    parser.add_argument("--only", default="", help="rows whose label starts with this")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    ns = parser.parse_args(argv)
    if ns.repeat < 1:
        parser.error(f"argument --repeat: expected a positive integer, received {ns.repeat}")
    rows = []
    print(f"# {os.uname().nodename}, load {os.getloadavg()[0]:.2f}, "
          f"python {sys.version.split()[0]}")
    print(f"{'command':34} {'case':9} {'median s':>8} {'exit':>4} {'out':>4} {'err':>4} "
          f"{'tf':>3} ansi")
    for label, target, base in COMMANDS:
        if ns.only and not label.startswith(ns.only):
            continue
        for case, extra in CASES.items():
            runs = [measure(target, [*base, *extra]) for _ in range(ns.repeat)]
            row = dict(runs[-1], command=label, case=case,
                       seconds=statistics.median(r["seconds"] for r in runs),
                       all_seconds=[round(r["seconds"], 3) for r in runs])
            rows.append(row)
            print(f"{label:34} {case:9} {row['seconds']:8.2f} {row['exit']:4d} "
                  f"{row['stdout_lines']:4d} {row['stderr_lines']:4d} "
                  f"{'yes' if row['tensorflow'] else 'no':>3} {'yes' if row['ansi'] else 'no'}",
                  flush=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
