"""Generation backends: the transformers backend's batches against one prompt at a time (tiny models), and the vLLM
backend's requests and outputs through a fake ``vllm`` module (vLLM itself needs a GPU)."""

import sys

import pytest

from echovl.eval.backends import Sampling, TransformersBackend, VLLMBackend, build_vllm_requests, load_backend
from echovl.eval.benchmarks import EvalError
from echovl.eval.prompts import Prompt, PromptBuilder
from echovl.testing import tiny_image
from tests.eval_helpers import FakeLLM, FakeSamplingParams, fake_vllm, one_torch_thread  # noqa: F401 (fixtures)

MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 16


def test_sampling_validation():
    assert Sampling(temperature=0).greedy and not Sampling().greedy
    for bad in (dict(n=0), dict(temperature=-1), dict(top_p=0), dict(max_new_tokens=0)):
        with pytest.raises(EvalError):
            Sampling(**bad)


def test_transformers_batches_match_one_prompt_at_a_time(tiny_lm_dir):
    batched = TransformersBackend(tiny_lm_dir, batch_size=8, device="cpu")
    builder = PromptBuilder(batched.tokenizer)
    prompts = [builder.build("What is 2 + 2?" + " Explain." * i) for i in range(3)]  # different lengths: padding
    greedy = Sampling(temperature=0, max_new_tokens=8)
    single = TransformersBackend(tiny_lm_dir, batch_size=1, device="cpu")
    assert batched.generate(prompts, greedy) == single.generate(prompts, greedy)
    # sampling: n texts per prompt, reproducible from the seeds, different for other seeds
    sampled = Sampling(n=3, temperature=1.0, max_new_tokens=6, seed=5)
    first = batched.generate(prompts[:2], sampled, seeds=[10, 11])
    assert [len(t) for t in first] == [3, 3]
    assert batched.generate(prompts[:2], sampled, seeds=[10, 11]) == first
    assert batched.generate(prompts[:2], sampled, seeds=[12, 13]) != first


def test_transformers_with_images_and_context_cap(tiny_vl_dir):
    backend = TransformersBackend(tiny_vl_dir, batch_size=4, device="cpu")
    builder = PromptBuilder(backend.tokenizer, backend.processor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    prompts = [builder.build(f"<image>Find x in figure {i}." + " Why?" * i, [tiny_image(i)]) for i in range(2)]
    greedy = Sampling(temperature=0, max_new_tokens=6)
    texts = backend.generate(prompts, greedy)
    assert texts == TransformersBackend(tiny_vl_dir, batch_size=1, device="cpu").generate(prompts, greedy)
    assert all("<|image_pad|>" not in t[0] for t in texts)
    budgets = []
    generate = backend.model.generate
    backend.model.generate = lambda **kw: budgets.append(kw["generation_config"].max_new_tokens) or generate(**kw)
    backend.context = prompts[0].input_length + 2  # the context leaves 2 tokens (image tokens count)
    assert prompts[0].input_length > len(prompts[0].token_ids)
    backend.generate(prompts[:1], Sampling(temperature=0, max_new_tokens=6))
    assert budgets == [2]
    backend.context = prompts[0].input_length
    with pytest.raises(EvalError, match="leaves no room"):
        backend.generate(prompts[:1], greedy)


def test_padded_causal_mask_equals_transformers_sdpa_mask():
    """The broadcast mask against transformers' vmap-built one: prefill and decode steps, left padding, a KV offset,
    no padding (SDPA's is_causal: None from both), and a sliding window (handed to transformers)."""
    import torch
    from transformers import masking_utils as mu

    from echovl.eval.backends import padded_causal_mask

    pad = torch.tensor(
        [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]]
    ).bool()  # as create_causal_mask passes it
    cases = [
        dict(cache_position=torch.arange(5), kv_length=5, attention_mask=pad[:, :5]),  # prefill
        dict(cache_position=torch.tensor([6]), kv_length=7, attention_mask=pad),  # a decode step
        dict(cache_position=torch.arange(3, 5), kv_length=4, kv_offset=1, attention_mask=pad[:, :5]),
        dict(cache_position=torch.arange(4), kv_length=4, attention_mask=torch.ones(3, 4, dtype=torch.bool)),
        dict(
            cache_position=torch.arange(6),
            kv_length=6,
            attention_mask=pad[:, :6],
            local_size=3,
            mask_function=mu.sliding_window_causal_mask_function(3),
        ),
    ]
    for case in cases:
        ours = padded_causal_mask(3, **case)
        theirs = mu.sdpa_mask(3, **{"mask_function": mu.causal_mask_function, **case})
        if theirs is None:
            assert ours is None
        else:
            assert ours.dtype == torch.bool and torch.equal(ours, theirs), case


