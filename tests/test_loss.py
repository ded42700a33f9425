import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echovl.loss import echo_nll
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
