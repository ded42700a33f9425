"""python -m echovl.analysis.step_deletion: the deletion orders on a hand-worked case, and end to end on the tiny text
model with a scripted backend whose answer is right only while one known step is left (so every verdict is known):
which steps go at each fraction, the prompts the model is given, the accuracy recomputed from deletions.csv; the
vLLM path through a fake vLLM; --seed (same seed, same bytes); bad input."""

import csv
import io
import json
import random

import numpy as np
import pytest
from PIL import Image

import echovl.analysis.common
from echovl.analysis.common import AnalysisError
from echovl.analysis.step_deletion import (
    StepDeletionConfig,
    deletion_plan,
    deletion_ranking,
    main,
    run,
    steps_to_delete,
)
from tests.analysis_helpers import (
    REASONING,
    Scripted,
    factory,
    install_fake_vllm,
    number,
    read_csv,
    response,
    write_problems,
)
from tests.eval_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_deletion_orders_hand_worked():
    # k = floor(f * n + 1/2): halves round up, decimal fractions exactly
    assert [steps_to_delete(5, f) for f in FRACTIONS] == [0, 1, 1, 2, 2, 3]
    assert [steps_to_delete(n, f) for n, f in [(3, 0.5), (10, 0.25), (7, 0.1), (4, 0.1), (1, 0.5), (2, 0.3)]] == [
        2,
        3,
        1,
        0,
        1,
        1,
    ]
    entropies = [0.5, 2.0, 0.1, 1.0, 3.0]
    high, low = deletion_ranking(entropies, "high"), deletion_ranking(entropies, "low")
    assert high == [4, 1, 3, 0, 2] and low == [2, 0, 3, 1, 4]
    assert list(deletion_plan(high, FRACTIONS).values()) == [(), (4,), (4,), (1, 4), (1, 4), (1, 3, 4)]
    assert list(deletion_plan(low, FRACTIONS).values()) == [(), (2,), (2,), (0, 2), (0, 2), (0, 2, 3)]
    assert deletion_ranking([1.0, 1.0, 0.5], "high") == [0, 1, 2]  # ties: the earlier step first
    assert deletion_ranking([1.0, 1.0, 0.5], "low") == [2, 0, 1]
    shuffled = deletion_ranking(entropies, "random", random.Random(3))
    assert sorted(shuffled) == list(range(5)) and shuffled == deletion_ranking(entropies, "random", random.Random(3))
    plan = list(deletion_plan(shuffled, FRACTIONS).values())
    assert all(set(a) <= set(b) for a, b in zip(plan, plan[1:]))  # nested: a larger fraction deletes a superset
    assert [len(p) for p in plan] == [0, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError):
        deletion_ranking(entropies, "middle")


def config(tmp_path, model, data, out="out", **overrides):
    fields = dict(
        model=str(model), data=str(data), out=tmp_path / out, samples=3, format_prompt=None, bootstrap=200, answers=2
    )
    fields.update(overrides)
    return StepDeletionConfig(**fields)


# the scripted rollouts' steps: 0 "<think>", 1-4 the reasoning (REASONING), 5 "</think>", 6 the boxed answer
THIRD = 1 + REASONING.index("third {n} delta epsilon zeta.")


