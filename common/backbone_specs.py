"""The backbone registry's names and sizes, without TensorFlow: what a config needs to validate.

`common.backbones` pairs each entry here with its Keras constructor and `preprocess_input`; this
table holds only what is known before a network is built (canonical name, default and minimum
input side, whether ImageNet weights exist), so a command line checks ``--arch``/``--backbone``,
``--arch-args``, ``--weights`` and ``--input-size`` and answers in well under a second, before
TensorFlow is imported (STYLE.md point 15). The two tables cannot drift: `common.backbones`
refuses to import when a name lacks a constructor or a constructor lacks a name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import invalid

__all__ = [
    "BACKBONE_SPECS",
    "BackboneSpec",
    "backbone_names",
    "get_backbone_spec",
    "parse_arch_args",
    "resolve_weights",
]


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry as configs see it (`common.backbones.Backbone` adds the code).

    Attributes:
        name: canonical name (``"MobileNet"``, ``"resnet34"``).
        default_size: the input side the architecture was designed for.
        min_size: the smallest input side it accepts.
        pretrained: whether ImageNet weights exist for it (``weights="imagenet"``).
    """

    name: str
    default_size: int
    min_size: int = 32
    pretrained: bool = True

    @property
    def key(self) -> str:
        """The lower-case registry key, used in layer names."""
        return self.name.lower()


_S = BackboneSpec

BACKBONE_SPECS: tuple[BackboneSpec, ...] = (
    _S("cnn", 32, min_size=8, pretrained=False),
    _S("resnet34", 224, min_size=8, pretrained=False),
    _S("ResNet50", 224), _S("ResNet101", 224), _S("ResNet152", 224),
    _S("ResNet50V2", 224), _S("ResNet101V2", 224), _S("ResNet152V2", 224),
    _S("MobileNet", 224), _S("MobileNetV2", 224),
    _S("MobileNetV3Small", 224), _S("MobileNetV3Large", 224),
    _S("EfficientNetB0", 224), _S("EfficientNetB1", 240), _S("EfficientNetB2", 260),
    _S("EfficientNetB3", 300), _S("EfficientNetB4", 380), _S("EfficientNetB5", 456),
    _S("EfficientNetB6", 528), _S("EfficientNetB7", 600),
    _S("EfficientNetV2B0", 224), _S("EfficientNetV2B1", 240), _S("EfficientNetV2B2", 260),
    _S("EfficientNetV2B3", 300), _S("EfficientNetV2S", 384),
    _S("DenseNet121", 224), _S("DenseNet169", 224), _S("DenseNet201", 224),
    _S("VGG16", 224), _S("VGG19", 224),
    _S("InceptionV3", 299, min_size=75), _S("InceptionResNetV2", 299, min_size=75),
    _S("Xception", 299, min_size=71),
    _S("ConvNeXtTiny", 224), _S("ConvNeXtSmall", 224), _S("ConvNeXtBase", 224),
)

_BY_KEY: dict[str, BackboneSpec] = {spec.key: spec for spec in BACKBONE_SPECS}


def backbone_names() -> list[str]:
    """The canonical names of all registered backbones, in registry order."""
    return [spec.name for spec in BACKBONE_SPECS]


def get_backbone_spec(name: str, *, argument: str = "backbone") -> BackboneSpec:
    """Look a backbone's spec up by name, case-insensitively.

    Raises `UsageError` naming `argument` and listing the known names when `name` is unknown.
    """
    spec = _BY_KEY.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise invalid(argument, name, "one of " + ", ".join(backbone_names()))
    return spec


def parse_arch_args(items: Sequence[str], *, argument: str = "arch_args") -> dict[str, Any]:
    """``("alpha=0.25", "stem=cifar")`` -> ``{"alpha": 0.25, "stem": "cifar"}`` (JSON values when
    they parse, text otherwise); a malformed item is a `UsageError` naming `argument`."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=") if isinstance(item, str) else ("", "", "")
        if not sep or not key.isidentifier():
            raise invalid(argument, item, "KEY=VALUE with a Python identifier as KEY")
        try:
            kwargs[key] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key] = text
    return kwargs


def resolve_weights(weights: str | Path | None, *, backbone: Any = None) -> str | None:
    """Normalise a `weights` value: None for "none", "imagenet", or an existing file's path.

    `backbone` (a `BackboneSpec` or a `common.backbones.Backbone`) lets "imagenet" be refused for
    a network that has no ImageNet weights. Raises `UsageError` when the file does not exist.
    """
    if weights is None or str(weights).strip().lower() in ("", "none"):
        return None
    if str(weights).strip().lower() == "imagenet":
        if backbone is not None and not backbone.pretrained:
            raise invalid(
                "weights",
                str(weights),
                f"'none' or a weights file: backbone `{backbone.name}` has no ImageNet weights",
            )
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise invalid("weights", str(weights), "'none', 'imagenet' or an existing weights file")
    return str(path)
