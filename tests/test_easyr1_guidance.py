"""LUFFY and UFT in EchoActor's update (CPU, tiny models): the shaped loss on expert rows, the hint log-probs from
the update's own forward and the hint NLL, each against a plain autograd reference; the methods' driver-side
pieces (hinted prompts on Qwen2.5-VL batches, the reward on hint + response)."""

import copy
import math
from types import SimpleNamespace

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.easyr1_stubs import actor_config, collate_prompts, install_vllm_stub, write_prompt_parquet  # noqa: E402
from tests.test_easyr1_actor import (  # noqa: E402, F401 (module fixtures: the tiny models and rollout batches)
    TEMPERATURE,
    _clone,
    _forward_log_probs,
    _params,
    _process_group,
    _sgd_actor,
    _update_batch,
    backbones,
    cpu_padding_free,
    vl_batch,
    vl_model,
)

install_vllm_stub()

from verl.protocol import DataProto  # noqa: E402
from verl.trainer.core_algos import average_loss  # noqa: E402
from verl.trainer.ray_trainer import RayPPOTrainer  # noqa: E402
from verl.workers.actor.dp_actor import DataParallelPPOActor  # noqa: E402

from echovl.config import EchoConfig, GuidanceConfig  # noqa: E402
from echovl.easyr1.actor import EchoActor  # noqa: E402
from echovl.easyr1.config import ConfigError, load_config  # noqa: E402
from echovl.easyr1.guidance import UftGuide  # noqa: E402
from echovl.easyr1.luffy import EXPERT_ROW, luffy_pg_loss  # noqa: E402
from echovl.easyr1.uft import HINT_LENGTH, HintMaker, forward_with_hints, hinted_reward  # noqa: E402

NO_ECHO = EchoConfig(enable=False)


@pytest.fixture(scope="module")
def lm_model(backbones):
    return backbones("qwen2")[0]


@pytest.fixture(scope="module")
def lm_batch(backbones):
    return backbones("qwen2")[1]


ROW_ADVANTAGES = (0.5, 1.0, -0.7, 0.3, -1.2, 0.8)


def _luffy_batch(batch, model, expert_rows=(1, 4), on_shift=0.0, expert_shift=5.0):
    """Per-row advantages, expert rows flagged; the expert rows' old log-probs pushed far from the current ones
    (a PPO ratio of e^5 would be clipped), the on-policy rows' by ``on_shift``."""
    data = _update_batch(batch, model)
    mask = data.batch["response_mask"]
    data.batch["advantages"] = torch.tensor(ROW_ADVANTAGES[: len(data)]).unsqueeze(1) * mask
    expert = torch.zeros(len(data), dtype=torch.bool)
    expert[list(expert_rows)] = True
    data.batch[EXPERT_ROW] = expert
    shift = torch.where(expert, -expert_shift, -on_shift).unsqueeze(1)
    data.batch["old_log_probs"] = data.batch["old_log_probs"] + shift
    return data


