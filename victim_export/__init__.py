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

from __future__ import annotations

from common.lazy import lazy_exports

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

# Loaded on first use (PEP 562): ``python -m victim_export --help`` imports this package first,
# and must answer before TensorFlow is imported.
_WHERE = {
    "VictimConfig": "victim_export.config",
    "DENSE_ARCHS": "victim_export.dense_archs",
    "build_dense_classifier": "victim_export.dense",
    "cast_dense_classifier": "victim_export.dense",
    "export_classifier": "victim_export.export",
    "next_version": "victim_export.export",
    "read_card": "victim_export.export",
    "model_base_path": "victim_export.models_config",
    "read_models_config": "victim_export.models_config",
    "write_models_config": "victim_export.models_config",
    "TrainedVictim": "victim_export.fitting",
    "evaluate_classifier": "victim_export.train",
    "run_victim_export": "victim_export.train",
    "save_trained_victim": "victim_export.train",
    "train_victim": "victim_export.train",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals(), __all__)
