import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from echovl.clip import SCOPES, group_outcomes, mine_echo_clips, step_entropies
from tests.reference import mine_ref


def _mine(entropy, steps, text_mask=None, verified=None, group=None, **kwargs):
    entropy = torch.tensor(entropy, dtype=torch.float32)
    steps = torch.tensor(steps)
    text_mask = torch.ones_like(steps, dtype=torch.bool) if text_mask is None else torch.tensor(text_mask)
    batch = entropy.shape[0]
    verified = torch.ones(batch, dtype=torch.bool) if verified is None else torch.tensor(verified)
    group = torch.zeros(batch, dtype=torch.long) if group is None else torch.tensor(group)
    return mine_echo_clips(entropy, steps, text_mask, verified, group, **kwargs)


def test_picks_highest_mean_step_and_masks_its_prefix():
    clips = _mine(
        entropy=[[1.0, 1.0, 5.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 0.0]],
        steps=[[0, 0, 1, 1, -1], [0, 0, 1, 1, 2]],
    )
    # row 0 step 1 has mean 4.0, the highest
    assert clips.row.tolist() == [0] and clips.step.tolist() == [1]
    assert clips.step_entropy.tolist() == [4.0]
    assert clips.mask.tolist() == [[True, True, True, True, False], [False] * 5]
    assert clips.length.tolist() == [4]
    assert len(clips) == 1


def test_only_verified_rows_are_eligible():
    clips = _mine(entropy=[[9.0, 9.0], [1.0, 1.0]], steps=[[0, 1], [0, 1]], verified=[False, True])
    assert clips.row.tolist() == [1]


def test_group_without_verified_rollout_gets_no_clip():
    clips = _mine(entropy=[[9.0], [1.0], [3.0]], steps=[[0], [0], [0]], verified=[False, False, True], group=[7, 7, 8])
    assert clips.group.tolist() == [8] and clips.row.tolist() == [2]
    assert not clips.mask[:2].any()


def test_step_entropy_uses_text_tokens_only():
    # the vision token (high entropy) is masked out: step 0 mean is 1.0, step 1 mean is 2.0
    clips = _mine(
        entropy=[[1.0, 100.0, 2.0]],
        steps=[[0, 0, 1]],
        text_mask=[[True, False, True]],
    )
    assert clips.step.tolist() == [1] and clips.step_entropy.tolist() == [2.0]
    assert clips.mask.tolist() == [[True, False, True]]  # non-text tokens are never supervised
    assert clips.length.tolist() == [2]


def test_non_finite_entropy_outside_counted_tokens_is_ignored():
    # NaN / inf on a vision token and on padding must not reach any step's mean
    clips = _mine(
        entropy=[[2.0, float("nan"), 1.0, float("inf")], [0.5, float("-inf"), 0.5, float("nan")]],
        steps=[[0, 0, 1, -1], [0, -1, 1, -1]],
        text_mask=[[True, False, True, False], [True, True, True, False]],
        group=[0, 1],
    )
    assert clips.row.tolist() == [0, 1] and clips.step.tolist() == [0, 0]
    assert clips.step_entropy.tolist() == [2.0, 0.5]
    assert clips.length.tolist() == [1, 1]


def test_any_negative_step_is_outside_the_response():
    """Steps below -1 count as outside too, even ones that do not fit in int32 (the bin arithmetic then stays in
    int64: -2**40 cast to int32 would read as step 0)."""
    for outside in (-1, -7, -(2**40)):
        clips = _mine(entropy=[[1.0, 9.0, 2.0]], steps=[[0, outside, 1]])
        assert clips.step.tolist() == [1] and clips.step_entropy.tolist() == [2.0]
        assert clips.mask.tolist() == [[True, False, True]]


def test_min_step_tokens():
    kwargs = dict(entropy=[[5.0, 1.0, 1.0, 2.0]], steps=[[0, 1, 1, 1]])
    assert _mine(**kwargs).step.tolist() == [0]
    assert _mine(**kwargs, min_step_tokens=2).step.tolist() == [1]
    assert len(_mine(**kwargs, min_step_tokens=4)) == 0


