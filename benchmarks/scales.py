"""How big each experiment of `benchmarks.reproduce` is at each scale (smoke, cpu, full).

Plain data, no imports of the packages: `python -m benchmarks.reproduce --scale` is checked
against it before the plans (and the packages' configs they hold) are imported.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SCALES", "Scale"]


@dataclass(frozen=True)
class Scale:
    """How big each experiment is at one scale."""

    name: str
    victim_epochs: dict[str, int]
    victim_limit: int | None
    budget: int
    heldout: int
    surrogate_size: int
    surrogate_epochs: int
    test_limit: int | None
    detector_limit: int | None
    detector_epochs: int
    policy_budget: int
    copycat_budget: int
    jbda_seeds: int
    jbda_rounds: int
    fee_hidden: tuple[int, ...]
    resnet_width: int = 64  # ResNet-34 victims' base width (He et al.: 64)
    imagenet: bool = False  # the full-scale plan (benchmarks.full_scale): ImageNet, tfds
    prada_queries: int = 2000  # queries per PRADA stream at most


SCALES = {
    "smoke": Scale("smoke", {"cifar10_cnn": 1, "cifar10_resnet34": 1, "gtsrb_resnet34": 1},
                   victim_limit=2000, budget=600, heldout=100, surrogate_size=64,
                   surrogate_epochs=1, test_limit=500, detector_limit=600, detector_epochs=1,
                   policy_budget=300, copycat_budget=300, jbda_seeds=20, jbda_rounds=2,
                   fee_hidden=(8,), resnet_width=16, prada_queries=300),
    # cpu: the CIFAR-10 ResNet-34 keeps its depth at a quarter of the width (16): at width 64
    # with the CIFAR stem one epoch costs about 15 minutes on 2 cores, at width 16 about 1.5
    # (GTSRB's ResNet-34 has the ImageNet stem, cheap at 32 px, and keeps width 64).
    "cpu": Scale("cpu", {"cifar10_cnn": 10, "cifar10_resnet34": 5, "gtsrb_resnet34": 4},
                 victim_limit=None, budget=8000, heldout=600, surrogate_size=96,
                 surrogate_epochs=8, test_limit=None, detector_limit=10000, detector_epochs=6,
                 policy_budget=6000, copycat_budget=8000, jbda_seeds=150, jbda_rounds=4,
                 fee_hidden=(16, 32, 64), resnet_width=16),
    "full": Scale("full", {"cifar10_cnn": 60, "cifar10_resnet34": 100, "gtsrb_resnet34": 60,
                           "caltech256_resnet34": 100, "cubs200_resnet34": 100},
                  victim_limit=None, budget=100000, heldout=2000, surrogate_size=224,
                  surrogate_epochs=100, test_limit=None, detector_limit=None, detector_epochs=20,
                  policy_budget=100000, copycat_budget=100000, jbda_seeds=500, jbda_rounds=6,
                  fee_hidden=(16, 32, 64, 128), imagenet=True),
}
