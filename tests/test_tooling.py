"""The repository's own checks run inside the test suite, so CI's one command (`make test`) covers
them: ruff's lint and format rules, and the documentation site built with --strict."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True)


def test_ruff_lint_and_format_pass():
    ruff = shutil.which("ruff", path=str(BIN)) or shutil.which("ruff")
    assert ruff, "ruff is in the dev extra: pip install -e .[dev]"
    check = _run(ruff, "check", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _run(ruff, "format", "--check", ".")
    assert fmt.returncode == 0, "run `make format`:\n" + fmt.stdout + fmt.stderr


@pytest.mark.slow
def test_docs_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(BIN)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is in the dev extra: pip install -e .[dev]"
    built = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "index.html").exists()
