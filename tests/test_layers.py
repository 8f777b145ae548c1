"""The folders are the layers (docs/architecture.md): every module of the domain (``lvmass/core``) has its
own test file in the mirrored folder (``tests/core/test_<module>.py``,
``tests/core/decode/test_<module>.py``), and the import rules of ``pyproject.toml`` hold (import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "lvmass" / "core"


def core_modules() -> list[Path]:
    return sorted(p.relative_to(CORE) for p in CORE.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("module", core_modules(), ids=str)
def test_every_core_module_has_a_test_file(module):
    test_file = ROOT / "tests" / "core" / module.parent / f"test_{module.name}"
    assert test_file.exists(), f"lvmass/core/{module} has no {test_file.relative_to(ROOT)}"


def test_the_import_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -c constraints.txt -e '.[test]')")
    done = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
