"""Shared by the evaluation tests: one torch thread for tiny models, and a fake ``vllm`` module (vLLM needs a GPU)."""

import sys
import types

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine a second thread stalls every
    operator of a batched forward (5-10x slower tests); the thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class FakeLLM:
    """Records what it was built and called with; answers request i's sample j with ``answer(i, j, input, params)``
    (default ``"r{i}s{j}"``). ``max_model_len`` is the context the backend reads from its engine."""

    instances = []
    max_model_len = 64
    answer = None

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=self.max_model_len))
        FakeLLM.instances.append(self)

    def generate(self, inputs, params, use_tqdm=True):
        self.calls.append((inputs, params))
        outputs = []
        for i, (request, p) in enumerate(zip(inputs, params, strict=True)):
            texts = [self.answer(i, j, request, p) if self.answer else f"r{i}s{j}" for j in range(p.n)]
            outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=t) for t in texts]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    """``import vllm`` gives a module whose ``LLM`` is :class:`FakeLLM` (its instances cleared)."""
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances.clear()
    return module
