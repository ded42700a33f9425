import sys

import pytest


def pytest_collectreport(report):
    """The EasyR1 test modules import EasyR1 under a ``vllm`` import stub; as soon as a module is collected, take
    the stub out again so that libraries probing for vllm (TRL) see that it is not installed."""
    if "vllm" in sys.modules:
        from tests.easyr1_stubs import uninstall_vllm_stub

        uninstall_vllm_stub()


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
