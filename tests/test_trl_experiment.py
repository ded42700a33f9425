"""The CPU mini-experiment: the digit task, and the whole pipeline in its quick mode with every output checked."""

from __future__ import annotations

import csv
import json
import math

import pytest

from tests.trl_helpers import accuracy  # noqa: F401  (skips this module when TRL is missing)


def test_digit_task_is_consistent():
    from echovl.experiments.digits import DigitProblem, digit_image, make_problems, solution
    from echovl.reward.math import grade

    problems = make_problems(50, seed=3)
    assert problems == make_problems(50, seed=3) and problems != make_problems(50, seed=4)
    for p in problems[:10]:
        assert grade(solution(p), p.answer) == {"overall": 1.0, "format": 1.0, "accuracy": 1.0}
        assert solution(p).count("\n") == 5  # <think>, a, b, sum, </think>: one step per line, then the answer
    pictures = {d: digit_image(DigitProblem(d, d)).tobytes() for d in range(10)}
    assert len(set(pictures.values())) == 10  # every digit is drawn differently
    left, right = digit_image(DigitProblem(1, 8)), digit_image(DigitProblem(8, 1))
    assert left.size == (28, 28) and left.tobytes() != right.tobytes()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    import torch

    from echovl.experiments.tiny_cpu import ExperimentSettings, run_experiment

    out = tmp_path_factory.mktemp("tiny_cpu")
    settings = ExperimentSettings.quick(seed=0)
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    summary = run_experiment(out, settings)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before  # restored
    return out, settings, summary


def test_quick_run_writes_metrics(quick_run):
    from echovl.experiments.tiny_cpu import COLUMNS

    out, settings, _ = quick_run
    with open(out / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert [(r["run"], int(r["step"])) for r in rows] == [
        (run, step) for run in ("baseline", "echo") for step in range(1, settings.steps + 1)
    ]
    for row in rows:
        for column in ("accuracy", "all_correct_groups", "all_wrong_groups", "rl_grad_norm", "loss", "entropy"):
            assert math.isfinite(float(row[column])), (column, row)
        assert 0 <= float(row["accuracy"]) <= 1 and 0 <= float(row["all_correct_groups"]) <= 1
        assert float(row["rl_token_grad_all_correct"]) == 0.0  # zero advantages: no RL gradient, ever
        if row["run"] == "baseline":
            assert float(row["echo_grad_norm"]) == 0.0 and row["clips"] == "nan"
        else:
            assert float(row["clips"]) >= 0
    echo = [r for r in rows if r["run"] == "echo"]
    assert any(float(r["clips"]) > 0 for r in echo), "the quick warm-up should give some verified rollouts"
    for r in echo:
        if float(r["clips"]) > 0:
            assert float(r["echo_grad_norm"]) > 0 and float(r["echo_loss"]) > 0


def test_quick_run_writes_a_plot(quick_run):
    from PIL import Image

    out, _, _ = quick_run
    with Image.open(out / "plot.png") as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 500
        assert sum(1 for count in image.convert("L").histogram() if count) > 20  # not a blank canvas


def test_quick_run_writes_traces_the_demo_can_read(quick_run):
    from echovl.traces import list_trace_files, read_trace_file

    out, settings, summary = quick_run
    assert summary["files"]["traces"] == str(out / "traces")
    files = list_trace_files(out / "traces")
    assert [step for step, _ in files] == list(range(1, settings.steps + 1))
    records = [record for _, path in files for record in read_trace_file(path)]
    assert len(records) == settings.steps * settings.prompts_per_step
    for record in records:
        assert record["source"] == "trl" and record["answer"].isdigit()
        assert "Add the two digits" in record["prompt"]
        assert len(record["rollouts"]) == settings.rollouts
        assert (out / "traces" / record["image"]).is_file()
        if record["clip"] is not None:
            assert record["rollouts"][record["clip"]["rollout"]]["verified"]
    assert any(record["clip"] is not None for record in records)


def test_quick_run_summary(quick_run, capsys):
    from echovl.experiments.tiny_cpu import _report

    out, settings, summary = quick_run
    saved = json.loads((out / "summary.json").read_text())
    assert saved["settings"]["steps"] == settings.steps and saved["settings"]["seed"] == 0
    assert set(saved["eval"]) == {"start", "baseline", "echo"}
    assert all(0 <= saved["eval"][k]["greedy"] <= 1 for k in saved["eval"])
    assert saved["runtime_s"] > 0 and saved["warmup"]["steps"] == settings.warmup_max_steps
    # what the numbers depend on besides the settings: threads (fixed, 2 by default), kernels, versions, weights
    import torch

    environment = saved["environment"]
    assert environment["torch_threads"] == settings.threads == 2
    assert environment["packages"]["torch"] == torch.__version__.split("+")[0] and environment["cpu_capability"]
    assert len(saved["model_fingerprint"]) == len(saved["warmup"]["fingerprint"]) == 16
    assert saved["model_fingerprint"] != saved["warmup"]["fingerprint"]
    report = _report(summary)
    assert f"python demo/app.py --traces {out / 'traces'}" in report
    assert str(out / "plot.png") in report and str(out / "metrics.csv") in report
    assert f"Fingerprints: model {saved['model_fingerprint']}, warm start {saved['warmup']['fingerprint']}." in report


def test_cli_rejects_bad_arguments():
    from echovl.experiments.tiny_cpu import main

    with pytest.raises(SystemExit):
        main(["--steps", "0"])
    with pytest.raises(SystemExit):
        main(["--coef", "-1"])
    with pytest.raises(SystemExit):
        main(["--threads", "0"])
