"""Every ``from brewcast-package import name`` resolves, the ones inside functions too.

Heavy imports live inside functions (ARCHITECTURE.md), where the linter's import contracts
see the module but not the name: the demo once imported a constant that had moved, and
only the slow end-to-end test found it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("application", "monitoring", "serving", "models", "validation", "ingest", "brewcast",
        "devtools", "benchmarks", "tests")  # fmt: skip


def test_every_name_imported_from_our_packages_exists():
    missing = []
    for path in sorted(p for folder in (*OURS, "dags") for p in (ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module.split(".")[0] not in OURS:
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    continue
                try:  # a submodule: from serving import cellar
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    missing.append(f"{where}: {node.module}.{alias.name}")
    assert not missing, missing
