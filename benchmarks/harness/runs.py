"""Attack runs against one served victim: the loop of the generated-query benchmarks.

`benchmarks.datafree_bench` and `benchmarks.synthetic_bench` run attacks (seeds x arms) against
one victim served by the embedded model server in its own process (`serving.testing`), over
gRPC, one image = one query. What they share lives here:

* `serve_rows`: start the server over a ``models.config``, run every (seed, arm) through
  `run_rows` and write the Markdown page; `run_rows`: the loop itself, which prints each row
  (the benchmark's own output on stdout, as `main` did) and rewrites ``results.json`` after
  every row, so an interrupted benchmark keeps the rows it paid for;
* `served_arguments`: the flags naming the served victim and the data (``--victims``,
  ``--model``, ``--data``), and `victims_error`, the one-line refusal of a ``--victims``
  folder without a ``models.config``;
* `load_line`: the machine's load when the benchmark starts (the results' ``load``);
* `stream_flags`: a run's query stream replayed, in the order it was sent and in batches, with
  the victim's journaled answers through the gateway's detectors (`detector.monitor.Monitor`,
  each on its own: `detector_monitors` builds PRADA with its default config and, with an
  exported OOD detector, the OOD watch at its calibrated threshold): the query count at which
  each first flags it (the gateway's logic offline, not its process), and `flag_lines`, the
  results page's sentence on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["detector_monitors", "flag_lines", "load_line", "run_rows", "serve_rows",
           "served_arguments", "stream_flags", "victims_error"]

RowFn = Callable[[Any, str, int], dict]
"""``run_row(arm, target, seed) -> row``: one attack run against the server at `target`."""


def served_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    """Add ``--victims`` (required), ``--model`` (default `model`) and ``--data``."""
    parser.add_argument("--victims", required=True, help="folder with models.config")
    parser.add_argument("--model", default=model)
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")


def victims_error(parser: argparse.ArgumentParser, victims: str) -> int | None:
    """2, after one line on stderr naming ``--victims``, when `victims` holds no
    ``models.config``; None when it does."""
    if (Path(victims) / "models.config").is_file():
        return None
    print(f"{parser.prog}: error: argument --victims: expected a folder with models.config, "
          f"received {victims}", file=sys.stderr)
    return 2


def load_line() -> str:
    """The load average now and the number of cores, in one line."""
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + \
        f" on {os.cpu_count()} cores"


def run_rows(target: str, seeds: Iterable[int], arms: Iterable[Any], run_row: RowFn, *,
             out: Path, load: str, shown: Callable[[dict], dict] | None = None) -> list[dict]:
    """The rows of every seed (outer) and arm (inner) against `target`; after each row, the row
    (through `shown`) printed as one JSON line and ``out/results.json`` (``load``, ``rows``)
    rewritten."""
    arms = list(arms)
    rows: list[dict] = []
    for seed in seeds:
        for arm in arms:
            rows.append(run_row(arm, target, seed))
            print(json.dumps(rows[-1] if shown is None else shown(rows[-1])), flush=True)
            (Path(out) / "results.json").write_text(json.dumps({"load": load, "rows": rows},
                                                               indent=1))
    return rows


def serve_rows(config_file: Path, seeds: Iterable[int], arms: Iterable[Any], run_row: RowFn, *,
               out: Path, markdown: Callable[[list[dict], str], str],
               shown: Callable[[dict], dict] | None = None) -> int:
    """Serve the models of `config_file` (the embedded server, its own process), run
    `run_rows`, write ``out/results.md`` (``markdown(rows, load)``) and print it; 0."""
    from serving import testing

    load = load_line()
    Path(out).mkdir(parents=True, exist_ok=True)
    with testing.model_server(config_file=config_file, process=True) as server:
        rows = run_rows(server.target, seeds, arms, run_row, out=out, load=load, shown=shown)
    text = markdown(rows, load)
    (Path(out) / "results.md").write_text(text)
    print(text)
    return 0


def detector_monitors(detector: str | None) -> dict:
    """The gateway's monitors, each on its own: ``prada`` (default config) and, with
    `detector` (an exported OOD detector), ``ood`` (calibrated threshold, default window)."""
    from detector.monitor import Monitor
    from detector.ood import OODConfig
    from detector.prada import PradaConfig

    monitors = {"prada": Monitor.from_configs(prada=PradaConfig())}
    if detector:
        monitors["ood"] = Monitor.from_configs(ood=OODConfig(path=detector))
    return monitors


def stream_flags(blocks: Iterable[tuple[int, np.ndarray]], answers: np.ndarray,
                monitors: Mapping[str, Any], batch: int = 64) -> dict:
    """The query count at which each of `monitors` first flags a stream; None: never.

    `blocks`: (first query number, uint8 images) in the order sent (read lazily: no block is
    made once every monitor has flagged); `answers`: the victim's answers by query number.
    Each block is cut into batches of `batch` from its start; ``stream``: len(answers)."""
    flags: dict = {"stream": len(answers), **dict.fromkeys(monitors)}
    states = {name: SimpleNamespace(ood=None, prada=None, flagged=False, flagged_by=None)
              for name in monitors}
    for first, images in blocks:
        for name, monitor in monitors.items():
            if flags[name] is not None:
                continue
            for start in range(0, len(images), batch):
                end = min(start + batch, len(images))
                if monitor.observe(states[name], images[start:end],
                                   answers[first + start:first + end],
                                   client="thief").flagged:
                    flags[name] = first + end
                    break
        if all(flags[name] is not None for name in monitors):
            break
    return flags


def flag_lines(rows: list[dict]) -> list[str]:
    """The results page's lines on where the detectors first flagged each row's stream
    (``first_flagged``); none when no row was replayed."""
    flags = [f"{r['method']} s{r['seed']}: {r['first_flagged']}" for r in rows
             if r.get("first_flagged")]
    if not flags:
        return []
    return ["", "The gateway's detectors first flag the stream at query (None: never): "
            + "; ".join(flags)]