def _luffy_reference_loss(log_probs, data, gamma=0.1, clipped=True):
    """The mean over all response tokens of -A * f(p) (expert tokens) and PPO's per-token loss (on-policy
    tokens), written out."""
    advantages, mask = data.batch["advantages"], data.batch["response_mask"]
    expert = data.batch[EXPERT_ROW].unsqueeze(1)
    ratio = torch.exp(log_probs - data.batch["old_log_probs"])
    on_policy = -advantages * ratio
    if clipped:  # PPO with EasyR1's default clip range 0.2 (dual clip 3)
        on_policy = torch.maximum(on_policy, -advantages * ratio.clamp(0.8, 1.2))
        on_policy = torch.where(advantages < 0, torch.minimum(on_policy, -advantages * 3.0), on_policy)
    p = torch.exp(log_probs)
    per_token = torch.where(expert, -advantages * p / (p + gamma), on_policy)
    return (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("clip_on_policy", [True, False])
def test_luffy_update_matches_plain_autograd(lm_model, lm_batch, clip_on_policy):
    """One SGD step (lr 1, three micro-batches) of the LUFFY actor is minus the gradient of the written-out loss.
    Expert tokens are never clipped (their PPO ratio would be e^5); with clip_on_policy false neither are the
    on-policy ones (ratio e^0.5 > 1.2)."""
    on_shift = 0.0 if clip_on_policy else 0.5
    data = _luffy_batch(lm_batch, lm_model, on_shift=on_shift)
    model = _clone(lm_model)
    before = _params(model)
    guidance = GuidanceConfig(method="luffy", clip_on_policy=clip_on_policy)
    metrics = _sgd_actor(EchoActor, model, len(data), echo=NO_ECHO, guidance=guidance).update_policy(data)

    reference = _clone(lm_model)
    _luffy_reference_loss(_forward_log_probs(reference, data), data, clipped=clip_on_policy).backward()
    for p_new, p_old, p_ref in zip(model.parameters(), before, reference.parameters()):
        expected = -p_ref.grad if p_ref.grad is not None else torch.zeros_like(p_old)
        torch.testing.assert_close(p_new.detach() - p_old, expected, atol=1e-6, rtol=1e-4)
    assert max(float((a - b).abs().max()) for a, b in zip(_params(model), before)) > 0
    # metrics of the expert tokens, from the update's log-probs (before the step): mean f(p) and p f'(p)
    with torch.no_grad():
        log_probs = _forward_log_probs(_clone(lm_model), data)
    mask = data.batch["response_mask"].bool()
    expected = []
    for row in (1, 4):  # micro-batches of 2 rows: the expert rows are in the first and the third
        p = torch.exp(log_probs[row][mask[row]]).double()
        expected.append(float((p / (p + 0.1)).mean()))
    assert metrics["luffy/shaped_prob"] == pytest.approx(expected, rel=1e-5)
    assert all(0 < w <= 0.25 for w in metrics["luffy/shaping_weight"])  # gamma p / (p + gamma)^2 <= 1/4


@pytest.mark.parametrize("mode", ["token", "seq"])
def test_luffy_pg_loss_averages_like_easyr1(mode):
    """The micro-batch loss equals EasyR1's average_loss of the per-token losses over every response token."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(4, 7, generator=g) < 0.8).long()
    log_probs = (torch.rand(4, 7, generator=g) * -3).requires_grad_()
    old = log_probs.detach().clone()  # ratio 1: the PPO loss is -A on every on-policy token
    advantages = torch.randn(4, 1, generator=g) * mask
    inputs = {
        "response_mask": mask,
        "advantages": advantages,
        "old_log_probs": old,
        EXPERT_ROW: torch.tensor([False, True, False, True]),
    }
    config = actor_config(4)
    config.loss_avg_mode = mode
    loss, _, _ = luffy_pg_loss(config, inputs, log_probs, GuidanceConfig(method="luffy", shaping_gamma=0.3))
    (grad,) = torch.autograd.grad(loss, log_probs)
    reference_input = log_probs.detach().clone().requires_grad_()
    p = torch.exp(reference_input)
    per_token = torch.where(inputs[EXPERT_ROW].unsqueeze(1), -advantages * p / (p + 0.3), -advantages * p / p.detach())
    reference = average_loss(per_token, mask, mode=mode)
    (reference_grad,) = torch.autograd.grad(reference, reference_input)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(grad, reference_grad)


def _guided_data(batch, model, *, expert=False, hints=None):
    data = _update_batch(batch, model, advantages=0.5)
    data = DataProto.concat([data, data])  # 12 rows: 2 mini-batches of 6, 2 micro-batches of 3 each
    data.batch["advantages"][::3] *= -1
    data.batch["ref_log_probs"] = data.batch["old_log_probs"] - 0.05
    data.batch[EXPERT_ROW] = torch.zeros(len(data), dtype=torch.bool) | expert
    data.batch[HINT_LENGTH] = torch.tensor(hints or [0] * len(data))
    return data


@pytest.mark.parametrize(
    "guidance,hints",
    [
        (GuidanceConfig(method="luffy"), None),  # no expert row in the batch
        (GuidanceConfig(method="uft"), None),  # no hint in the batch
        (GuidanceConfig(method="uft", hint_coef=0.0), [3] * 12),  # beta = 0: no hint term
    ],
)
def test_guided_update_without_expert_rows_or_hint_term_is_easyr1_bit_for_bit(lm_model, lm_batch, guidance, hints):
    """AdamW, grad clipping, KL loss, two mini-batches of two micro-batches: parameters and metrics equal EasyR1's."""
    data = _guided_data(lm_batch, lm_model, hints=hints)
    results = []
    for cls, kwargs in ((DataParallelPPOActor, {}), (EchoActor, {"echo": NO_ECHO, "guidance": guidance})):
        torch.manual_seed(0)
        model = _clone(lm_model)
        config = actor_config(len(data) // 2, micro=3)
        config.use_kl_loss, config.kl_coef, config.kl_penalty = True, 0.1, "low_var_kl"
        metrics = cls(config, model, torch.optim.AdamW(model.parameters(), lr=1e-2), **kwargs).update_policy(data)
        results.append((_params(model), dict(metrics)))
    (vanilla_params, vanilla_metrics), (guided_params, guided_metrics) = results
    assert all(torch.equal(a, b) for a, b in zip(vanilla_params, guided_params))
    assert guided_metrics == vanilla_metrics


def _full_log_probs(model, data, temperature=TEMPERATURE):
    """[B, S]: log-prob of every token given the ones before it, from one plain padded forward (0 at column 0)."""
    position_ids = data.batch["position_ids"]
    if position_ids.dim() == 3:  # mrope (B, C, S) -> (C, B, S), as EasyR1 passes it
        position_ids = position_ids.transpose(0, 1)
    images = data.non_tensor_batch.get("multi_modal_inputs")
    out = []
    for row in range(len(data)):  # one row at a time: each with its own images
        extra = dict(images[row]) if images is not None else {}
        pos = position_ids[:, row : row + 1] if position_ids.dim() == 3 else position_ids[row : row + 1]
        logits = (
            model(
                input_ids=data.batch["input_ids"][row : row + 1],
                attention_mask=data.batch["attention_mask"][row : row + 1],
                position_ids=pos,
                use_cache=False,
                **extra,
            ).logits.float()
            / temperature
        )
        lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, data.batch["input_ids"][row, 1:, None])[:, 0]
        out.append(torch.cat([lp.new_zeros(1), lp]))
    return torch.stack(out)


def _hinted(batch, lengths):
    data = copy.copy(batch)
    data.batch = batch.batch.clone()
    data.batch[HINT_LENGTH] = torch.tensor(lengths)
    return data


@pytest.mark.parametrize("padding_free", [False, True])
def test_hint_log_probs_come_from_the_update_forward(lm_model, lm_batch, cpu_padding_free, padding_free):
    """Response log-probs exactly EasyR1's; hint log-probs (the prompt's last tokens) those of a plain forward."""
    data = _hinted(lm_batch, [4, 4, 0, 0, 2, 2])
    actor = EchoActor(actor_config(len(data), padding_free=padding_free), lm_model, echo=NO_ECHO)
    inputs = {**data.batch, **data.non_tensor_batch}
    with torch.no_grad():
        log_probs, hint_log_probs, hint_mask = forward_with_hints(actor, inputs, TEMPERATURE)
        plain = actor._forward_micro_batch(inputs, temperature=TEMPERATURE)
        reference = _full_log_probs(lm_model, data)
    assert torch.equal(log_probs, plain)
    prompt = data.batch["prompts"].shape[1]
    assert hint_mask.tolist()[0] == [True] * 4 and hint_mask.tolist()[4] == [False, False, True, True]
    assert not hint_mask[2].any()
    expected = reference[:, prompt - 4 : prompt]
    torch.testing.assert_close(hint_log_probs[hint_mask], expected[hint_mask], atol=2e-5, rtol=1e-5)
    assert not hint_log_probs[~hint_mask].any()


def test_hint_log_probs_on_qwen2_5_vl_mrope_batch(vl_model, vl_batch):
    """Qwen2.5-VL (images, mrope position ids): the same, on EasyR1's padded path."""
    data = _hinted(vl_batch, [3, 3, 5, 5, 1, 1])
    actor = EchoActor(actor_config(len(data), micro=3), vl_model, echo=NO_ECHO)
    inputs = {**data.batch, **data.non_tensor_batch}
    with torch.no_grad():
        _, hint_log_probs, hint_mask = forward_with_hints(actor, inputs, TEMPERATURE)
        reference = _full_log_probs(vl_model, data)
    prompt = data.batch["prompts"].shape[1]
    torch.testing.assert_close(
        hint_log_probs[hint_mask], reference[:, prompt - 5 : prompt][hint_mask], atol=2e-5, rtol=1e-5
    )


def test_uft_update_adds_beta_times_mean_hint_nll(lm_model, lm_batch):
    """SGD step of the UFT actor = EasyR1's step + the step of beta * mean NLL over every hint token of the
    mini-batch (hints of different lengths spread over three micro-batches)."""
    data = _update_batch(lm_batch, lm_model, advantages=0.7)
    data.batch[HINT_LENGTH] = torch.tensor([3, 3, 0, 0, 5, 5])
    beta = 0.5
    vanilla = _clone(lm_model)
    _sgd_actor(DataParallelPPOActor, vanilla, len(data)).update_policy(data)
    guided = _clone(lm_model)
    guidance = GuidanceConfig(method="uft", hint_coef=beta)
    metrics = _sgd_actor(EchoActor, guided, len(data), echo=NO_ECHO, guidance=guidance).update_policy(data)

    reference = _clone(lm_model)
    full = _full_log_probs(reference, data)
    prompt = data.batch["prompts"].shape[1]
    hint = torch.arange(prompt).unsqueeze(0) >= prompt - data.batch[HINT_LENGTH].unsqueeze(1)
    nll = -full[:, :prompt][hint].mean()
    (beta * nll).backward()
    for p_guided, p_vanilla, p_ref in zip(guided.parameters(), vanilla.parameters(), reference.parameters()):
        expected = -p_ref.grad if p_ref.grad is not None else torch.zeros_like(p_guided)
        torch.testing.assert_close(p_guided.detach() - p_vanilla.detach(), expected, atol=2e-6, rtol=1e-4)
    assert metrics["uft/hint_nll"] == [pytest.approx(float(nll.detach()), rel=1e-5)]


# ------------------------------------------------------------------------------------------- driver pieces


class _RecordingReward:
    """A reward manager handle that scores each row by the length of its decoded text and remembers the texts."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.texts = []
        self.compute_reward = self

    def remote(self, data):
        lengths = data.batch["response_mask"].sum(-1)
        scores = torch.zeros(data.batch["responses"].shape)
        texts = [self.tokenizer.decode(r[: int(n)]) for r, n in zip(data.batch["responses"], lengths)]
        for row, (text, n) in enumerate(zip(texts, lengths)):
            scores[row, int(n) - 1] = len(text)
        self.texts = texts
        return scores, {"accuracy": [1.0] * len(texts)}


def test_the_reward_sees_hint_and_response(lm_batch, tiny_lm_dir, monkeypatch):
    import ray
    from transformers import AutoTokenizer

    monkeypatch.setattr(ray, "get", lambda value: value)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    data = _hinted(lm_batch, [3, 3, 0, 0, 6, 6])
    reward = _RecordingReward(tokenizer)
    scores, metrics = hinted_reward(reward, data)
    prompts, responses = data.batch["prompts"], data.batch["responses"]
    lengths = data.batch["response_mask"].sum(-1)
    for row, h in enumerate([3, 3, 0, 0, 6, 6]):
        ids = prompts[row, prompts.shape[1] - h :].tolist() + responses[row, : int(lengths[row])].tolist()
        assert reward.texts[row] == tokenizer.decode(ids)
        assert scores[row, int(lengths[row]) - 1] == len(reward.texts[row])  # at the last generated token
        assert scores[row].count_nonzero() == 1
    assert metrics == {"accuracy": [1.0] * 6}


def _dataset_batch(model_dir, tmp_path, *, images):
    parquet = write_prompt_parquet(tmp_path / "train.parquet", images=images)
    batch, tokenizer, processor = collate_prompts(model_dir, parquet, max_prompt_length=160)
    batch["solution"] = np.array(
        ["<think>\nA line.\nAnother line.\n</think>\n\\boxed{6}", "First.\nSecond.\nThird.", "x\ny"], dtype=object
    )
    return batch, tokenizer, processor


@pytest.mark.parametrize("backbone", ["tiny_vl_dir", "tiny_qwen3_vl_dir"])
def test_hinted_prompts_on_vl_batches_match_positions_built_from_scratch(request, tmp_path, backbone):
    """UFT on Qwen2.5-VL and Qwen3-VL: the hinted prompt's mrope position ids are EasyR1's get_rope_index of the
    longer prompt; the ids end with the hint, vLLM's raw prompt ids too; the same step and seed give the same
    hints."""
    if backbone == "tiny_qwen3_vl_dir":
        from verl.models.transformers.qwen3_vl import get_rope_index
    else:
        from verl.models.transformers.qwen2_vl import get_rope_index

    batch, tokenizer, processor = _dataset_batch(request.getfixturevalue(backbone), tmp_path, images=True)
    guidance = GuidanceConfig(method="uft", hint_low=1.0, hint_high=1.0, hint_steps=3)
    maker = HintMaker(tokenizer, guidance, seed=1, max_prompt_length=160, step=lambda: 2)
    hinted = maker(dict(batch))
    assert torch.equal(hinted[HINT_LENGTH], torch.tensor([len(tokenizer(s)["input_ids"]) for s in batch["solution"]]))
    for row, solution in enumerate(batch["solution"]):
        hint_ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
        mask = hinted["attention_mask"][row].bool()
        ids = hinted["input_ids"][row][mask]
        assert ids[-len(hint_ids) :].tolist() == hint_ids
        assert list(hinted["raw_prompt_ids"][row]) == list(batch["raw_prompt_ids"][row]) + hint_ids
        grid = None
        if row < 2:  # the rows with an image
            image = batch["multi_modal_data"][row]["images"][0]
            from verl.utils.dataset import process_image

            grid = processor.image_processor(
                images=[process_image(image, 28 * 28 * 4, 28 * 28 * 16)], return_tensors="pt"
            )["image_grid_thw"]
        vision = get_rope_index(processor, input_ids=ids, image_grid_thw=grid, attention_mask=torch.ones_like(ids))
        expected = torch.cat([torch.arange(len(ids)).unsqueeze(0), vision], dim=0)
        assert torch.equal(hinted["position_ids"][row][:, mask], expected)
    again = HintMaker(tokenizer, guidance, seed=1, max_prompt_length=160, step=lambda: 2)(dict(batch))
    assert all(torch.equal(hinted[k], again[k]) for k in ("input_ids", "attention_mask", "position_ids"))
    after = HintMaker(tokenizer, guidance, seed=1, max_prompt_length=160, step=lambda: 4)(dict(batch))
    assert not after[HINT_LENGTH].any() and torch.equal(after["input_ids"], batch["input_ids"])


def test_hints_are_cut_to_fit_and_missing_solutions_are_errors(tiny_lm_dir, tmp_path):
    batch, tokenizer, _ = _dataset_batch(tiny_lm_dir, tmp_path, images=False)
    room = 160 - int(batch["attention_mask"][1].sum())
    line = "We add the numbers. " * 40 + "\n"
    line = line[: len(line) * room // (3 * len(tokenizer(line)["input_ids"]))] + "\n"  # about room / 3 tokens
    batch["solution"][1] = line * 5  # five parts: one or two fit, not all
    guidance = GuidanceConfig(method="uft", hint_low=1.0, hint_high=1.0)
    maker = HintMaker(tokenizer, guidance, seed=1, max_prompt_length=160, step=lambda: 1)
    hinted = maker(dict(batch))
    assert 0 < int(hinted[HINT_LENGTH][1]) <= room and maker.metrics()["uft/hint_cut"] == 1.0
    assert int(hinted["attention_mask"][1].sum()) <= 160
    batch["solution"][0] = ""
    with pytest.raises(ValueError, match="empty or missing expert solution"):
        maker(dict(batch))
    del batch["solution"]
    with pytest.raises(KeyError, match="solution"):
        maker(batch)


class _StatefulLoader:
    """A training loader that, like torchdata's StatefulDataLoader, resumes at the batch its state names."""

    def __init__(self, batches):
        self.batches = batches
        self.start = 0

    def __iter__(self):
        for position in range(self.start, len(self.batches)):
            self.start = position + 1
            yield self.batches[position]

    def __len__(self):
        return len(self.batches)

    def state_dict(self):
        return {"start": self.start}

    def load_state_dict(self, state):
        self.start = state["start"]


def test_uft_hints_after_a_resume_are_those_of_the_uninterrupted_run(tiny_lm_dir, tmp_path):
    """The hints come from the trainer's global_step: after EasyR1's _load_checkpoint restores step k - 1 (and
    the loader's position), step k hints exactly as step k of a run that never stopped, not as a first step."""
    batch, tokenizer, _ = _dataset_batch(tiny_lm_dir, tmp_path, images=False)
    batches = [batch] * 4
    k, total = 3, 6  # p(t) = 1/2 + 1/2 cos(pi t / 6): 0.93 at step 1, 0.5 at step 3

    def trainer(*extra):
        config = load_config(
            [
                "worker.rollout.n=4",
                "guidance.method=uft",
                "guidance.hint_low=0.0",
                "guidance.hint_high=1.0",
                f"guidance.hint_steps={total}",
                "data.seed=5",
                "data.max_prompt_length=160",
                *extra,
            ]
        )
        stub = SimpleNamespace(config=config, tokenizer=tokenizer, train_dataloader=_StatefulLoader(batches))
        stub.global_step, stub.use_critic = 0, False
        stub.actor_rollout_ref_wg = SimpleNamespace(load_checkpoint=lambda path: None)
        stub.guide = UftGuide(stub)
        return stub

    uninterrupted = trainer()
    drawn = iter(uninterrupted.guide.loader)
    for step in range(1, k + 1):  # EasyR1's fit: global_step += 1, then _make_batch_data draws the batch
        uninterrupted.global_step = step
        uninterrupted.guide.start_step()
        expected = next(drawn)

    checkpoint = tmp_path / f"global_step_{k - 1}"
    checkpoint.mkdir()
    torch.save({"start": k - 1}, checkpoint / "dataloader.pt")
    resumed = trainer(f"trainer.load_checkpoint_path={checkpoint}")
    RayPPOTrainer._load_checkpoint(resumed)
    assert resumed.global_step == k - 1
    resumed.global_step += 1
    resumed.guide.start_step()
    hinted = next(iter(resumed.guide.loader))

    for key in ("input_ids", "attention_mask", "position_ids", HINT_LENGTH):
        assert torch.equal(hinted[key], expected[key]), key
    assert [list(r) for r in hinted["raw_prompt_ids"]] == [list(r) for r in expected["raw_prompt_ids"]]
    assert resumed.guide.hints.metrics() == uninterrupted.guide.hints.metrics()
    probability = 0.5 + 0.5 * math.cos(math.pi * k / total)
    assert resumed.guide.hints.metrics()["uft/hint_probability"] == pytest.approx(probability)
    # the step matters here: a hint maker counting its own batches (step 1 after the resume) would differ
    assert hinted[HINT_LENGTH].any()
    first = HintMaker(tokenizer, resumed.config.guidance, seed=5, max_prompt_length=160, step=lambda: 1)(dict(batch))
    assert not torch.equal(first[HINT_LENGTH], hinted[HINT_LENGTH])


# ------------------------------------------------------------------------------------------- config


def test_luffy_and_uft_configs_have_the_paper_settings(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    luffy = load_config(["config=configs/openr1_math_luffy_echo.yaml"])
    uft = load_config(["config=configs/openr1_math_uft_echo.yaml"])
    for config in (luffy, uft):
        assert (config.data.rollout_batch_size, config.worker.actor.global_batch_size) == (128, 64)
        assert config.worker.rollout.n == 8 and config.worker.rollout.temperature == 0.6
        assert config.echo.enable and config.echo.coef == 0.001
        assert config.worker.actor.guidance is config.guidance  # it reaches the workers
        rollout = config.worker.rollout
        assert rollout.max_num_batched_tokens >= config.data.max_prompt_length + config.data.max_response_length
    g = luffy.guidance
    assert (g.method, g.shaping_gamma, g.adv_std, g.clip_on_policy, g.expert_in_clip_pool) == (
        "luffy",
        0.1,
        False,
        True,
        False,
    )
    assert luffy.algorithm.disable_kl and luffy.data.max_response_length == 8192
    g = uft.guidance
    assert (g.method, g.hint_low, g.hint_high, g.hint_steps, g.hint_coef, g.hint_max_parts) == (
        "uft",
        0.05,
        0.95,
        300,
        0.001,
        5,
    )
    assert uft.algorithm.use_kl_loss and uft.algorithm.kl_coef == 0.001


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["guidance.method=luffy", "guidance.shaping_gama=0.2"], "Did you mean 'guidance.shaping_gamma'?"),
        (["guidance.method=sft"], "guidance.method must be one of none, luffy, uft"),
        (["guidance.method=luffy", "algorithm.online_filtering=true"], "does not support algorithm.online_filtering"),
        (["guidance.method=uft", "algorithm.online_filtering=true"], "does not support algorithm.online_filtering"),
        (["guidance.method=luffy", "algorithm.adv_estimator=gae"], "needs algorithm.adv_estimator=grpo"),
        (["guidance.method=luffy", "algorithm.adv_estimator=remax"], "luffy needs algorithm.adv_estimator=grpo"),
        (
            ["guidance.method=uft", "algorithm.adv_estimator=remax"],
            "guidance.method=uft does not support algorithm.adv_estimator=remax",
        ),
        (["guidance.method=luffy", "worker.rollout.n=1"], "needs worker.rollout.n >= 2"),
        (
            ["guidance.method=luffy", "guidance.clip_on_policy=false", "worker.actor.loss_type=gspo"],
            "loss_type=default",
        ),
    ],
)
def test_guidance_settings_are_checked(args, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace(".", r"\.")):
        load_config(["worker.rollout.n=4", *args] if "worker.rollout.n=1" not in args else args)


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_plus_plus", "grpo_passk", "gae"])
def test_uft_takes_every_advantage_estimator_but_remax(estimator):
    """UFT's reward (hint + response) is the only one these estimators read; REMAX's greedy baseline is scored
    without the hint, so it alone is refused (above)."""
    config = load_config(["worker.rollout.n=4", "guidance.method=uft", f"algorithm.adv_estimator={estimator}"])
    assert config.algorithm.adv_estimator == estimator


