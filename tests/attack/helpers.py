"""What the attack tests share besides fixtures (those live in conftest.py): configs of the
learning attacks against the colour victim with a tiny surrogate, the check of a refused command
line, a label-only float64 victim for the exact attacks, and a Keras victim killed mid-run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from attack.config import KnockoffConfig

TINY = dict(model="colours", backbone="cnn", weights="none", input_size=16, learning_rate=3e-3,
            seed=0)
"""The settings every end-to-end config shares: the colour victim, a tiny CNN surrogate."""


def tiny_config(config_cls: type, target: str, out: Path, **values):
    """`config_cls` against the colour victim served at `target`, run directory `out`."""
    return config_cls(**{**TINY, "grpc": target, "out": str(out), **values})


def knockoff_config(target: str, data_files, out: Path, **overrides) -> KnockoffConfig:
    """A Knockoff run of 400 queries that learns the colour victim in seconds."""
    transfer, test = data_files
    return tiny_config(KnockoffConfig, target, out, **{
        "transfer_set": str(transfer), "budget": 400, "epochs": 8, "batch_size": 32,
        "query_batch": 32, "in_flight": 2, "test_set": str(test), "heldout": 100,
        "noise": 100, "curve_points": 2, **overrides})


def assert_refused(capsys, code: int, *fragments: str, unwritten: Path | None = None) -> None:
    """A command line refused its input: exit code 2, one line on stderr holding every one of
    `fragments`, and (when given) `unwritten` not created."""
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(fragment in err[0] for fragment in fragments), err
    if unwritten is not None:
        assert not unwritten.exists()  # nothing written before validation


def save_label_only(path: Path, input_shape: tuple[int, ...],
                    scores: Callable[..., object], num_classes: int) -> None:
    """A SavedModel at `path` whose float64 `probabilities` are one-hot rows of
    ``argmax(scores(images))`` (a label-only API)."""
    import tensorflow as tf

    class LabelOnly(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float64,
                                                    name="images")])
        def serve(self, images):
            return {"probabilities": tf.one_hot(tf.argmax(scores(images), 1), num_classes,
                                                dtype=tf.float64)}

    module = LabelOnly()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def killed_keras_victim(model, calls: int | None):
    """A `KerasVictim` over `model` (0..255 input, logits) whose model call fails with
    KeyboardInterrupt after `calls` calls (a kill mid-request: the batch was journaled as sent,
    never answered); None: never killed. Its `queries` counts what was answered."""
    from attack.victim import KerasVictim

    class Victim(KerasVictim):
        made = 0

        def _call(self, batch):
            if calls is not None and Victim.made >= calls:
                raise KeyboardInterrupt("killed")
            Victim.made += 1
            return super()._call(batch)

    return Victim(model, input_range="0,255", output_kind="logits", batch_size=16)


SYNTHETIC_SURROGATE = dict(backbone="cnn", weights="none", input_size=16, batch_size=16, epochs=2,
                           arch_args=("filters=[8,16]", "block_dropout=[0,0]",
                                      "dense_units=32"))
"""The tiny surrogate of the procedural-prior thief's tests (`extract_synthetic`)."""


def colour_test(model):
    """200 colour images labelled by `model` (the colour victim): a test set it gets right."""
    import numpy as np

    from common.data import ImageDataset
    from serving.testing import COLOUR_CLASSES, colour_images

    images = colour_images(200, seed=2)
    labels = np.argmax(np.asarray(model(images.astype(np.float32))), axis=1)
    return ImageDataset(images, labels, COLOUR_CLASSES, "colours-test")


def extract_synthetic(victim, run_dir, *, resume=False, test=None, natural=None, epochs=2,
                      **hyper):
    """`attack.synthetic.Synthetic(**hyper).extract` against `victim` with the tiny surrogate
    (`epochs` of final pass; the surrogate's own settings in `hyper`, ``mixup=0.2``, go to it),
    one curve point, no noise."""
    import dataclasses

    from attack import Surrogate
    from attack.synthetic import Synthetic

    own = {f.name for f in dataclasses.fields(Surrogate)}
    recipe = {k: v for k, v in hyper.items() if k in own}
    hyper = {"curve_points": 1, "noise": 0,
             **{k: v for k, v in hyper.items() if k not in own}}
    surrogate = Surrogate(**{**SYNTHETIC_SURROGATE, "epochs": epochs, **recipe})
    return Synthetic(**hyper).extract(victim, natural, surrogate=surrogate, run_dir=run_dir,
                                      resume=resume, test=test)
