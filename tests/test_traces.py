import json

import pytest
import torch

from echovl import delimiter_table, mine_echo_clips, special_table, step_index, text_mask
from echovl.testing import tiny_image
from echovl.traces import (
    TRACE_SCHEMA,
    TraceError,
    TraceWriter,
    build_group_records,
    list_trace_files,
    read_trace_file,
    select_groups,
)

RESPONSES = [
    "<think>\nAngle A is 30°.\nSo x = 60.\n</think>\nThe answer is \\boxed{60}.<|im_end|>",
    "<think>\nx = 60.\n</think>\n\\boxed{60}<|im_end|>",
    "I think it is 45.<|im_end|>",
    "The sum 3 + 4 = 7.\n\\boxed{7}<|im_end|>",
]


def _batch(tokenizer):
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in RESPONSES]
    length = max(map(len, rows)) + 2
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    steps = step_index(ids, mask, delimiter_table(tokenizer))
    texts = text_mask(ids, mask, special_table(tokenizer))
    entropy = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))
    verified = torch.tensor([True, True, False, True])
    group = torch.tensor([5, 5, 5, 9])
    clips = mine_echo_clips(entropy, steps, texts, verified, group)
    return ids, steps, texts, entropy, verified, group, clips


def _records(tokenizer, images=None):
    ids, steps, texts, entropy, verified, group, clips = _batch(tokenizer)
    return build_group_records(
        tokenizer,
        train_step=12,
        groups=select_groups(group, clips, limit=4),
        group=group,
        response_ids=ids,
        steps=steps,
        text_mask=texts,
        entropy=entropy,
        verified=verified,
        clips=clips,
        prompts=["Find x.", "Find x.", "Find x.", "Add."],
        answers=["60", "60", "60", "7"],
        rewards=[1.0, 0.9, 0.0, 1.0],
        accuracy=[1.0, 1.0, 0.0, 1.0],
        images=images,
        source="test",
    ), clips


def test_records_reconstruct_text_steps_and_clip(qwen_tokenizer):
    records, clips = _records(qwen_tokenizer)
    assert [r["group"] for r, _ in records] == ["5", "9"]
    first = records[0][0]
    assert first["schema"] == TRACE_SCHEMA and first["train_step"] == 12
    assert not first["degenerate"] and not first["all_wrong"]
    assert [r["verified"] for r in first["rollouts"]] == [True, True, False]
    for rollout, source in zip(first["rollouts"], RESPONSES):
        assert rollout["text"] == source.replace("<|im_end|>", "")
        pieces = [rollout["text"][a:b] for a, b in (s["chars"] for s in rollout["steps"])]
        assert "".join(pieces) == rollout["text"]
        assert all(p.endswith("\n") for p in pieces[:-1])  # every step but the last ends at a newline
    clip = first["clip"]
    chosen = first["rollouts"][clip["rollout"]]
    assert clip["rollout"] == clips.row[0].item() and clip["step"] == clips.step[0].item()
    assert chosen["steps"][clip["step"]]["entropy"] == pytest.approx(clip["step_entropy"])
    assert clip["char_end"] == chosen["steps"][clip["step"]]["chars"][1]
    assert clip["length"] == clips.length[0].item()
    assert records[1][0]["degenerate"] is True


def test_writer_roundtrip_images_once_and_listing(qwen_tokenizer, tmp_path):
    image = tiny_image(3)
    records, _ = _records(qwen_tokenizer, images=[image, image, image, None])
    writer = TraceWriter(tmp_path / "traces")
    path = writer.write(12, records)
    writer.write(14, records)
    assert path.name == "step_000012.jsonl"
    assert [step for step, _ in list_trace_files(tmp_path / "traces")] == [12, 14]
    back = list(read_trace_file(path))
    assert len(back) == 2
    assert back[0]["image"].startswith("images/") and back[1]["image"] is None
    assert len(list((tmp_path / "traces" / "images").iterdir())) == 1  # saved once
    assert back[0]["rollouts"] == records[0][0]["rollouts"]
    assert not [p for p in (tmp_path / "traces").iterdir() if p.name.startswith(".")]  # no temp files left


def test_reader_names_file_and_line(tmp_path):
    path = tmp_path / "step_000001.jsonl"
    good = {"schema": TRACE_SCHEMA, "train_step": 1, "group": "0", "prompt": "", "rollouts": [], "clip": None}
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(TraceError, match=r"step_000001.jsonl:2: not valid JSON"):
        list(read_trace_file(path))
    path.write_text(json.dumps({**good, "schema": "other/9"}) + "\n")
    with pytest.raises(TraceError, match=r":1: unknown schema"):
        list(read_trace_file(path))
    path.write_text(json.dumps({"schema": TRACE_SCHEMA}) + "\n")
    with pytest.raises(TraceError, match="missing key"):
        list(read_trace_file(path))
    with pytest.raises(TraceError, match="not a trace folder"):
        list_trace_files(tmp_path / "nope")


def test_written_files_are_readable_by_others(qwen_tokenizer, tmp_path):
    records, _ = _records(qwen_tokenizer, images=[tiny_image(1)] * 4)
    path = TraceWriter(tmp_path).write(3, records)
    assert path.stat().st_mode & 0o044 == 0o044
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in (tmp_path / "images").iterdir())


def test_records_list_every_clip_with_its_weight_under_soft_selection(qwen_tokenizer):
    ids, steps, texts, entropy, verified, group, _ = _batch(qwen_tokenizer)
    clips = mine_echo_clips(entropy, steps, texts, verified, group, selection="soft", soft_temperature=0.5)
    records = build_group_records(
        qwen_tokenizer,
        train_step=3,
        groups=[5],
        group=group,
        response_ids=ids,
        steps=steps,
        text_mask=texts,
        entropy=entropy,
        verified=verified,
        clips=clips,
        prompts=["Find x."] * 4,
        answers=["60"] * 4,
        rewards=[1.0] * 4,
        accuracy=[1.0] * 4,
    )
    record = records[0][0]
    in_group = (clips.group == 5).nonzero().flatten()
    assert len(record["clips"]) == in_group.numel() > 1
    assert record["clip"] == record["clips"][0]
    assert sum(c["weight"] for c in record["clips"]) == pytest.approx(1.0, abs=1e-5)
    assert [c["weight"] for c in record["clips"]] == pytest.approx(clips.weight[in_group].tolist(), abs=1e-6)
    assert [(c["rollout"], c["step"]) for c in record["clips"]] == list(
        zip(clips.row[in_group].tolist(), clips.step[in_group].tolist())
    )  # rows 0, 1 of the group are batch rows 0, 1