def check_run(out, summary, fractions, orders, answers):
    """Every output there and consistent; each deletion as worked out from steps.csv; verdicts as scripted."""
    files = {"summary.md", "summary.json", "accuracy.csv", "accuracy.png", "deletions.csv", "steps.csv"}
    assert {p.name for p in out.iterdir()} == files | {"continuations.jsonl", "rollouts.jsonl"}
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))
    assert Image.open(out / "accuracy.png").size[0] > 400
    steps = read_csv(out / "steps.csv")
    by_rollout: dict[tuple, list[dict]] = {}
    for s in steps:
        by_rollout.setdefault((s["problem_index"], s["sample"]), []).append(s)
    for rows in by_rollout.values():
        assert [r["kind"] for r in rows] == ["format"] + ["reasoning"] * 4 + ["format", "answer"]
    deletions = read_csv(out / "deletions.csv")
    assert len(deletions) == len(by_rollout) * len(orders) * len(fractions) * answers
    per_problem: dict[tuple, dict[str, list[bool]]] = {}
    for d in deletions:
        rows = by_rollout[(d["problem_index"], d["sample"])]
        reasoning = [r for r in rows if r["kind"] == "reasoning"]
        k = steps_to_delete(4, float(d["fraction"]))
        if d["order"] == "random":
            ranked = sorted(reasoning, key=lambda r: int(r["rank_random"]))
        else:  # worked out from the step entropies themselves (ties: earlier first)
            sign = -1 if d["order"] == "high" else 1
            ranked = sorted(reasoning, key=lambda r: (sign * number(r["entropy"]), int(r["step"])))
        expected = sorted(int(r["step"]) for r in ranked[:k])
        assert d["deleted"] == " ".join(map(str, expected)) and int(d["k"]) == k and d["steps"] == "4"
        assert d["correct"] == str(int(THIRD not in expected))  # the scripted answer needs the "third" step
        per_problem.setdefault((d["order"], d["fraction"]), {}).setdefault(d["problem_index"], []).append(
            d["correct"] == "1"
        )
    accuracy = read_csv(out / "accuracy.csv")
    assert [(a["order"], float(a["fraction"])) for a in accuracy] == [(o, f) for o in orders for f in fractions]
    for a in accuracy:  # the mean over problems of the problem's mean verdict
        want = np.mean([np.mean(v) for v in per_problem[(a["order"], a["fraction"])].values()])
        assert number(a["accuracy"]) == pytest.approx(want)
        assert number(a["low"]) <= number(a["accuracy"]) <= number(a["high"])
        if 0.0 in fractions:
            base = np.mean([np.mean(v) for v in per_problem[(a["order"], "0")].values()])
            assert number(a["change"]) == pytest.approx(want - base)
    return steps, deletions, accuracy


def test_end_to_end_with_known_verdicts(tmp_path, tiny_lm_dir, qwen_tokenizer, capsys):
    data = write_problems(tmp_path / "p.parquet", count=3, solution=False)
    backend = Scripted(qwen_tokenizer)
    summary = run(config(tmp_path, tiny_lm_dir, data), backend_factory=factory(backend))
    out = tmp_path / "out"
    steps, deletions, accuracy = check_run(out, summary, FRACTIONS, ["high", "low", "random"], 2)
    assert summary["counts"] == {
        "problems": 3,
        "rollouts": 9,
        "verified": 6,
        "analysed_rollouts": 6,
        "too_few_steps": 0,
        "mean_deletable_steps": 4.0,
        "edits": summary["counts"]["edits"],
    }
    assert (out / "summary.md").read_text() in capsys.readouterr().out
    # at 0% every order keeps every step: all right; one call for the rollouts, one for the distinct edits
    assert all(number(a["accuracy"]) == 1.0 for a in accuracy if a["fraction"] == "0")
    rollout_call, answer_call = backend.calls
    prompts, sampling, seeds = answer_call
    assert len(prompts) == summary["counts"]["edits"] == len(set(seeds)) and sampling.n == 2
    assert sampling.max_new_tokens == 1024 and sampling.temperature == 0.6
    built = {p.text: p.token_ids for p in rollout_call[0]}
    for prompt in prompts:  # the prompt as built for the rollouts, then the kept steps' own ids; never the answer
        assert prompt.token_ids == built[prompt.chat_text] + prompt.prefix_ids
        assert prompt.prefix_text.startswith("<think>\n") and prompt.prefix_text.endswith("</think>\n")
        assert "boxed" not in prompt.prefix_text
    edits = [json.loads(line) for line in (out / "continuations.jsonl").read_text().splitlines()]
    assert len(edits) == len(prompts)
    for edit in edits:
        n = edit["problem_index"]
        kept = [s.format(n=n) + "\n" for i, s in enumerate(REASONING, start=1) if i not in edit["deleted"]]
        assert edit["prefix"] == "<think>\n" + "".join(kept) + "</think>\n"
        assert edit["correct"] == [THIRD not in edit["deleted"]] * 2
    # the same rollouts read back from the file: nothing generated but the answers, the same verdicts
    again = run(
        config(tmp_path, tiny_lm_dir, data, out="again", rollouts=str(out / "rollouts.jsonl")),
        backend_factory=factory(Scripted(qwen_tokenizer, allow_rollouts=False)),
    )
    assert again["accuracy"] == summary["accuracy"]


