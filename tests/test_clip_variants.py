"""Clip selection variants (``top_k``, ``soft``), their loss and the lambda schedule: hand-worked cases, the
reference loop, and a plain autograd reference for the loss."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echovl.clip import mine_echo_clips, row_clip_weight
from echovl.config import EchoConfig
from echovl.loss import echo_nll, weighted_echo_nll
from echovl.schedule import echo_coef
from tests.reference import mine_several_ref
from tests.test_clip import mining_cases

# one group, two verified rows: step means row 0: [1.0, 4.0]; row 1: [3.0, 2.0]; an unverified row 2 with 9.0
ENTROPY = [[1.0, 1.0, 5.0, 3.0], [3.0, 3.0, 2.0, 0.0], [9.0, 9.0, 9.0, 9.0]]
STEPS = [[0, 0, 1, 1], [0, 0, 1, -1], [0, 0, 0, 0]]


def _mine(**kwargs):
    return mine_echo_clips(
        torch.tensor(ENTROPY),
        torch.tensor(STEPS),
        torch.ones(3, 4, dtype=torch.bool),
        torch.tensor([True, True, False]),
        torch.zeros(3, dtype=torch.long),
        **kwargs,
    )


def test_max_is_the_paper_path_with_one_over_length_token_weights():
    clips = _mine()
    assert clips.row.tolist() == [0] and clips.step.tolist() == [1]
    assert clips.weight.tolist() == [1.0]
    assert clips.token_weight.tolist() == [[0.25] * 4, [0.0] * 4, [0.0] * 4]  # the clip: steps 0-1 of row 0


def test_top_k_takes_the_k_highest_steps_worked_by_hand():
    clips = _mine(selection="top_k", top_k=2)
    # highest: row 0 step 1 (4.0, 4 tokens), then row 1 step 0 (3.0, 2 tokens)
    assert list(zip(clips.row.tolist(), clips.step.tolist())) == [(0, 1), (1, 0)]
    assert clips.step_entropy.tolist() == [4.0, 3.0]
    assert clips.length.tolist() == [4, 2]
    assert clips.weight.tolist() == [1.0, 1.0]
    assert clips.token_weight.tolist() == [[0.25] * 4, [0.5, 0.5, 0.0, 0.0], [0.0] * 4]
    assert clips.mask.tolist() == [[True] * 4, [True, True, False, False], [False] * 4]
    # k larger than the eligible steps: all of them (4), the unverified row never
    assert len(_mine(selection="top_k", top_k=10)) == 4


def test_top_k_nested_clips_of_one_rollout():
    # top 3: (0,1) 4.0, (1,0) 3.0, (1,1) 2.0 -> row 1 holds two nested clips: steps 0 (2 tokens) and 1 (3 tokens)
    clips = _mine(selection="top_k", top_k=3)
    assert list(zip(clips.row.tolist(), clips.step.tolist())) == [(0, 1), (1, 0), (1, 1)]
    assert clips.token_weight[1].tolist() == pytest.approx([1 / 2 + 1 / 3, 1 / 2 + 1 / 3, 1 / 3, 0.0])
    assert row_clip_weight(clips, 3).tolist() == [1.0, 2.0, 0.0]


def test_soft_weights_are_a_softmax_of_step_entropy_worked_by_hand():
    clips = _mine(selection="soft", soft_temperature=0.5)
    # eligible steps, by entropy: 4.0 (0,1), 3.0 (1,0), 2.0 (1,1), 1.0 (0,0); weights exp(H / 0.5) normalised
    assert list(zip(clips.row.tolist(), clips.step.tolist())) == [(0, 1), (1, 0), (1, 1), (0, 0)]
    z = [math.exp(h / 0.5) for h in (4.0, 3.0, 2.0, 1.0)]
    expected = [v / sum(z) for v in z]
    assert clips.weight.tolist() == pytest.approx(expected, rel=1e-6)
    assert float(clips.weight.sum()) == pytest.approx(1.0)
    w = expected
    assert clips.token_weight[0].tolist() == pytest.approx([w[0] / 4 + w[3] / 2] * 2 + [w[0] / 4] * 2, rel=1e-6)
    assert clips.token_weight[1].tolist() == pytest.approx([w[1] / 2 + w[2] / 3] * 2 + [w[2] / 3, 0.0], rel=1e-6)
    assert row_clip_weight(clips, 3).sum().item() == pytest.approx(1.0)  # a group weighs as one clip


def test_soft_at_low_temperature_approaches_max():
    clips = _mine(selection="soft", soft_temperature=0.01)
    assert clips.weight[0].item() == pytest.approx(1.0) and (clips.row[0], clips.step[0]) == (0, 1)


def test_unknown_selection_or_scope_fails_loudly():
    # the settings are validated by EchoConfig (test_config_settings_validate_and_default_to_the_paper); a direct
    # caller's misspelt name is still never mined as some other rule
    with pytest.raises(KeyError, match="best"):
        _mine(selection="best")
    with pytest.raises(KeyError, match="some"):
        _mine(scope="some")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mining_cases(), st.sampled_from(["top_k", "soft"]), st.integers(1, 4), st.sampled_from([0.3, 1.0, 4.0]))
def test_matches_reference(case, selection, top_k, temp):
    entropy, steps, text_mask, verified, group, min_tokens, scope = case
    entropy = torch.tensor(entropy, dtype=torch.float32)
    expected, expected_weight = mine_several_ref(
        entropy.tolist(), steps, text_mask, verified, group, min_tokens, scope, selection, top_k, temp
    )
    clips = mine_echo_clips(
        entropy,
        torch.tensor(steps),
        torch.tensor(text_mask),
        torch.tensor(verified),
        torch.tensor(group),
        min_step_tokens=min_tokens,
        scope=scope,
        selection=selection,
        top_k=top_k,
        soft_temperature=temp,
    )
    got = list(zip(clips.group.tolist(), clips.row.tolist(), clips.step.tolist(), clips.length.tolist()))
    assert got == [c[:3] + (c[4],) for c in expected]
    assert clips.step_entropy.tolist() == pytest.approx([c[3] for c in expected], rel=1e-6)
    assert clips.weight.tolist() == pytest.approx([c[5] for c in expected], rel=1e-5)
    assert clips.token_weight.tolist() == [pytest.approx(row, rel=1e-5, abs=1e-7) for row in expected_weight]
    assert clips.mask.tolist() == [[w > 0 for w in row] for row in expected_weight]


# ------------------------------------------------------------------ the weighted loss


def _reference_loss(log_probs, clips):
    """sum over clips of weight * mean NLL over the clip's own tokens, clip by clip (plain autograd)."""
    total = log_probs.new_zeros(())
    for row, step, weight in zip(clips.row.tolist(), clips.step.tolist(), clips.weight.tolist()):
        tokens = torch.tensor([0 <= s <= step for s in STEPS[row]])
        total = total + weight * (-log_probs[row][tokens]).mean()
    return total


