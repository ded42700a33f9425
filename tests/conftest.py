import importlib.util
import os
import sys
from pathlib import Path

import pytest

# ------------------------------------------------------------------------------------------- EasyR1 tests
# An EasyR1 test is one in a tests/test_easyr1_*.py module or marked ``easyr1``. Without EasyR1 they skip. With
# EasyR1 installed none may skip for want of it: a skip whose reason is an import (EasyR1 itself, or one of its own
# dependencies, which pytest.importorskip reports as a skip) fails the session. Opt-in tests that skip on purpose
# (e.g. the Ray cluster test without ECHOVL_RAY_TESTS=1) are only counted, unless ECHOVL_REQUIRE_EASYR1=1 (set by
# .ci/run where it installs EasyR1): then ANY skipped EasyR1 test, for an import or opt-in, fails the session. The
# summary says how many ran, and the failure names the skipped tests.

EASYR1_INSTALLED = importlib.util.find_spec("verl") is not None
REQUIRE_ENV = "ECHOVL_REQUIRE_EASYR1"
_IMPORT_SKIP_WORDS = ("EasyR1", "verl", "could not import", "No module named")
"""A skip reason with one of these is a failed import (our reasons name EasyR1; pytest's own say 'could not import')."""
_easyr1 = {"ran": 0, "missing": [], "on_purpose": []}


def _in_easyr1_module(nodeid: str) -> bool:
    return Path(nodeid.split("::")[0]).name.startswith("test_easyr1_")


def _count_skip(name: str, longrepr) -> None:
    reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
    kind = "missing" if any(word in reason for word in _IMPORT_SKIP_WORDS) else "on_purpose"
    _easyr1[kind].append(name)


def pytest_collection_modifyitems(items):
    for item in items:
        if _in_easyr1_module(item.nodeid):
            item.add_marker(pytest.mark.easyr1)


def pytest_collectreport(report):
    """Counts EasyR1 modules skipped whole. Also: the EasyR1 test modules import EasyR1 under a ``vllm`` import
    stub; as soon as a module is collected, take the stub out again so that libraries probing for vllm (TRL) see
    that it is not installed."""
    if report.skipped and _in_easyr1_module(report.nodeid):
        _count_skip(f"{report.nodeid} (the whole module)", report.longrepr)
    if "vllm" in sys.modules:
        from tests.easyr1_stubs import uninstall_vllm_stub

        uninstall_vllm_stub()


def pytest_runtest_logreport(report):
    if "easyr1" not in report.keywords:
        return
    if report.skipped:
        _count_skip(report.nodeid, report.longrepr)
    elif report.when == "call":
        _easyr1["ran"] += 1


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def _forbidden_skips() -> tuple[str, list[str]]:
    """Why skipped EasyR1 tests fail this session, and which ("", [] when none do)."""
    missing, on_purpose = _easyr1["missing"], _easyr1["on_purpose"]
    if _required() and (missing or on_purpose):
        return f"{REQUIRE_ENV}=1, so no EasyR1 test may be skipped", missing + on_purpose
    if EASYR1_INSTALLED and missing:
        return "EasyR1 is installed, so its tests must run", missing
    return "", []


def pytest_sessionfinish(session, exitstatus):
    if _forbidden_skips()[1] and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    ran, missing, on_purpose = _easyr1["ran"], _easyr1["missing"], _easyr1["on_purpose"]
    state = "installed" if EASYR1_INSTALLED else "not installed"
    terminalreporter.write_line(
        f"EasyR1 integration tests: {ran} ran, {len(missing)} skipped for want of an import, "
        f"{len(on_purpose)} opt-in skipped (EasyR1 {state})."
    )
    why, skipped = _forbidden_skips()
    if skipped:
        terminalreporter.write_line(f"FAILED: {why}; skipped: " + ", ".join(skipped), red=True, bold=True)


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory):
    """A tiny offline Qwen2.5-VL (tokenizer, processor, random weights), built once per session."""
    from echovl.testing import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny offline text-only Qwen2 causal LM."""
    from echovl.testing import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tmp_path_factory):
    """A tiny offline Qwen3-VL (Qwen3's tokenizer, processor with 16-pixel patches, deepstack, random weights)."""
    from echovl.testing import build_tiny_qwen3_vl

    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl"))


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory):
    """A tiny offline text-only Qwen3 causal LM."""
    from echovl.testing import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """Qwen3's tokenizer: ``<think>``, ``</think>`` (and the tool tokens) are single non-special added tokens."""
    from echovl.testing import build_tiny_tokenizer

    return build_tiny_tokenizer(qwen3=True)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from echovl.testing import build_tiny_tokenizer

    return build_tiny_tokenizer(vision_tokens=True)


@pytest.fixture(scope="session")
def text_only_tokenizer():
    from echovl.testing import build_tiny_tokenizer

    return build_tiny_tokenizer(vision_tokens=False)
