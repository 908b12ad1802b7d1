"""The project as the ``dg`` CLI sees it: ``dg check defs`` and ``dg list defs`` load it from pyproject.toml."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test starts the `dg` CLI, which loads the project in a fresh interpreter

ROOT = Path(__file__).parent.parent


def _dg() -> str:
    found = shutil.which("dg") or str(Path(sys.executable).parent / "dg")
    if not Path(found).exists():
        pytest.fail("the `dg` CLI is missing: install the test extras (dagster-dg-cli)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([_dg(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_dg_check_defs_passes():
    result = _run("check", "defs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_dg_list_defs_shows_every_group_and_the_sensor():
    result = _run("list", "defs", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("raw_customers", "task_labels", "ple_teacher", "model_bundle", "compliance_report",
                 "champion_challenger_sensor", "promote_challenger"):
        assert f'"{name}"' in result.stdout, name
