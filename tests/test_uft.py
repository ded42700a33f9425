"""UFT's hint schedule, solution split, seeded draws, hinted prompt tensors and hint NLL (core, no EasyR1)."""

import hashlib
import math

import pytest
import torch

from echovl.uft import (
    append_hints,
    draw_hint_parts,
    hint_nll,
    hint_probability,
    hint_uniforms,
    solution_parts,
    split_units,
)

SOLUTION = "<think>\nLet x = 2. Then y = 3.14 here!\nSo z = 5.\n\nCheck it.\n</think>\nThe answer is \\boxed{5}."


def test_schedule_at_the_key_steps():
    """p(0) = high, p(T/2) = the midpoint, p(T) = low, and no hint after T (UFT's defaults 0.05 / 0.95 / 300)."""
    assert hint_probability(0) == pytest.approx(0.95)
    assert hint_probability(150) == pytest.approx(0.5)
    assert hint_probability(300) == pytest.approx(0.05)
    assert hint_probability(301) == 0.0 and hint_probability(10_000) == 0.0
    assert hint_probability(1, low=0.2, high=0.6, total_steps=4) == pytest.approx(
        0.2 + 0.2 * (1 + math.cos(math.pi / 4))
    )
    values = [hint_probability(t) for t in range(301)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decreasing


def test_split_units_lines_and_sentences():
    lines = split_units(SOLUTION, "lines")
    assert "".join(lines) == SOLUTION
    assert lines == [
        "<think>\n",
        "Let x = 2. Then y = 3.14 here!\n",
        "So z = 5.\n\n",  # a blank line joins the line before it
        "Check it.\n",
        "</think>\n",
        "The answer is \\boxed{5}.",
    ]
    sentences = split_units(SOLUTION, "sentences")
    assert "".join(sentences) == SOLUTION
    assert sentences[1:4] == ["Let x = 2. ", "Then y = 3.14 here!\n", "So z = 5.\n\n"]  # 3.14 is not a sentence end
    assert split_units("", "lines") == [] and split_units("\n\nx", "lines") == ["\n\n", "x"]
    with pytest.raises(KeyError):  # GuidanceConfig.hint_split names the choices; a direct caller's typo is not lines
        split_units(SOLUTION, "words")


def _uft_parts(units, max_parts):
    """UFT's cut of a hint list (verl/utils/dataset/rl_dataset.py), written out."""
    num = min(max_parts, len(units))
    separation = [round(i / num * len(units)) for i in range(num + 1)]
    separation[-1] = len(units)
    return ["".join(units[separation[i] : separation[i + 1]]) for i in range(num)]


@pytest.mark.parametrize("lines", [1, 2, 4, 5, 6, 7, 11, 23])
def test_solution_parts_group_units_like_uft(lines):
    text = "".join(f"step {i}.\n" for i in range(lines))
    parts = solution_parts(text, max_parts=5)
    assert len(parts) == min(5, lines) and all(parts) and "".join(parts) == text
    assert parts == _uft_parts(split_units(text), 5)
    assert solution_parts("") == []
    assert solution_parts(text, max_parts=1) == [text]


def test_draws_depend_only_on_seed_step_and_prompt():
    """The uniforms are SHA-256 of (seed, step, index, prompt key): recomputed here with hashlib directly."""
    expected = []
    for index in range(5):
        digest = hashlib.sha256(f"echovl.hint|7|12|{index}|prompt A".encode()).digest()
        expected.append((int.from_bytes(digest[:8], "big") >> 11) / 2.0**53)
    assert hint_uniforms(5, seed=7, step=12, key="prompt A") == expected
    k = draw_hint_parts(5, 0.5, seed=7, step=12, key="prompt A")
    assert k == sum(u < 0.5 for u in expected)
    assert draw_hint_parts(5, 0.5, seed=7, step=12, key="prompt A") == k  # again: the same
    draws = {(s, t, p): draw_hint_parts(5, 0.5, seed=s, step=t, key=p) for s in (1, 2) for t in (1, 2) for p in "ab"}
    assert len(set(draws.values())) > 1  # seed, step and prompt all matter
    assert draw_hint_parts(5, 0.0, seed=1, step=1, key="x") == 0
    assert draw_hint_parts(5, 1.0, seed=1, step=1, key="x") == 5


def test_draws_follow_the_binomial():
    """Over many prompts the draws have the Binomial(5, p) mean and variance."""
    p = 0.3
    draws = torch.tensor([draw_hint_parts(5, p, seed=0, step=3, key=f"prompt {i}") for i in range(4000)]).double()
    assert draws.mean().item() == pytest.approx(5 * p, abs=0.06)
    assert draws.var().item() == pytest.approx(5 * p * (1 - p), rel=0.08)


def _left_padded(rows, width, pad=0):
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    positions = torch.clip(mask.cumsum(-1) - 1, min=0)  # as EasyR1's dataset computes text positions
    return ids, mask, positions


def test_append_hints_text_positions_match_a_prompt_built_from_scratch():
    prompts = [[5, 6, 7], [8, 9], [4]]
    hints = [[11, 12], [], [13, 14, 15]]
    ids, mask, positions = _left_padded(prompts, 4, pad=99)
    new_ids, new_mask, new_positions, lengths = append_hints(
        ids, mask, positions, hints, max_length=6, pad_token_id=99
    )
    full = [p + h for p, h in zip(prompts, hints)]
    ref_ids, ref_mask, ref_positions = _left_padded(full, 6, pad=99)
    assert torch.equal(new_ids, ref_ids) and torch.equal(new_mask, ref_mask)
    assert torch.equal(new_positions, ref_positions)
    assert lengths.tolist() == [2, 0, 3]
    assert new_ids[:, -3:].tolist()[2] == [13, 14, 15]  # the prompt ends with its hint


def test_append_hints_mrope_rows_advance_together():
    """(B, C, P) positions: every row continues from its last value by 1 per hint token."""
    ids, mask, _ = _left_padded([[1, 2, 3, 4]], 5)
    positions = torch.tensor([[[0, 0, 1, 2, 3], [0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [0, 0, 1, 2, 2]]])
    _, _, new_positions, _ = append_hints(ids, mask, positions, [[7, 8]], max_length=7, pad_token_id=0)
    assert new_positions.shape == (1, 4, 7)
    assert new_positions[0, :, -2:].tolist() == [[4, 5], [3, 4], [3, 4], [3, 4]]
    assert torch.equal(new_positions[0, :, 1:5], positions[0, :, 1:])
    assert not new_positions[0, :, 0].any()  # padding


def test_append_hints_errors():
    ids, mask, positions = _left_padded([[1, 2, 3]], 4)
    with pytest.raises(ValueError, match="do not fit"):
        append_hints(ids, mask, positions, [[5, 6]], max_length=4, pad_token_id=0)
    hole = torch.tensor([[1, 0, 1, 1]])
    with pytest.raises(ValueError, match="left-padded"):
        append_hints(ids, hole, positions, [[5]], max_length=6, pad_token_id=0)
    with pytest.raises(ValueError):
        append_hints(ids, mask, positions, [[5], [6]], max_length=6, pad_token_id=0)


# ------------------------------------------------------------------------------------ the hint NLL


def _log_probs(seed=0, shape=(3, 5)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 8 - 8).requires_grad_()


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


def test_hint_nll_checks_shapes():
    with pytest.raises(ValueError):
        hint_nll(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool))
