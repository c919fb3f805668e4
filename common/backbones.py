"""The backbone registry: every image model the toolkit can train, paired with its preprocessing.

Victims (`victim_export`), surrogates (Knockoff Nets, Orekondy et al. 2019) and the OOD query
detector (Atli et al. 2020) all build their networks here, so the preprocessing a network was
trained with travels with it. Each entry pairs a constructor with its own `preprocess_input`,
default input size and minimum input size, in an explicit table (as KerasHub pairs a backbone with
its preprocessor). `build_classifier` returns a Keras model whose input is raw pixels (float32 in
[0, 255]) and whose output is logits: the preprocessing is a registered, serializable layer inside
the model, so a saved model, an exported victim and a surrogate cannot be fed the wrong one.

Entries:

* ``cnn``: a small VGG-style CIFAR network (three blocks of conv-BN-ReLU x2, max-pool, dropout;
  then a dense layer), the kind of "CIFAR10 (CNN)" victim of Atli et al.; reaches about 87% on
  CIFAR-10 with crop+flip augmentation. No ImageNet weights.
* ``resnet34``: ResNet-34 (BasicBlock, [3, 4, 6, 3]), the victim architecture of Knockoff Nets,
  built here because Keras Applications has none. ``stem="auto"`` (default) uses the CIFAR stem
  (3x3 conv, no max-pool) below 96 px and the ImageNet stem (7x7/2 conv, 3x3/2 max-pool) from
  96 px. No ImageNet weights in Keras: `weights` is "none" or a weights file.
* Keras Applications by name (ResNet50, MobileNet, EfficientNetB0, ...), each with its module's
  `preprocess_input`. EfficientNet, EfficientNetV2, ConvNeXt and MobileNetV3 preprocess inside the
  network, so their `preprocess_input` is the identity.

The names, sizes and `pretrained` flags live in `common.backbone_specs` (TensorFlow-free, so
configs validate ``--arch`` before TensorFlow is imported); this module pairs each with its code.
Names are case-insensitive. `weights` is "none" (random init), "imagenet" (downloads through
Keras; offline this fails with a message asking for a local file) or a path to a weights file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops
from keras.applications import (
    convnext,
    densenet,
    efficientnet,
    efficientnet_v2,
    imagenet_utils,
    inception_resnet_v2,
    inception_v3,
    mobilenet,
    mobilenet_v2,
    mobilenet_v3,
    resnet,
    resnet_v2,
    vgg16,
    vgg19,
    xception,
)

from common.backbone_specs import (
    BACKBONE_SPECS,
    BackboneSpec,
    backbone_names,
    get_backbone_spec,
    parse_arch_args,
    resolve_weights,
)
from common.constraints import check_int, is_int
from common.errors import UsageError, invalid

__all__ = [
    "Backbone",
    "BackbonePreprocess",
    "backbone_names",
    "build_classifier",
    "get_backbone",
    "parse_arch_args",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

Builder = Callable[..., keras.Model]


@dataclass(frozen=True)
class Backbone:
    """One registry entry: a headless constructor paired with its preprocessing.

    Attributes:
        name: canonical name (``"MobileNet"``, ``"resnet34"``).
        constructor: ``constructor(input_shape, weights, **kw) -> keras.Model``; `weights` is
            already resolved (None, "imagenet" or a path string) and the shape checked.
        preprocess_input: the function that maps raw pixels (float, 0..255) to network input.
        default_size: the input side the architecture was designed for.
        min_size: the smallest input side it accepts.
        pretrained: whether ImageNet weights exist for it (``weights="imagenet"``).
    """

    name: str
    constructor: Builder
    preprocess_input: Callable[[Any], Any]
    default_size: int
    min_size: int
    pretrained: bool

    @property
    def key(self) -> str:
        """The lower-case registry key, used in layer names."""
        return self.name.lower()

    def build(
        self, input_shape: Sequence[int], weights: str | None = "none", **kwargs: Any
    ) -> keras.Model:
        """Build the headless network: input `input_shape` (H, W, 3), output pooled features.

        The input is the output of `preprocess`, not raw pixels. Raises `UsageError` for a bad
        shape, weights value, weights file or constructor argument.
        """
        shape = _check_input_shape(self, input_shape)
        resolved = resolve_weights(weights, backbone=self)
        try:
            model = self.constructor(shape, resolved, **kwargs)
        except UsageError:
            raise
        except TypeError as err:
            raise UsageError(
                f"Invalid keyword argument for backbone `{self.name}`: {_one_line(err)}"
            ) from err
        except ValueError as err:
            raise UsageError(
                f"Cannot build backbone `{self.name}` with input_shape={shape} and "
                f"weights={weights!r}: {_one_line(err)}"
            ) from err
        except Exception as err:
            if resolved == "imagenet":
                raise UsageError(
                    f"Cannot get ImageNet weights for backbone `{self.name}` "
                    f"({type(err).__name__}: {_one_line(err)}). Offline, download them elsewhere "
                    "and pass the local file with weights=PATH (--weights PATH)."
                ) from err
            raise
        logger.debug("built backbone %s input=%s weights=%s", self.name, shape, weights)
        return model

    def preprocess(self, x: Any) -> Any:
        """Map raw pixels (0..255) to the backbone input; numpy input is copied, never mutated."""
        if isinstance(x, np.ndarray):
            x = np.array(x, dtype=np.float32, copy=True)
        return self.preprocess_input(x)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _check_input_shape(backbone: Backbone, input_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or shape[2] != 3:
        raise invalid("input_shape", tuple(input_shape), "(height, width, 3)")
    if min(shape[:2]) < backbone.min_size:
        raise invalid(
            "input_shape",
            shape,
            f"height and width of at least {backbone.min_size} for backbone `{backbone.name}`",
        )
    return shape  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Preprocessing of the networks built here.


def _preprocess_unit_range(x: Any) -> Any:
    """Scale pixels from [0, 255] to [-1, 1] (Keras' "tf" mode), used by `cnn`."""
    return imagenet_utils.preprocess_input(x, mode="tf")


def _preprocess_imagenet_stats(x: Any) -> Any:
    """Scale to [0, 1], then normalise by ImageNet mean/std ("torch" mode), used by `resnet34`."""
    return imagenet_utils.preprocess_input(x, mode="torch")


# --------------------------------------------------------------------------------------------
# Networks built here.


def _load_weights_file(model: keras.Model, path: str | None, name: str) -> keras.Model:
    if path is None:
        return model
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError) as err:
        raise UsageError(
            f"Cannot load weights file {path!r} into backbone `{name}`: {_one_line(err)}"
        ) from err
    return model


