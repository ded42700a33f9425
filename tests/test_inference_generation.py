"""Generation backends: the transformers backend's batches against one prompt at a time (tiny models), its seeds,
sampling distribution and vision tokens, and the vLLM backend's requests and outputs through a fake ``vllm`` module
(vLLM itself needs a GPU)."""

import sys

import pytest

from echovl.inference import (
    InferenceError,
    Prompt,
    PromptBuilder,
    Sampling,
    TransformersBackend,
    VLLMBackend,
    build_vllm_requests,
    load_backend,
    load_model,
)
from echovl.testing import tiny_image
from tests.eval_helpers import FakeLLM, FakeSamplingParams, fake_vllm, one_torch_thread  # noqa: F401 (fixtures)

MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 16


def test_sampling_validation():
    assert Sampling(temperature=0).greedy and not Sampling().greedy
    for bad in (dict(n=0), dict(temperature=-1), dict(top_p=0), dict(max_new_tokens=0)):
        with pytest.raises(InferenceError):
            Sampling(**bad)


def test_transformers_batches_match_one_prompt_at_a_time(tiny_lm_dir):
    model = load_model(tiny_lm_dir, device="cpu")
    batched = TransformersBackend(model, batch_size=8)
    builder = PromptBuilder(batched.tokenizer)
    prompts = [builder.build("What is 2 + 2?" + " Explain." * i) for i in range(3)]  # different lengths: padding
    greedy = Sampling(temperature=0, max_new_tokens=8)
    single = TransformersBackend(model, batch_size=1)
    assert batched.generate(prompts, greedy) == single.generate(prompts, greedy)
    # sampling: n texts per prompt, reproducible from the seeds, different for other seeds
    sampled = Sampling(n=3, temperature=1.0, max_new_tokens=6, seed=5)
    first = batched.generate(prompts[:2], sampled, seeds=[10, 11])
    assert [len(t) for t in first] == [3, 3]
    assert batched.generate(prompts[:2], sampled, seeds=[10, 11]) == first
    assert batched.generate(prompts[:2], sampled, seeds=[12, 13]) != first


