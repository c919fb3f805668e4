"""The test suite's own layout rule (README, "Tests"): no test module imports another. Shared
fixtures live in ``conftest.py`` files and shared code in helper modules, so that a test file
runs alone, in any order and in any xdist worker, and its fixtures are not collected twice."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def _test_modules_imported(path: Path) -> list[str]:
    return sorted({name for name in _imported_modules(path)
                   if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_")})


def test_no_test_module_imports_another():
    offenders = {str(path.relative_to(TESTS)): found for path in sorted(TESTS.rglob("*.py"))
                 if (found := _test_modules_imported(path))}
    assert not offenders, offenders


def test_the_check_sees_both_import_forms(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text("import tests.attack.test_synthetic\n"
                      "from tests.attack import test_budget\n"
                      "from tests.attack.test_labels import helper\n"
                      "from tests.attack.helpers import extract_synthetic\n")
    assert _test_modules_imported(sample) == ["tests.attack.test_budget",
                                              "tests.attack.test_labels",
                                              "tests.attack.test_synthetic"]
