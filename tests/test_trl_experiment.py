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
    settings.variants = {"soft": {"selection": "soft", "soft_temperature": 0.5}}  # a third run, echo with soft clips
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
        (run, step) for run in ("baseline", "echo", "soft") for step in range(1, settings.steps + 1)
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
    # lambda and the clip weights are logged for every echo run (the overview tab charts them)
    for row in rows:
        if row["run"] == "baseline":
            assert row["coef"] == row["clips_per_group"] == row["clip_weight_max"] == "nan"
        else:
            assert float(row["coef"]) == settings.coef
    echo = [r for r in rows if r["run"] == "echo"]
    assert all(r["clips_per_group"] == "nan" for r in echo)  # one clip per group: no weights to show
    soft = [r for r in rows if r["run"] == "soft" and float(r["clips"]) > 0]
    assert soft, "the soft run should mine some clips"
    for r in soft:  # every eligible step of a group is a clip; the heaviest weighs at most 1 (weights sum to 1)
        assert float(r["clips_per_group"]) >= 1 and 0 < float(r["clip_weight_max"]) <= 1
    assert any(float(r["clip_weight_max"]) < 1 for r in soft)
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
    assert set(saved["eval"]) == {"start", "baseline", "echo", "soft"}
    assert saved["settings"]["runs"] == ["baseline", "echo", "soft"]
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


def test_a_variant_runs_with_its_echo_settings(quick_run):
    """--variant soft:selection=soft,...: its own traces, every group's clip weights summing to 1."""
    from echovl.traces import list_trace_files, read_trace_file

    out, _, summary = quick_run
    records = [r for _, path in list_trace_files(out / "traces_soft") for r in read_trace_file(path)]
    mined = [r for r in records if r["clips"]]
    assert mined and all(sum(c["weight"] for c in r["clips"]) == pytest.approx(1.0, abs=1e-5) for r in mined)
    assert all(len(r["clips"]) == 1 for _, path in list_trace_files(out / "traces") for r in read_trace_file(path))
    assert "soft" in _report_lines(summary)


def _report_lines(summary) -> str:
    from echovl.experiments.tiny_cpu import _report

    return _report(summary)


