"""Train a victim image classifier and export it exactly as TensorFlow Serving loads it.

The first stage of every model-extraction experiment (Knockoff Nets, Orekondy et al. 2019; Atli
et al. 2020): a Keras classifier (a small CNN, ResNet-34 or a Keras Applications backbone) is
trained on the task's data and written as ``<out>/<name>/<version>/`` (SavedModel with a
``serving_default`` signature: uint8 ``images`` in, float32 ``probabilities`` out), with a model
card ``<out>/<name>/card.json`` and an entry in ``<out>/models.config``. ``python -m
victim_export --help`` shows the command line; `export_classifier` exports any classifier (later
attacks export their surrogates with it) in the same layout. The dense victims of the exact
attacks (``--arch softmax|logreg|mlp``, `victim_export.dense`) take float pixels in [0, 1] and are
served in float64.
"""

from victim_export.config import VictimConfig
from victim_export.dense import DENSE_ARCHS, build_dense_classifier, cast_dense_classifier
from victim_export.export import export_classifier, next_version, read_card
from victim_export.models_config import model_base_path, read_models_config, write_models_config
from victim_export.train import (
    TrainedVictim,
    evaluate_classifier,
    run_victim_export,
    save_trained_victim,
    train_victim,
)

__all__ = [
    "DENSE_ARCHS",
    "TrainedVictim",
    "VictimConfig",
    "build_dense_classifier",
    "cast_dense_classifier",
    "evaluate_classifier",
    "export_classifier",
    "model_base_path",
    "next_version",
    "read_card",
    "read_models_config",
    "run_victim_export",
    "save_trained_victim",
    "train_victim",
    "write_models_config",
]
