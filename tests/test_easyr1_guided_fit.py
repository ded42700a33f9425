"""LUFFY + EchoRL and UFT + EchoRL inside EasyR1's own ``fit`` loop on CPU (Ray and vLLM faked in-process, see
tests/easyr1_world.py): expert rows from n - 1 generated rollouts, LUFFY's advantage, echo never on the expert
row; hinted prompts before generation, the reward on hint + response, the hint term, traces."""

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from echovl import mine_echo_clips  # noqa: E402
from echovl.easyr1.luffy import EXPERT_ROW  # noqa: E402
from echovl.easyr1.uft import HINT_LENGTH  # noqa: E402
from echovl.echo import ECHO_WEIGHT, group_ids  # noqa: E402
from echovl.traces import list_trace_files, read_trace_file  # noqa: E402
from tests.easyr1_world import expert_solution, problem, scripted_response  # noqa: E402
from tests.test_easyr1_trainer import (  # noqa: E402, F401 (fixtures)
    PROMPTS,
    N,
    _build,
    _fit,
    _process_group,
    _reward_accuracy,
    fake_ray,
)


def _index(tokenizer, ids) -> int:
    import re

    return int(re.search(r"Problem (\d+):", tokenizer.decode(list(ids))).group(1))


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param((), id="release"),  # LUFFY's advantage r - mean(r); the expert row never gives the clip
        pytest.param(("guidance.adv_std=true", "guidance.expert_in_clip_pool=true"), id="adv_std-expert_pool"),
    ],
)
def test_luffy_echo_inside_easyr1_fit(tmp_path, tiny_lm_dir, fake_ray, monkeypatch, settings):
    """With guidance.adv_std the advantage is divided by the group's std (EasyR1's GRPO); with
    guidance.expert_in_clip_pool a verified expert row may give its group's clip."""
    adv_std, expert_pool = bool(settings), bool(settings)
    trainer, wg, _, tokenizer = _build(
        tmp_path, tiny_lm_dir, "guidance.method=luffy", *settings, data={"solutions": True, "long_every": 4}
    )
    assert (trainer.config.guidance.adv_std, trainer.config.guidance.expert_in_clip_pool) == (adv_std, expert_pool)
    expert_clips = 0
    logs = _fit(trainer, wg, monkeypatch)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")  # what the rollout stops on
    # per step: n - 1 rollouts per prompt, then one rollout (seed + n - 1) for the prompt whose trace is too long
    # (prompt 3, then prompt 7), padded to the 2 ranks
    assert [(len(g), g.meta_info.get("n"), g.meta_info.get("seed")) for g in wg.generated] == [
        (PROMPTS, N - 1, None),
        (2, 1, N),
    ] * 2
    for entry, batch in zip(logs, wg.updates):
        assert len(batch) == PROMPTS * N
        uids = np.asarray(batch.non_tensor_batch["uid"])
        expert = batch.batch[EXPERT_ROW]
        accuracy = torch.tensor([float(a) for a in _reward_accuracy(trainer, batch)])
        lengths = batch.batch["response_mask"].sum(-1)
        for uid in set(uids):
            rows = np.flatnonzero(uids == uid)
            index = _index(
                tokenizer, batch.batch["prompts"][rows[0]][batch.batch["prompts"][rows[0]] != tokenizer.pad_token_id]
            )
            texts = sorted(tokenizer.decode(batch.batch["responses"][r][: int(lengths[r]) - 1]) for r in rows)
            assert len(rows) == N
            if index % 4 == 3:  # the trace is too long: the group is on-policy only, n rollouts
                assert not expert[rows].any()
                assert texts == sorted(scripted_response(index, k, N) for k in range(N))
                continue
            (row,) = [r for r in rows if expert[r]]
            trace = tokenizer(expert_solution(index), add_special_tokens=False)["input_ids"] + [eos]
            assert batch.batch["responses"][row][: len(trace)].tolist() == trace
            assert (
                int(lengths[row]) == len(trace)
                and (batch.batch["responses"][row][len(trace) :] == tokenizer.pad_token_id).all()
            )
            assert accuracy[row] == 1.0  # scored by the same reward function
            assert sorted(
                tokenizer.decode(batch.batch["responses"][r][: int(lengths[r]) - 1]) for r in rows if r != row
            ) == sorted(scripted_response(index, k, N) for k in range(N - 1))
        # LUFFY's advantage: r - mean(r) over the whole group, the expert row included (adv_std: / (std + 1e-6),
        # the unbiased std, as EasyR1's GRPO)
        scores = batch.batch["token_level_rewards"].sum(-1)
        spread = 0
        for uid in set(uids):
            rows = torch.from_numpy(np.flatnonzero(uids == uid))
            centred = scores[rows] - scores[rows].mean()
            if adv_std:
                centred = centred / (scores[rows].std() + 1e-6)
            std = float(scores[rows].std())
            spread += std > 0 and abs(std - 1) > 1e-3  # a group where dividing by the std shows
            expected = centred.unsqueeze(1) * batch.batch["response_mask"][rows]
            torch.testing.assert_close(batch.batch["advantages"][rows], expected)
        assert spread > 0
        # EchoRL: the clip pool is the verified on-policy rollouts (expert_in_clip_pool: the expert row too)
        expert_clips += int((batch.batch[ECHO_WEIGHT][expert] > 0).any(-1).sum())
        mask = batch.batch["response_mask"]
        from echovl import delimiter_table, special_table, step_index, text_mask

        steps = step_index(batch.batch["responses"], mask, delimiter_table(tokenizer))
        text = text_mask(batch.batch["responses"], mask, special_table(tokenizer))
        pool = torch.ones_like(expert) if expert_pool else ~expert
        clips = mine_echo_clips(batch.batch["old_entropy"], steps, text, (accuracy >= 1) & pool, group_ids(uids))
        assert torch.equal(batch.batch[ECHO_WEIGHT], clips.token_weight) and len(clips) > 0
        # degenerate = the rollouts and the expert row all correct
        groups = {u: accuracy[uids == u] for u in set(uids)}
        assert entry["echo"]["degenerate_groups"] == pytest.approx(
            sum(bool(v.all()) for v in groups.values()) / PROMPTS
        )
        luffy = entry["luffy"]
        assert luffy["expert_rows"] == PROMPTS - 1 and luffy["too_long"] == 1
        assert luffy["expert_accuracy"] == 1.0 and 0 < luffy["expert_token_prob"] < 1
        old = batch.batch["old_log_probs"][expert].exp()[mask[expert].bool()]
        assert luffy["expert_token_prob"] == pytest.approx(float(old.double().mean()), rel=1e-6)
        assert 0 < luffy["shaped_prob"] < 1 and 0 < luffy["shaping_weight"] <= 0.25
        assert entry["echo"]["clips"] == len(clips) and entry["echo"]["loss"] > 0
    assert (expert_clips > 0) == expert_pool
    records = list(read_trace_file(list_trace_files(tmp_path / "ckpt" / "echo_traces")[0][1]))
    traced_expert_clips = 0
    for record in records:
        marked = [r.get("expert", False) for r in record["rollouts"]]
        assert sum(marked) <= 1
        if record["clip"] is not None:
            traced_expert_clips += marked[record["clip"]["rollout"]]
    assert any(any(r.get("expert") for r in record["rollouts"]) for record in records)
    assert (traced_expert_clips > 0) == expert_pool


