"""DAPO + EchoRL keep logic on hand-built batches (the whole path inside EasyR1's fit: test_easyr1_trainer.py)."""

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.easyr1_stubs import install_vllm_stub  # noqa: E402

install_vllm_stub()

from verl.protocol import DataProto  # noqa: E402

from echovl.easyr1.actor import ECHO_MASK  # noqa: E402
from echovl.easyr1.filtering import (  # noqa: E402
    FilteredPlan,
    dropped_correct_groups,
    echo_rows,
    plan_filtered_clips,
    rows_scores,
    slot_unit,
)


def test_rows_scores_follow_uid_and_position():
    rounds = [
        (np.array(["a", "a", "b", "b"], dtype=object), [1.0, 0.0, 1.0, 1.0]),
        (np.array(["c", "c"], dtype=object), [0.0, 1.0]),
    ]
    # a batch of kept groups (a and c), concatenated and then reordered: positions within a uid are kept
    assert rows_scores(rounds, ["c", "a", "c", "a"]).tolist() == [0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="never scored"):
        rows_scores(rounds, ["a", "a", "a"])
    with pytest.raises(ValueError, match="3 scores"):
        rows_scores([(np.array(["a"]), [1.0, 0.0, 1.0])], ["a"])


def test_dropped_correct_groups():
    uids = np.array(["a", "a", "b", "b", "c", "c", "d", "d"], dtype=object)
    verified = [True, True, True, False, True, True, False, False]
    # a: all correct and dropped; b: mixed; c: all correct but kept by the filter; d: all wrong
    groups = dropped_correct_groups(uids, verified, kept={"b", "c"})
    assert [g.tolist() for g in groups] == [[0, 1]]
    assert [g.tolist() for g in dropped_correct_groups(uids, verified, kept=set())] == [[0, 1], [4, 5]]


def test_slot_unit():
    assert slot_unit(8, 8) == 1  # the paper: 8 rollouts, 8 GPUs, dynamic batching
    assert slot_unit(8, 8, micro_batch_size=2) == 2
    assert slot_unit(5, 8) == 8
    assert slot_unit(4, 2, micro_batch_size=2) == 1


@pytest.mark.parametrize(
    ("available", "limit", "unit", "expected"),
    [
        (0, -1, 1, FilteredPlan(0, 0)),
        (3, -1, 1, FilteredPlan(1, 3)),  # 3 clips in one slot of 8 rows
        (9, -1, 1, FilteredPlan(2, 9)),
        (9, 4, 1, FilteredPlan(1, 4)),
        (9, 0, 1, FilteredPlan(0, 0)),
        (3, -1, 2, FilteredPlan(2, 3)),  # slots come in units
        (1000, -1, 1, FilteredPlan(64, 512)),  # at most half of the 128 group slots
        (1000, -1, 3, FilteredPlan(63, 504)),
    ],
)
def test_plan_filtered_clips(available, limit, unit, expected):
    plan = plan_filtered_clips(available, n=8, rollout_batch_size=128, unit=unit, limit=limit)
    assert plan == expected
    assert plan.slots % unit == 0 and plan.groups <= plan.slots * 8


def test_plan_with_a_tiny_batch():
    assert plan_filtered_clips(5, n=8, rollout_batch_size=1, unit=1, limit=-1) == FilteredPlan(0, 0)


def _like(rows=4, length=5):
    tensors = {
        "responses": torch.arange(rows * length).view(rows, length),
        "response_mask": torch.ones(rows, length, dtype=torch.long),
        "old_log_probs": -torch.rand(rows, length),
        "ref_log_probs": -torch.rand(rows, length),
        "advantages": torch.rand(rows, length),
        "token_level_rewards": torch.rand(rows, length),
        ECHO_MASK: torch.ones(rows, length, dtype=torch.bool),
    }
    non_tensors = {"uid": np.array([f"k{i // 2}" for i in range(rows)], dtype=object), "extra": np.arange(rows)}
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info={"temperature": 0.6})


def _source(rows=6, length=5):
    return DataProto.from_dict(
        tensors={
            "responses": 100 + torch.arange(rows * length).view(rows, length),
            "response_mask": torch.ones(rows, length, dtype=torch.long),
            "old_log_probs": -torch.rand(rows, length),
            "old_entropy": torch.rand(rows, length),
            "token_level_scores": torch.ones(rows, length),
        },
        non_tensors={"uid": np.array([f"d{i // 3}" for i in range(rows)], dtype=object)},
    )


def test_echo_rows_carry_only_the_clip():
    like, source = _like(), _source()
    clip_mask = torch.zeros(6, 5, dtype=torch.bool)
    clip_mask[1, :3] = True
    clip_mask[5, :2] = True
    rows = echo_rows(source, torch.tensor([1, 5]), clip_mask, 4, like=like)
    assert len(rows) == 4 and set(rows.batch.keys()) == set(like.batch.keys())
    assert set(rows.non_tensor_batch) == set(like.non_tensor_batch)
    assert torch.equal(rows.batch["responses"][:2], source.batch["responses"][[1, 5]])
    assert torch.equal(rows.batch[ECHO_MASK][:2], clip_mask[[1, 5]])
    assert not rows.batch[ECHO_MASK][2:].any()  # fillers carry no loss
    assert torch.equal(rows.batch["responses"][2:], source.batch["responses"][[1, 5]])
    assert not rows.batch["response_mask"].any()  # no PG/KL term, not in EasyR1's token count
    assert not rows.batch["advantages"].any() and not rows.batch["token_level_rewards"].any()
    assert torch.equal(rows.batch["ref_log_probs"], rows.batch["old_log_probs"])
    assert list(rows.non_tensor_batch["uid"]) == ["d0", "d1", "d0", "d1"]
    assert list(rows.non_tensor_batch["extra"]) == [None] * 4
    merged = DataProto.concat([like, rows])  # joins the main batch
    assert len(merged) == 8


def test_echo_rows_without_clips_fill_with_inert_rows():
    rows = echo_rows(_source(), torch.zeros(0, dtype=torch.long), torch.zeros(6, 5, dtype=torch.bool), 4, like=_like())
    assert len(rows) == 4 and not rows.batch[ECHO_MASK].any() and not rows.batch["response_mask"].any()
    with pytest.raises(ValueError, match="cannot fit"):
        echo_rows(_source(), torch.arange(5), torch.zeros(6, 5, dtype=torch.bool), 4, like=_like())
