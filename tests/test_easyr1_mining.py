"""Driver-side mining on EasyR1 batches: whole groups by uid, whatever the row order, same clips as the core."""

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.easyr1_stubs import install_vllm_stub  # noqa: E402

install_vllm_stub()

from verl.protocol import DataProto  # noqa: E402
from verl.utils.seqlen_balancing import get_seqlen_balanced_partitions  # noqa: E402

from echovl import delimiter_table, group_outcomes, mine_echo_clips, special_table, step_index, text_mask  # noqa: E402
from echovl.config import EchoConfig  # noqa: E402
from echovl.easyr1.mining import mine_rollout_batch, success_flags, trace_records  # noqa: E402
from echovl.echo import ECHO_CLIP_WEIGHT, ECHO_WEIGHT, EchoStep, group_ids  # noqa: E402
from echovl.testing import tiny_image  # noqa: E402
from echovl.traces import TraceWriter, read_trace_file  # noqa: E402

TEXTS = (
    "<think>\nAngle A is 30°.\nSo x = 60.\n</think>\nThe answer is \\boxed{60}.",
    "<think>\nx = 60.\n</think>\n\\boxed{60}",
    "I think it is 45.",
    "<|vision_start|><|image_pad|><|vision_end|>The sum 3 + 4 = 7.\n\\boxed{7}",
    "Let the radius be r.\nThen the area is π r².\n\n\\boxed{9π}",
    "三角形的角。\n直角。\n\\boxed{90}",
)