def test_ties_go_to_lowest_row_then_earliest_step():
    clips = _mine(entropy=[[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]], steps=[[0, 1, 1], [0, 0, 1]])
    assert clips.row.tolist() == [0] and clips.step.tolist() == [0]
    clips = _mine(entropy=[[0.1, 0.1], [0.3, 0.3]], steps=[[0, 1], [0, 1]], verified=[False, True])
    assert clips.row.tolist() == [1] and clips.step.tolist() == [0]


def test_scope_degenerate_only_mines_all_correct_groups():
    kwargs = dict(
        entropy=[[1.0], [2.0], [3.0], [4.0]],
        steps=[[0], [0], [0], [0]],
        verified=[True, True, True, False],
        group=[0, 0, 1, 1],
    )
    assert _mine(**kwargs).row.tolist() == [1, 2]
    assert _mine(**kwargs, scope="degenerate").row.tolist() == [1]


def test_groups_are_found_by_value_in_any_order():
    clips = _mine(
        entropy=[[1.0], [5.0], [2.0], [3.0]],
        steps=[[0], [0], [0], [0]],
        group=[42, -3, 42, -3],
    )
    assert clips.group.tolist() == [-3, 42]
    assert clips.row.tolist() == [1, 2]


def test_empty_and_all_padding_batches():
    assert len(_mine(entropy=[[0.0, 0.0]], steps=[[-1, -1]])) == 0
    clips = mine_echo_clips(
        torch.zeros(0, 5),
        torch.zeros(0, 5, dtype=torch.long),
        torch.zeros(0, 5, dtype=torch.bool),
        torch.zeros(0, dtype=torch.bool),
        torch.zeros(0, dtype=torch.long),
    )
    assert len(clips) == 0 and clips.mask.shape == (0, 5)


def test_shape_errors():
    with pytest.raises(ValueError):
        mine_echo_clips(
            torch.zeros(2, 3),
            torch.zeros(2, 4, dtype=torch.long),
            torch.ones(2, 3, dtype=torch.bool),
            torch.ones(2, dtype=torch.bool),
            torch.zeros(2, dtype=torch.long),
        )
    with pytest.raises(ValueError):
        mine_echo_clips(
            torch.zeros(2, 3),
            torch.zeros(2, 3, dtype=torch.long),
            torch.ones(2, 3, dtype=torch.bool),
            torch.ones(3, dtype=torch.bool),
            torch.zeros(2, dtype=torch.long),
        )


def test_step_entropies_and_group_outcomes():
    mean, count = step_entropies(
        torch.tensor([[1.0, 3.0, 4.0, 0.0]]), torch.tensor([[0, 0, 1, -1]]), torch.tensor([[True, True, True, True]])
    )
    assert mean.tolist() == [[2.0, 4.0]] and count.tolist() == [[2, 1]]
    outcomes = group_outcomes(torch.tensor([True, True, False, False, True, False]), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert (outcomes.num_groups, outcomes.all_correct, outcomes.all_wrong) == (3, 1, 1)


# ---------------------------------------------------------------- against the reference loop

ENTROPY_VALUES = st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5]), st.floats(0, 10, width=32))


@st.composite
def mining_cases(draw):
    batch = draw(st.integers(1, 8))
    length = draw(st.integers(1, 12))

    def grid(strategy):
        return draw(st.lists(st.lists(strategy, min_size=length, max_size=length), min_size=batch, max_size=batch))

    entropy = grid(ENTROPY_VALUES)
    # steps: non-decreasing per row, with -1 padding at the end (as step_index makes them)
    steps = []
    for _ in range(batch):
        valid = draw(st.integers(0, length))
        row, step = [], 0
        for _ in range(valid):
            row.append(step)
            step += draw(st.sampled_from([0, 0, 1]))
        steps.append(row + [-1] * (length - valid))
    text_mask = grid(st.sampled_from([True, True, True, False]))
    verified = draw(st.lists(st.booleans(), min_size=batch, max_size=batch))
    group = draw(st.lists(st.sampled_from([0, 1, 5, -2]), min_size=batch, max_size=batch))
    min_tokens = draw(st.integers(1, 3))
    scope = draw(st.sampled_from(["all", "degenerate"]))
    return entropy, steps, text_mask, verified, group, min_tokens, scope


