"""The code's shape holds: imports run one way (.importlinter's contracts), checked with the
suite so a circle cannot creep back in."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_import_contracts_are_kept():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
