"""The example alert rules (docs/ftslab-alerts.yml) are valid Prometheus rules and fire
as the README says: a growth streak with nothing lost fires, the same streak while
events are lost does not (and the loss alert does), ``<other>`` never does.  Checked by
Prometheus's own ``promtool`` (Debian's ``prometheus`` package; .ci/run installs it)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")


@pytest.fixture
def promtool():
    if PROMTOOL is None:
        if os.environ.get("FTSLAB_KERNEL_TESTS") == "1":
            pytest.fail("FTSLAB_KERNEL_TESTS=1 but promtool is missing (apt-get install "
                        "prometheus)")
        pytest.skip("promtool missing (Debian package prometheus)")
    return PROMTOOL


def test_rules_check(promtool):
    out = subprocess.run([promtool, "check", "rules", str(ROOT / "docs/ftslab-alerts.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 rules found" in out.stdout + out.stderr


def test_rules_fire_as_documented(promtool):
    out = subprocess.run([promtool, "test", "rules", "alerts-test.yml"],
                         cwd=ROOT / "tests/fixtures", capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr
