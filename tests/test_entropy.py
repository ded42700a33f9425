import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echovl.entropy import token_entropy
from tests.reference import entropy_ref


def _closed_form(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - sum softmax(z) z in float64, from the exact values the function receives."""
    z = logits.double()
    return torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5), (torch.float16, 1e-5)])
@pytest.mark.parametrize("chunk_size", [1, 7, 128, 10_000])
def test_matches_closed_form(dtype, tol, chunk_size):
    torch.manual_seed(0)
    logits = (torch.randn(3, 50, 257) * 4).to(dtype)
    got = token_entropy(logits, chunk_size=chunk_size)
    assert got.dtype == torch.float32 and got.shape == (3, 50)
    # fp32 arithmetic on the (possibly bf16) inputs: close to the float64 closed form of the same inputs
    torch.testing.assert_close(got.double(), _closed_form(logits), atol=tol, rtol=tol)


def test_bf16_is_computed_in_fp32_not_bf16():
    torch.manual_seed(1)
    logits = (torch.randn(64, 1000) * 3).to(torch.bfloat16)
    exact = _closed_form(logits)
    got = token_entropy(logits).double()
    naive_bf16 = (torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)).double()
    assert (got - exact).abs().max() < 1e-5
    assert (naive_bf16 - exact).abs().max() > 1e-3  # the check above would catch a bf16 computation


def test_known_values():
    vocab = 1000
    uniform = torch.zeros(2, vocab)
    torch.testing.assert_close(token_entropy(uniform), torch.full((2,), math.log(vocab)))
    peaked = torch.full((1, vocab), -1e4)
    peaked[0, 3] = 0
    assert token_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    two = torch.tensor([[0.0, 0.0, -float("inf")]])
    assert token_entropy(two).item() == pytest.approx(math.log(2), abs=1e-6)


def test_non_contiguous_input_and_input_untouched():
    torch.manual_seed(2)
    base = torch.randn(2, 9, 33)
    view = base[:, :-1]  # what a causal LM's logits slice looks like
    before = base.clone()
    got = token_entropy(view, chunk_size=4)
    torch.testing.assert_close(got.double(), _closed_form(view), atol=1e-5, rtol=1e-5)
    assert torch.equal(base, before)


def test_gradient_flows_when_requested():
    logits = torch.randn(4, 11, requires_grad=True)
    token_entropy(logits, chunk_size=3).sum().backward()
    expected = torch.autograd.grad(_closed_form(logits).sum(), logits)[0]
    torch.testing.assert_close(logits.grad, expected, atol=1e-5, rtol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError):
        token_entropy(torch.zeros(2, 3), chunk_size=0)
    with pytest.raises(TypeError):
        token_entropy(torch.zeros(2, 3, dtype=torch.long))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a busy CI machine
@given(st.lists(st.floats(-30, 30), min_size=1, max_size=40), st.integers(1, 5))
def test_single_rows_match_python_reference(row, chunk):
    logits = torch.tensor([row, row[::-1]], dtype=torch.float32)
    got = token_entropy(logits, chunk_size=chunk)
    ref = [entropy_ref(logits[i].double().tolist()) for i in range(2)]
    assert got.tolist() == pytest.approx(ref, abs=2e-5)