def test_transformers_with_images_and_context_cap(tiny_vl_dir):
    backend = TransformersBackend(load_model(tiny_vl_dir, device="cpu"), batch_size=4)
    builder = PromptBuilder(backend.tokenizer, backend.processor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    prompts = [builder.build(f"<image>Find x in figure {i}." + " Why?" * i, [tiny_image(i)]) for i in range(2)]
    greedy = Sampling(temperature=0, max_new_tokens=6)
    texts = backend.generate(prompts, greedy)
    assert texts == TransformersBackend(backend.loaded, batch_size=1).generate(prompts, greedy)
    assert all("<|image_pad|>" not in t[0] for t in texts)
    budgets = []
    generate = backend.model.generate
    backend.model.generate = lambda **kw: budgets.append(kw["generation_config"].max_new_tokens) or generate(**kw)
    backend.context = prompts[0].input_length + 2  # the context leaves 2 tokens (image tokens count)
    assert prompts[0].input_length > len(prompts[0].token_ids)
    backend.generate(prompts[:1], Sampling(temperature=0, max_new_tokens=6))
    assert budgets == [2]
    backend.context = prompts[0].input_length
    with pytest.raises(InferenceError, match="leaves no room"):
        backend.generate(prompts[:1], greedy)


def test_transformers_continues_a_response_prefix(tiny_lm_dir, tiny_vl_dir):
    """Greedy: a continuation from the first k tokens of a greedy response gives the rest of that response."""
    for folder, problem, images in (
        (tiny_lm_dir, "What is 2 + 2?", None),
        (tiny_vl_dir, "<image>Find x.", [tiny_image(0)]),
    ):
        backend = TransformersBackend(load_model(folder, device="cpu"), batch_size=4)
        builder = PromptBuilder(backend.tokenizer, backend.processor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        prompt = builder.build(problem, images)
        response, mask = backend.sample([prompt], Sampling(temperature=0, max_new_tokens=10), seed=0)
        assert int(mask.sum()) == 10  # the random model does not stop: ten of the model's own tokens
        ids = response[0].tolist()
        longer = builder.build(problem + " Explain it all.", images)  # batched with a longer prompt: padding
        texts = backend.generate(
            [builder.continuation(prompt, ids[:4]), longer], Sampling(temperature=0, max_new_tokens=6)
        )
        assert texts[0] == [backend.tokenizer.decode(ids[4:], skip_special_tokens=True)]


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
    with pytest.raises(InferenceError, match="2 sample counts for 1 prompts"):
        backend.generate(prompts[:1], Sampling(max_new_tokens=8), n=[1, 2])
    backend.close()
    assert backend.llm is None


def test_auto_backend_without_vllm(monkeypatch, tiny_lm_dir):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert isinstance(load_backend("auto", tiny_lm_dir, batch_size=2, device="cpu"), TransformersBackend)
    with pytest.raises(InferenceError, match="needs vLLM"):
        monkeypatch.setitem(sys.modules, "vllm", None)  # an import of vllm fails
        load_backend("vllm", tiny_lm_dir)
    with pytest.raises(InferenceError, match="unknown backend"):
        load_backend("tgi", tiny_lm_dir)


# ------------------------------------------------------------------------------------------------ what it promises


def _favour(model, token_id: int):
    """Make ``token_id`` by far the model's most likely next token (a hook on its output layer); returns the handle."""

    def hook(module, args, output):
        output[..., token_id] += 30.0
        return output

    return model.get_output_embeddings().register_forward_hook(hook)


def test_vision_tokens_are_never_sampled_by_a_vlm_and_ordinary_for_a_text_model(tiny_vl_dir, tiny_lm_dir):
    """A VLM never samples one of its vision tokens, greedy or not, even when the model prefers it (a forward over a
    response holding an image placeholder would read it as an image slot); a text-only model whose tokenizer has them
    (as Qwen2.5's) samples them like any token, as EasyR1's rollout lets it."""
    import torch

    from echovl.steps import vision_table

    for folder, suppressed in ((tiny_vl_dir, True), (tiny_lm_dir, False)):
        loaded = load_model(folder, device="cpu")
        vision = vision_table(loaded.tokenizer).nonzero().flatten()
        assert len(vision) == 5
        backend = TransformersBackend(loaded, batch_size=4)
        prompt = PromptBuilder(loaded.tokenizer).build("Find x.")
        for token in vision.tolist():
            handle = _favour(loaded.model, token)
            try:
                for temperature in (0.0, 1.0):
                    sampling = Sampling(n=2, temperature=temperature, max_new_tokens=3)
                    response, mask = backend.sample([prompt], sampling, seed=0)
                    hits = torch.isin(response[mask.bool()], vision)
                    assert not hits.any() if suppressed else hits.all(), (folder, token, temperature)
            finally:
                handle.remove()


def test_sampling_is_plain_softmax_whatever_the_model_defaults(tiny_lm_dir):
    """The first tokens of many samples against softmax(logits / T) from a plain forward: the model's own generation
    defaults (top-k 2, a repetition penalty) do not apply; top-p samples only from the nucleus."""
    import torch

    loaded = load_model(tiny_lm_dir, device="cpu")
    loaded.model.generation_config.top_k = 2
    loaded.model.generation_config.repetition_penalty = 5.0
    builder = PromptBuilder(loaded.tokenizer)
    prompt = builder.build("What is 2 + 2?")
    with torch.no_grad():
        logits = loaded.model(**builder.model_inputs([prompt])).logits[0, -1].double()
    probs = torch.softmax(logits / 0.5, dim=-1)
    backend = TransformersBackend(loaded)
    draws = 3000
    first = backend.sample([prompt], Sampling(n=draws, temperature=0.5, max_new_tokens=1), seed=1)[0][:, 0]
    counts = torch.bincount(first, minlength=probs.numel()).double()
    top = probs.argsort(descending=True)[:5]
    expected = draws * probs[top]
    assert (counts > 0).sum() > 10  # not the model's top-2
    assert ((counts[top] - expected).abs() <= 4 * expected.sqrt() + 3).all(), (counts[top], expected)
    ordered = probs.sort(descending=True)
    nucleus = ordered.indices[: int((ordered.values.cumsum(0) < 0.3).sum()) + 1]
    first = backend.sample([prompt], Sampling(n=500, temperature=0.5, top_p=0.3, max_new_tokens=1), seed=1)[0][:, 0]
    seen = set(first.tolist())
    assert seen <= set(nucleus.tolist()) and len(seen) >= len(nucleus) // 2 > 1


def test_sample_seeds_and_mask(tiny_lm_dir):
    """One batch: the same seed gives the same ids, another seed others; each row's mask covers its tokens up to and
    including the first end-of-sequence token, and its own token budget; pad after."""
    import torch

    loaded = load_model(tiny_lm_dir, device="cpu")
    backend = TransformersBackend(loaded)
    builder = PromptBuilder(loaded.tokenizer)
    prompts = [builder.build("What is 2 + 2?"), builder.build("What is 2 + 2? Explain it all, step by step.")]
    sampling = Sampling(n=3, temperature=1.0, max_new_tokens=8)
    response, mask = backend.sample(prompts, sampling, seed=4)
    assert response.shape[0] == 6 and torch.equal(backend.sample(prompts, sampling, seed=4)[0], response)
    assert not torch.equal(backend.sample(prompts, sampling, seed=5)[0], response)
    end = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    handle = _favour(loaded.model, end)  # every response is one end-of-sequence token, then padding
    try:
        response, mask = backend.sample(prompts, Sampling(n=1, max_new_tokens=4), seed=0)
    finally:
        handle.remove()
    assert mask.tolist() == [[1, 0, 0, 0]] * 2 or mask.tolist() == [[1]] * 2
    assert response[:, 0].tolist() == [end, end] and backend.decode(response, mask) == ["", ""]
    backend.context = prompts[1].input_length + 2  # the longer prompt may get 2 tokens, the shorter 4
    response, mask = backend.sample(prompts, Sampling(n=1, temperature=0, max_new_tokens=4), seed=0)
    lengths = mask.sum(dim=1).tolist()
    assert lengths[1] <= 2 and (response[1, 2:] == backend.pad).all()
