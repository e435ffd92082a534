#!/usr/bin/env python3
"""Set up and run the project with nothing but Python 3.11+.

    python3 dev.py up      create .venv, install, migrate, run web + worker + beat (Ctrl-C stops)
    python3 dev.py test    create .venv, install, run the test suite (needs PostgreSQL and Redis)

Extra arguments after `test` go to pytest; after `up`, to `manage.py runall`.
"""

import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(requirements: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{requirements}"
    source = ROOT / requirements
    wanted = "".join((ROOT / f).read_text() for f in ("requirements.txt", requirements))
    if not stamp.exists() or stamp.read_text() != wanted:
        install(source)
        stamp.write_text(wanted)


def install(requirements: Path) -> None:
    """pip install, showing one line per package as it goes (the first install takes a minute
    or so: silence would look like a hang), and pip's whole output only if it fails."""
    print(f"installing {requirements.name} into {VENV.name}/ (the first time takes a minute or so)", flush=True)
    started = time.monotonic()
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    proc = subprocess.Popen(
        [*pip, "-r", str(requirements)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output, count = [], 0
    for line in proc.stdout:
        output.append(line)
        if line.startswith(("Collecting ", "Processing ")):
            count += 1
            print(f"  [{count}] {package(line.split()[1])}", flush=True)
    if proc.wait():
        sys.stderr.write("".join(output))
        sys.exit(f"pip install -r {requirements.name} failed (exit {proc.returncode}); its output is above")
    print(f"installed in {time.monotonic() - started:.0f} s", flush=True)


def package(requirement: str) -> str:
    """What pip is installing, as a name: `django<5.3,>=5.2` as is, a wheel's path as `cffi==2.1.1`."""
    name = Path(requirement).name
    if name.endswith((".whl", ".tar.gz", ".zip")) and name.count("-") >= 1:
        return "==".join(name.split("-")[:2])
    return requirement


def main() -> None:
    action, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if action == "up":
        ensure_venv("requirements.txt")
        os.execv(str(PYTHON), [str(PYTHON), str(ROOT / "manage.py"), "runall", *rest])
    elif action == "test":
        ensure_venv("requirements-dev.txt")
        os.execv(str(PYTHON), [str(PYTHON), "-m", "pytest", *rest])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
