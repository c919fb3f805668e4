"""The dense victims' table (`softmax`, `logreg`, `mlp`) without TensorFlow.

`victim_export.dense` builds and trains these networks; this module holds only their names and
accepted ``--arch-args``, so `victim_export.config` validates ``--arch`` and ``--arch-args``
before TensorFlow is imported (STYLE.md point 15).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.constraints import is_int
from common.errors import invalid

__all__ = ["DENSE_ARCHS", "DenseArch", "check_dense_args", "dense_arch", "is_dense_arch"]


@dataclass(frozen=True)
class DenseArch:
    """One dense victim architecture: its name, accepted `arch_args` and what it is."""

    name: str
    arguments: tuple[str, ...]
    description: str


DENSE_ARCHS: dict[str, DenseArch] = {
    entry.name: entry for entry in (
        DenseArch("logreg", ("positive",),
                  "binary logistic regression (logits [0, w.x + b]); positive=N: class N vs rest"),
        DenseArch("softmax", (), "multinomial logistic regression (logits W x + b)"),
        DenseArch("mlp", ("hidden",), "one hidden ReLU layer: A relu(W x + b) + c; hidden=H"),
    )
}


def is_dense_arch(name: object) -> bool:
    """Whether `name` (case-insensitive) is one of `DENSE_ARCHS`."""
    return isinstance(name, str) and name.strip().lower() in DENSE_ARCHS


def dense_arch(name: str) -> DenseArch:
    """The `DenseArch` called `name` (case-insensitive); `UsageError` naming `arch` otherwise."""
    if not is_dense_arch(name):
        raise invalid("arch", name, "one of " + ", ".join(DENSE_ARCHS))
    return DENSE_ARCHS[name.strip().lower()]


def check_dense_args(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse `arch_args` the architecture does not take, or bad values, naming `arch_args`."""
    arch = dense_arch(name)
    unknown = sorted(set(kwargs) - set(arch.arguments))
    if unknown:
        allowed = ", ".join(f"{a}=..." for a in arch.arguments) or "none"
        raise invalid("arch_args", unknown, f"arguments of `{arch.name}`: {allowed}")
    hidden = kwargs.get("hidden", 16)
    if not is_int(hidden) or hidden < 1:
        raise invalid("arch_args", f"hidden={hidden!r}", "hidden=H with an integer H >= 1")
    positive = kwargs.get("positive")
    if positive is not None and (not is_int(positive) or positive < 0):
        raise invalid("arch_args", f"positive={positive!r}",
                      "positive=N with N a class index >= 0")
