"""`dev.py`'s install step, as a new user sees it: one line per package while pip works (the
first install takes a minute; silence looked like a hang), and pip's own output when it fails.

Runs dev.py's `install` against a throwaway venv and a wheel built here, so nothing is
downloaded and the project's .venv is not touched."""

import subprocess
import sys
import venv
import zipfile

import pytest

from tests.support import ROOT

RUN_INSTALL = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
import dev
dev.PYTHON = Path({python!r})
dev.install(Path({requirements!r}))
"""


def tiny_wheel(directory, name: str) -> str:
    path = directory / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}.py", "")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return str(path)


@pytest.fixture(scope="module")
def throwaway_python(tmp_path_factory):
    where = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(where)
    return str(where / "bin" / "python")


def run_install(tmp_path, python, lines: list[str]) -> subprocess.CompletedProcess:
    requirements = tmp_path / "requirements-try.txt"
    requirements.write_text("--no-index\n" + "".join(f"{line}\n" for line in lines))
    script = RUN_INSTALL.format(root=str(ROOT), python=python, requirements=str(requirements))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_install_shows_a_line_per_package(tmp_path, throwaway_python):
    result = run_install(tmp_path, throwaway_python, [tiny_wheel(tmp_path, "alpha"), tiny_wheel(tmp_path, "beta")])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "installing requirements-try.txt into .venv/ (the first time takes a minute or so)"
    assert lines[1:3] == ["  [1] alpha==1.0", "  [2] beta==1.0"]  # a wheel's path shown as its name
    assert lines[-1].startswith("installed in ")
    check = subprocess.run([throwaway_python, "-c", "import alpha, beta"], capture_output=True)
    assert check.returncode == 0


def test_a_failed_install_shows_pip_output_and_exits_non_zero(tmp_path, throwaway_python):
    result = run_install(tmp_path, throwaway_python, ["no-such-package-here==1.0"])
    assert result.returncode == 1
    assert "No matching distribution found for no-such-package-here" in result.stderr  # pip's own words
    assert "pip install -r requirements-try.txt failed" in result.stderr
    assert "Traceback" not in result.stderr