def test_seeds_and_variants_are_parsed_with_clear_errors():
    from echovl.experiments.tiny_cpu import main, parse_seeds, parse_variant

    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3, 1-2,3") == [3, 1, 2]
    for bad in ("", "a", "4-2", "-1", "1-x"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    assert parse_variant("soft:selection=soft,soft_temperature=0.5") == (
        "soft",
        {"selection": "soft", "soft_temperature": 0.5},
    )
    assert parse_variant("late:start_step=10,coef=0.01") == ("late", {"start_step": 10, "coef": 0.01})
    for bad, message in (
        ("soft", "NAME:key=value"),
        ("echo:top_k=2", "not baseline or echo"),
        ("x:selection", "is not key=value"),
        ("x:selecton=soft", "Did you mean echo.selection"),
        ("x:top_k=0", "echo.top_k"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_variant(bad)
    for argv in (["--seeds", "2-1"], ["--variant", "bad"], ["--seed", "3", "--seeds", "0-1"]):
        with pytest.raises(SystemExit):
            main(argv)


def test_seeds_report_the_paired_difference_over_seeds(tmp_path, monkeypatch):
    """Three seeds with scripted held-out accuracies: the differences, their mean and the t-interval by hand."""
    from echovl.experiments import tiny_cpu

    greedy = {0: (0.50, 0.60, 0.52), 1: (0.40, 0.45, 0.40), 2: (0.70, 0.70, 0.75)}  # baseline, echo, soft

    def fake_run(out, settings, progress=None):
        assert out.name == f"seed_{settings.seed}" and settings.variants == {"soft": {"selection": "soft"}}
        evals = {"start": {"greedy": 0.1, "sampled": 0.1}}
        for run, value in zip(("baseline", "echo", "soft"), greedy[settings.seed]):
            evals[run] = {"greedy": value, "sampled": value / 2}
        warmup = {"probe_accuracy": 0.11 if settings.seed == 2 else settings.warmup_target}  # seed 2 fell short
        return {"eval": evals, "runtime_s": 10.0, "warmup": warmup}

    monkeypatch.setattr(tiny_cpu, "run_experiment", fake_run)
    settings = tiny_cpu.ExperimentSettings.quick()
    settings.variants = {"soft": {"selection": "soft"}}
    comparison = tiny_cpu.run_seeds(tmp_path, settings, [0, 1, 2])
    echo = comparison["differences"]["echo"]["greedy"]
    assert echo["per_seed"] == pytest.approx([0.10, 0.05, 0.0])
    # mean 0.05, sd 0.05, t(0.975, 2) = 4.3027: half width 4.3027 * 0.05 / sqrt(3) = 0.12421
    assert echo["mean"] == pytest.approx(0.05) and echo["high"] - echo["mean"] == pytest.approx(0.12421, abs=1e-5)
    assert comparison["differences"]["soft"]["sampled"]["per_seed"] == pytest.approx([0.01, 0.0, 0.025])
    with open(tmp_path / "seeds.csv") as f:
        assert len(f.read().splitlines()) == 1 + 3 * 4  # header + seeds x (start, baseline, echo, soft)
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["differences"]["echo"]["greedy"]["mean"] == pytest.approx(0.05) and saved["runtime_s"] == 30.0
    report = tiny_cpu._seeds_report(comparison, tmp_path)
    assert "echo - baseline: greedy +0.050 [-0.074, +0.174]" in report
    assert comparison["warmup_short_of_target"] == [{"seed": 2, "probe_accuracy": 0.11}]
    assert "seed 2: the warm-up ended short of its target (probe accuracy 0.11)" in report
    assert "excludes 0" not in report  # no interval here excludes 0, so no legend for a mark that is absent


def test_seeds_resume_reuses_only_finished_seeds_with_the_same_settings(tmp_path, monkeypatch):
    """An interrupted --seeds run: seed 0 finished with these settings (reused), seed 1 finished with other
    settings and seed 2 never finished (both run again)."""
    from dataclasses import asdict, replace

    from echovl.experiments import tiny_cpu

    settings = tiny_cpu.ExperimentSettings.quick()
    ran = []

    def fake_run(out, seed_settings, progress=None):
        ran.append(seed_settings.seed)
        evals = {run: {"greedy": 0.5, "sampled": 0.5} for run in ("start", "baseline", "echo")}
        return {"eval": evals, "runtime_s": 1.0}

    def finished(seed, **changes):
        folder = tmp_path / f"seed_{seed}"
        folder.mkdir()
        seed_settings = replace(settings, seed=seed, **changes)
        evals = {run: {"greedy": 0.25, "sampled": 0.25} for run in ("start", "baseline", "echo")}
        summary = {
            "settings": {**asdict(seed_settings), "runs": list(seed_settings.runs)},
            "eval": evals,
            "runtime_s": 7.0,
        }
        (folder / "summary.json").write_text(json.dumps(summary))

    finished(0)
    finished(1, steps=settings.steps + 1)
    (tmp_path / "seed_2").mkdir()
    monkeypatch.setattr(tiny_cpu, "run_experiment", fake_run)
    comparison = tiny_cpu.run_seeds(tmp_path, settings, [0, 1, 2])
    assert ran == [1, 2]
    assert comparison["runtime_s"] == 9.0  # 7 (reused seed 0) + 1 + 1


def test_a_failed_run_leaves_the_previous_outputs_as_they_were(quick_run, tmp_path, monkeypatch):
    """All or nothing: a run that fails at its very end (after its traces are written) changes none of the previous
    run's outputs, and leaves no half-written file or folder behind."""
    import shutil
    from pathlib import Path

    from echovl.experiments import tiny_cpu

    out = tmp_path / "run"
    shutil.copytree(quick_run[0], out, ignore=shutil.ignore_patterns("work"))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("traces/step_000001.jsonl") in before and Path("summary.json") in before

    def broken_plot(rows, summary):
        assert list(out.glob(".traces.*/step_*.jsonl")), "the new traces are staged beside the old ones"
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(tiny_cpu, "plot_metrics", broken_plot)
    with pytest.raises(RuntimeError, match="the plot failed"):
        tiny_cpu.run_experiment(out, tiny_cpu.ExperimentSettings.quick(seed=1))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and "work" not in p.parts}
    assert after == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
