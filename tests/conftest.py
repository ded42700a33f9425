import importlib.util
import sys
from pathlib import Path

import pytest

# ------------------------------------------------------------------------------------------- EasyR1 tests
# An EasyR1 test is one in a tests/test_easyr1_*.py module or marked ``easyr1``. Without EasyR1 they skip. With
# EasyR1 installed they must all run: a skipped one (e.g. its import failed for want of one of EasyR1's own
# dependencies, which pytest.importorskip reports as a skip) fails the session. The summary says how many ran.

EASYR1_INSTALLED = importlib.util.find_spec("verl") is not None
_easyr1 = {"ran": 0, "skipped": []}


def _in_easyr1_module(nodeid: str) -> bool:
    return Path(nodeid.split("::")[0]).name.startswith("test_easyr1_")


def pytest_collection_modifyitems(items):
    for item in items:
        if _in_easyr1_module(item.nodeid):
            item.add_marker(pytest.mark.easyr1)


def pytest_collectreport(report):
    """Counts EasyR1 modules skipped whole. Also: the EasyR1 test modules import EasyR1 under a ``vllm`` import
    stub; as soon as a module is collected, take the stub out again so that libraries probing for vllm (TRL) see
    that it is not installed."""
    if report.skipped and _in_easyr1_module(report.nodeid):
        _easyr1["skipped"].append(f"{report.nodeid} (the whole module)")
    if "vllm" in sys.modules:
        from tests.easyr1_stubs import uninstall_vllm_stub

        uninstall_vllm_stub()


def pytest_runtest_logreport(report):
    if "easyr1" not in report.keywords:
        return
    if report.skipped:
        _easyr1["skipped"].append(report.nodeid)
    elif report.when == "call":
        _easyr1["ran"] += 1


def pytest_sessionfinish(session, exitstatus):
    if (
        EASYR1_INSTALLED
        and _easyr1["skipped"]
        and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    ran, skipped = _easyr1["ran"], _easyr1["skipped"]
    state = "installed" if EASYR1_INSTALLED else "not installed"
    terminalreporter.write_line(f"EasyR1 integration tests: {ran} ran, {len(skipped)} skipped (EasyR1 {state}).")
    if EASYR1_INSTALLED and skipped:
        terminalreporter.write_line(
            "FAILED: EasyR1 is installed, so its tests must run; skipped: " + ", ".join(skipped), red=True, bold=True
        )


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