@pytest.mark.parametrize("kwargs", [dict(selection="top_k", top_k=3), dict(selection="soft", soft_temperature=0.7)])
def test_weighted_loss_and_gradient_match_a_clip_by_clip_reference(kwargs):
    clips = _mine(**kwargs)
    logits = torch.randn(3, 4, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (3, 4))
    log_probs = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    got = weighted_echo_nll(log_probs, clips.token_weight)
    (got_grad,) = torch.autograd.grad(got, logits, retain_graph=True)
    want = _reference_loss(log_probs, clips)
    (want_grad,) = torch.autograd.grad(want, logits)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-7)


def test_weighted_loss_with_max_weights_equals_echo_nll():
    clips = _mine()
    log_probs = -torch.rand(3, 4, dtype=torch.float64)
    weight = clips.mask.double() / clips.mask.sum(-1, keepdim=True).clamp(min=1)
    assert weighted_echo_nll(log_probs, weight).item() == pytest.approx(echo_nll(log_probs, clips.mask)[0].item())


def test_weighted_loss_ignores_non_finite_log_probs_outside_clips():
    log_probs = torch.tensor([[-1.0, float("-inf")], [float("nan"), -2.0]], requires_grad=True)
    weight = torch.tensor([[0.5, 0.0], [0.0, 1.0]])
    total = weighted_echo_nll(log_probs, weight)
    total.backward()
    assert total.item() == 2.5
    assert log_probs.grad.tolist() == [[-0.5, 0.0], [0.0, -1.0]]
    with pytest.raises(ValueError):
        weighted_echo_nll(torch.zeros(2, 3), torch.zeros(2, 2))


# ------------------------------------------------------------------ lambda over training


def test_echo_coef_schedules_worked_by_hand():
    assert [echo_coef(0.1, s, start_step=3) for s in (1, 2, 3, 10)] == [0.0, 0.0, 0.1, 0.1]
    linear = [echo_coef(0.1, s, start_step=3, schedule="linear", warmup_steps=4) for s in (2, 3, 4, 6, 7, 50)]
    assert linear == pytest.approx([0.0, 0.025, 0.05, 0.1, 0.1, 0.1])
    assert echo_coef(0.1, 1, schedule="linear", warmup_steps=2) == pytest.approx(0.05)
    assert echo_coef(0.1, 5, schedule="adaptive", degenerate_fraction=0.25) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="schedule"):
        echo_coef(0.1, 5, schedule="cosine")


def test_config_settings_validate_and_default_to_the_paper():
    config = EchoConfig()
    assert (config.selection, config.start_step, config.coef_schedule) == ("max", 0, "constant")
    assert not config.weighted and config.coef_at(1) == 0.001
    assert EchoConfig(enable=False).coef_at(5) == 0.0
    assert EchoConfig(coef_schedule="adaptive").coef_at(4, degenerate_fraction=0.5) == pytest.approx(0.0005)
    for key, value in [
        ("selection", "top"),
        ("top_k", 0),
        ("soft_temperature", 0.0),
        ("soft_temperature", float("inf")),
        ("start_step", -1),
        ("coef_schedule", "cosine"),
        ("coef_warmup_steps", -2),
    ]:
        with pytest.raises(ValueError, match=f"echo.{key}"):
            EchoConfig(**{key: value})
    with pytest.raises(ValueError, match="echo.coef_warmup_steps"):
        EchoConfig(coef_schedule="linear")