def test_a_missing_solution_column_is_an_error_before_ray(tmp_path):
    import pandas as pd

    reward = "worker.reward.reward_function=./echovl/reward/math.py:compute_score"
    data = tmp_path / "train.parquet"
    pd.DataFrame({"problem": ["1 + 1?"], "answer": ["2"]}).to_parquet(data)
    for method in ("luffy", "uft"):
        args = [f"data.train_files={data}", f"data.val_files={data}", reward, f"guidance.method={method}"]
        with pytest.raises(ConfigError, match=r"column 'solution' \(guidance.solution_key\).*has: answer, problem"):
            load_config([*args, "worker.rollout.n=4"], check_files=True)
    load_config([f"data.train_files={data}", f"data.val_files={data}", reward], check_files=True)  # method none
    pd.DataFrame({"problem": ["1 + 1?"], "answer": ["2"], "solution": ["2"]}).to_parquet(data)
    load_config([f"data.train_files={data}", reward, "guidance.method=uft"], check_files=True)


def test_the_clip_pool_leaves_out_the_expert_row_but_it_counts_for_degenerate_groups(text_only_tokenizer):
    """The echo step with a pool: the expert row never gives the clip, even when its step has the highest entropy;
    with scope 'degenerate' a group is all-correct only if its expert row is correct too."""
    from echovl import group_outcomes
    from echovl.echo import EchoStep, group_ids

    ids = text_only_tokenizer("First step.\nSecond step.\n", add_special_tokens=False)["input_ids"]
    responses = torch.tensor([ids] * 6)
    mask = torch.ones_like(responses)
    entropy = torch.ones(responses.shape)
    entropy[0] = 5.0  # the expert row of group 0 has the highest entropy
    entropy[3] = 4.0  # the expert row of group 1
    verified = torch.tensor([True, True, True, False, True, True])  # group 1's expert row is wrong
    group = group_ids(["a", "a", "a", "b", "b", "b"])
    pool = torch.tensor([False, True, True, False, True, True])  # rows 0 and 3 are expert rows
    for scope, mined_groups in (("all", 2), ("degenerate", 1)):
        step = EchoStep(text_only_tokenizer, EchoConfig(scope=scope))
        mined = step.mine(responses, mask, entropy, verified, group, pool=pool)
        assert len(mined.clips) == mined_groups
        assert not mined.clips.mask[~pool].any()
        assert mined.clips.row.tolist() == [1, 4][:mined_groups]  # the lowest on-policy row of each mined group
        assert group_outcomes(verified, group).all_correct == 1  # a (expert row included); b's expert row is wrong
        unpooled = step.mine(responses, mask, entropy, verified, group)
        assert 0 in unpooled.clips.row.tolist()  # without the pool the expert row would give group a's clip
