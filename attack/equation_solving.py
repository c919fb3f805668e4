"""Equation-solving extraction of logistic and softmax regressions over gRPC:
`python -m attack.equation_solving --grpc HOST:PORT --model NAME --out RUN_DIR`.

Tramèr et al., "Stealing Machine Learning Models via Prediction APIs" (USENIX Security 2016),
section 4.1: a multinomial logistic (softmax) regression ``p = softmax(W x + b)`` with K classes
and d features answers each query x with K probabilities, and for every class i

    log(p_i / p_K) = (w_i - w_K) . x + (b_i - b_K),

K - 1 equations *linear* in the unknowns. So d + 1 queries in general position determine every
``(w_i - w_K, b_i - b_K)`` exactly, whatever K (Tramèr et al. recover 530 unknowns with 530
queries; an MNIST softmax regression, d = 784 and K = 10, needs 785 queries for its 7,850
parameters). Binary logistic regression is the case K = 2 (``log(p_1/p_0) = w.x + b``).

What is identifiable: from probabilities, the weights only up to one additive shift shared by
all classes (adding the same vector to every w_i and the same number to every b_i leaves every
softmax unchanged), so the attack recovers the canonical representative ``w_K = 0, b_K = 0``:
the same function, exactly. From exposed logits (``--output logits``) every parameter is
determined. Parameter errors in the report are measured after aligning that shift
(``--reference`` gives the victim's SavedModel, for evaluation only).

The attack reads the signature with GetModelMetadata (a float input and a ``probabilities`` or
``logits`` output: export victims with ``python -m victim_export --arch softmax``; float64 keeps
the solution exact), sends the d + 1 points of the chosen design (``basis``: the all-``low``
image and one pixel raised to ``high`` at a time, the best-conditioned system; ``random``:
uniform points, as in the paper) plus ``--verify`` random points that check the answers are those
of a softmax regression, solves in float64 with `numpy.linalg.lstsq`, and exports the recovered
model with the victim's signature (``RUN_DIR/recovered/recovered/1``). Label-only or rounded
answers are refused with an error naming what was detected; a budget below d + 1 exits 2 naming
``--budget``. The run directory is the one of every attack: config.json, journal.bin (every
answer, float64 bit-exact), report.{json,md}; ``--resume`` replays the journal.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np

from attack._linear import (
    OUTPUT_CHOICES,
    ExactOracle,
    discover,
    eval_inputs,
    evaluate_recovered,
    export_recovered,
    reference_variables,
    report_recovered,
    softmax,
)
from attack.base import ExactAttack, exact_client
from attack.config import ExactConfig, query_batch_field, run_dir_field
from attack.journal import QueryJournal
from attack.pipeline import ExtractionResult, exact_main, prepare_run_dir
from common.errors import UsageError, invalid

__all__ = ["EquationSolving", "EquationSolvingConfig", "EquationSolvingResult", "align_softmax",
           "main", "run_equation_solving", "solve_softmax"]

log = logging.getLogger(__name__)

DESIGNS = ("basis", "random")


@dataclass(frozen=True)
class EquationSolvingConfig(ExactConfig):
    """Recover a softmax/logistic regression exactly from its probabilities (Tramèr et al.)."""

    query_batch: int = query_batch_field(256, "query points")
    out: str = run_dir_field("runs/equation_solving", "config, journal, recovered model, report")
    output: str = field(default="probabilities", metadata={
        "help": "the output to solve from: probabilities (Tramèr et al.; weights up to a shared "
                "shift), logits (when exposed: every weight) or auto (logits if exposed)",
        "choices": OUTPUT_CHOICES})
    budget: int | None = field(default=None, metadata={
        "help": "most queries the attack may send (at least d + 1; default: d + 1 + --verify)",
        "min": 1})
    design: str = field(default="basis", metadata={
        "help": "query points: basis (the all-low input and one feature raised to high at a "
                "time: best conditioned) or random (uniform in [low, high], as in the paper)",
        "choices": DESIGNS})
    verify: int = field(default=16, metadata={
        "help": "extra random queries that check the solution (the answers must be a softmax "
                "regression's); cut to what --budget leaves", "min": 0})


@dataclass(frozen=True)
class EquationSolvingResult(ExtractionResult):
    """What equation solving returns: an `ExtractionResult` with the recovered W [d, K] and
    b [K] (`surrogate` is None: the recovered model is exported to RUN_DIR/recovered/)."""

    weights: np.ndarray | None = None
    bias: np.ndarray | None = None


class EquationSolving(ExactAttack):
    """Equation-solving extraction of a softmax/logistic regression (Tramèr et al. 2016).

    Hyper-parameters (keyword-only; the ``python -m attack.equation_solving`` flags of the same
    names): ``output``, ``budget``, ``design``, ``verify``, ``input_low``, ``input_high``,
    ``noise``, ``seed``. ``EquationSolving().extract(ServingVictim(target, model),
    test="mnist.npz", reference="victims/soft/1")``.
    """

    config_class = EquationSolvingConfig
    name = "equation-solving"

    def _run(self, victim, config, data, on_progress=None) -> EquationSolvingResult:
        return _solve(exact_client(victim), config)


# -- the solver -----------------------------------------------------------------------------------

def design_points(design: str, d: int, low: float, high: float, rng: np.random.Generator
                  ) -> np.ndarray:
    """The d + 1 query points of `design`, float64 [d + 1, d]."""
    if design == "basis":
        x = np.full((d + 1, d), float(low))
        x[np.arange(1, d + 1), np.arange(d)] = float(high)
        return x
    return rng.uniform(low, high, size=(d + 1, d))


def targets(answers: np.ndarray, kind: str) -> np.ndarray:
    """What is linear in x: logits as they are, or ``log p_i - log p_K`` for i < K."""
    answers = np.asarray(answers, dtype=np.float64)
    if kind == "logits":
        return answers
    logp = np.log(answers)
    return logp[:, :-1] - logp[:, -1:]


def solve_softmax(x: np.ndarray, answers: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray,
                                                                        float]:
    """Solve ``[x 1] theta = targets`` in float64; return (W [d, K], b [K], condition number).

    From probabilities, class K's column is the reference (``w_K = 0, b_K = 0``).
    """
    x = np.asarray(x, dtype=np.float64)
    design = np.hstack([x, np.ones((len(x), 1))])
    y = targets(answers, kind)
    theta, _, rank, singular = np.linalg.lstsq(design, y, rcond=None)
    if rank < design.shape[1]:
        raise UsageError(f"equation solving: the {len(x)} query points span rank {rank}, not "
                         f"{design.shape[1]}; use --design random or another --seed")
    cond = float(singular[0] / singular[-1])
    w, b = theta[:-1], theta[-1]
    if kind != "logits":
        w = np.hstack([w, np.zeros((w.shape[0], 1))])
        b = np.append(b, 0.0)
    return w, b, cond


def predict_logits(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) @ w + b


def align_softmax(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The canonical representative of a softmax regression: class K's weights subtracted."""
    return w - w[:, -1:], b - b[-1]