@example(
    (
        [[0.0] * 4 + [0.1] * 4],
        [[0, 0, 0, 0, 1, 2, 2, 2]],
        [[True] * 8],
        [True],
        [0],
        1,
        "all",
    )
)
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a busy CI machine
@given(mining_cases())
def test_matches_reference(case):
    entropy, steps, text_mask, verified, group, min_tokens, scope = case
    entropy = torch.tensor(entropy, dtype=torch.float32)  # both sides see the same (float32) values
    expected, expected_mask = mine_ref(entropy.tolist(), steps, text_mask, verified, group, min_tokens, scope)
    clips = mine_echo_clips(
        entropy,
        torch.tensor(steps),
        torch.tensor(text_mask),
        torch.tensor(verified),
        torch.tensor(group),
        min_step_tokens=min_tokens,
        scope=scope,
    )
    got = {
        g: (r, s, e, n)
        for g, r, s, e, n in zip(
            clips.group.tolist(),
            clips.row.tolist(),
            clips.step.tolist(),
            clips.step_entropy.tolist(),
            clips.length.tolist(),
        )
    }
    assert got.keys() == expected.keys()
    for g, (row, step, mean, length) in expected.items():
        assert got[g][:2] == (row, step)
        assert got[g][2] == pytest.approx(mean, rel=1e-6)
        assert got[g][3] == length
    assert clips.mask.tolist() == expected_mask
    assert clips.group.tolist() == sorted(expected)


def test_mining_with_real_steps_from_step_index():
    """End to end on ids: steps from step_index, a vision token in the row, groups shuffled."""
    from echovl.steps import step_index

    delim = torch.tensor([False, True, False])  # 1 = newline, 2 = vision token
    ids = torch.tensor([[2, 0, 0, 1, 0, 1, 0], [0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0]])
    mask = torch.ones_like(ids)
    steps = step_index(ids, mask, delim)
    text = ids != 2
    entropy = torch.tensor([[9.0, 1, 1, 1, 3, 3, 0], [2, 2, 2, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    clips = mine_echo_clips(entropy, steps, text, torch.tensor([True, True, True]), torch.tensor([1, 0, 1]))
    assert clips.group.tolist() == [0, 1]
    assert clips.row.tolist() == [1, 0] and clips.step.tolist() == [0, 1]
    assert clips.mask[0].tolist() == [False, True, True, True, True, True, False]
    assert clips.mask[1].tolist() == [True, True, True, False, False, False, False]


@st.composite
def long_row_cases(draw):
    """Rows of up to 300 tokens, right padding of any length, text tokens also in the padding (they never
    count), and steps that need not rise: what real batches hold, and more."""
    batch = draw(st.integers(1, 10))
    length = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    valid = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    if draw(st.booleans()):  # as step_index makes them
        steps = torch.cumsum(torch.rand(batch, length, generator=g) < 0.1, dim=1)
    else:  # any order
        steps = torch.randint(0, 6, (batch, length), generator=g)
    steps = torch.where(valid, steps, -1)
    text_mask = torch.rand(batch, length, generator=g) < draw(st.sampled_from([0.0, 0.5, 0.95, 1.0]))
    entropy = torch.randint(0, 4, (batch, length), generator=g).float() / 2  # small values: many ties
    verified = torch.rand(batch, generator=g) < 0.7
    group = torch.randint(0, 3, (batch,), generator=g)
    return entropy, steps, text_mask, verified, group, draw(st.integers(1, 3)), draw(st.sampled_from(SCOPES))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_row_cases())
def test_matches_reference_on_long_rows(case):
    entropy, steps, text_mask, verified, group, min_tokens, scope = case
    expected, expected_mask = mine_ref(
        entropy.tolist(), steps.tolist(), text_mask.tolist(), verified.tolist(), group.tolist(), min_tokens, scope
    )
    clips = mine_echo_clips(entropy, steps, text_mask, verified, group, min_step_tokens=min_tokens, scope=scope)
    got = dict(zip(clips.group.tolist(), zip(clips.row.tolist(), clips.step.tolist(), clips.length.tolist())))
    assert got == {g: (row, step, length) for g, (row, step, _, length) in expected.items()}
    assert clips.mask.tolist() == expected_mask
