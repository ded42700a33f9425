"""LUFFY's expert rows and group advantages (core, no EasyR1)."""

import pytest
import torch

from echovl.luffy import (
    encode_trace,
    expert_responses,
    group_advantages,
    policy_shaping,
    shaped_pg_loss,
    shaping_weight,
    unclipped_pg_loss,
)

EOS, PAD = 2, 0


def test_expert_responses_append_eos_and_mask_it():
    responses, mask, fits = expert_responses(
        [[5, 6, 7], [8, EOS], [9] * 5, [9] * 4], eos_token_id=EOS, pad_token_id=PAD, length=5
    )
    assert responses.tolist()[:2] == [[5, 6, 7, EOS, PAD], [8, EOS, PAD, PAD, PAD]]  # an EOS is never doubled
    assert mask.tolist()[:2] == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
    # 5 tokens + EOS do not fit in 5: never truncated, the row is empty; 4 + EOS fit exactly
    assert fits.tolist() == [True, True, False, True]
    assert not mask[2].any() and (responses[2] == PAD).all()
    assert responses[3].tolist() == [9, 9, 9, 9, EOS]


def _advantage_ref(scores, group, use_std, eps=1e-6):
    out = []
    for s, g in zip(scores, group):
        members = [x for x, h in zip(scores, group) if h == g]
        mean = sum(members) / len(members)
        if use_std:
            std = (sum((x - mean) ** 2 for x in members) / (len(members) - 1)) ** 0.5
            out.append((s - mean) / (std + eps))
        else:
            out.append(s - mean)
    return out


@pytest.mark.parametrize("use_std", [False, True])
def test_group_advantages_match_a_plain_loop(use_std):
    scores = [1.0, 0.0, 1.1, 0.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
    group = [3, 3, 3, 3, 7, 7, 7, 7, 1, 1]  # any ids, rows of a group anywhere
    order = [9, 0, 4, 1, 5, 2, 8, 6, 3, 7]
    s = torch.tensor([scores[i] for i in order], dtype=torch.float64)
    g = torch.tensor([group[i] for i in order])
    out = group_advantages(s, g, use_std=use_std)
    ref = _advantage_ref(s.tolist(), g.tolist(), use_std)
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64))
    assert out[g == 7].abs().max() == 0  # an all-correct group has zero advantages either way


def test_group_advantages_without_std_keep_the_reward_scale():
    """LUFFY's r - mean(r): an expert row scoring 1 among three wrong rollouts gets 0.75, not 1.5 (with std)."""
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0])
    group = torch.zeros(4, dtype=torch.long)
    assert group_advantages(scores, group, use_std=False).tolist() == [0.75, -0.25, -0.25, -0.25]
    assert group_advantages(scores, group, use_std=True)[0].item() == pytest.approx(1.5, rel=1e-5)


def test_encode_trace_drops_a_repeated_think_opening(text_only_tokenizer):
    solution = "<think>\nAdd them.\n</think>\n\\boxed{4}"
    full = encode_trace(text_only_tokenizer, solution, prompt="<|im_start|>assistant\n")
    assert text_only_tokenizer.decode(full) == solution
    cut = encode_trace(text_only_tokenizer, solution, prompt="<|im_start|>assistant\n<think>\n")
    assert text_only_tokenizer.decode(cut) == solution[len("<think>\n") :]


# ------------------------------------------------------------------------------------ policy shaping


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


def test_unclipped_pg_loss_matches_plain_autograd():
    log_probs = _log_probs(1)
    old = _log_probs(2).detach()
    advantages = torch.linspace(-1, 1, 15, dtype=torch.float64).view(3, 5)
    loss = unclipped_pg_loss(log_probs, old, advantages)
    (grad,) = torch.autograd.grad(loss.sum(), log_probs)
    ratio = torch.exp(log_probs.detach() - old)
    torch.testing.assert_close(loss, -advantages * ratio)
    torch.testing.assert_close(grad, -advantages * ratio)  # d(-A r)/d log p = -A r: never clipped


def test_unclipped_pg_loss_checks_shapes():
    with pytest.raises(ValueError):
        unclipped_pg_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))
