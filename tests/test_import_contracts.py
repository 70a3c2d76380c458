"""The layering of ARCHITECTURE.md, as import-linter contracts (``[tool.importlinter]`` in pyproject.toml):
they hold for the tree, and an upward import in a copy of it breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[test]')")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def copy_of_the_tree(tmp_path: Path) -> Path:
    for package in ("graphc", "placement", "runtime"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    "file, bad_import, contract",
    [
        ("placement/simulate.py", "import runtime.partition", "application -> runtime -> placement | frontend -> ir"),
        ("graphc/ir/graph.py", "import graphc.frontend.tracing", "application -> runtime -> placement | frontend -> ir"),
        ("placement/cost_model.py", "import torch", "placement and the ir never import torch"),
    ],
)
def test_an_upward_import_breaks_a_contract(tmp_path, file, bad_import, contract):
    root = copy_of_the_tree(tmp_path)
    path = root / file
    path.write_text(path.read_text() + f"\n{bad_import}  # injected by the test\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in " ".join(result.stdout.split())
