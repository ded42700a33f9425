"""python -m echovl.analysis.entropy_gap end to end on the tiny text model: rollouts from a scripted backend (known
verdicts), entropy from the real model; every output there and consistent (the summary recomputed from steps.csv);
rollouts read back; bad input is a clear error that writes nothing; the vLLM path through a fake vLLM; a complete run
through the real transformers backend on a tiny model fitted to answer right."""

import json

import numpy as np
import pytest
from PIL import Image

from echovl.analysis.common import AnalysisError
from echovl.analysis.entropy_gap import EntropyGapConfig, main, run
from tests.analysis_helpers import (
    Scripted,
    factory,
    fit_tiny_lm,
    fitted_response,
    install_fake_vllm,
    number,
    read_csv,
    write_problems,
)
from tests.eval_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

OUTPUTS = {"summary.md", "summary.json", "steps.csv", "problems.csv", "rollouts.jsonl", "entropy_hist.png"}
"""What one entropy_gap run writes."""


def config(tmp_path, model, data, out="out", **overrides):
    fields = dict(model=str(model), data=str(data), out=tmp_path / out, samples=3, format_prompt=None, bootstrap=200)
    fields.update(overrides)
    return EntropyGapConfig(**fields)


def recomputed_source(rows: list[dict]) -> dict:
    """A source's summary row from its steps.csv rows, by the definitions in the module docstring."""
    traces: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        traces.setdefault((r["problem_index"], r["sample"]), []).append((int(r["text_tokens"]), number(r["entropy"])))
    steps = [h for t in traces.values() for n, h in t if n > 0]
    tokens = sum(n for t in traces.values() for n, h in t if n > 0)
    return {
        "traces": len(traces),
        "text_tokens": tokens,
        "steps": len(steps),
        "token_entropy": sum(n * h for t in traces.values() for n, h in t if n > 0) / tokens,
        "step_entropy_mean": np.mean(steps),
        "step_entropy_median": np.median(steps),
        "step_entropy_p90": np.percentile(steps, 90),
        "max_step_entropy_mean": np.mean([max(h for n, h in t if n > 0) for t in traces.values()]),
    }


