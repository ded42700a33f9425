"""What both analyses share: which steps of a response may be deleted, and reading problem files."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echovl.analysis.common import AnalysisError, load_problems
from echovl.analysis.step_deletion import classify_steps
from echovl.inference import EntropyScorer, PromptBuilder, load_model
from tests.analysis_helpers import write_problems
from tests.eval_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

RESPONSE = "<think>\nso x = 2.\nthen y = x + 1.\n</think>\n\\boxed{3}"


def test_classify_steps_hand_worked(tiny_lm_dir):
    loaded = load_model(tiny_lm_dir, device="cpu")
    scorer = EntropyScorer(loaded, temperature=0.7)
    prompt = PromptBuilder(loaded.tokenizer).build("Find y.")

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
