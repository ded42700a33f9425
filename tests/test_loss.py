import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echovl.loss import echo_nll, hint_nll, policy_shaping, shaped_pg_loss, shaping_weight, unclipped_pg_loss
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


# ------------------------------------------------------------------------------------ LUFFY and UFT terms


def _log_probs(seed=0, shape=(3, 5)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 8 - 8).requires_grad_()  # p in (e^-8, 1)


@pytest.mark.parametrize("gamma", [0.1, 0.5, 2.0])
def test_shaped_pg_loss_matches_plain_autograd(gamma):
    """-A * p / (p + gamma): values and gradients against the formula written out with exp, and the gradient
    against its closed form -A * gamma * p / (p + gamma)^2 (per unit of grad log p)."""
    log_probs = _log_probs()
    advantages = torch.linspace(-1.5, 2.0, 15, dtype=torch.float64).view(3, 5)
    loss = shaped_pg_loss(log_probs, advantages, gamma)
    (grad,) = torch.autograd.grad(loss.sum(), log_probs)

    reference_input = log_probs.detach().clone().requires_grad_()
    p = torch.exp(reference_input)
    reference = -advantages * p / (p + gamma)
    (reference_grad,) = torch.autograd.grad(reference.sum(), reference_input)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(grad, reference_grad)
    p = torch.exp(log_probs.detach())
    torch.testing.assert_close(grad, -advantages * gamma * p / (p + gamma) ** 2)
    torch.testing.assert_close(shaping_weight(log_probs.detach(), gamma), gamma * p / (p + gamma) ** 2)
    torch.testing.assert_close(policy_shaping(log_probs.detach(), gamma), p / (p + gamma))


def test_shaped_pg_loss_has_no_ratio_and_stays_finite():
    """Only the current log-probs enter (no old policy), and extreme log-probs give finite values and grads."""
    log_probs = torch.tensor([[-float("inf"), -1e4, 0.0, -1e-12]], requires_grad=True)
    advantages = torch.ones(1, 4)
    loss = shaped_pg_loss(log_probs, advantages)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(log_probs.grad).all()
    assert loss[0, 0].item() == 0.0 and loss[0, 2].item() == pytest.approx(-1 / 1.1)


@pytest.mark.parametrize("gamma", [0.0, -0.1, float("nan"), True])
def test_shaping_gamma_must_be_positive(gamma):
    with pytest.raises(ValueError, match="gamma"):
        shaped_pg_loss(torch.zeros(1, 2), torch.zeros(1, 2), gamma)


def test_unclipped_pg_loss_matches_plain_autograd():
    log_probs = _log_probs(1)
    old = _log_probs(2).detach()
    advantages = torch.linspace(-1, 1, 15, dtype=torch.float64).view(3, 5)
    loss = unclipped_pg_loss(log_probs, old, advantages)
    (grad,) = torch.autograd.grad(loss.sum(), log_probs)
    ratio = torch.exp(log_probs.detach() - old)
    torch.testing.assert_close(loss, -advantages * ratio)
    torch.testing.assert_close(grad, -advantages * ratio)  # d(-A r)/d log p = -A r: never clipped


def test_hint_nll_sums_masked_tokens():
    log_probs = torch.tensor([[-1.0, -2.0, -float("inf")], [float("nan"), -0.5, -4.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    total, count = hint_nll(log_probs, mask)
    assert total.item() == pytest.approx(1 + 2 + 0.5 + 4) and count.item() == 4
    total.backward()
    assert log_probs.grad.tolist() == [[-1.0, -1.0, 0.0], [0.0, -1.0, -1.0]]


def test_hint_nll_gradient_matches_reference_mean():
    """beta * total / count is beta * mean NLL over the hint tokens: same value and gradient as the plain mean."""
    log_probs = _log_probs(3)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(4)) < 0.5
    total, count = hint_nll(log_probs, mask)
    (grad,) = torch.autograd.grad(0.01 * total / count, log_probs)
    reference_input = log_probs.detach().clone().requires_grad_()
    reference = 0.01 * (-reference_input[mask]).mean()
    (reference_grad,) = torch.autograd.grad(reference, reference_input)
    torch.testing.assert_close(0.01 * total / count, reference)
    torch.testing.assert_close(grad, reference_grad)


def test_new_terms_check_shapes():
    with pytest.raises(ValueError):
        hint_nll(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        unclipped_pg_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))
