import io

import pytest
import torch

from echovl.demo.examples import EXAMPLE_PROBLEMS
from echovl.demo.live import (
    DemoError,
    LiveRequest,
    ModelCache,
    SampledGroup,
    load_model,
    mine_group,
    open_image,
    parse_delimiters,
    run_live,
    sample_group,
)
from echovl.inference import PromptBuilder
from echovl.reward.math import grade
from echovl.steps import vision_table
from echovl.testing import tiny_image
from tests.demo_support import demo_model_once


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    return demo_model_once(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_vl(tiny_vl_dir):
    return load_model(str(tiny_vl_dir), device="cpu")  # fp32: compared with a float64 reference


def test_parse_delimiters():
    assert parse_delimiters("\\n") == ("\n",)
    assert parse_delimiters("\\n\n.\n\n\\t\n\\r") == ("\n", ".", "\t", "\r")  # EchoConfig's escapes
    with pytest.raises(DemoError, match="at least one step delimiter"):
        parse_delimiters("")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("question", "  ", "the question is empty"),
        ("answer", "", "reference answer is empty"),
        ("num_rollouts", 0, "number of rollouts must be >= 1"),
        ("num_rollouts", None, "number of rollouts must be a whole number"),
        ("num_rollouts", 2.5, "number of rollouts must be a whole number"),
        ("temperature", 0, "temperature must be > 0"),
        ("temperature", "hot", "temperature must be a number"),
        ("max_new_tokens", 10**6, "max new tokens must be >= 1 and <= 8192"),
        ("min_step_tokens", 0, "min step tokens must be >= 1"),
        ("scope", "some", "scope must be one of all, degenerate"),
        ("delimiters", ("",), "delimiters must be a non-empty list of non-empty strings"),
    ],
)
def test_request_validation(field, value, message):
    request = LiveRequest("Find x.", "5")
    setattr(request, field, value)
    with pytest.raises(DemoError, match=message):
        request.validate()


def test_request_mines_with_trainings_echo_settings():
    """The demo takes EchoConfig's defaults (not its own copy of them) and checks its settings as EchoConfig does."""
    from echovl.config import EchoConfig

    config, request = EchoConfig(), LiveRequest("Find x.", "5")
    assert (list(request.delimiters), request.min_step_tokens, request.scope) == (
        config.delimiters,
        config.min_step_tokens,
        config.scope,
    )
    request.min_step_tokens, request.scope = 3, "degenerate"
    assert request.echo_config().mining_kwargs() == {
        **config.mining_kwargs(),
        "min_step_tokens": 3,
        "scope": "degenerate",
    }


def test_request_normalises_form_numbers():
    request = LiveRequest("Find x.", "5", num_rollouts=4.0, temperature="0.6", max_new_tokens=64.0)
    request.validate()
    assert (request.num_rollouts, request.temperature, request.max_new_tokens) == (4, 0.6, 64)
    assert isinstance(request.num_rollouts, int)


def test_open_image(tmp_path):
    assert open_image(None) is None and open_image("") is None
    image = tiny_image(0).convert("L")
    assert open_image(image).mode == "RGB"
    path = tmp_path / "ok.png"
    tiny_image(0).save(path)
    assert open_image(str(path)).size == (84, 84)
    import numpy as np

    assert open_image(np.zeros((5, 6, 3), dtype=np.uint8)).size == (6, 5)
    with pytest.raises(DemoError, match="nope.png: no such file"):
        open_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DemoError, match="cannot open the image text.png"):
        open_image(tmp_path / "text.png")
    buffer = io.BytesIO()
    tiny_image(0).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:200])  # truncated: the header reads, the data does not
    with pytest.raises(DemoError, match="cannot open the image cut.png"):
        open_image(tmp_path / "cut.png")
    with pytest.raises(DemoError, match="type int"):
        open_image(3)


