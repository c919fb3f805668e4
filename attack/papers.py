"""The published figures this toolkit's measurements are put beside, in one place.

Atli et al. ("Extraction of Complex DNN Models: Real Threat or Boogeyman?", 2020) reproduce
Knockoff Nets (Orekondy et al., CVPR 2019) with 100,000 ImageNet queries and a surrogate
fine-tuned from ImageNet weights (Table 2: victim accuracy, surrogate accuracy, their ratio, with
probability answers), and evaluate their OOD query detector on five tasks (Table 4: accuracy on
benign queries and on attack queries). `attack.knockoff` writes the Knockoff rows into each
report as anchors; `benchmarks.reproduce` tables both beside what it measured.
"""

from __future__ import annotations

__all__ = ["ATLI_ANCHORS", "ATLI_SOURCE", "PAPER_DETECTOR", "PAPER_KNOCKOFF"]

# Atli et al. 2020, Table 2: victim, surrogate, ratio.
PAPER_KNOCKOFF = {
    "Caltech256 (ResNet-34)": (0.87, 0.75, 0.86),
    "CUBS200 (ResNet-34)": (0.77, 0.51, 0.66),
    "CIFAR10 (ResNet-34)": (0.94, 0.73, 0.77),
    "CIFAR10 (CNN)": (0.87, 0.71, 0.81),
    "GTSRB (ResNet-34)": (0.98, 0.61, 0.62),
}
# Atli et al. 2020, Table 4: the detector's benign and anomalous (attack) accuracy.
PAPER_DETECTOR = {
    "CIFAR10": (0.96, 0.96), "GTSRB": (0.99, 1.00), "CUBS200": (0.93, 0.93),
    "Diabetic5": (0.99, 0.99), "Caltech256": (0.63, 0.56),
}

ATLI_SOURCE = "Atli et al. 2020, Knockoff Nets with 100,000 ImageNet queries"
# The rows an attack on this toolkit's own victims can be compared with (CIFAR-10 and GTSRB).
ATLI_ANCHORS = {
    label: dict(zip(("victim", "surrogate", "ratio"), PAPER_KNOCKOFF[label]))
    for label in ("CIFAR10 (CNN)", "CIFAR10 (ResNet-34)", "GTSRB (ResNet-34)")
}