def test_options_fractions_orders_and_min_steps(tmp_path, tiny_lm_dir, qwen_tokenizer):
    data = write_problems(tmp_path / "p.parquet", count=2, solution=False)
    summary = run(
        config(tmp_path, tiny_lm_dir, data, fractions=[0.5, 0.25], orders=["low"], answers=1, limit=1),
        backend_factory=factory(Scripted(qwen_tokenizer)),
    )
    check_run(tmp_path / "out", summary, [0.25, 0.5], ["low"], 1)
    assert summary["counts"]["problems"] == 1 and "change" not in summary["accuracy"][0]
    with pytest.raises(AnalysisError, match="none of the 4 verified rollouts has 5 or more deletable steps"):
        run(
            config(tmp_path, tiny_lm_dir, data, out="few", min_steps=5),
            backend_factory=factory(Scripted(qwen_tokenizer)),
        )
    assert not (tmp_path / "few").exists()


def test_bad_input(tmp_path, tiny_lm_dir, qwen_tokenizer, capsys):
    data = write_problems(tmp_path / "p.parquet", count=2, solution=False)
    for bad in (dict(fractions=[1.0]), dict(fractions=[-0.1]), dict(orders=["middle"]), dict(answers=0)):
        with pytest.raises(AnalysisError):
            config(tmp_path, tiny_lm_dir, data, **bad)
    with pytest.raises(AnalysisError, match="is verified"):
        run(
            config(tmp_path, tiny_lm_dir, data),
            backend_factory=factory(Scripted(qwen_tokenizer, wrong=lambda n, j: True)),
        )
    rollouts = tmp_path / "r.jsonl"
    rollouts.write_text('{"row": 0, "sample": 0}\n')
    with pytest.raises(AnalysisError, match="line 1: not a rollout record"):
        run(
            config(tmp_path, tiny_lm_dir, data, rollouts=str(rollouts)),
            backend_factory=factory(Scripted(qwen_tokenizer)),
        )
    record = {
        "row": 0,
        "sample": 0,
        "problem": "Compute 0.",
        "prompt": "another prompt",
        "response": response(0, True),
    }
    rollouts.write_text(json.dumps(record) + "\n")
    with pytest.raises(AnalysisError, match="another prompt"):
        run(
            config(tmp_path, tiny_lm_dir, data, rollouts=str(rollouts)),
            backend_factory=factory(Scripted(qwen_tokenizer)),
        )
    assert not (tmp_path / "out").exists()
    args = ["--model", str(tiny_lm_dir), "--data", str(data), "--out", str(tmp_path / "cli"), "--fractions", "0", "1"]
    assert main(args) == 1 and "--fractions must be in [0, 1)" in capsys.readouterr().err


def test_vllm_path_through_a_fake_vllm(tmp_path, tiny_lm_dir, monkeypatch):
    FakeLLM = install_fake_vllm(monkeypatch, tiny_lm_dir)
    data = write_problems(tmp_path / "p.parquet", count=2, solution=False)
    summary = run(config(tmp_path, tiny_lm_dir, data, backend="vllm", answers=1, answer_tokens=20))
    check_run(tmp_path / "out", summary, FRACTIONS, ["high", "low", "random"], 1)
    [llm] = FakeLLM.instances  # one engine for the rollouts and the answers; the entropy model is transformers'
    assert llm.kwargs["gpu_memory_utilization"] == 0.6 and llm.kwargs["model"] == str(tiny_lm_dir)
    (rollout_inputs, rollout_params), (answer_inputs, answer_params) = llm.calls
    assert [p.n for p in rollout_params] == [3, 3]  # rollouts: up to the 512-token context
    assert [p.max_tokens for p in rollout_params] == [512 - len(r["prompt_token_ids"]) for r in rollout_inputs]
    prompt_ids = {tuple(r["prompt_token_ids"]) for r in rollout_inputs}
    for request, p in zip(answer_inputs, answer_params):  # each answer request: a rollout prompt, then the prefix
        ids = request["prompt_token_ids"]
        assert any(tuple(ids[: len(q)]) == q for q in prompt_ids) and p.n == 1 and p.max_tokens == 20
        assert FakeLLM.tokenizer.decode(ids).endswith("</think>\n")