def test_uft_echo_inside_easyr1_fit(tmp_path, tiny_lm_dir, fake_ray, monkeypatch):
    """p(t) = 1 up to T_hint = 1: step 1 hints every prompt with its whole solution, step 2 with nothing."""
    trainer, wg, _, tokenizer = _build(
        tmp_path,
        tiny_lm_dir,
        "guidance.method=uft",
        "guidance.hint_low=1.0",
        "guidance.hint_high=1.0",
        "guidance.hint_steps=1",
        "guidance.hint_coef=0.5",
        "data.max_prompt_length=128",  # room for the prompt (66 tokens) and its whole solution (44)
        data={"solutions": True},
    )
    logs = _fit(trainer, wg, monkeypatch)
    assert [len(g) for g in wg.generated] == [PROMPTS, PROMPTS]
    manager = trainer.reward_fn._handle.manager
    for step, (entry, gen, batch) in enumerate(zip(logs, wg.generated, wg.updates), start=1):
        for raw in gen.non_tensor_batch["raw_prompt_ids"]:  # generation started from the hinted prompts
            hint = tokenizer(expert_solution(_index(tokenizer, raw)), add_special_tokens=False)["input_ids"]
            assert (list(raw)[-len(hint) :] == hint) == (step == 1)
        hint_length = batch.batch[HINT_LENGTH]
        prompts, responses = batch.batch["prompts"], batch.batch["responses"]
        lengths = batch.batch["response_mask"].sum(-1)
        texts = []
        for row in range(len(batch)):
            valid = prompts[row][prompts[row] != tokenizer.pad_token_id]
            hint = tokenizer(expert_solution(_index(tokenizer, valid)), add_special_tokens=False)["input_ids"]
            assert int(hint_length[row]) == (len(hint) if step == 1 else 0)
            h = int(hint_length[row])
            texts.append(valid[len(valid) - h :].tolist() + responses[row][: int(lengths[row])].tolist())
        # the reward saw hint + response: score the same token lists with the reward manager directly
        from verl.protocol import DataProto
        from verl.utils import torch_functional as VF

        width = max(len(t) for t in texts)
        scored = DataProto.from_dict(
            tensors={
                "responses": VF.pad_2d_list_to_length(texts, tokenizer.pad_token_id, max_length=width),
                "response_mask": VF.pad_2d_list_to_length([[1] * len(t) for t in texts], 0, max_length=width),
            },
            non_tensors={"ground_truth": batch.non_tensor_batch["ground_truth"]},
        )
        expected, _ = manager.compute_reward(scored)
        torch.testing.assert_close(batch.batch["token_level_scores"].sum(-1), expected.sum(-1))
        uft = entry["uft"]
        assert uft["hint_probability"] == (1.0 if step == 1 else 0.0)
        assert uft["hinted_prompts"] == (1.0 if step == 1 else 0.0) and uft["hint_cut"] == 0
        assert ("hint_nll" in uft) == (step == 1)
        assert entry["echo"]["clips"] > 0
        assert not (
            (batch.batch[ECHO_WEIGHT] > 0) & ~batch.batch["response_mask"].bool()
        ).any()  # clips: generated tokens
    assert logs[0]["uft"]["hint_nll"] > 0
    records = list(read_trace_file(list_trace_files(tmp_path / "ckpt" / "echo_traces")[0][1]))
    for record in records:
        index = int(record["prompt"].split("Problem ")[1].split(":")[0])
        assert record["hint"] == expert_solution(index) and "boxed" not in record["prompt"]
        assert problem(index)[0] in record["prompt"]