def test_transformers_backend_uses_the_fast_mask_with_the_same_outputs(tiny_lm_dir, tiny_vl_dir):
    """Text and VL models switch to the broadcast mask; batched generation gives what plain SDPA gives."""
    from echovl.eval.backends import use_fast_sdpa_mask

    for folder, vision in ((tiny_lm_dir, False), (tiny_vl_dir, True)):
        backend = TransformersBackend(folder, batch_size=4, device="cpu")
        assert backend.model.config._attn_implementation == "echovl_sdpa"
        builder = PromptBuilder(backend.tokenizer, backend.processor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        if vision:
            prompts = [builder.build(f"<image>Find x in figure {i}." + " Why?" * i, [tiny_image(i)]) for i in range(3)]
        else:
            prompts = [builder.build("What is 2 + 2?" + " Explain." * i) for i in range(3)]
        greedy = Sampling(temperature=0, max_new_tokens=8)
        fast = backend.generate(prompts, greedy)
        backend.model.set_attn_implementation("sdpa")
        assert backend.generate(prompts, greedy) == fast
        use_fast_sdpa_mask(backend.model)
        assert backend.model.config._attn_implementation == "echovl_sdpa"
    backend.model.set_attn_implementation("eager")  # any other attention is left as it is
    use_fast_sdpa_mask(backend.model)
    assert backend.model.config._attn_implementation == "eager"


def test_transformers_continues_a_response_prefix(tiny_lm_dir, tiny_vl_dir):
    """Greedy: a continuation from the first k tokens of a greedy response gives the rest of that response."""
    import torch

    for folder, problem, images in (
        (tiny_lm_dir, "What is 2 + 2?", None),
        (tiny_vl_dir, "<image>Find x.", [tiny_image(0)]),
    ):
        backend = TransformersBackend(folder, batch_size=4, device="cpu")
        builder = PromptBuilder(backend.tokenizer, backend.processor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        prompt = builder.build(problem, images)
        inputs = builder.model_inputs([prompt])
        with torch.inference_mode():
            config = backend._generation_config(Sampling(temperature=0), 10)
            out = backend.model.generate(**inputs, generation_config=config, use_model_defaults=False)
        ids = out[0, inputs["input_ids"].shape[1] :].tolist()  # the model's own tokens, no re-tokenisation
        longer = builder.build(problem + " Explain it all.", images)  # batched with a longer prompt: padding
        texts = backend.generate(
            [builder.continuation(prompt, ids[:4]), longer], Sampling(temperature=0, max_new_tokens=6)
        )
        assert texts[0] == [backend._decode(torch.tensor(ids[4:]))]


# ------------------------------------------------------------------------------------------------------- vLLM


def test_vllm_requests():
    image = tiny_image(0)
    prompts = [Prompt("t", (1, 2, 3)), Prompt("u", (4, 5) * 20, (image,), multimodal=True, length=50)]
    sampling = Sampling(n=4, temperature=0.6, top_p=0.9, max_new_tokens=40, seed=7)
    inputs, params = build_vllm_requests(
        prompts, sampling, [0, 1], sampling_params=FakeSamplingParams, context=64, logit_bias={9: -100.0}
    )
    assert inputs == [
        {"prompt_token_ids": [1, 2, 3]},
        {"prompt_token_ids": [4, 5] * 20, "multi_modal_data": {"image": [image]}},
    ]
    assert [p.max_tokens for p in params] == [40, 14]  # the second (50 tokens with its image) leaves 14
    assert all(
        (p.n, p.temperature, p.top_p, p.logit_bias, p.skip_special_tokens) == (4, 0.6, 0.9, {9: -100.0}, True)
        for p in params
    )
    assert params[0].seed != params[1].seed  # one seed per request
    again = build_vllm_requests(
        prompts, sampling, [0, 1], sampling_params=FakeSamplingParams, context=64, logit_bias=None
    )[1]
    assert [p.seed for p in again] == [p.seed for p in params]
    greedy = build_vllm_requests(
        prompts[:1],
        Sampling(n=3, temperature=0),
        [0],
        sampling_params=FakeSamplingParams,
        context=None,
        logit_bias=None,
    )[1][0]
    assert (greedy.n, greedy.temperature, greedy.top_p, greedy.max_tokens) == (1, 0.0, 1.0, 8192)
    # a continuation: the prompt's ids then exactly the prefix ids; the prefix takes its share of the context
    cont = Prompt("u", (4, 5) * 20 + (7, 8), (image,), multimodal=True, length=52, prefix_ids=(7, 8), prefix_text="ab")
    inputs, params = build_vllm_requests(
        [cont], sampling, [1], sampling_params=FakeSamplingParams, context=64, logit_bias=None
    )
    assert inputs[0]["prompt_token_ids"] == [4, 5] * 20 + [7, 8] and params[0].max_tokens == 12


@pytest.mark.usefixtures("fake_vllm")
def test_vllm_backend_through_a_fake_vllm(tiny_vl_dir):
    backend = load_backend(
        "vllm",
        tiny_vl_dir,
        tensor_parallel_size=1,
        max_images=2,
        show_progress=False,
        engine_kwargs={"gpu_memory_utilization": 0.5},
    )
    assert isinstance(backend, VLLMBackend)
    [llm] = FakeLLM.instances
    assert llm.kwargs["model"] == str(tiny_vl_dir) and llm.kwargs["gpu_memory_utilization"] == 0.5
    assert llm.kwargs["limit_mm_per_prompt"] == {"image": 2} and llm.kwargs["tensor_parallel_size"] == 1
    image_pad = backend.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_pad in backend.logit_bias  # never sample an image placeholder, as EasyR1's rollout
    builder = PromptBuilder(backend.tokenizer, backend.processor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    prompts = [builder.build("<image>Find x.", [tiny_image(0)]), builder.build("<image>Find y.", [tiny_image(1)])]
    texts = backend.generate(prompts, Sampling(n=2, max_new_tokens=8))
    assert texts == [["r0s0", "r0s1"], ["r1s0", "r1s1"]]
    [(inputs, params)] = llm.calls  # one call for all prompts and samples
    assert inputs[0]["prompt_token_ids"] == list(prompts[0].token_ids)
    assert inputs[1]["multi_modal_data"]["image"][0].size == prompts[1].images[0].size
    assert backend.generate(prompts[:1], Sampling(n=3, temperature=0)) == [["r0s0"] * 3]  # greedy: one, repeated
    # a sample count per prompt, in one call (the evaluation sends benchmarks with different k together)
    assert backend.generate(prompts, Sampling(max_new_tokens=8), seeds=[5, 6], n=[3, 1]) == [
        ["r0s0", "r0s1", "r0s2"],
        ["r1s0"],
    ]
    assert [p.n for p in llm.calls[-1][1]] == [3, 1] and len(llm.calls) == 3
    assert backend.generate(prompts, Sampling(temperature=0, max_new_tokens=8), n=[2, 1]) == [["r0s0"] * 2, ["r1s0"]]
    with pytest.raises(EvalError, match="2 sample counts for 1 prompts"):
        backend.generate(prompts[:1], Sampling(max_new_tokens=8), n=[1, 2])
    backend.close()
    assert backend.llm is None


def test_auto_backend_without_vllm(monkeypatch, tiny_lm_dir):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert isinstance(load_backend("auto", tiny_lm_dir, batch_size=2, device="cpu"), TransformersBackend)
    with pytest.raises(EvalError, match="needs vLLM"):
        monkeypatch.setitem(sys.modules, "vllm", None)  # an import of vllm fails
        load_backend("vllm", tiny_lm_dir)
    with pytest.raises(EvalError, match="unknown backend"):
        load_backend("tgi", tiny_lm_dir)
