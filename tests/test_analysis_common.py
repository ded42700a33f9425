"""What both analyses share: the teacher-forced entropy against a plain full-logits reference (text and vision-language
tiny models), steps of a response, which steps may be deleted, and reading problem files."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from echovl.analysis.common import AnalysisError, EntropyScorer, load_problems, load_scoring_model
from echovl.analysis.step_deletion import classify_steps
from echovl.eval.prompts import PromptBuilder, load_processing
from echovl.testing import tiny_image
from tests.analysis_helpers import write_problems
from tests.eval_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

RESPONSE = "<think>\nso x = 2.\nthen y = x + 1.\n</think>\n\\boxed{3}"
PIXELS = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)


def scorer_for(folder, temperature=0.7, chunk_size=3):
    tokenizer, processor = load_processing(folder)
    builder = PromptBuilder(tokenizer, processor, **PIXELS)
    model = load_scoring_model(str(folder), "cpu")
    return EntropyScorer(model, builder, temperature=temperature, delimiters=["\n"], chunk_size=chunk_size), builder


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
    suppress = [builder.tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")]
    suppress = suppress if kind == "vision" else []  # the backends suppress image tokens only for a VLM
    assert bool(scorer.suppress) == (kind == "vision") and scorer._split
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


def test_classify_steps_hand_worked(tiny_lm_dir):
    scorer, builder = scorer_for(tiny_lm_dir)
    prompt = builder.build("Find y.")

    def kinds(response):
        found, answer = classify_steps(scorer.score(prompt, response))
        return found, answer

    assert kinds(RESPONSE) == (["format", "reasoning", "reasoning", "format", "answer"], 4)
    # a box inside the reasoning is not the answer; the last box is; what follows it is "after"
    text = "<think>\ntry \\boxed{1}.\nno, 3.\n</think>\nSo \\boxed{3}.\nDone."
    assert kinds(text) == (["format", "reasoning", "reasoning", "format", "answer", "after"], 4)
    # no box (a stated letter): the last step that is not a format step
    assert kinds("<think>\nit is C.\n</think>\nAnswer: C") == (["format", "reasoning", "format", "answer"], 3)
    # think tag and reasoning on one line: a reasoning step (deletable), not a format step
    assert kinds("<think> so 3.\nthen 4.</think>\n\\boxed{4}") == (["reasoning", "reasoning", "answer"], 2)


def test_load_problems_in_file_order_with_limit_and_errors(tmp_path):
    path = write_problems(tmp_path / "p.parquet", count=4)
    problems = load_problems(path, solution_key="solution", limit=3)
    assert [(p.index, p.row, p.answer) for p in problems] == [(0, 0, "0"), (1, 1, "1"), (2, 2, "2")]
    assert problems[1].solution.startswith("<think>\nexpert 1") and problems[0].images is None
    repeated = tmp_path / "r.parquet"
    rows = [{"problem": "A?", "answer": "1"}, {"problem": "B?", "answer": "2"}, {"problem": "A?", "answer": "1"}]
    rows.append({"problem": "C?", "answer": "3"})
    pq.write_table(pa.Table.from_pylist(rows), repeated)
    assert [(p.row, p.problem) for p in load_problems(repeated, notify=lambda m: None)] == [
        (0, "A?"),
        (1, "B?"),
        (3, "C?"),
    ]
    with pytest.raises(AnalysisError, match="no column 'solution'"):
        load_problems(repeated, solution_key="solution")
    with pytest.raises(AnalysisError, match="no such file"):
        load_problems(tmp_path / "missing.parquet")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"problem": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), empty)
    with pytest.raises(AnalysisError, match="empty"):
        load_problems(empty)
    no_answer = tmp_path / "no_answer.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "A?"}]), no_answer)
    with pytest.raises(AnalysisError, match="data file .* has no column 'answer'"):
        load_problems(no_answer)
    blank = write_problems(
        tmp_path / "blank.parquet", count=2, solution=False, columns={"solution": lambda n: " " if n else "x"}
    )
    assert len(load_problems(blank, solution_key="solution", limit=1)) == 1  # only the selected rows need one
    with pytest.raises(AnalysisError, match=r"row 1: empty 'solution'"):
        load_problems(blank, solution_key="solution")
