"""The teacher-forced entropy of a response against a plain full-logits reference (text and vision-language tiny
models, vision tokens masked for the latter), and its steps."""

import math

import pytest
import torch

from echovl.inference import EntropyScorer, PromptBuilder, load_model
from echovl.testing import tiny_image
from tests.eval_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

RESPONSE = "<think>\nso x = 2.\nthen y = x + 1.\n</think>\n\\boxed{3}"
PIXELS = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
VISION = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def scorer_for(folder, temperature=0.7, chunk_size=3):
    loaded = load_model(folder, device="cpu")  # float32: compared with a float64 reference
    builder = PromptBuilder(loaded.tokenizer, loaded.processor, **PIXELS)
    return EntropyScorer(loaded, temperature=temperature, delimiters=["\n"], chunk_size=chunk_size), builder


def reference_entropy(model, builder, prompt, ids, temperature, suppress):
    """-sum p log p of softmax(logits / T) in float64 from the model's own full forward."""
    inputs = builder.model_inputs([builder.continuation(prompt, ids)])
    with torch.no_grad():
        logits = model(**inputs).logits[0, -(len(ids) + 1) : -1].double() / temperature
    logits[:, suppress] = -math.inf
    p = torch.softmax(logits, dim=-1)
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


@pytest.mark.parametrize("kind", ["text", "vision"])
def test_entropy_matches_a_full_logits_reference(kind, tiny_lm_dir, tiny_vl_dir):
    folder = tiny_lm_dir if kind == "text" else tiny_vl_dir
    scorer, builder = scorer_for(folder)
    prompt = builder.build(
        "<image>Find y." if kind == "vision" else "Find y.", [tiny_image(1)] if kind == "vision" else None
    )
    ids = builder.tokenizer.encode(RESPONSE, add_special_tokens=False)
    # the backends never sample the vision tokens of a VLM; a text-only model's (its tokenizer has them) are ordinary
    suppress = [builder.tokenizer.convert_tokens_to_ids(t) for t in VISION] if kind == "vision" else []
    assert sorted(scorer.suppress) == sorted(suppress) and scorer._split
    expected = reference_entropy(scorer.model, builder, prompt, ids, 0.7, suppress)
    got = scorer.token_entropy(prompt, ids)
    assert got.dtype == torch.float32 and got.shape == (len(ids),)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)
    scorer._split = False  # the fallback through the model's own forward gives the same
    torch.testing.assert_close(scorer.token_entropy(prompt, ids).double(), expected, atol=2e-5, rtol=1e-5)


def test_steps_and_their_entropy(tiny_vl_dir):
    scorer, builder = scorer_for(tiny_vl_dir)
    prompt = builder.build("<image>Find y.", [tiny_image(1)])
    scored = scorer.score(prompt, RESPONSE)
    assert [s.text for s in scored.steps] == [
        "<think>\n",
        "so x = 2.\n",
        "then y = x + 1.\n",
        "</think>\n",
        "\\boxed{3}",
    ]
    assert scored.steps[-1].end == len(scored.ids) and scored.truncated == 0
    for step in scored.steps:  # the mean over the step's text tokens, recomputed by hand
        values = [float(scored.entropy[t]) for t in range(step.start, step.end) if scored.text_mask[t]]
        assert step.tokens == len(values) > 0
        assert step.entropy == pytest.approx(sum(values) / len(values), rel=1e-6)
    assert scored.text_entropies().shape == (int(scored.text_mask.sum()),)
    scorer.context = prompt.input_length + 5  # a response longer than the context is cut to it
    cut = scorer.score(prompt, RESPONSE)
    assert len(cut.ids) == 5 and cut.truncated == len(scored.ids) - 5
