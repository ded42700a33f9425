import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echovl.loss import echo_nll, echo_term
from tests.reference import echo_nll_ref


def test_mean_per_clip_summed_over_clips():
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0], [-7.0, -8.0, -9.0]])
    mask = torch.tensor([[True, True, False], [False, False, False], [False, True, True]])
    total, count = echo_nll(log_probs, mask)
    assert total.item() == pytest.approx(1.5 + 8.5)
    assert count.item() == 2


def test_empty_mask_gives_zero_with_gradient_path():
    log_probs = torch.randn(2, 4, requires_grad=True)
    total, count = echo_nll(log_probs, torch.zeros(2, 4, dtype=torch.bool))
    assert total.item() == 0 and count.item() == 0
    total.backward()
    assert torch.equal(log_probs.grad, torch.zeros(2, 4))


def test_gradient_only_on_masked_tokens_and_ignores_non_finite_padding():
    log_probs = torch.tensor([[-1.0, -2.0, -float("inf")], [float("nan"), -1.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, True, False]])
    total, count = echo_nll(log_probs, mask)
    assert torch.isfinite(total) and count.item() == 2
    total.backward()
    assert log_probs.grad.tolist() == [[-0.5, -0.5, 0.0], [0.0, -1.0, 0.0]]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        echo_nll(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a busy CI machine
@given(st.data())
def test_matches_reference(data):
    batch, length = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 8))
    lp = data.draw(
        st.lists(st.lists(st.floats(-20, 0), min_size=length, max_size=length), min_size=batch, max_size=batch)
    )
    mask = data.draw(
        st.lists(st.lists(st.booleans(), min_size=length, max_size=length), min_size=batch, max_size=batch)
    )
    total, count = echo_nll(torch.tensor(lp, dtype=torch.float64), torch.tensor(mask))
    ref_total, ref_count = echo_nll_ref(lp, mask)
    assert count.item() == ref_count
    assert total.item() == pytest.approx(ref_total, rel=1e-9, abs=1e-9)


def test_echo_term_is_coef_times_the_weighted_clip_nll_over_the_clip_weight():
    """coef * sum_t w_t (-log p_t) / clip_weight against plain autograd on the clip means."""
    g = torch.Generator().manual_seed(5)
    log_probs = (-torch.rand(3, 6, generator=g, dtype=torch.float64) * 4).requires_grad_()
    # two clips: row 0 tokens 0-3 (weight 1), row 2 tokens 1-2 (weight 0.5): w = weight / length on their tokens
    token_weight = torch.zeros(3, 6, dtype=torch.float64)
    token_weight[0, :4] = 1 / 4
    token_weight[2, 1:3] = 0.5 / 2
    term, total = echo_term(log_probs, token_weight, coef=0.01, clip_weight=1.5)
    (grad,) = torch.autograd.grad(term, log_probs)
    reference_input = log_probs.detach().clone().requires_grad_()
    clip_means = torch.stack([-reference_input[0, :4].mean(), -reference_input[2, 1:3].mean()])
    reference = 0.01 * (clip_means * torch.tensor([1.0, 0.5], dtype=torch.float64)).sum() / 1.5
    (reference_grad,) = torch.autograd.grad(reference, reference_input)
    torch.testing.assert_close(term, reference)
    torch.testing.assert_close(grad, reference_grad)
    assert not total.requires_grad and total.item() == pytest.approx(reference.item() * 1.5 / 0.01)
