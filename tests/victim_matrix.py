"""A matrix of small victims exported the ways the outside world exports classifiers.

One tiny CNN is trained once on a 5-class 16x16 pattern task (stripes, checkerboard, blob, ring,
diagonal; random colours, brightness and noise) on pixels in [0, 1], then exported in every way a
real TF Serving model may look (STYLE.md, item 16: test against what you did not make):

- `keras_export`: `model.export()` defaults: float32 [0, 1] 16x16x3 -> logits `output_0`;
- `float01` / `float11`: `model.export()`, float32 [0, 1] / [-1, 1] -> softmax `output_0`;
- `float255`: `model.export()`, float32 [0, 255] -> logits only;
- `uint8`: `tf.saved_model.save`, uint8 `images` -> `probabilities`;
- `scores_ids`: `tf.saved_model.save`, float32 [0, 1] `image` -> `scores` (softmax) and int64
  `class_ids`;
- `gray28`: float32 [0, 1] grayscale 28x28x1 `pixels` -> `probabilities`;
- `variable`: float16 [-1, 1] of any size `[-1, -1, -1, 3]` -> float16 `probabilities`;
- `named_topk`: signature `predict_images` (its `serving_default` is not an image classifier),
  float32 [0, 1] -> top-2 `top_scores` + int64 `top_classes` (K is not in the signature);

and `reference`: the same weights exported by `victim_export.export_classifier` (uint8 ->
probabilities), what the attacks reach against those is the bar. `MATRIX` says, per victim,
its signature, the range and output kind a victim must understand, and its K.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

SIZE = 16
K = 5


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    input_range: str
    kind: str
    output: str
    signature: str = "serving_default"
    num_classes: int | None = None  # when the outputs do not tell K


MATRIX = (
    Entry("keras_export", "0,1", "logits", "output_0"),
    Entry("float01", "0,1", "probabilities", "output_0"),
    Entry("float11", "-1,1", "probabilities", "output_0"),
    Entry("float255", "0,255", "logits", "output_0"),
    Entry("uint8", "0,255", "probabilities", "probabilities"),
    Entry("scores_ids", "0,1", "probabilities", "scores"),
    Entry("gray28", "0,1", "probabilities", "probabilities"),
    Entry("variable", "-1,1", "probabilities", "probabilities"),
    Entry("named_topk", "0,1", "topk", "top_scores", "predict_images", num_classes=K),
)


def pattern_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 16, 16, 3] images of 5 classes whose absolute brightness matters, as in
    natural images: dark and bright low-contrast textures, and mid-grey horizontal stripes,
    vertical stripes and blobs, in random colours with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    r = np.hypot(yy - 7.5, xx - 7.5)
    masks = [
        (yy // 2) % 2 == 0,                # horizontal stripes
        (xx // 2) % 2 == 0,                # vertical stripes
        r < 4.5,                           # blob
        ((yy // 4) + (xx // 4)) % 2 == 0,  # checkerboard
    ]
    labels = rng.integers(0, K, size=n)
    images = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i, label in enumerate(labels):
        if label in (0, 1):  # dark / bright, any texture, low contrast
            low, high = (0, 80) if label == 0 else (175, 255)
            fg, bg = rng.uniform(low, high, 3), rng.uniform(low, high, 3)
            mask = masks[rng.integers(0, len(masks))]
        else:
            fg, bg = rng.uniform(70, 190, 3), rng.uniform(70, 190, 3)
            while np.abs(fg - bg).sum() < 120:
                bg = rng.uniform(70, 190, 3)
            mask = masks[label - 2]
        images[i] = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (SIZE, SIZE, 3))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.int64)


def train_core(seed: int = 1, n: int = 1500, epochs: int = 6):
    """The tiny CNN on pixels in [0, 1] -> logits (trained in ~2 s on 2 cores)."""
    import keras

    keras.utils.set_random_seed(seed)
    x, y = pattern_images(n, seed=100 + seed)
    inputs = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(12, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(K)(h)
    core = keras.Model(inputs, outputs, name="core")
    core.compile(optimizer=keras.optimizers.Adam(3e-3),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    core.fit(x.astype(np.float32) / 255.0, y, epochs=epochs, batch_size=64, verbose=0)
    return core


def _wrapped(core, shape, to_unit, softmax: bool, name: str):
    """A Keras model taking `shape` inputs, mapped to [0, 1] by `to_unit`, then the core."""
    import keras

    inputs = keras.Input(shape, name="images")
    h = keras.layers.Lambda(to_unit)(inputs)
    h = core(h)
    if softmax:
        h = keras.layers.Softmax()(h)
    return keras.Model(inputs, h, name=name)


def export_matrix(base: Path, core, *, size: int = SIZE, names=None
                  ) -> tuple[dict[str, Path], dict]:
    """Every victim of `MATRIX` plus `reference` under `base/<name>/1`, and `base/models.config`
    listing them all, for a `core` taking [0, 1] pixels of `size` x `size` (the benchmark's is
    a CIFAR-10 CNN at 32); returns (the version folders, the Keras models of the
    `model.export()` victims by name). `names`: only these victims (None: all)."""
    import keras
    import tensorflow as tf

    from victim_export import export_classifier

    base = Path(base)
    paths = {}

    def version_dir(name: str) -> Path:
        paths[name] = base / name / "1"
        return paths[name]

    def wanted(name: str) -> bool:
        return names is None or name in names

    shape = (size, size, 3)
    ident = lambda t: t  # noqa: E731
    unit_from_11 = lambda t: (t + 1.0) / 2.0  # noqa: E731
    unit_from_255 = lambda t: t / 255.0  # noqa: E731

    keras_models = {name: _wrapped(core, shape, to_unit, softmax, name)
                    for name, to_unit, softmax in (("keras_export", ident, False),
                                                   ("float01", ident, True),
                                                   ("float11", unit_from_11, True),
                                                   ("float255", unit_from_255, False))
                    if wanted(name)}
    for name, model in keras_models.items():
        model.export(str(version_dir(name)), verbose=False)

    def probs(x01):
        return tf.nn.softmax(core(x01, training=False))

    def save(name: str, functions: dict, signatures: dict) -> None:
        """`functions` (attribute -> tf.function) saved with `signatures` (name -> attribute)."""
        if not wanted(name):
            return
        module = tf.Module()
        module.core = core
        for attribute, function in functions.items():
            setattr(module, attribute, function)
        tf.saved_model.save(module, str(version_dir(name)), signatures={
            key: getattr(module, attribute) for key, attribute in signatures.items()})

    save("uint8", {"uint8": tf.function(
        lambda images: {"probabilities": probs(tf.cast(images, tf.float32) / 255.0)},
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])},
        {"serving_default": "uint8"})

    def scores_ids(image):
        p = probs(image)
        return {"scores": p, "class_ids": tf.argmax(p, axis=-1)}

    save("scores_ids", {"f": tf.function(scores_ids, input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32, name="image")])},
        {"serving_default": "f"})

    def gray(pixels):
        rgb = tf.image.resize(tf.repeat(pixels, 3, axis=-1), (size, size), antialias=True)
        return {"probabilities": probs(rgb)}

    save("gray28", {"f": tf.function(gray, input_signature=[
        tf.TensorSpec([None, 28, 28, 1], tf.float32, name="pixels")])},
        {"serving_default": "f"})

    def variable(x):
        unit = (tf.cast(x, tf.float32) + 1.0) / 2.0
        return {"probabilities": tf.cast(probs(unit), tf.float16)}

    save("variable", {"f": tf.function(variable, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float16, name="x")])},
        {"serving_default": "f"})

    def top2(image):
        top = tf.math.top_k(probs(image), k=2)
        return {"top_scores": top.values, "top_classes": tf.cast(top.indices, tf.int64)}

    def features(x):
        return {"embedding": tf.matmul(x, tf.ones([4, 8]))}

    save("named_topk", {
        "top2": tf.function(top2, input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.float32, name="image")]),
        "features": tf.function(features, input_signature=[
            tf.TensorSpec([None, 4], tf.float32, name="x")])},
        {"serving_default": "features", "predict_images": "top2"})

    if wanted("reference"):
        reference = keras.Sequential([keras.Input(shape), keras.layers.Rescaling(1 / 255.0),
                                      core], name="reference")
        export_classifier(reference, base, "reference", version=1, input_shape=shape)
        paths["reference"] = base / "reference" / "1"

    config = "model_config_list {\n" + "".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{(base / name).resolve()}"\n'
        '    model_platform: "tensorflow"\n  }\n' for name in paths) + "}\n"
    (base / "models.config").write_text(config)
    return paths, keras_models