def test_load_model_errors_and_kinds(tmp_path, tiny_vl, tiny_vl_dir, tiny_lm_dir):
    with pytest.raises(DemoError, match="no model path"):
        load_model("  ")
    with pytest.raises(DemoError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(DemoError, match=f"cannot load the tokenizer/processor of {tmp_path}"):
        load_model(str(tmp_path))
    assert tiny_vl.is_vlm and tiny_vl.processor is not None and tiny_vl.path == str(tiny_vl_dir)
    text_only = load_model(str(tiny_lm_dir))
    assert not text_only.is_vlm and text_only.processor is None


def _reference_entropy(loaded, sampled, image, request):
    """Entropy of the policy for each response token from a plain full forward over prompt + response."""
    from echovl.demo.examples import format_question
    from echovl.demo.live import _prompt

    prompt = _prompt(loaded, format_question(request.question, request.instruction), image)
    inputs = PromptBuilder(loaded.tokenizer, loaded.processor).model_inputs([prompt])
    prompt = inputs["input_ids"][0]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    out = torch.zeros_like(sampled.entropy)
    for row in range(sampled.response.shape[0]):
        length = int(sampled.mask[row].sum())
        ids = torch.cat([prompt, sampled.response[row, :length]]).unsqueeze(0)
        with torch.no_grad():
            logits = loaded.model(input_ids=ids, **extra).logits[0].double() / request.temperature
        if loaded.is_vlm:  # a VLM's vision tokens are never sampled
            logits[:, vision_table(loaded.tokenizer).nonzero().flatten()] = -torch.inf
        # the token at position p is predicted by the logits at p - 1
        predicting = logits[len(prompt) - 1 : len(prompt) - 1 + length]
        p = predicting.softmax(-1)
        out[row, :length] = -torch.where(p > 0, p * predicting.log_softmax(-1), 0).sum(-1).float()
    return out


def test_sample_group_entropy_mask_and_texts(tiny_vl):
    request = LiveRequest("Find angle C.", "70", num_rollouts=3, temperature=0.7, max_new_tokens=24, seed=3)
    request.validate()
    image = tiny_image(1)
    sampled = sample_group(tiny_vl, request, image)
    assert sampled.response.shape[0] == 3 and sampled.mask.shape == sampled.response.shape
    lengths = sampled.mask.sum(dim=1)
    assert bool((lengths >= 1).all()) and int(lengths.max()) <= 24
    for row, length in enumerate(lengths.tolist()):  # the mask is a prefix; it ends at the first eos (if any)
        assert sampled.mask[row, :length].all() and not sampled.mask[row, length:].any()
        eos = torch.isin(sampled.response[row, :length], torch.tensor([tiny_vl.tokenizer.eos_token_id]))
        assert int(eos.sum()) <= 1 and (not eos.any() or bool(eos[-1]))
        decoded = tiny_vl.tokenizer.decode(sampled.response[row, :length], skip_special_tokens=True)
        assert sampled.texts[row] == decoded
    reference = _reference_entropy(tiny_vl, sampled, image, request)
    torch.testing.assert_close(sampled.entropy, reference, atol=2e-4, rtol=1e-4)
    assert float(sampled.entropy[sampled.mask.bool()].min()) > 0
    assert not sampled.entropy[~sampled.mask.bool()].any()
    assert "Find angle C." in sampled.prompt and "<|im_start|>" not in sampled.prompt
    # the same seed samples the same group; entropy is at the sampling temperature
    again = sample_group(tiny_vl, request, image)
    assert torch.equal(again.response, sampled.response)
    hotter = LiveRequest("Find angle C.", "70", num_rollouts=3, temperature=1.5, max_new_tokens=24, seed=3)
    hotter.validate()
    assert float(sample_group(tiny_vl, hotter, image).entropy.max()) > float(sampled.entropy.max())


@pytest.mark.parametrize("model_dir", ["tiny_qwen3_vl_dir", "tiny_qwen3_dir"])
def test_qwen3_backbones_sample_and_mine(request, model_dir):
    """Qwen3-VL / Qwen3 (one-token <think> markers): sampling and entropy as for Qwen2.5-VL, and a verified rollout
    written with the markers is split and clipped as its text reads."""
    loaded = load_model(str(request.getfixturevalue(model_dir)), device="cpu")
    image = tiny_image(2) if loaded.is_vlm else None
    live = LiveRequest("Find x.", "6", num_rollouts=2, temperature=0.9, max_new_tokens=12, seed=1)
    live.validate()
    sampled = sample_group(loaded, live, image)
    torch.testing.assert_close(sampled.entropy, _reference_entropy(loaded, sampled, image, live), atol=2e-4, rtol=1e-4)

    tokenizer = loaded.tokenizer
    texts = ["<think>\nAngle A is 30.\nSo x = 6.\n</think>\n\\boxed{6}", "<think>\nx = 5.\n</think>\n\\boxed{5}"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    assert tokenizer.convert_tokens_to_ids("</think>") in rows[0]  # one token, not BPE pieces
    width = max(map(len, rows))
    response = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    entropy = torch.full(response.shape, 0.1) * mask
    second = len(tokenizer("<think>\nAngle A is 30.\n", add_special_tokens=False)["input_ids"])
    entropy[0, second : second + 3] = 2.0  # "So x = 6.\n" is the uncertain step
    record = mine_group(loaded, SampledGroup("Find x.", response, mask, entropy, texts, (0.0, 0.0)), live)
    steps = record["rollouts"][0]["steps"]
    assert [texts[0][slice(*step["chars"])] for step in steps] == [
        "<think>\n",
        "Angle A is 30.\n",
        "So x = 6.\n",
        "</think>\n",
        "\\boxed{6}",  # <|im_end|> is special: not text, and not in the decoded text
    ]
    assert [r["verified"] for r in record["rollouts"]] == [True, False]
    clip = record["clip"]
    assert (clip["rollout"], clip["step"]) == (0, 2)
    assert texts[0][: clip["char_end"]] == "<think>\nAngle A is 30.\nSo x = 6.\n"
    assert steps[0]["text_tokens"] == 2  # <think> and the newline: the marker counts as text


def test_vision_placeholders_are_never_sampled(tiny_vl_dir):
    # a policy that would rather write <|image_pad|> than anything else: sampling one would make the entropy
    # forward read it as an image slot and fail (seen on a GPU in bf16)
    loaded = load_model(str(tiny_vl_dir), device="cpu")
    vision_ids = vision_table(loaded.tokenizer).nonzero().flatten()
    pad_id = loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert pad_id in vision_ids.tolist()

    def favour_image_pad(module, args, output):
        output[..., pad_id] += 30.0
        return output

    loaded.model.get_output_embeddings().register_forward_hook(favour_image_pad)
    request = LiveRequest("Find x.", "1", num_rollouts=2, temperature=1.0, max_new_tokens=8, seed=0)
    request.validate()
    sampled = sample_group(loaded, request, tiny_image(0))
    assert not torch.isin(sampled.response[sampled.mask.bool()], vision_ids).any()
    assert bool(torch.isfinite(sampled.entropy).all()) and float(sampled.entropy[sampled.mask.bool()].min()) > 0


def test_random_model_group_is_all_wrong_without_clip(tiny_vl):
    result = run_live(tiny_vl, LiveRequest("Find x.", "12345", num_rollouts=2, max_new_tokens=16))
    record = result.record
    assert record["all_wrong"] and not record["degenerate"] and record["clip"] is None
    assert [r["verified"] for r in record["rollouts"]] == [False, False]
    assert record["group"] == "live" and record["source"] == "demo" and record["answer"] == "12345"
    assert result.image is None and "rollouts sampled" in result.notes[-1]


def test_text_only_model_ignores_the_image(tiny_lm_dir):
    loaded = load_model(str(tiny_lm_dir))
    result = run_live(loaded, LiveRequest("Find x.", "1", image=tiny_image(0), num_rollouts=2, max_new_tokens=8))
    assert "text-only model: the image was ignored" in result.notes[0]
    assert result.image is None and len(result.record["rollouts"]) == 2


def test_run_live_bad_inputs_raise_demo_errors(tiny_vl, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG junk")
    with pytest.raises(DemoError, match="cannot open the image bad.png"):
        run_live(tiny_vl, LiveRequest("Find x.", "1", image=str(tmp_path / "bad.png")))
    with pytest.raises(DemoError, match="question is empty"):
        run_live(tiny_vl, LiveRequest("", "1"))


def test_model_cache_loads_once_per_path(tiny_vl_dir, tiny_lm_dir):
    cache = ModelCache()
    calls = []
    first = cache.get(str(tiny_vl_dir), lambda fraction, desc=None: calls.append(desc))
    assert cache.get(str(tiny_vl_dir)) is first and len(calls) == 1
    assert not cache.get(str(tiny_lm_dir)).is_vlm


def _max_verified_step_entropy(record, min_tokens=1):
    values = [
        step["entropy"]
        for rollout in record["rollouts"]
        if rollout["verified"]
        for step in rollout["steps"]
        if step["entropy"] is not None and step["text_tokens"] >= min_tokens
    ]
    return max(values)


def test_demo_model_mines_the_highest_entropy_verified_step(demo_model):
    loaded = load_model(str(demo_model))
    problem = EXAMPLE_PROBLEMS[0]
    request = LiveRequest(problem.question, problem.answer, image=tiny_image(problem.image_seed), seed=0)
    record = run_live(loaded, request).record
    flags = [r["verified"] for r in record["rollouts"]]
    assert flags == [grade(r["text"], problem.answer)["accuracy"] >= 1 for r in record["rollouts"]]
    assert any(flags), "the fitted demo model should solve its own example problem at least once in 6 tries"
    clip = record["clip"]
    chosen = record["rollouts"][clip["rollout"]]
    assert chosen["verified"]
    assert clip["step_entropy"] == pytest.approx(_max_verified_step_entropy(record), abs=1e-6)
    assert chosen["steps"][clip["step"]]["entropy"] == pytest.approx(clip["step_entropy"], abs=1e-6)
    assert clip["length"] == sum(s["text_tokens"] for s in chosen["steps"][: clip["step"] + 1])
    # more delimiters, more steps; degenerate scope mines nothing in a mixed group
    request.delimiters = ("\n", " ")
    finer = run_live(loaded, request).record
    assert sum(len(r["steps"]) for r in finer["rollouts"]) > sum(len(r["steps"]) for r in record["rollouts"])
    if not all(flags):
        request.delimiters, request.scope = ("\n",), "degenerate"
        assert run_live(loaded, request).record["clip"] is None