def test_seed_reproduces_the_outputs_and_moves_only_the_random_order(
    tmp_path, tiny_lm_dir, qwen_tokenizer, monkeypatch
):
    """The command line's --seed: the same seed writes the same bytes; another seed reorders only the random order,
    which (for seeds 0 and 2 on this task: observed, and fixed, since the order is drawn with Python's random) deletes
    the critical "third" step of other rollouts, so the random line of accuracy.csv moves."""
    backend = Scripted(qwen_tokenizer)
    monkeypatch.setattr(echovl.analysis.common, "load_backend", factory(backend))
    data = write_problems(tmp_path / "p.parquet", count=2, solution=False)

    def cli(out, seed):
        args = ["--model", str(tiny_lm_dir), "--data", str(data), "--out", str(tmp_path / out), "--samples", "3"]
        args += ["--format-prompt", "none", "--bootstrap", "200", "--answers", "1", "--no-progress"]
        args += ["--seed", str(seed)]
        assert main(args) == 0
        summary = json.loads((tmp_path / out / "summary.json").read_text())
        check_run(tmp_path / out, summary, FRACTIONS, ["high", "low", "random"], 1)
        assert summary["settings"]["seed"] == seed
        return {p.name: p.read_bytes() for p in (tmp_path / out).iterdir() if p.name != "summary.json"}, summary

    first, first_summary = cli("a", 0)
    again, again_summary = cli("b", 0)
    other, _ = cli("c", 2)
    assert set(first) == {
        "summary.md",
        "accuracy.csv",
        "accuracy.png",
        "deletions.csv",
        "steps.csv",
        "continuations.jsonl",
        "rollouts.jsonl",
    }
    assert again == first  # byte for byte (summary.json differs only in --out)
    del first_summary["settings"]["out"], again_summary["settings"]["out"]
    assert again_summary == first_summary
    assert [sampling.seed for _, sampling, _ in backend.calls] == [0, 0, 0, 0, 2, 2]  # rollouts, answers per run

    deletions_a, deletions_c = read_csv_bytes(first["deletions.csv"]), read_csv_bytes(other["deletions.csv"])
    for order in ("high", "low"):
        assert [d for d in deletions_a if d["order"] == order] == [d for d in deletions_c if d["order"] == order]
    assert [d for d in deletions_a if d["order"] == "random"] != [d for d in deletions_c if d["order"] == "random"]
    steps_a, steps_c = read_csv_bytes(first["steps.csv"]), read_csv_bytes(other["steps.csv"])
    for column in ("rank_high", "rank_low", "entropy", "kind"):
        assert [s[column] for s in steps_a] == [s[column] for s in steps_c]
    assert [s["rank_random"] for s in steps_a] != [s["rank_random"] for s in steps_c]
    accuracy_a, accuracy_c = read_csv_bytes(first["accuracy.csv"]), read_csv_bytes(other["accuracy.csv"])
    point = {(r["order"], r["fraction"]): r["accuracy"] for r in accuracy_a}
    moved = {(r["order"], r["fraction"]) for r in accuracy_c if point[(r["order"], r["fraction"])] != r["accuracy"]}
    assert moved and all(order == "random" for order, _ in moved)
    assert first["rollouts.jsonl"] == other["rollouts.jsonl"]  # the scripted rollouts do not depend on the seed


def read_csv_bytes(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))
