"""The benchmarks' harness: plans of steps over the toolkit's commands, and what the defended
benchmarks share (the served victim behind a gateway, the run folder, the results files).

`plan`: `Command` (a module and its config's values, checked against the command's own parser
when built), `Step`, `Context`, `run_step`; `defended`: `BenchConfig`, `Served`, `client_key`,
`check_run_dir`, `write_results`, `benchmark_main`; `stats`: `spread` (mean and spread
over seeds); `runs`: `serve_rows` (attack runs, seeds x arms, against one served victim, the
results files kept current) and `stream_flags` (a run's query stream through the gateway's
detectors). Servers are started through `serving.testing` only.
"""

from benchmarks.harness.plan import (
    SERVER,
    Command,
    Context,
    Step,
    StepUnavailable,
    closure,
    machine,
    print_commands,
    run_step,
    shown,
    versions,
)

__all__ = ["SERVER", "Command", "Context", "Step", "StepUnavailable", "closure", "machine",
           "print_commands", "run_step", "shown", "versions"]