def test_end_to_end_outputs_are_complete_and_consistent(tmp_path, tiny_lm_dir, qwen_tokenizer, capsys):
    data = write_problems(tmp_path / "train.parquet", count=4)
    # problem 3 has no verified rollout: its expert trace counts only in "expert, all problems"
    backend = Scripted(qwen_tokenizer, wrong=lambda n, j: j == 1 or n == 3)
    summary = run(config(tmp_path, tiny_lm_dir, data), backend_factory=factory(backend))
    out = tmp_path / "out"
    files = {"summary.md", "summary.json", "steps.csv", "problems.csv", "rollouts.jsonl", "entropy_hist.png"}
    assert {p.name for p in out.iterdir()} == files  # and no temporary file left
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (out / "summary.md").read_text() in capsys.readouterr().out
    assert Image.open(out / "entropy_hist.png").size[0] > 500
    [(prompts, sampling, seeds)] = backend.calls  # one call: 4 prompts x 3 samples at the paper's temperature
    assert len(prompts) == 4 and sampling.n == 3 and sampling.temperature == 0.6 and len(set(seeds)) == 4

    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [(r["problem_index"], r["sample"], r["correct"]) for r in rollouts] == [
        (n, j, j != 1 and n != 3) for n in range(4) for j in range(3)
    ]
    assert summary["counts"] == {
        "problems": 4,
        "paired_problems": 3,
        "rollouts": 12,
        "verified": 6,
        "expert_truncated": 0,
    }

    steps = read_csv(out / "steps.csv")
    # steps: <think>, the reasoning lines, </think>, the boxed answer: 4 + 3 for each expert, 7 + 4 per verified rollout
    expert_rows = [r for r in steps if r["source"] == "expert"]
    rollout_rows = [r for r in steps if r["source"] == "rollout"]
    assert len(expert_rows) == 4 * 5 and len(rollout_rows) == 6 * 7
    assert {(r["problem_index"], r["sample"]) for r in rollout_rows} == {
        (str(n), str(j)) for n in range(3) for j in (0, 2)
    }
    paired = [r for r in expert_rows if r["problem_index"] != "3"]
    for key, rows in (("expert", paired), ("rollouts", rollout_rows), ("expert_all", expert_rows)):
        want = recomputed_source(rows)
        got = summary["sources"][key]
        assert got["traces"] == want["traces"] and got["steps"] == want["steps"]
        assert got["text_tokens"] == want["text_tokens"]
        for stat in (
            "token_entropy",
            "step_entropy_mean",
            "step_entropy_median",
            "step_entropy_p90",
            "max_step_entropy_mean",
        ):
            assert got[stat] == pytest.approx(want[stat], rel=1e-4), (key, stat)

    problems = read_csv(out / "problems.csv")
    assert [(p["rollouts"], p["verified"]) for p in problems] == [("3", "2")] * 3 + [("3", "0")]
    assert problems[3]["token_gap"] == "" and problems[3]["expert_token_entropy"] != ""
    columns = {"token_entropy": "token_entropy", "step_entropy": "step_entropy_mean"}
    for stat, gap in (
        ("token_entropy", "token_gap"),
        ("step_entropy", "step_gap"),
        ("max_step_entropy", "max_step_gap"),
    ):
        key = columns.get(stat, "max_step_entropy_mean")
        gaps = []
        for p in problems[:3]:  # the gap: the expert's statistic minus the mean over the verified rollouts
            expert = recomputed_source([r for r in paired if r["problem_index"] == p["problem_index"]])
            mine = [r for r in rollout_rows if r["problem_index"] == p["problem_index"]]
            per_trace = [recomputed_source([r for r in mine if r["sample"] == s]) for s in ("0", "2")]
            want = expert[key] - np.mean([t[key] for t in per_trace])
            assert number(p[gap]) == pytest.approx(want, rel=1e-3, abs=5e-6)
            gaps.append(number(p[gap]))
        g = summary["gaps"][stat]
        assert g["difference"] == pytest.approx(np.mean(gaps), rel=1e-3, abs=5e-6)
        assert g["low"] <= g["difference"] <= g["high"] and g["problems"] == 3
    table = (out / "summary.md").read_text()
    assert "on the 3 of 4 problems with a verified rollout (6 of 12 rollouts verified)" in table
    assert "| expert, all 4 problems | 4 |" in table

    # the same rollouts read back: no generation, the same numbers
    again = run(
        config(tmp_path, tiny_lm_dir, data, out="again", rollouts=str(out / "rollouts.jsonl")),
        backend_factory=factory(Scripted(qwen_tokenizer, allow_rollouts=False)),
    )
    assert again["sources"] == summary["sources"] and again["gaps"] == summary["gaps"]


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, tiny_lm_dir, qwen_tokenizer, capsys):
    data = write_problems(tmp_path / "train.parquet", count=2)
    no_solution = write_problems(tmp_path / "plain.parquet", count=2, solution=False)
    all_wrong = factory(Scripted(qwen_tokenizer, wrong=lambda n, j: True))
    with pytest.raises(AnalysisError, match="no column 'solution'"):
        run(config(tmp_path, tiny_lm_dir, no_solution), backend_factory=all_wrong)
    with pytest.raises(AnalysisError, match=r"none of the 6 rollouts of 2 problems is verified.*--samples"):
        run(config(tmp_path, tiny_lm_dir, data), backend_factory=all_wrong)
    with pytest.raises(AnalysisError, match="temperature must be > 0"):
        config(tmp_path, tiny_lm_dir, data, temperature=0)
    with pytest.raises(AnalysisError, match="delimiters"):
        config(tmp_path, tiny_lm_dir, data, delimiters=[""])
    other = write_problems(tmp_path / "other.parquet", count=2)
    other_rollouts = tmp_path / "r.jsonl"
    record = {"row": 0, "sample": 0, "problem": "Something else.", "prompt": "p", "response": "r"}
    other_rollouts.write_text(json.dumps(record) + "\n")
    with pytest.raises(AnalysisError, match="another problem"):
        run(config(tmp_path, tiny_lm_dir, other, rollouts=str(other_rollouts)))
    assert not (tmp_path / "out").exists()
    # the command line: the real transformers backend on the random tiny model (it never boxes an answer)
    args = ["--model", str(tiny_lm_dir), "--data", str(data), "--out", str(tmp_path / "cli"), "--samples", "2"]
    args += ["--max-new-tokens", "4", "--backend", "transformers", "--format-prompt", "none", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "entropy_gap: error: none of the 4 rollouts of 2 problems is verified" in err
    assert not (tmp_path / "cli").exists()
    assert main(["--model", str(tiny_lm_dir), "--data", str(tmp_path / "nope.parquet"), "--out", "x"]) == 1
    assert "data file" in capsys.readouterr().err


def test_vllm_path_through_a_fake_vllm(tmp_path, tiny_lm_dir, qwen_tokenizer, monkeypatch):
    """Rollouts from (a fake) vLLM, entropy from a transformers model loaded beside it: the same numbers as the
    scripted backend gives for the same responses."""
    FakeLLM = install_fake_vllm(monkeypatch, tiny_lm_dir)
    data = write_problems(tmp_path / "train.parquet", count=2)
    summary = run(config(tmp_path, tiny_lm_dir, data, backend="vllm"))
    [llm] = FakeLLM.instances  # one engine; only the rollouts are generated
    assert llm.kwargs["gpu_memory_utilization"] == 0.6 and llm.kwargs["model"] == str(tiny_lm_dir)
    assert llm.kwargs["seed"] == 0
    [(inputs, params)] = llm.calls
    assert [p.n for p in params] == [3, 3] and [p.temperature for p in params] == [0.6, 0.6]
    assert [p.max_tokens for p in params] == [512 - len(r["prompt_token_ids"]) for r in inputs]  # up to the context
    assert [FakeLLM.tokenizer.decode(r["prompt_token_ids"]).count("Compute 0.") for r in inputs] == [1, 0]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == OUTPUTS
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [(r["problem_index"], r["sample"], r["correct"]) for r in rollouts] == [
        (n, j, j != 1) for n in range(2) for j in range(3)
    ]
    assert summary["counts"] == {
        "problems": 2,
        "paired_problems": 2,
        "rollouts": 6,
        "verified": 4,
        "expert_truncated": 0,
    }
    # the scripted backend writes the same responses (sample 1 wrong): the entropy side must agree exactly
    scripted = run(
        config(tmp_path, tiny_lm_dir, data, out="scripted"), backend_factory=factory(Scripted(qwen_tokenizer))
    )
    assert summary["sources"] == scripted["sources"] and summary["gaps"] == scripted["gaps"]
    assert (out / "steps.csv").read_bytes() == (tmp_path / "scripted" / "steps.csv").read_bytes()


@pytest.fixture(scope="module")
def fitted_lm_dir(tiny_lm_dir, tmp_path_factory):
    """The tiny model fitted to answer "Compute 0." and "Compute 1." right (tests/analysis_helpers.py)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("fitted") / "model"
        smallest = fit_tiny_lm(tiny_lm_dir, path, problems=2)
    finally:
        torch.set_num_threads(threads)
    assert smallest > 1 - 1e-5  # every token of the fitted responses, at temperature 0.6
    return path


def test_end_to_end_through_transformers_on_cpu(tmp_path, fitted_lm_dir, capsys):
    """The command line, generation included, through the real transformers backend on CPU: the fitted model answers
    both problems right every time, so every output is there; its own answers are near-certain (entropy ~0), the expert
    traces it never saw are not, so the gap is positive; the expert's token entropy is the one a plain forward gives."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_problems(tmp_path / "train.parquet", count=2)
    out = tmp_path / "cli"
    args = ["--model", str(fitted_lm_dir), "--data", str(data), "--out", str(out), "--samples", "2"]
    args += ["--max-new-tokens", "32", "--backend", "transformers", "--device", "cpu", "--format-prompt", "none"]
    args += ["--bootstrap", "200", "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "summary.md").read_text() in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == OUTPUTS
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [(r["problem_index"], r["sample"], r["response"], r["correct"]) for r in rollouts] == [
        (n, j, fitted_response(n), True) for n in range(2) for j in range(2)
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {
        "problems": 2,
        "paired_problems": 2,
        "rollouts": 4,
        "verified": 4,
        "expert_truncated": 0,
    }
    assert summary["settings"]["backend"] == "transformers" and summary["settings"]["temperature"] == 0.6
    assert summary["sources"]["rollouts"]["token_entropy"] < 1e-4
    problems = read_csv(out / "problems.csv")
    assert all(number(p["token_gap"]) > 1e-3 for p in problems)
    assert summary["gaps"]["token_entropy"]["excludes_zero"] and summary["gaps"]["token_entropy"]["difference"] > 0

    # the expert trace's mean token entropy by a plain forward: softmax(logits / 0.6) after the prompt's ids
    tokenizer = AutoTokenizer.from_pretrained(fitted_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(fitted_lm_dir, dtype=torch.float32).eval()
    solutions = pq.read_table(data).column("solution").to_pylist()
    for p, r, text in zip(problems, rollouts[::2], solutions):
        prompt = tokenizer.encode(r["prompt"], add_special_tokens=False)
        solution = tokenizer.encode(text, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + solution])).logits[0, len(prompt) - 1 : -1] / 0.6
        entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        assert int(p["expert_text_tokens"]) == len(solution)
        assert number(p["expert_token_entropy"]) == pytest.approx(float(entropy.mean()), rel=1e-4, abs=1e-7)
