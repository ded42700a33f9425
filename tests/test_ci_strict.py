"""tests/conftest.py's EasyR1 accounting: with ECHOVL_REQUIRE_EASYR1=1 (set by .ci/run where it installs EasyR1)
any skipped EasyR1 test fails the session, naming it; without it an opt-in skip is only counted. Runs the real
conftest on a few fake test files in a fresh pytest process (under a second each), so it needs no EasyR1."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

FILES = {
    "test_easyr1_fake.py": """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="starts a Ray cluster: ECHOVL_RAY_TESTS=1")
def test_opt_in():
    pass
""",
    "test_other.py": """
import pytest

@pytest.mark.easyr1
def test_marked_opt_in():
    pytest.skip("needs a GPU")

def test_not_easyr1():
    pytest.skip("chromium is missing")
""",
}


def _run(folder: Path, require: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ECHOVL_REQUIRE_EASYR1", "PYTEST_ADDOPTS")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the installed plugins (ray, ...) take seconds to load
    if require is not None:
        env["ECHOVL_REQUIRE_EASYR1"] = require
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def fake_suite(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    easyr1: needs EasyR1\n")
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_with_require_any_skipped_easyr1_test_fails_the_session_naming_it(fake_suite):
    result = _run(fake_suite, "1")
    out = result.stdout
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out + result.stderr
    assert "EasyR1 integration tests: 1 ran, 0 skipped for want of an import, 2 opt-in skipped" in out
    failed = next(line for line in out.splitlines() if line.startswith("FAILED: ECHOVL_REQUIRE_EASYR1=1"))
    assert "test_easyr1_fake.py::test_opt_in" in failed and "test_other.py::test_marked_opt_in" in failed
    assert "test_not_easyr1" not in failed  # only EasyR1 tests count


@pytest.mark.parametrize("require", [None, "0"])
def test_without_require_an_opt_in_skip_is_only_counted(fake_suite, require):
    result = _run(fake_suite, require)
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "2 opt-in skipped" in result.stdout and "FAILED:" not in result.stdout


def test_with_require_and_nothing_skipped_the_session_passes(fake_suite):
    (fake_suite / "test_other.py").unlink()
    (fake_suite / "test_easyr1_fake.py").write_text("def test_runs():\n    pass\n")
    result = _run(fake_suite, "1")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "EasyR1 integration tests: 1 ran, 0 skipped for want of an import, 0 opt-in skipped" in result.stdout
