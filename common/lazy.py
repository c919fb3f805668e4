"""Package names loaded on first use (PEP 562), so `import attack` / `import detector` /
`import victim_export` stay free of TensorFlow until a name that needs it is asked for (STYLE.md
point 15: a command answers `--help` before the heavy imports).

A package lists where each public name lives and binds the two module hooks::

    __getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals(), __all__)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, str], namespace: MutableMapping[str, Any],
                 public: Sequence[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`: a name of `where` is imported from its module
    the first time it is asked for and kept in `namespace` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
