"""Stealing victims exported the outside world's ways, at CIFAR-10 scale (issue 13's figures).

One CIFAR-10 CNN (pixels in [0, 1] -> logits) is trained briefly, then exported every way of
`tests/victim_matrix.py` (`model.export()` defaults with logits, float [0, 1] / [-1, 1] /
[0, 255] inputs, uint8, `scores` + `class_ids`, grayscale 28x28x1, variable size, a named
signature with top-2 pairs) and, as the bar, by `victim_export` (uint8 -> probabilities), and
served by the embedded server over gRPC and REST. Then, per victim kind:

* **understanding**: `--input-range auto` on probe images drawn from the transfer set
  (Tiny-ImageNet: the attacker's images, not the victim's task), `--repeats` disjoint draws:
  queries spent and how often it chose the range the victim was exported with
  (`--probe-source prior`: 64 renders of the procedural prior, what `attack.synthetic` probes
  with, a seed per draw; `noise`: 64 uniform-noise images, what `attack.datafree` without
  natural images would have);
* **victim accuracy through the victim path** against the truth (the Keras model on the
  CIFAR-10 test split at [0, 1]), with `attack.victim.consistency`'s notes; the same through a
  wrong range (0..255 to a [0, 1] model: the issue's 37.8%-for-47.9% report) for comparison;
* **attack** (`--phases attack`): Knockoff Nets (random strategy, `--budget` transfer images,
  MobileNet alpha 0.25 at 96 px from the ImageNet weights file, `--surrogate-epochs`; no
  held-out or noise fidelity, one curve point) through `ServingVictim`: surrogate/victim
  accuracy ratio and test fidelity, against the same run on the `victim_export` reference
  (that one over `--seeds` seeds for the spread);
* **targets** (after `attack`): each kind's journal read back and turned into training targets
  as the attack does, against the reference's on the same query numbers (largest difference,
  top-1 agreement): the surrogates' spread comes from training, not from what was learnt;
* **throughput**: `RestVictim` against `ServingVictim` answering the same images from the same
  server (alternated, `--repeats` times): the REST/gRPC ratio.

    python -m benchmarks.victim_matrix --data-dir ../shared/data --out runs/victim_matrix

Output: a table on stdout, OUT/results.json. The trained CNN is kept in OUT (rerun reuses it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from attack import Knockoff, Surrogate, probe
from attack.journal import QueryJournal
from attack.victim import RestVictim, ServingVictim, consistency
from common.data import load_dataset
from serving import testing
from tests import victim_matrix as vm
from tests.victim_matrix import Entry

log = logging.getLogger(__name__)

PHASES = ("understand", "accuracy", "throughput", "attack", "targets")
PROBE_SOURCES = ("transfer", "prior", "noise")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.victim_matrix",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data", help="the shared data folder")
    p.add_argument("--out", default="runs/victim_matrix", help="output folder")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated of " +
                   ",".join(PHASES))
    p.add_argument("--train", type=int, default=10000, help="CIFAR-10 training images")
    p.add_argument("--epochs", type=int, default=4, help="victim training epochs")
    p.add_argument("--test", type=int, default=1000, help="CIFAR-10 test images")
    p.add_argument("--transfer", type=int, default=5000, help="Tiny-ImageNet transfer images")
    p.add_argument("--repeats", type=int, default=5, help="probe draws / throughput repeats")
    p.add_argument("--probe-source", choices=PROBE_SOURCES, default="transfer",
                   help="what the understanding phase probes with: transfer images, renders "
                        "of attack.prior's procedural prior, or uniform noise")
    p.add_argument("--budget", type=int, default=2000, help="Knockoff queries")
    p.add_argument("--surrogate-epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of the reference attack (the kinds use the first)")
    p.add_argument("--kinds", default="", help="comma-separated victim names (default: all)")
    p.add_argument("--deterministic", action="store_true",
                   help="TensorFlow op determinism: the same targets and seed train the same "
                        "surrogate (slower)")
    return p


def load_data(data_dir: Path, args):
    cifar = data_dir / "cifar10_jpeg_q75.zip"
    tiny = data_dir / "tinyimagenet200_val10k_train50pc.zip"
    for path in (cifar, tiny):
        if not path.is_file():
            raise SystemExit(f"missing {path}: pass --data-dir with the shared data folder")
    train = load_dataset(str(cifar), "train", limit=args.train, seed=0)
    test = load_dataset(str(cifar), "test", limit=args.test, seed=0)
    transfer = load_dataset(str(tiny), "train", limit=args.transfer, seed=0)
    return train, test, transfer


def train_cifar_core(train, epochs: int, out: Path):
    """A small CIFAR-10 CNN on [0, 1] pixels -> logits (reused from OUT when there)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    h = inputs
    for filters in (32, 64, 96):
        h = keras.layers.Conv2D(filters, 3, padding="same")(h)
        # momentum 0.9: a few hundred steps leave the default 0.99's moving statistics far
        # from the weights' (21% test accuracy in inference mode against 57% in training mode)
        h = keras.layers.BatchNormalization(momentum=0.9)(h)
        h = keras.layers.Activation("relu")(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    core = keras.Model(inputs, keras.layers.Dense(10)(h), name="core")
    weights = out / "core.weights.h5"
    if weights.is_file():
        core.load_weights(str(weights))
        return core
    core.compile(optimizer=keras.optimizers.Adam(2e-3),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    core.fit(train.images.astype(np.float32) / 255.0, train.labels, epochs=epochs,
             batch_size=128, verbose=0)
    core.save_weights(str(weights))
    return core


def victim_for(entry, server, interface: str = "grpc", **flags):
    kw = dict(signature=entry.signature, num_classes=10 if entry.num_classes else None,
              **flags)
    if interface == "rest":
        return RestVictim(f"http://127.0.0.1:{server.rest_port}", entry.name, **kw)
    return ServingVictim(server.target, entry.name, **kw)


def probe_draw(source: str, transfer, r: int) -> np.ndarray:
    """The r-th draw of 64 uint8 probe images at the victims' size from `source`."""
    size = transfer.images.shape[1:3]
    if source == "prior":  # what attack.synthetic at --seed r renders (here at the transfer
        from attack.prior import ImagePrior  # images' size; the victim path resizes)
        from attack.synthetic import prior_probes

        return prior_probes(ImagePrior(size, seed=r), r)
    if source == "noise":
        from attack.evaluate import uniform_noise_images

        return uniform_noise_images(64, (*size, 3), seed=r + 11)
    order = np.random.default_rng(0).permutation(len(transfer.images))
    return transfer.images[order[r * 64:(r + 1) * 64]]


def phase_understand(entries, server, transfer, repeats: int, source: str = "transfer"
                     ) -> dict:
    out = {"probe_source": source}
    draws = [probe_draw(source, transfer, r) for r in range(repeats)]  # the same for every victim
    for entry in entries:
        runs = []
        for probe_images in draws:
            with victim_for(entry, server) as v:
                evidence = v.understand(probe_images)
                runs.append({"range": v.input_range, "kind": v.output_kind,
                             "right": v.input_range == entry.input_range,
                             "kind_right": v.output_kind == entry.kind,
                             "queries": v.probe_queries,
                             "candidates": evidence["input_range"]["candidates"]})
        out[entry.name] = {
            "expected": entry.input_range, "runs": runs,
            "right": sum(r["right"] for r in runs), "of": len(runs),
            "kind_right": sum(r["kind_right"] for r in runs),
            "queries": max(r["queries"] for r in runs),
        }
        log.info("understand %s: %d/%d right, %d queries", entry.name, out[entry.name]["right"],
                 len(runs), out[entry.name]["queries"])
    return out


def phase_accuracy(entries, server, core, test) -> dict:
    truth_probs = np.asarray(core.predict(test.images.astype(np.float32) / 255.0, verbose=0))
    truth = float((truth_probs.argmax(1) == test.labels).mean())
    out = {"truth": truth}
    for entry in entries:
        with victim_for(entry, server, input_range=entry.input_range) as v:
            probs = v.to_probabilities(v.predict(test.images))
        acc = float((probs.argmax(1) == test.labels).mean())
        out[entry.name] = {"accuracy": acc, "delta_points": round(100 * (acc - truth), 2),
                           "notes": consistency(acc, probs)}
    wrong = next(e for e in entries if e.name == "scores_ids") if any(
        e.name == "scores_ids" for e in entries) else None
    if wrong is not None:
        with victim_for(wrong, server, input_range="0,255") as v:
            probs = v.to_probabilities(v.predict(test.images))
        acc = float((probs.argmax(1) == test.labels).mean())
        out["scores_ids_sent_0_255"] = {"accuracy": acc, "notes": consistency(acc, probs)}
    return out


def phase_throughput(entries, server, transfer, repeats: int) -> dict:
    images = transfer.images[:1000]
    out = {}
    for name in ("uint8", "float01"):
        entry = next((e for e in entries if e.name == name), None)
        if entry is None:
            continue
        times = {"grpc": [], "rest": []}
        for _ in range(repeats):
            for interface in ("grpc", "rest"):
                with victim_for(entry, server, interface, input_range=entry.input_range,
                                output_kind=entry.kind) as v:
                    v.metadata()
                    start = time.perf_counter()
                    v.predict(images)
                    times[interface].append(time.perf_counter() - start)
        g, r = np.median(times["grpc"]), np.median(times["rest"])
        out[name] = {"images": len(images), "grpc_images_per_s": round(len(images) / g, 1),
                     "rest_images_per_s": round(len(images) / r, 1),
                     "rest_over_grpc": round(float(g / r), 3), "seconds": times}
    return out


def phase_attack(entries, server, transfer, test, args, data_dir: Path, out: Path) -> dict:
    surrogate = Surrogate(backbone="mobilenet",
                          weights=str(data_dir / "mobilenet_2_5_224_tf_no_top.h5"),
                          arch_args=("alpha=0.25",), input_size=96,
                          epochs=args.surrogate_epochs)
    results = {}

    def run(entry, seed: int):
        run_dir = out / "runs" / f"{entry.name}_s{seed}"
        with victim_for(entry, server) as v:
            start = time.perf_counter()
            result = Knockoff(budget=args.budget, seed=seed, heldout=0, noise=0,
                              curve_points=1).extract(
                v, transfer, surrogate=surrogate, run_dir=run_dir, test=test)
            seconds = time.perf_counter() - start
            desc = v.describe()
        head = dict(result.headline)
        head.update(seconds=round(seconds, 1), input_range=desc["input_range"],
                    output_kind=desc["output_kind"], queries=desc["queries"])
        log.info("attack %s seed %d: %s", entry.name, seed, head)
        return head

    reference = Entry("reference", "0,255", "probabilities", "probabilities")
    partial = out / "attack_partial.json"
    for entry, seeds in [(reference, args.seeds)] + [(e, args.seeds[:1]) for e in entries]:
        for seed in seeds:
            results.setdefault(entry.name, []).append(run(entry, seed))
            partial.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return results


def phase_targets(out: Path, attack: dict, seed: int) -> dict:
    """What each kind's attack trained on against the reference's: the journals of the runs at
    `seed` read back, turned into training targets the way the attack does
    (`attack.probe.to_probabilities` with the kind the victim used) and compared on the same
    query numbers: the largest absolute difference and the top-1 agreement. Top-k answers are
    compared with the reference's answers cut to the same top-k and renormalised."""
    def targets(name: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        with QueryJournal.open(out / "runs" / f"{name}_s{seed}") as journal:
            indices, responses = journal.answered_indices(), journal.responses()
            order = np.argsort(indices)
            return indices[order], probe.to_probabilities(responses[order], kind)

    ref_idx, ref = targets("reference", "probabilities")
    result = {}
    for name, runs in attack.items():
        if name == "reference":
            continue
        idx, got = targets(name, runs[0]["output_kind"])
        common, a, b = np.intersect1d(ref_idx, idx, return_indices=True)
        want = ref[a]
        if runs[0]["output_kind"] == "topk":
            k = int((got > 0).sum(axis=1).max())
            cut = np.zeros_like(want)
            top = np.argsort(-want, axis=1)[:, :k]
            rows = np.arange(len(want))[:, None]
            cut[rows, top] = want[rows, top]
            want = cut / cut.sum(axis=1, keepdims=True)
        result[name] = {"queries_compared": int(len(common)),
                        "max_abs_diff": float(np.abs(got[b] - want).max()),
                        "top1_agreement": float((got[b].argmax(1) == want.argmax(1)).mean())}
    return result


def serve_phases(phases: list[str], args, data_dir: Path, out: Path, vm) -> dict:
    """The phases that need the data, the trained victim and the server."""
    train, test, transfer = load_data(data_dir, args)
    start = time.perf_counter()
    core = train_cifar_core(train, args.epochs, out)
    log.info("victim core ready in %.0fs", time.perf_counter() - start)
    base = out / "models"
    if not (base / "models.config").is_file():
        vm.export_matrix(base, core, size=32)
    names = [n for n in args.kinds.split(",") if n] or [e.name for e in vm.MATRIX]
    entries = [e for e in vm.MATRIX if e.name in names]
    results = {}
    with testing.model_server(config_file=base / "models.config", rest=True) as server:
        if "understand" in phases:
            key = "understand" + ("" if args.probe_source == "transfer"
                                  else f"_{args.probe_source}")
            results[key] = phase_understand(entries, server, transfer, args.repeats,
                                            args.probe_source)
        if "accuracy" in phases:
            results["accuracy"] = phase_accuracy(entries, server, core, test)
        if "throughput" in phases:
            results["throughput"] = phase_throughput(entries, server, transfer, args.repeats)
        if "attack" in phases:
            results["attack"] = phase_attack(entries, server, transfer, test, args, data_dir,
                                             out)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    bad = [p for p in phases if p not in PHASES]
    if bad:
        print(f"Invalid value for argument `phases`. Received: phases={args.phases!r}. "
              f"Expected a comma-separated subset of {','.join(PHASES)}.", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["settings"] = {k: v for k, v in vars(args).items()}
    served = [p for p in phases if p != "targets"]
    if served:
        results.update(serve_phases(served, args, data_dir, out, vm))
    if "targets" in phases:
        attack = results.get("attack") or json.loads((out / "attack_partial.json").read_text())
        results["targets"] = phase_targets(out, attack, args.seeds[0])
    results_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "settings"}, indent=1,
                     default=float)[:20000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