# PyTorch's default (momentum 0.1 there): moving statistics settle within tens of steps, which
# matters for short runs; Keras' default 0.99 needs hundreds.
_BN_MOMENTUM = 0.9


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=_BN_MOMENTUM, epsilon=1e-5, name=name)


def _build_cnn(
    input_shape: tuple[int, int, int],
    weights: str | None,
    *,
    filters: Sequence[int] = (32, 64, 128),
    block_dropout: Sequence[float] = (0.2, 0.3, 0.4),
    dense_units: int = 256,
    dense_dropout: float = 0.5,
) -> keras.Model:
    """VGG-style CIFAR CNN: per block conv-BN-ReLU x2, 2x2 max-pool, dropout; then a dense layer."""
    if len(filters) != len(block_dropout) or not filters:
        raise invalid(
            "filters", tuple(filters), f"one entry per block_dropout entry ({len(block_dropout)})"
        )
    if min(input_shape[:2]) < 2 ** len(filters):
        raise invalid("input_shape", input_shape, f"sides of at least {2 ** len(filters)}")
    inputs = keras.Input(shape=input_shape, name="cnn_input")
    x = inputs
    for block, (width, rate) in enumerate(zip(filters, block_dropout), start=1):
        for conv in (1, 2):
            x = layers.Conv2D(
                width, 3, padding="same", use_bias=False, kernel_initializer="he_uniform",
                name=f"block{block}_conv{conv}",
            )(x)
            x = _bn(name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Dropout(rate, name=f"block{block}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, use_bias=False, kernel_initializer="he_uniform", name="fc")(x)
    x = _bn(name="fc_bn")(x)
    x = layers.ReLU(name="fc_relu")(x)
    x = layers.Dropout(dense_dropout, name="fc_dropout")(x)
    return _load_weights_file(keras.Model(inputs, x, name="cnn"), weights, "cnn")


def _basic_block(x: Any, width: int, stride: int, name: str) -> Any:
    shortcut = x
    y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv1")(x)
    y = _bn(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv2")(y)
    y = _bn(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False,
                                 kernel_initializer="he_normal", name=f"{name}_down_conv")(x)
        shortcut = _bn(name=f"{name}_down_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


_RESNET34_BLOCKS = (3, 4, 6, 3)
_IMAGENET_STEM_FROM = 96


def _build_resnet34(
    input_shape: tuple[int, int, int],
    weights: str | None,
    *,
    stem: str = "auto",
    width: int = 64,
) -> keras.Model:
    """ResNet-34 (He et al. 2016): BasicBlock stages [3, 4, 6, 3], widths width*(1, 2, 4, 8)."""
    if stem not in ("auto", "cifar", "imagenet"):
        raise invalid("stem", stem, "one of 'auto', 'cifar', 'imagenet'")
    if not isinstance(width, int) or width < 1:
        raise invalid("width", width, "a positive integer")
    if stem == "auto":
        stem = "imagenet" if min(input_shape[:2]) >= _IMAGENET_STEM_FROM else "cifar"
    if stem == "imagenet" and min(input_shape[:2]) < 32:
        raise invalid("input_shape", input_shape, "sides of at least 32 with stem='imagenet'")
    inputs = keras.Input(shape=input_shape, name="resnet34_input")
    if stem == "imagenet":
        x = layers.Conv2D(width, 7, strides=2, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name="stem_conv")(inputs)
    else:
        x = layers.Conv2D(width, 3, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name="stem_conv")(inputs)
    x = _bn(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if stem == "imagenet":
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, blocks in enumerate(_RESNET34_BLOCKS):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, width * 2**stage, stride, name=f"stage{stage + 1}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _load_weights_file(keras.Model(inputs, x, name=f"resnet34_{stem}"), weights, "resnet34")


def _keras_application(constructor: Callable[..., keras.Model]) -> Builder:
    """Wrap a Keras Applications constructor as a headless, average-pooled builder."""

    def build(input_shape: tuple[int, int, int], weights: str | None, **kwargs: Any) -> keras.Model:
        return constructor(
            include_top=False, weights=weights, input_shape=input_shape, pooling="avg", **kwargs
        )

    build.__name__ = f"build_{constructor.__name__}"
    return build


_A = keras.applications

# name -> (constructor, preprocess_input); sizes and `pretrained` come from
# `common.backbone_specs.BACKBONE_SPECS`, the TensorFlow-free half of this registry.
_CODE: dict[str, tuple[Builder, Callable[[Any], Any]]] = {
    "cnn": (_build_cnn, _preprocess_unit_range),
    "resnet34": (_build_resnet34, _preprocess_imagenet_stats),
    **{c.__name__: (_keras_application(c), p) for c, p in (
        (_A.ResNet50, resnet.preprocess_input),
        (_A.ResNet101, resnet.preprocess_input),
        (_A.ResNet152, resnet.preprocess_input),
        (_A.ResNet50V2, resnet_v2.preprocess_input),
        (_A.ResNet101V2, resnet_v2.preprocess_input),
        (_A.ResNet152V2, resnet_v2.preprocess_input),
        (_A.MobileNet, mobilenet.preprocess_input),
        (_A.MobileNetV2, mobilenet_v2.preprocess_input),
        (_A.MobileNetV3Small, mobilenet_v3.preprocess_input),
        (_A.MobileNetV3Large, mobilenet_v3.preprocess_input),
        (_A.EfficientNetB0, efficientnet.preprocess_input),
        (_A.EfficientNetB1, efficientnet.preprocess_input),
        (_A.EfficientNetB2, efficientnet.preprocess_input),
        (_A.EfficientNetB3, efficientnet.preprocess_input),
        (_A.EfficientNetB4, efficientnet.preprocess_input),
        (_A.EfficientNetB5, efficientnet.preprocess_input),
        (_A.EfficientNetB6, efficientnet.preprocess_input),
        (_A.EfficientNetB7, efficientnet.preprocess_input),
        (_A.EfficientNetV2B0, efficientnet_v2.preprocess_input),
        (_A.EfficientNetV2B1, efficientnet_v2.preprocess_input),
        (_A.EfficientNetV2B2, efficientnet_v2.preprocess_input),
        (_A.EfficientNetV2B3, efficientnet_v2.preprocess_input),
        (_A.EfficientNetV2S, efficientnet_v2.preprocess_input),
        (_A.DenseNet121, densenet.preprocess_input),
        (_A.DenseNet169, densenet.preprocess_input),
        (_A.DenseNet201, densenet.preprocess_input),
        (_A.VGG16, vgg16.preprocess_input),
        (_A.VGG19, vgg19.preprocess_input),
        (_A.InceptionV3, inception_v3.preprocess_input),
        (_A.InceptionResNetV2, inception_resnet_v2.preprocess_input),
        (_A.Xception, xception.preprocess_input),
        (_A.ConvNeXtTiny, convnext.preprocess_input),
        (_A.ConvNeXtSmall, convnext.preprocess_input),
        (_A.ConvNeXtBase, convnext.preprocess_input),
    )},
}

if set(_CODE) != {spec.name for spec in BACKBONE_SPECS}:  # the two halves must name the same
    raise RuntimeError("common.backbones and common.backbone_specs disagree on the names: "
                       f"{sorted(set(_CODE) ^ {spec.name for spec in BACKBONE_SPECS})}")


def _entry(spec: BackboneSpec) -> Backbone:
    constructor, preprocess = _CODE[spec.name]
    return Backbone(name=spec.name, constructor=constructor, preprocess_input=preprocess,
                    default_size=spec.default_size, min_size=spec.min_size,
                    pretrained=spec.pretrained)


_ENTRIES: tuple[Backbone, ...] = tuple(_entry(spec) for spec in BACKBONE_SPECS)

_REGISTRY: dict[str, Backbone] = {entry.key: entry for entry in _ENTRIES}


def get_backbone(name: str, *, argument: str = "backbone") -> Backbone:
    """Look a backbone up by name, case-insensitively.

    Raises `UsageError` naming `argument` and listing the known names when `name` is unknown.
    """
    return _REGISTRY[get_backbone_spec(name, argument=argument).name.lower()]


# --------------------------------------------------------------------------------------------
# The classifier: raw pixels in, logits out, preprocessing inside.


@keras.saving.register_keras_serializable(package="mext")
class BackbonePreprocess(layers.Layer):
    """Apply a registered backbone's `preprocess_input` inside the model.

    Serialises as the backbone's name only, so a saved model looks its preprocessing up in the
    registry again on load and cannot drift from the network it feeds.
    """

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        entry = get_backbone(backbone)
        kwargs.setdefault("name", f"{entry.key}_preprocess")
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.backbone = entry.name
        self._preprocess_input = entry.preprocess_input

    def call(self, inputs: Any) -> Any:
        return self._preprocess_input(ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


def build_classifier(
    name: str,
    num_classes: int,
    *,
    input_size: int | None = None,
    weights: str | Path | None = "none",
    dropout: float = 0.0,
    **kwargs: Any,
) -> keras.Model:
    """Build `name` as a classifier: input raw pixels float32 [S, S, 3] in [0, 255], output logits.

    Args:
        name: a registered backbone (case-insensitive), see `backbone_names()`.
        num_classes: number of output logits, at least 2.
        input_size: the square input side S; the backbone's default size when None.
        weights: "none", "imagenet" or a weights file for the backbone.
        dropout: dropout rate before the final dense layer.
        **kwargs: passed to the backbone's constructor (``alpha`` for MobileNet, ``stem`` for
            resnet34, ...).
    """
    entry = get_backbone(name)
    check_int("num_classes", num_classes, min=2, expected="an integer of at least 2")
    size = entry.default_size if input_size is None else input_size
    if not is_int(size) or size < entry.min_size:
        raise invalid("input_size", input_size,
                      f"an integer of at least {entry.min_size} for backbone `{entry.name}`")
    if not 0.0 <= float(dropout) < 1.0:
        raise invalid("dropout", dropout, "a rate in [0, 1)")
    shape = (int(size), int(size), 3)
    features = entry.build(shape, weights, **kwargs)
    inputs = keras.Input(shape=shape, dtype="float32", name="images")
    x = BackbonePreprocess(entry.name)(inputs)
    x = features(x)
    if dropout > 0:
        x = layers.Dropout(float(dropout), name="head_dropout")(x)
    logits = layers.Dense(int(num_classes), name="logits")(x)
    return keras.Model(inputs, logits, name=f"{entry.key}_classifier")
