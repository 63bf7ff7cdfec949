"""The test suite's hang guard (pyproject's ``timeout``, pytest-timeout) is installed and stops a test that waits
forever, so that a worker or a signal that never comes fails CI with a stack instead of stalling it."""
from __future__ import annotations

import subprocess
import sys


def test_the_suite_runs_under_a_per_test_timeout(request):
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is missing: pip install -e '.[test]'"
    assert 0 < float(request.config.getini("timeout")) <= 600


def test_a_test_that_hangs_fails_with_a_timeout(tmp_path):
    (tmp_path / "test_hangs.py").write_text("import time\n\ndef test_hangs():\n    time.sleep(60)\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "1",
                           str(tmp_path / "test_hangs.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout" in done.stdout and "1 failed" in done.stdout