def _batch(tokenizer, groups=5, n=4, seed=0):
    """``groups`` prompts x ``n`` rollouts in vLLM's interleaved order, then reordered like ``_balance_batch``."""
    g = torch.Generator().manual_seed(seed)
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    rows = []
    for _ in range(groups * n):
        ids = tokenizer(TEXTS[int(torch.randint(len(TEXTS), (1,), generator=g))], add_special_tokens=False)[
            "input_ids"
        ]
        rows.append(ids[: 1 + int(torch.randint(len(ids), (1,), generator=g))] + [eos])
    length = max(map(len, rows)) + 3
    responses = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
    response_mask = (torch.arange(length) < torch.tensor([len(r) for r in rows]).unsqueeze(1)).long()
    prompts = torch.full((groups * n, 6), pad)
    prompts[:, -3:] = torch.tensor(tokenizer("Find x.", add_special_tokens=False)["input_ids"][:3])
    data = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "response_mask": response_mask,
            "attention_mask": torch.cat([(prompts != pad).long(), response_mask], dim=1),
            "old_entropy": torch.rand(groups * n, length, generator=g) * 3,
            "token_level_scores": torch.rand(groups * n, length, generator=g),
        },
        non_tensors={
            "uid": np.repeat(np.array([f"uid-{chr(ord('e') - i)}" for i in range(groups)], dtype=object), n),
            "ground_truth": np.repeat(np.array(["60", "7", "9", "90", "45"][:groups], dtype=object), n),
            "multi_modal_data": np.array([{"images": [tiny_image(i // n)]} for i in range(groups * n)], dtype=object),
        },
    )
    scores = (torch.rand(groups * n, generator=g) < 0.6).double().numpy()
    scores[:n] = 1.0  # one all-correct group
    scores[n : 2 * n] = 0.0  # one all-wrong group
    return data, scores


def _balance(data, scores, world_size=2):
    """EasyR1's ``_balance_batch`` reorder (Karmarkar-Karp on token counts), which scatters the groups."""
    lengths = data.batch["attention_mask"].sum(-1).tolist()
    order = torch.tensor(
        [j for part in get_seqlen_balanced_partitions(lengths, world_size, equal_size=True) for j in part]
    )
    data.reorder(order)
    return data, scores[order.numpy()], order


@pytest.mark.parametrize("scope", ["all", "degenerate"])
def test_mining_a_balanced_batch_gives_the_core_clips(qwen_tokenizer, scope):
    data, scores = _batch(qwen_tokenizer)
    original = {k: v.clone() for k, v in data.batch.items()}
    data, scores_shuffled, order = _balance(data, scores)
    assert not torch.equal(order, torch.arange(len(order)))  # the groups really are scattered
    echo = EchoConfig(scope=scope, min_step_tokens=2)
    mined = mine_rollout_batch(EchoStep(qwen_tokenizer, echo), data, scores_shuffled)

    # the core functions on the unshuffled batch, with the uid strings as groups
    uids = np.repeat(np.arange(5), 4)
    steps = step_index(original["responses"], original["response_mask"], delimiter_table(qwen_tokenizer))
    text = text_mask(original["responses"], original["response_mask"], special_table(qwen_tokenizer))
    expected = mine_echo_clips(
        original["old_entropy"],
        steps,
        text,
        torch.from_numpy(scores >= 1.0),
        torch.from_numpy(4 - uids),  # uid-e ... uid-a: ids follow the sorted uid strings
        min_step_tokens=2,
        scope=scope,
    )
    assert len(mined.clips) == len(expected) > 0
    assert torch.equal(data.batch[ECHO_WEIGHT], expected.token_weight[order])  # same tokens, in the balanced order
    assert torch.equal(data.batch[ECHO_CLIP_WEIGHT], expected.mask[order].any(-1).float())  # one clip per row
    by_group = {
        int(g): (int(order[r]), int(s)) for g, r, s in zip(mined.clips.group, mined.clips.row, mined.clips.step)
    }
    assert by_group == {int(g): (int(r), int(s)) for g, r, s in zip(expected.group, expected.row, expected.step)}
    torch.testing.assert_close(mined.clips.step_entropy, expected.step_entropy)
    assert torch.equal(mined.clips.length, expected.length)
    # vision and special tokens are never supervised or counted
    vision = torch.isin(data.batch["responses"], torch.tensor(qwen_tokenizer.convert_tokens_to_ids(["<|image_pad|>"])))
    assert not ((data.batch[ECHO_WEIGHT] > 0) & vision).any()
    outcomes = group_outcomes(mined.verified, mined.group)
    assert outcomes.num_groups == 5 and outcomes.all_correct >= 1 and outcomes.all_wrong >= 1


def test_missing_entropy_is_a_clear_error(qwen_tokenizer):
    data, scores = _batch(qwen_tokenizer)
    data.batch.pop("old_entropy")
    with pytest.raises(KeyError, match="EchoWorker"):
        mine_rollout_batch(EchoStep(qwen_tokenizer, EchoConfig()), data, scores)


def test_group_ids_and_success_flags():
    assert group_ids(np.array(["b", "a", "b", "c"], dtype=object)).tolist() == [1, 0, 1, 2]
    echo = EchoConfig(success_threshold=0.5)
    assert success_flags([0.0, 0.5, 1.0, -1.0], echo).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="finite"):
        success_flags([float("nan")], echo)


def test_metrics(qwen_tokenizer):
    data, scores = _batch(qwen_tokenizer)
    step = EchoStep(qwen_tokenizer, EchoConfig())
    mined = mine_rollout_batch(step, data, scores)
    metrics = step.clip_metrics([mined, mined])
    assert metrics["echo/clips"] == 2 * len(mined.clips) > 0
    assert metrics["echo/clip_length"] == pytest.approx(float(mined.clips.length.double().mean()))
    assert "echo/clips_per_group" not in metrics  # max selection: one clip per group
    assert step.clip_metrics([]) == {"echo/clips": 0.0}
    outcomes = group_outcomes(mined.verified, mined.group).metrics()
    assert outcomes["echo/degenerate_groups"] == pytest.approx(
        group_outcomes(mined.verified, mined.group).all_correct / 5
    )
    mask = data.batch["response_mask"].bool()
    assert mined.mean_entropy() == pytest.approx(float(data.batch["old_entropy"][mask].mean()))
    first_half = torch.arange(len(data)) < len(data) // 2
    assert mined.mean_entropy(first_half) == pytest.approx(
        float(data.batch["old_entropy"][mask & first_half.unsqueeze(1)].mean())
    )


def test_metrics_with_several_clips_per_group(qwen_tokenizer):
    data, scores = _batch(qwen_tokenizer)
    step = EchoStep(qwen_tokenizer, EchoConfig(selection="soft", soft_temperature=0.5))
    mined = mine_rollout_batch(step, data, scores)
    metrics = step.clip_metrics([mined])
    groups = torch.unique(mined.clips.group)
    assert metrics["echo/clips_per_group"] == pytest.approx(len(mined.clips) / groups.numel())
    largest = [float(mined.clips.weight[mined.clips.group == g].max()) for g in groups]
    assert metrics["echo/clip_weight_max"] == pytest.approx(sum(largest) / len(largest))
    assert data.batch[ECHO_CLIP_WEIGHT].sum() == pytest.approx(groups.numel())  # a group weighs as one clip


def test_trace_records_of_a_balanced_batch(qwen_tokenizer, tmp_path):
    data, scores = _batch(qwen_tokenizer)
    data, scores, _ = _balance(data, scores)
    mined = mine_rollout_batch(EchoStep(qwen_tokenizer, EchoConfig()), data, scores)
    records = trace_records(qwen_tokenizer, data, scores, mined, train_step=7, limit=3)
    assert len(records) == 3
    mined_groups = {int(g) for g in mined.clips.group}
    for record, image in records[: len(mined_groups)]:
        assert record["clip"] is not None and record["prompt"] == "Find x." and image is not None
        rollout = record["rollouts"][record["clip"]["rollout"]]
        assert rollout["verified"] and rollout["accuracy"] == 1.0
    path = TraceWriter(tmp_path).write(7, records)
    stored = list(read_trace_file(path))
    assert stored[0]["image"].startswith("images/") and (tmp_path / stored[0]["image"]).is_file()
    assert {r["group"] for r in stored} <= {f"uid-{c}" for c in "abcde"}