def reference_softmax(variables: list[np.ndarray], d: int, k: int) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """(W [d, K], b [K]) of a victim_export softmax/logreg SavedModel's variables."""
    kernels = [v for v in variables if v.ndim == 2]
    biases = [v for v in variables if v.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1 or kernels[0].shape[0] != d:
        raise invalid("reference", [list(v.shape) for v in variables],
                      f"the variables of a softmax or logistic regression on {d} inputs")
    w, b = kernels[0], biases[0]
    if w.shape[1] == 1 and k == 2:  # logreg: logits [0, z]
        w, b = np.hstack([np.zeros_like(w), w]), np.concatenate([[0.0], b])
    return w, b


# -- the run --------------------------------------------------------------------------------------

def run_equation_solving(config: EquationSolvingConfig) -> EquationSolvingResult:
    """The CLI's attack: open the config's victim, run `EquationSolving`."""
    return EquationSolving.run_config(config)


def _solve(client, config: EquationSolvingConfig) -> EquationSolvingResult:
    """The whole attack: discover, check the budget, query, solve, verify, export, report."""
    iface = discover(client, config.output)
    d, k = iface.dim, iface.num_classes
    minimum = d + 1
    if config.budget is not None and config.budget < minimum:
        raise invalid("budget", config.budget,
                      f"--budget of at least d + 1 = {minimum} queries for equation "
                      f"solving on {d} inputs ({k} classes, {d * k + k} parameters)")
    verify = config.verify if config.budget is None else min(config.verify,
                                                              config.budget - minimum)
    if verify < config.verify:
        log.warning("--budget %d leaves %d of the %d verification queries", config.budget,
                    verify, config.verify)
    test = None
    if config.test_set:
        test = eval_inputs(config.test_set, config.test_split, config.test_limit,
                           config.seed, iface, config.input_low, config.input_high)
    run_dir = prepare_run_dir(config)  # the first side effect, after every check
    rng = np.random.default_rng(config.seed)
    with QueryJournal.open(run_dir, num_classes=2 * k) as journal:
        oracle = ExactOracle(client, iface, journal, budget=config.budget,
                             batch_size=config.query_batch, attack="equation solving")
        x = oracle.cast(design_points(config.design, d, config.input_low,
                                      config.input_high, rng))
        answers = oracle(x)
        w, b, cond = solve_softmax(x, answers, iface.output_kind)
        residual = None
        if verify:
            xv = oracle.cast(rng.uniform(config.input_low, config.input_high, (verify, d)))
            yv = targets(oracle(xv), iface.output_kind)
            pred = targets(softmax(predict_logits(w, b, xv)), "probabilities") \
                if iface.output_kind != "logits" else predict_logits(w, b, xv)
            residual = float(np.abs(pred - yv).max())
            scale = 1.0 + float(np.abs(yv).max())
            if residual > 1e-4 * scale:
                log.warning("verification queries differ from the solution by %.3g: the "
                            "victim is probably not a softmax regression (or its answers "
                            "are imprecise)", residual)
        queries = oracle.count
        replayed = oracle.replayed
    log.info("solved %d unknowns from %d queries (condition number %.3g)", (d + 1) * k,
             minimum, cond)

    class_names = test[2] if test is not None and len(test[2]) == k else None
    exported = export_recovered([(w, b)], iface, run_dir, class_names=class_names,
                                card={"attack": "equation solving (Tramèr et al. 2016)",
                                      "victim": config.model, "queries": queries})

    def recovered(xs: np.ndarray) -> np.ndarray:
        return predict_logits(w, b, np.asarray(xs, dtype=np.float64).reshape(len(xs), -1))

    extra: dict = {
        "title": "Equation solving (Tramèr et al. 2016)",
        "victim": {"target": config.grpc, "model": config.model, **iface.describe(),
                   "num_classes": k, "features": d},
        "queries": {"attack": queries, "minimum_d_plus_1": minimum, "verify": verify,
                    "replayed_from_journal": replayed, "unknowns": (d + 1) * k},
        "condition_number": cond,
        "verification_max_residual": residual,
        "identifiable": ("every weight and bias (logits exposed)"
                         if iface.output_kind == "logits" else
                         "weights and biases up to one additive shift shared by all "
                         "classes (recovered with w_K = 0, b_K = 0); the function exactly"),
        "recovered_export": str(exported),
    }
    evaluation = evaluate_recovered(client, iface, run_dir, config, recovered, test, extra,
                                    queries)
    if config.reference:
        true_w, true_b = reference_softmax(reference_variables(config.reference), d, k)
        aw, ab = align_softmax(w, b)
        tw, tb = align_softmax(true_w, true_b)
        extra["parameter_error"] = {
            "aligned": "class K's weights and bias subtracted from every class (the "
                       "softmax's shift symmetry)",
            "max_abs_weight_error": float(np.abs(aw - tw).max()),
            "max_abs_bias_error": float(np.abs(ab - tb).max()),
            "max_abs_true_weight": float(np.abs(tw).max()),
        }
    errors = {key: extra["parameter_error"][key] for key in (
        "max_abs_weight_error", "max_abs_bias_error") if "parameter_error" in extra}
    paths, headline = report_recovered(run_dir, config, evaluation, extra, queries=queries,
                                       **errors)
    return EquationSolvingResult(
        run_dir, queries, headline, journal=run_dir / "journal.bin",
        report=paths.get("markdown"),
        figures=tuple(v for k, v in paths.items() if k.endswith("_plot")),
        victim=extra["victim"], weights=w, bias=b)


# -- command line ---------------------------------------------------------------------------------
PROG = "python -m attack.equation_solving"
EPILOG = """\
example (an MNIST softmax regression served in float64):
  python -m victim_export --dataset ../shared/data/mnist_test10k_uint8.npz \\
      --train-split test --test-split test --arch softmax --out victims --name mnist_softmax
  python -m serving.model_server --port 8510 --model_config_file victims/models.config &
  python -m attack.equation_solving --grpc localhost:8510 --model mnist_softmax \\
      --test-set ../shared/data/mnist_test10k_uint8.npz --reference victims/mnist_softmax/1 \\
      --out runs/es_mnist
  # 785 queries + 16 verification queries; report in runs/es_mnist/report.md
"""


def main(argv=None) -> int:
    """Run the attack with `argv` (default sys.argv[1:]); return the exit code (2: bad input)."""
    return exact_main(EquationSolvingConfig, run_equation_solving, argv, prog=PROG,
                      epilog=EPILOG)


if __name__ == "__main__":
    sys.exit(main())
