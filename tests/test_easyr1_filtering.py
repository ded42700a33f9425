"""DAPO + EchoRL keep logic on hand-built batches (the whole path inside EasyR1's fit: test_easyr1_trainer.py)."""

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.easyr1_stubs import install_vllm_stub  # noqa: E402

install_vllm_stub()

from verl.protocol import DataProto  # noqa: E402

from echovl.easyr1.actor import ECHO_ROW  # noqa: E402
from echovl.easyr1.filtering import (  # noqa: E402
    dropped_correct_groups,
    echo_row_unit,
    echo_rows,
    layout_update_batch,
    padded_echo_rows,
    rows_scores,
)
from echovl.echo import ECHO_CLIP_WEIGHT, ECHO_WEIGHT  # noqa: E402


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


def test_echo_row_unit():
    assert echo_row_unit(8, 2) == 16  # the paper: 8 GPUs, update batch 64 of 128 (2 mini-batches), dynamic batching
    assert echo_row_unit(8, 4) == 32  # update batch 32
    assert echo_row_unit(8, 2, micro_batch_size=2) == 32
    assert [padded_echo_rows(c, 16) for c in (0, 1, 16, 17, 300)] == [0, 16, 16, 32, 304]


PROMPT = 3  # prompt positions before the 5 response positions


def _like(rows=4, length=5):
    tensors = {
        "responses": torch.arange(rows * length).view(rows, length),
        "response_mask": torch.ones(rows, length, dtype=torch.long),
        "attention_mask": torch.ones(rows, PROMPT + length, dtype=torch.long),
        "old_log_probs": -torch.rand(rows, length),
        "ref_log_probs": -torch.rand(rows, length),
        "advantages": torch.rand(rows, length),
        "token_level_rewards": torch.rand(rows, length),
        ECHO_WEIGHT: torch.full((rows, length), 1 / length),
        ECHO_CLIP_WEIGHT: torch.ones(rows),
        ECHO_ROW: torch.zeros(rows, dtype=torch.bool),
    }
    non_tensors = {"uid": np.array([f"k{i // 2}" for i in range(rows)], dtype=object), "extra": np.arange(rows)}
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info={"temperature": 0.6})


def _source(rows=6, length=5, clip_mask=None):
    clip_mask = torch.zeros(rows, length, dtype=torch.bool) if clip_mask is None else clip_mask
    weight = clip_mask.float() / clip_mask.sum(-1, keepdim=True).clamp(min=1)
    return DataProto.from_dict(
        tensors={
            "responses": 100 + torch.arange(rows * length).view(rows, length),
            "response_mask": torch.ones(rows, length, dtype=torch.long),
            "attention_mask": torch.ones(rows, PROMPT + length, dtype=torch.long),
            "old_log_probs": -torch.rand(rows, length),
            "old_entropy": torch.rand(rows, length),
            "token_level_scores": torch.ones(rows, length),
            ECHO_WEIGHT: weight,
            ECHO_CLIP_WEIGHT: clip_mask.any(-1).float(),
        },
        non_tensors={"uid": np.array([f"d{i // 3}" for i in range(rows)], dtype=object)},
    )


def test_echo_rows_carry_only_the_clip():
    clip_mask = torch.zeros(6, 5, dtype=torch.bool)
    clip_mask[1, [0, 2]] = True  # a special token inside a clip is not supervised: the clip ends at 2
    clip_mask[5, :2] = True
    like, source = _like(), _source(clip_mask=clip_mask)
    rows = echo_rows(source, torch.tensor([1, 5]), 4, like=like)
    assert len(rows) == 4 and set(rows.batch.keys()) == set(like.batch.keys())
    assert set(rows.non_tensor_batch) == set(like.non_tensor_batch)
    assert torch.equal(rows.batch["responses"][:2], source.batch["responses"][[1, 5]])
    assert torch.equal(rows.batch[ECHO_WEIGHT][:2], source.batch[ECHO_WEIGHT][[1, 5]])
    assert rows.batch[ECHO_CLIP_WEIGHT].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert not rows.batch[ECHO_WEIGHT][2:].any()  # fillers carry no loss
    assert torch.equal(rows.batch["responses"][2:], source.batch["responses"][[1, 5]])
    assert not rows.batch["response_mask"].any()  # no PG/KL term, not in EasyR1's token count
    assert rows.batch[ECHO_ROW].all() and rows.batch[ECHO_ROW].dtype == torch.bool
    # attention up to the clip's last token (fillers: their first response token); the prompt untouched
    assert rows.batch["attention_mask"][:, :PROMPT].all()
    assert (
        rows.batch["attention_mask"][:, PROMPT:].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]] + [[1, 0, 0, 0, 0]] * 2
    )
    assert not rows.batch["advantages"].any() and not rows.batch["token_level_rewards"].any()
    assert torch.equal(rows.batch["ref_log_probs"], rows.batch["old_log_probs"])
    assert list(rows.non_tensor_batch["uid"]) == ["d0", "d1", "d0", "d1"]
    assert list(rows.non_tensor_batch["extra"]) == [None] * 4
    merged = DataProto.concat([like, rows])  # joins the main batch
    assert len(merged) == 8


def test_echo_rows_without_clips_fill_with_inert_rows():
    rows = echo_rows(_source(), torch.zeros(0, dtype=torch.long), 4, like=_like())
    assert len(rows) == 4 and not rows.batch[ECHO_WEIGHT].any() and not rows.batch[ECHO_CLIP_WEIGHT].any()
    assert not rows.batch["response_mask"].any()
    with pytest.raises(ValueError, match="cannot fit"):
        echo_rows(_source(), torch.arange(5), 4, like=_like())


def test_layout_puts_each_ranks_echo_share_after_its_batch_share():
    batch = _like(rows=8)
    echo = _like(rows=8)
    echo.batch[ECHO_ROW][:] = True
    lengths = [10, 1, 9, 2, 8, 3, 7, 4]  # attention lengths of the echo rows (positions 0..L-1)
    echo.batch["attention_mask"] = (torch.arange(12) < torch.tensor(lengths)[:, None]).long()
    batch.batch["attention_mask"] = torch.ones(8, 12, dtype=torch.long)
    batch.batch["responses"], echo.batch["responses"] = torch.arange(8)[:, None], 100 + torch.arange(8)[:, None]
    for key in ("response_mask", "old_log_probs", "ref_log_probs", "advantages", "token_level_rewards", ECHO_WEIGHT):
        batch.batch[key], echo.batch[key] = batch.batch[key][:, :1], echo.batch[key][:, :1]

    update = layout_update_batch(batch, echo, world_size=2, mini_batches=2)
    assert len(update) == 16
    assert update.meta_info["global_token_num"] == update.batch["attention_mask"].sum(-1).tolist()
    seen = []
    for rank, share in enumerate(update.chunk(2)):  # EasyR1's dispatch: one equal chunk per rank
        rows = share.batch["responses"][:, 0].tolist()
        assert rows[:4] == list(range(rank * 4, rank * 4 + 4))  # the batch's share, in its (balanced) order
        assert share.batch[ECHO_ROW].tolist() == [False] * 4 + [True] * 4
        for mini_batch in (rows[4:6], rows[6:8]):  # the actor's two consecutive shares of echo rows
            assert sum(lengths[r - 100] for r in mini_batch) == 11  # balanced: 10+1, 9+2, 8+3, 7+4
            seen += mini_batch
    assert sorted(seen) == list(range(100, 108))
    with pytest.raises(ValueError, match="echo_row_unit"):
        layout_update_batch(batch, echo[:6], world_size=2, mini_batches=2)
