"""EchoActor on CPU: entropy in the old-log-prob pass on every EasyR1 path, and the echo term in update_policy."""

import copy
import types

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import torch  # noqa: E402

from tests.easyr1_stubs import (  # noqa: E402
    actor_config,
    build_rollout_batch,
    clip_tensors,
    init_gloo_group,
    install_vllm_stub,
    reference_clip_nll,
    reference_log_probs_and_entropy,
    worker_model_patch,
    write_prompt_parquet,
)

install_vllm_stub()

from verl.workers.actor import dp_actor  # noqa: E402
from verl.workers.actor.dp_actor import DataParallelPPOActor  # noqa: E402

from echovl.config import EchoConfig  # noqa: E402
from echovl.easyr1.actor import ECHO_COEF, ECHO_ROW, EchoActor  # noqa: E402
from echovl.easyr1.filtering import echo_rows, layout_update_batch  # noqa: E402
from echovl.echo import ECHO_WEIGHT  # noqa: E402
from echovl.loss import echo_nll  # noqa: E402

TEMPERATURE = 0.7


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    init_gloo_group()


BACKBONE_DIRS = {
    "qwen2_5_vl": "tiny_vl_dir",
    "qwen3_vl": "tiny_qwen3_vl_dir",
    "qwen2": "tiny_lm_dir",
    "qwen3": "tiny_qwen3_dir",
}
"""Tiny backbone -> the session fixture that builds it."""
VL_BACKBONES = ("qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def backbones(request, tmp_path_factory):
    """``backbones(name) -> (model, batch)``: the tiny backbone's fp32 model and a rollout batch of 3 prompts x 2
    responses from EasyR1's ``RLHFDataset`` (VL: 2 prompts with an image, 1 text only, mrope position ids as EasyR1
    builds them for that model), each loaded once per module."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    loaded = {}

    def get(name: str):
        if name not in loaded:
            model_dir = request.getfixturevalue(BACKBONE_DIRS[name])
            images = name in VL_BACKBONES
            auto = AutoModelForImageTextToText if images else AutoModelForCausalLM
            model = auto.from_pretrained(model_dir, dtype=torch.float32).eval()
            parquet = write_prompt_parquet(tmp_path_factory.mktemp(name) / "train.parquet", images=images)
            batch, _, _ = build_rollout_batch(model_dir, parquet, n=2, temperature=TEMPERATURE)
            loaded[name] = model, batch
        return loaded[name]

    return get


@pytest.fixture(scope="module")
def vl_model(backbones):
    return backbones("qwen2_5_vl")[0]


@pytest.fixture(scope="module")
def vl_batch(backbones):
    return backbones("qwen2_5_vl")[1]


def _unpad_input(hidden_states, attention_mask, *args):
    """Pure-torch ``flash_attn.bert_padding.unpad_input`` (the values EasyR1 uses)."""
    seqlens = attention_mask.sum(-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, int(seqlens.max()), seqlens


def _pad_input(hidden_states, indices, batch, seqlen):
    out = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    out[indices] = hidden_states
    return out.view(batch, seqlen, *hidden_states.shape[1:])


@pytest.fixture
def cpu_padding_free(monkeypatch):
    """flash-attn is absent on CPU: give EasyR1's padding-free branch pure-torch unpad/pad. Packed sequences are
    kept apart by transformers' own packed-sequence mask (it splits where text position ids restart)."""
    monkeypatch.setattr(dp_actor, "unpad_input", _unpad_input, raising=False)
    monkeypatch.setattr(dp_actor, "pad_input", _pad_input, raising=False)
    monkeypatch.setattr(dp_actor, "index_first_axis", lambda x, indices: x[indices], raising=False)


@pytest.fixture
def cpu_dynamic_batching(monkeypatch):
    """EasyR1 all-reduces the micro-batch count on a hard-coded CUDA tensor; with one rank it is a no-op."""
    from verl.utils import seqlen_balancing

    monkeypatch.setattr(seqlen_balancing, "dist", types.SimpleNamespace(is_initialized=lambda: False))


def _check_against_hf(actor, model, batch):
    with worker_model_patch(model, actor.config):
        log_probs, entropy = actor.compute_log_prob_and_entropy(batch)
    ref_log_probs, ref_entropy = reference_log_probs_and_entropy(model, batch, TEMPERATURE)
    mask = batch.batch["response_mask"].bool()
    assert log_probs.shape == entropy.shape == mask.shape
    assert entropy.dtype == torch.float32
    torch.testing.assert_close(log_probs[mask], ref_log_probs[mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(entropy[mask], ref_entropy[mask], atol=2e-5, rtol=1e-5)
    assert entropy[mask].min() > 0.1  # a random tiny model is far from deterministic


@pytest.mark.parametrize("backbone", VL_BACKBONES)
@pytest.mark.parametrize("micro", [2, 3])
def test_entropy_matches_hf_forward_padded(backbones, backbone, micro):
    """Image and text-only samples in one batch, mrope position ids (Qwen3-VL: its own rope index, interleaved
    mrope, deepstack), EasyR1's padded branch."""
    model, batch = backbones(backbone)
    assert batch.batch["position_ids"].dim() == 3
    inputs = batch.non_tensor_batch["multi_modal_inputs"]
    assert any(inputs_row == {} for inputs_row in inputs) and any("pixel_values" in r for r in inputs)
    actor = EchoActor(actor_config(len(batch), micro=micro), model, echo=EchoConfig(entropy_chunk_size=7))
    _check_against_hf(actor, model, batch)


@pytest.mark.parametrize("backbone", VL_BACKBONES)
@pytest.mark.parametrize("micro", [1, 3])
def test_entropy_matches_hf_forward_padding_free(backbones, backbone, cpu_padding_free, micro):
    """EasyR1's padding-free branch (unpad, packed forward through EasyR1's own model forward, pad back), several
    sequences per pack."""
    model, batch = backbones(backbone)
    actor = EchoActor(actor_config(len(batch), micro=micro, padding_free=True), model, echo=EchoConfig())
    _check_against_hf(actor, model, batch)


@pytest.mark.parametrize("padding_free", [False, True])
def test_entropy_matches_hf_forward_dynamic_batching(
    vl_model, vl_batch, cpu_padding_free, cpu_dynamic_batching, padding_free
):
    """Dynamic batching regroups rows by length; the order must be restored for both outputs."""
    actor = EchoActor(
        actor_config(len(vl_batch), micro=2, padding_free=padding_free, dynamic_batching=True),
        vl_model,
        echo=EchoConfig(),
    )
    _check_against_hf(actor, vl_model, vl_batch)


@pytest.mark.parametrize("backbone", ["qwen2", "qwen3"])
@pytest.mark.parametrize("padding_free", [False, True])
def test_entropy_matches_hf_forward_text_model(backbones, backbone, cpu_padding_free, padding_free):
    """A text-only causal LM (2-D position ids)."""
    model, batch = backbones(backbone)
    assert batch.batch["position_ids"].dim() == 2
    actor = EchoActor(actor_config(len(batch), micro=2, padding_free=padding_free), model, echo=EchoConfig())
    _check_against_hf(actor, model, batch)


@pytest.mark.parametrize("padding_free", [False, True])
def test_entropy_skips_prompt_and_padding_chunks(vl_model, vl_batch, cpu_padding_free, monkeypatch, padding_free):
    """Only chunks holding a row that predicts a response token are computed; the rest read as 0."""
    calls = []
    actor = EchoActor(
        actor_config(len(vl_batch), micro=3, padding_free=padding_free),
        vl_model,
        echo=EchoConfig(entropy_chunk_size=4),
    )
    real = actor._token_entropy

    def counting(logits, chunk_size):
        calls.append(logits.shape[0])
        return real(logits, chunk_size=chunk_size)

    actor._token_entropy = counting
    _check_against_hf(actor, vl_model, vl_batch)
    data = vl_batch.batch
    response_rows = int(data["response_mask"].sum())
    all_rows = int(data["attention_mask"].sum()) if padding_free else data["responses"].numel()
    assert response_rows <= sum(calls) < all_rows  # prompt tokens / response padding skipped
    _, entropy = actor.compute_log_prob_and_entropy(vl_batch)
    last_chunk_end = (data["response_mask"].sum(-1) + 3) // 4 * 4  # padded path: chunks of 4 along the response
    if not padding_free:
        beyond = torch.arange(data["responses"].shape[1]) >= last_chunk_end.unsqueeze(1)
        assert beyond.any() and not entropy[beyond].any()


def test_rows_needing_entropy_under_ulysses(vl_model, vl_batch, monkeypatch):
    """Padding-free + Ulysses: each sequence-parallel rank marks its slice of the padded token list, exactly as
    EasyR1 pads and slices the labels."""
    from verl.utils import ulysses

    inputs = {k: v[:3] for k, v in vl_batch.batch.items()}
    one = EchoActor(actor_config(3, padding_free=True), vl_model, echo=EchoConfig())
    full = one._rows_needing_entropy(inputs)
    assert int(full.sum()) == int(inputs["response_mask"].sum())
    two = EchoActor(actor_config(3, padding_free=True, ulysses_size=2), vl_model, echo=EchoConfig())
    parts = []
    for rank in range(2):
        monkeypatch.setattr(ulysses, "dist", types.SimpleNamespace(get_world_size=lambda group=None: 2))
        monkeypatch.setattr(ulysses, "get_ulysses_sequence_parallel_rank", lambda group=None, r=rank: r)
        parts.append(two._rows_needing_entropy(inputs))
    assert parts[0].shape == parts[1].shape
    joined = torch.cat(parts)
    assert torch.equal(joined[: full.numel()], full) and not joined[full.numel() :].any()


def test_entropy_with_torch_compile(vl_model, vl_batch, cpu_padding_free):
    """use_torch_compile (EasyR1's default): its log-prob function and our entropy chunks are compiled."""
    config = actor_config(len(vl_batch), micro=3, padding_free=True)
    config.use_torch_compile = True
    _check_against_hf(EchoActor(config, vl_model, echo=EchoConfig(entropy_chunk_size=64)), vl_model, vl_batch)


def test_log_probs_identical_to_easyr1(vl_model, vl_batch):
    """The log-probs of the entropy pass are EasyR1's own, bit for bit; outside the context nothing changes."""
    config = actor_config(len(vl_batch))
    vanilla = DataParallelPPOActor(config, vl_model).compute_log_prob(vl_batch)
    actor = EchoActor(config, vl_model, echo=EchoConfig())
    log_probs, _ = actor.compute_log_prob_and_entropy(vl_batch)
    assert torch.equal(log_probs, vanilla)
    assert torch.equal(actor.compute_log_prob(vl_batch), vanilla)


def test_ulysses_gather_keeps_the_entropy_dim(monkeypatch):
    """Under Ulysses EasyR1 gathers each rank's [local tokens] log-probs along dim 0 and strips the padding; the
    same code carries [local tokens, 2] (log-prob, entropy) pairs. Two ranks simulated around EasyR1's Gather."""
    from verl.utils import ulysses

    full = torch.arange(22.0).view(11, 2)  # 11 tokens, padded to 12 and split over 2 ranks
    padded = torch.cat([full, torch.zeros(1, 2)])
    locals_ = padded.chunk(2)

    def all_gather_into_tensor(output, local, group=None, async_op=False):
        output.copy_(torch.cat(locals_))  # what the two ranks contribute

    monkeypatch.setattr(
        ulysses,
        "dist",
        types.SimpleNamespace(
            get_world_size=lambda group=None: 2,
            get_rank=lambda group=None: 1,
            all_gather_into_tensor=all_gather_into_tensor,
        ),
    )
    gathered = ulysses.gather_outputs_and_unpad(locals_[1], gather_dim=0, unpad_dim=0, padding_size=1, group=object())
    assert torch.equal(gathered, full)


# ------------------------------------------------------------------------------------------- update_policy


def _update_batch(batch, model, *, advantages=0.0, clip_rows=(), seed=0, coef=None):
    """Old log-probs from the model, constant advantages, and an echo mask on the first half of ``clip_rows``."""
    data = copy.copy(batch)
    data.batch = batch.batch.clone()
    data.non_tensor_batch = dict(batch.non_tensor_batch)
    data.meta_info = dict(batch.meta_info)
    actor = DataParallelPPOActor(actor_config(len(batch)), model)
    data.batch["old_log_probs"] = actor.compute_log_prob(data)
    response_mask = data.batch["response_mask"]
    data.batch["advantages"] = torch.full(response_mask.shape, float(advantages)) * response_mask
    echo_mask = torch.zeros(response_mask.shape, dtype=torch.bool)
    for row in clip_rows:  # a prefix clip: the first half of the response
        length = int(response_mask[row].sum())
        echo_mask[row, : max(1, length // 2)] = True
    data.batch.update(clip_tensors(echo_mask))
    if coef is not None:
        data.meta_info[ECHO_COEF] = coef  # λ of the step, as the trainer sets it
    return data


def _clone(model):
    clone = copy.deepcopy(model)
    clone.train()
    return clone


UPDATE_PATHS = {"padded": {}, "padding_free": {"padding_free": True, "dynamic_batching": True}}
"""EasyR1's update paths: padded micro-batches, and packed sequences regrouped by length (``padding_free`` and
``dynamic_batching``, as the shipped configs/geo3k_grpo_echo.yaml sets them)."""


def _sgd_actor(cls, model, rows, *, update_path="padded", **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    config = actor_config(rows, micro=2, max_grad_norm=1e9, **UPDATE_PATHS[update_path])
    return cls(config, model, optimizer, **kwargs)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _update_recording_packs(actor, data):
    """``update_policy`` under the worker's model patch (EasyR1's own Qwen-VL forward when padding-free); also
    returns the (batch, tokens) shape of ``input_ids`` and whether an attention mask came, per model forward."""
    forwards = []

    def record(module, args, kwargs):
        forwards.append((tuple(kwargs["input_ids"].shape), kwargs.get("attention_mask") is not None))

    hook = actor.actor_module.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with worker_model_patch(actor.actor_module, actor.config):
            metrics = actor.update_policy(data)
    finally:
        hook.remove()
    return metrics, forwards


def _assert_packed(forwards, update_path, tokens):
    """Padding-free: every forward is one pack without attention mask, the packs holding ``tokens`` in all."""
    if update_path == "padding_free":
        assert all(shape[0] == 1 and not masked for shape, masked in forwards)
        assert sum(shape[1] for shape, _ in forwards) == tokens
    else:
        assert all(masked for _, masked in forwards)


def _assert_step_is(model, before, reference):
    """The SGD step (lr 1) of every parameter is minus the reference's gradient (0 where it has none)."""
    for p_new, p_old, p_ref in zip(model.parameters(), before, reference.parameters()):
        expected_step = -p_ref.grad if p_ref.grad is not None else torch.zeros_like(p_old)
        torch.testing.assert_close(p_new.detach() - p_old, expected_step, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("update_path", list(UPDATE_PATHS))
@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl", "qwen3"])
def test_update_policy_echo_only_gradient(backbones, backbone, update_path, cpu_padding_free, cpu_dynamic_batching):
    """All advantages 0: the PG term is 0, the echo term alone moves the parameters, by exactly -lr * coef *
    grad(J_echo), J_echo (= echo/loss) the mean over clips of each clip's mean NLL from a plain Hugging Face forward
    per clip. Padded and padding-free (EasyR1's patched Qwen2.5-VL / Qwen3-VL forward on packed mrope position
    ids, dynamic batching); VL clips on image rows (0, 3) and a text-only row (4)."""
    base, batch = backbones(backbone)
    clip_rows = (0, 3, 4)
    coef = 0.5  # λ of the step comes with the batch (the actor's EchoConfig keeps its default coef)
    data = _update_batch(batch, base, advantages=0.0, clip_rows=clip_rows, coef=coef)
    model = _clone(base)
    before = _params(model)
    actor = _sgd_actor(EchoActor, model, len(data), update_path=update_path, echo=EchoConfig())
    metrics, forwards = _update_recording_packs(actor, data)
    _assert_packed(forwards, update_path, int(data.batch["attention_mask"].sum()))

    reference = _clone(base)
    j_echo = reference_clip_nll(reference, data, clip_rows, TEMPERATURE)
    assert metrics["echo/loss"] == [pytest.approx(float(j_echo.detach()), rel=1e-5)]
    assert metrics["actor/pg_loss"] and set(metrics["actor/pg_loss"]) == {0.0}
    assert max(float((a - b).abs().max()) for a, b in zip(_params(model), before)) > 0
    (coef * j_echo).backward()
    _assert_step_is(model, before, reference)


@pytest.mark.parametrize("update_path", list(UPDATE_PATHS))
@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl", "qwen3"])
def test_update_policy_dapo_echo_rows_cut_at_clip_end(
    backbones, backbone, update_path, cpu_padding_free, cpu_dynamic_batching
):
    """DAPO echo rows as the trainer builds them (``echo_rows``: response_mask 0, attention cut after the clip's
    last token, inert fillers; ``layout_update_batch``), trained after the PG rows: the step is -coef * grad of the
    mean clip NLL, the echo rows' clips from a plain forward over the truncated sequence (prompt + response up to
    the clip end). A mid-response clip on an image row (3) and on a text-only row (4); a prefix clip on PG row 0."""
    base, batch = backbones(backbone)
    coef = 0.5
    data = _update_batch(batch, base, advantages=0.0, clip_rows=(0,), coef=coef)
    data.batch[ECHO_ROW] = torch.zeros(len(data), dtype=torch.bool)
    source = data[[3, 4]]  # stand-ins for the rollouts of a dropped all-correct group
    response_mask = source.batch["response_mask"]
    response_length = response_mask.shape[1]
    clips = torch.zeros(response_mask.shape, dtype=torch.bool)
    truncated = source.batch["attention_mask"].clone()  # prompt + response up to the clip end, by hand
    for row in range(len(source)):
        length = int(response_mask[row].sum())
        start, end = 2, 2 + length // 3  # clip tokens [start, end): well inside the response
        clips[row, start:end] = True
        truncated[row, truncated.shape[1] - response_length + end :] = 0
    source.batch.update(clip_tensors(clips))
    echo = echo_rows(source, torch.tensor([0, 1]), 4, like=data)  # 2 clips + 2 inert fillers
    assert torch.equal(echo.batch["attention_mask"][:2].bool(), truncated.bool())
    assert int(truncated.sum()) < int(source.batch["attention_mask"].sum())
    update = layout_update_batch(data, echo, world_size=1, mini_batches=1)

    model = _clone(base)
    before = _params(model)
    actor = _sgd_actor(EchoActor, model, len(data), update_path=update_path, echo=EchoConfig())
    metrics, forwards = _update_recording_packs(actor, update)
    _assert_packed(forwards, update_path, int(update.batch["attention_mask"].sum()))  # echo rows packed truncated

    reference = _clone(base)
    source.batch["attention_mask"] = truncated
    j_pg_row = reference_clip_nll(reference, data, [0], TEMPERATURE)
    j_echo_rows = reference_clip_nll(reference, source, [0, 1], TEMPERATURE)
    j_echo = (j_pg_row + 2 * j_echo_rows) / 3  # the mean over the mini-batch's 3 clips
    assert metrics["echo/loss"] == [pytest.approx(float(j_echo.detach()), rel=1e-5)]
    assert metrics["actor/pg_loss"] and set(metrics["actor/pg_loss"]) == {0.0}
    (coef * j_echo).backward()
    _assert_step_is(model, before, reference)


def _forward_log_probs(model, data):
    """Differentiable log-probs [B, R] of the whole batch through EasyR1's own forward."""
    actor = DataParallelPPOActor(actor_config(len(data)), model)
    inputs = {**data.batch, **data.non_tensor_batch}
    return actor._forward_micro_batch(inputs, temperature=data.meta_info["temperature"])


def test_update_policy_adds_echo_to_easyr1_gradient(vl_model, vl_batch):
    """Non-zero advantages, clips spread over micro-batches: the step is EasyR1's plus coef * grad(J_echo)."""
    clip_rows = (1, 2, 5)
    coef = 0.25
    data = _update_batch(vl_batch, vl_model, advantages=0.7, clip_rows=clip_rows, coef=coef)

    vanilla_model = _clone(vl_model)
    before = _params(vanilla_model)
    _sgd_actor(DataParallelPPOActor, vanilla_model, len(data)).update_policy(data)
    echo_model = _clone(vl_model)
    _sgd_actor(EchoActor, echo_model, len(data), echo=EchoConfig()).update_policy(data)

    reference = _clone(vl_model)
    total, count = echo_nll(_forward_log_probs(reference, data), data.batch[ECHO_WEIGHT] > 0)
    (coef * total / count).backward()
    for p_echo, p_vanilla, p_ref in zip(echo_model.parameters(), vanilla_model.parameters(), reference.parameters()):
        echo_step = -p_ref.grad if p_ref.grad is not None else torch.zeros_like(p_echo)
        torch.testing.assert_close(p_echo.detach() - p_vanilla.detach(), echo_step, atol=2e-6, rtol=1e-4)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, vanilla_model.parameters()))


def test_update_policy_world_size_normalisation(vl_model, vl_batch, monkeypatch):
    """Two identical ranks (simulated: all-reduce doubles, world size 2): each rank's step equals the 1-rank step,
    as FSDP's gradient averaging expects, for the PG and the echo term alike."""
    data = _update_batch(vl_batch, vl_model, advantages=0.3, clip_rows=(0, 5), coef=0.5)
    one = _clone(vl_model)
    _sgd_actor(EchoActor, one, len(data), echo=EchoConfig()).update_policy(data)

    def doubled(tensor, op=None, group=None):
        tensor.mul_(2)

    monkeypatch.setattr(dp_actor.dist, "all_reduce", doubled)
    two = _clone(vl_model)
    actor = _sgd_actor(EchoActor, two, len(data), echo=EchoConfig())
    actor.world_size = 2
    actor.update_policy(data)
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("echo", [EchoConfig(), EchoConfig(enable=False), EchoConfig(coef=0.0)])
def test_update_policy_without_clips_is_easyr1_bit_for_bit(vl_model, vl_batch, echo):
    """Empty echo mask (echo on), echo disabled, or coef 0: parameters after the step equal EasyR1's exactly
    (AdamW, grad clipping, two micro-batches per mini-batch, two mini-batches, KL loss on)."""
    from verl.protocol import DataProto

    data = _update_batch(vl_batch, vl_model, advantages=0.5, clip_rows=(), coef=0.5)
    data = DataProto.concat([data, data])  # 12 rows: 2 mini-batches of 6, 2 micro-batches of 3 each
    data.batch["advantages"][::3] *= -1
    data.batch["ref_log_probs"] = data.batch["old_log_probs"] - 0.05
    if not echo.enable:
        mask = torch.zeros(data.batch["responses"].shape, dtype=torch.bool)
        mask[0, :3] = True
        data.batch.update(clip_tensors(mask))  # ignored when echo is off
    results = []
    for cls, kwargs in ((DataParallelPPOActor, {}), (EchoActor, {"echo": echo})):
        torch.manual_seed(0)
        model = _clone(vl_model)
        config = actor_config(len(data) // 2, micro=3)
        config.use_kl_loss, config.kl_coef, config.kl_penalty = True, 0.1, "low_var_kl"
        actor = cls(config, model, torch.optim.AdamW(model.parameters(), lr=1e-2), **kwargs)
        metrics = actor.update_policy(data)
        results.append((_params(model), {k: v for k, v in metrics.items() if not k.startswith("echo/")}))
    (vanilla_params, vanilla_metrics), (echo_params, echo_metrics) = results
    assert all(torch.equal(a, b) for a, b in zip(vanilla_params, echo_params))
    assert echo_metrics == vanilla_metrics


def test_update_with_clips_but_no_step_coef_is_a_clear_error(vl_model, vl_batch):
    """λ reaches the loss with the batch, never through the actor's own echo.coef: clips without it fail."""
    data = _update_batch(vl_batch, vl_model, advantages=0.5, clip_rows=(0,))
    actor = _sgd_actor(EchoActor, _clone(vl_model), len(data), echo=EchoConfig())
    with pytest.raises(KeyError, match=ECHO_COEF):
        actor.update_policy(data)
