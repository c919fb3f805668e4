"""A small side-by-side of ActiveThief's strategies against random at the same query count.

``python -m benchmarks.active_small [--budget 45] [--rounds 2] [--seeds 0 1 2]``

The victim is `serving.testing.colour_victim` (3 classes: which colour channel dominates), the
pool `colour_images(600, seed=1)`, the test set `colour_images(300, seed=2)` labelled by the
victim; the surrogate a tiny CNN at 16 px (`SurrogateTrainer`, 6 epochs). Every strategy
spends the same `--budget` queries; the first of ``rounds + 1`` equal parts is the same seeded
random seed set for all, random then continues at random and the active strategies plan each
later round with the surrogate retrained on every answer so far (as ``--strategy`` does in
`attack.knockoff`). The final surrogate is trained from scratch on all answers; the figure is
its agreement with the victim on the test set. This is a toy-scale check of the mechanics in
seconds; the measurement on real data (a served victim, Tiny-ImageNet queries, curves at
2,000-16,000 queries over seeds) is `benchmarks.active_curves`.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from attack.strategies import ActiveStrategy
from serving.testing import colour_images, colour_victim


def run(strategy: str, budget: int, rounds: int, seed: int, pool: np.ndarray,
        victim_probs: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    from attack.surrogate import SurrogateTrainer

    def trainer() -> SurrogateTrainer:
        return SurrogateTrainer("cnn", "none", 16, 3, epochs=6, batch_size=16, lr=3e-3,
                                seed=seed, augment="none")

    kind = "uncertainty" if strategy == "random" else strategy
    active = ActiveStrategy(kind, len(pool), seed=seed)
    parts = rounds + 1
    ends = [budget * (r + 1) // parts for r in range(parts)]
    order = np.random.default_rng([seed, 5]).permutation(len(pool))
    answered: list[int] = []
    for end in ends:
        n = end - len(answered)
        if strategy == "random" or not answered:
            fresh = [int(i) for i in order if i not in set(answered)][:n]
            active.exclude(fresh)
        else:
            surrogate = trainer()
            surrogate.fit(pool[answered], victim_probs[answered])
            fresh = active.plan(n, surrogate, pool).tolist()
            active.select(n)
        answered += fresh
    assert len(set(answered)) == budget
    final = trainer()
    final.fit(pool[answered], victim_probs[answered])
    return float((final.predict_probs(test).argmax(axis=1) == test_labels).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.active_small")
    parser.add_argument("--budget", type=int, default=45)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+",
                        default=["random", "uncertainty", "kcenter", "dfal"])
    args = parser.parse_args(argv)

    victim = colour_victim()
    pool = colour_images(600, seed=1)
    test = colour_images(300, seed=2)
    logits = np.asarray(victim(pool.astype(np.float32)), dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    test_labels = np.asarray(victim(test.astype(np.float32))).argmax(axis=1)
    print(f"budget {args.budget}, {args.rounds} rounds after the seed set, seeds {args.seeds}")
    print("| strategy | agreement per seed | mean | std | seconds |")
    print("|---|---|---|---|---|")
    for strategy in args.strategies:
        started = time.perf_counter()
        scores = [run(strategy, args.budget, args.rounds, seed, pool, probs, test, test_labels)
                  for seed in args.seeds]
        print(f"| {strategy} | {', '.join(f'{s:.3f}' for s in scores)} | "
              f"{np.mean(scores):.3f} | {np.std(scores):.3f} | "
              f"{time.perf_counter() - started:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
