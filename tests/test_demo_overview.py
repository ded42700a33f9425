"""The overview tab's log readers and charts, without a browser (tests/test_demo_e2e.py drives the real page).

The logs are written by the writers of the real runs: EasyR1's own ``FileLogger`` and the CPU experiment's
``metrics_csv``."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from echovl.demo.charts import axis_ticks, trailing_mean
from echovl.demo.overview import (
    CHARTS,
    build_charts,
    render_charts,
    render_overview,
    trace_choices,
    trace_target,
)
from echovl.demo.run_logs import (
    RunLogError,
    find_trace_folder,
    open_run_folder,
    open_run_folders,
    read_cpu_metrics,
    read_easyr1_log,
)
from echovl.experiments.tiny_cpu import COLUMNS
from echovl.traces import list_trace_files, read_trace_file
from tests.demo_support import EASYR1_STEPS, cpu_rows, elements, load_script, write_cpu_run, write_easyr1_log

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_TRACES = ROOT / "demo" / "example_traces"
EXAMPLE_RUN = ROOT / "demo" / "example_run"


def chart(charts, name):
    [found] = [c for c in charts if c.spec.name == name]
    return found


# ------------------------------------------------------------------------------------------------ readers


def test_easyr1_log_as_easyr1_writes_it(tmp_path):
    folder = tmp_path / "geo3k_grpo_echo"
    write_easyr1_log(folder)
    [opened] = open_run_folders([str(folder)])
    assert opened.kind == "easyr1" and opened.log == folder / "experiment_log.jsonl" and opened.problems == []
    [run] = opened.runs
    assert run.label == "geo3k_grpo_echo" and run.steps == [0, 1, 2, 3]
    assert run.series("reward/accuracy") == ([1, 2, 3], [0.25, 0.5, 0.75])
    assert run.series("echo/clip_length") == ([1, 2, 3], [12.0, 14.0, 10.0])
    # validation before training (its own line at step 0) and after the last step (a second line for step 3)
    assert run.series("val/accuracy_reward") == ([0, 3], [0.2, 0.6])
    assert opened.traces is None and opened.trace_steps == []

    charts = build_charts([opened])
    assert [c.spec.name for c in charts] == [
        "degenerate_groups",
        "accuracy",
        "clip_step_entropy",
        "clip_length",
        "echo_loss",
        "val_accuracy",
    ]
    accuracy = chart(charts, "accuracy")
    [series] = accuracy.series
    assert series.key == "reward/accuracy" and series.values == [0.25, 0.5, 0.75]  # not critic/score/mean
    assert chart(charts, "degenerate_groups").series[0].values == [0.0, 0.125, 0.5]
    assert chart(charts, "echo_loss").series[0].values == [0.9, 0.8, 0.7]


def test_easyr1_log_optional_metrics_and_fallback(tmp_path):
    extra = {
        s: {"echo/coef": 0.001 * s, "echo/clip_weight_max": 0.5, "echo/clips_per_group": 2.0} for s in EASYR1_STEPS
    }
    write_easyr1_log(tmp_path / "run", extra=extra, validation=False)
    charts = build_charts(open_run_folders([str(tmp_path / "run")]), smoothing=3)
    [coef] = chart(charts, "coef").series
    assert coef.values == coef.smoothed == pytest.approx([0.001, 0.002, 0.003])  # a schedule is not smoothed
    assert chart(charts, "accuracy").series[0].smoothed == pytest.approx([0.25, 0.375, 0.5])
    assert chart(charts, "clip_weight").series[0].values == [0.5, 0.5, 0.5]
    assert chart(charts, "clips_per_group").series[0].values == [2.0, 2.0, 2.0]
    assert "val_accuracy" not in [c.spec.name for c in charts]

    # a plain EasyR1 run: no echo metrics, no reward/accuracy; the score stands in and says so
    lines = [json.dumps({"step": s, "critic": {"score": {"mean": 0.1 * s}}}) for s in (1, 2)]
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "experiment_log.jsonl").write_text("\n".join(lines) + "\n")
    charts = build_charts(open_run_folders([str(tmp_path / "plain")]))
    assert [c.spec.name for c in charts] == [c.name for c in CHARTS if c.always]
    assert chart(charts, "accuracy").series[0].key == "critic/score/mean"
    assert chart(charts, "echo_loss").series == [] and chart(charts, "echo_loss").missing == ["plain"]
    html = render_charts(open_run_folders([str(tmp_path / "plain")]))
    [card] = [e for e in elements(html, "echo-overview-chart") if e["attrs"]["data-chart"] == "echo_loss"]
    assert "Not logged by these runs (looked for echo/loss, echo_loss)" in card["text"]
    assert "logged as critic/score/mean" in html


def test_cpu_metrics_as_the_experiment_writes_them(tmp_path):
    folder = write_cpu_run(tmp_path / "tiny_cpu_echo")
    [opened] = open_run_folders([str(folder)])
    assert opened.kind == "cpu" and opened.problems == []
    assert [run.label for run in opened.runs] == ["baseline", "echo"]
    assert opened.traces == folder / "traces" and opened.trace_steps == [1, 2]
    baseline, echo = opened.runs
    assert baseline.steps == echo.steps == [1, 2, 3, 4, 5, 6]
    assert echo.series("accuracy")[1] == pytest.approx([0.45 + 0.01 * s for s in range(1, 7)])
    assert baseline.series("echo_loss") == ([], [])  # NaN: not logged

    charts = build_charts([opened])
    degenerate = chart(charts, "degenerate_groups")  # the A/B on one chart
    assert [s.label for s in degenerate.series] == ["baseline", "echo"]
    assert degenerate.series[0].key == "all_correct_groups"
    assert degenerate.series[0].values == pytest.approx([0.1, 0.2, 0.0, 0.1, 0.2, 0.0])
    loss = chart(charts, "echo_loss")
    assert [s.label for s in loss.series] == ["echo"] and loss.missing == ["baseline"]
    assert loss.series[0].values == pytest.approx([1.0 / s for s in range(1, 7)], rel=1e-5)  # 6 digits in the CSV
    assert chart(charts, "clip_length").series[0].values == [11.0, 12.0, 13.0, 14.0, 15.0, 16.0]
    assert [s.values for s in chart(charts, "clips").series] == [[0.0] * 6, [2.0] * 6]
    assert [s.values for s in chart(charts, "coef").series] == [[0.001] * 6]  # the echo run logs its λ
    assert chart(charts, "coef").missing == ["baseline"]
    names = [c.spec.name for c in charts]
    assert "clips_per_group" not in names and "clip_weight_max" not in names  # read when logged, never required


def test_a_log_file_can_be_given_directly(tmp_path):
    write_cpu_run(tmp_path / "run", traces=False)
    [opened] = open_run_folders([str(tmp_path / "run" / "metrics.csv")])
    assert opened.path == tmp_path / "run" and len(opened.runs) == 2


def test_ab_of_two_folders(tmp_path):
    write_easyr1_log(tmp_path / "grpo", {s: (0.1 * s, 0.0, 0.0, 0.0, 0.0) for s in (1, 2)}, validation=False)
    write_easyr1_log(tmp_path / "grpo_echo", validation=False)
    (tmp_path / "grpo_echo" / "echo_traces").mkdir()
    shutil.copy(EXAMPLE_TRACES / "step_000002.jsonl", tmp_path / "grpo_echo" / "echo_traces")
    folders = open_run_folders([str(tmp_path / "grpo"), "  ", str(tmp_path / "grpo_echo")])
    accuracy = chart(build_charts(folders), "accuracy")
    assert [(s.label, s.steps, s.values) for s in accuracy.series] == [
        ("grpo", [1, 2], [0.1, 0.2]),
        ("grpo_echo", [1, 2, 3], [0.25, 0.5, 0.75]),
    ]
    assert accuracy.series[0].color != accuracy.series[1].color
    assert trace_choices(folders) == [("grpo_echo: step 2", "1:2")]
    traces = [str(f.traces) if f.traces else None for f in folders]
    assert trace_target(traces, "1:2") == (str(tmp_path / "grpo_echo" / "echo_traces"), 2)
    with pytest.raises(RunLogError, match="run folder 0 has no traces"):
        trace_target(traces, "0:2")
    with pytest.raises(RunLogError, match="not a traced step"):
        trace_target(traces, "junk")

    # two CPU experiments in folders of the same name: the parents tell them apart, runs keep their names
    a = write_cpu_run(tmp_path / "seed0" / "tiny", traces=False)
    b = write_cpu_run(tmp_path / "seed1" / "tiny")
    folders = open_run_folders([str(a), str(b)])
    degenerate = chart(build_charts(folders), "degenerate_groups")
    assert [s.label for s in degenerate.series] == [
        "seed0/tiny · baseline",
        "seed0/tiny · echo",
        "seed1/tiny · baseline",
        "seed1/tiny · echo",
    ]
    assert trace_choices(folders) == [("tiny: step 1", "1:1"), ("tiny: step 2", "1:2")]


# ------------------------------------------------------------------------------------------------ bad input


def test_folder_errors(tmp_path):
    with pytest.raises(RunLogError, match="no run folder given"):
        open_run_folders(["", "  "])
    with pytest.raises(RunLogError, match="missing: no such file or folder"):
        open_run_folder(tmp_path / "missing")
    with pytest.raises(RunLogError, match="neither experiment_log.jsonl .* nor metrics.csv"):
        open_run_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RunLogError, match="notes.txt: not a run log"):
        open_run_folder(tmp_path / "notes.txt")
    with pytest.raises(RunLogError, match="nope.jsonl: no such file"):
        read_easyr1_log(tmp_path / "nope.jsonl")
    (tmp_path / "experiment_log.jsonl").write_bytes(b"\xff\xfe{")
    with pytest.raises(RunLogError, match="experiment_log.jsonl: cannot read the file"):
        open_run_folder(tmp_path)


def test_bad_easyr1_lines_are_named_and_skipped(tmp_path):
    path = write_easyr1_log(tmp_path / "run", validation=False)
    good = path.read_text().splitlines()
    lines = [good[0], "{oops", "[1, 2]", '{"reward": {"accuracy": 1}}', '{"step": "4"}', good[1], good[2][:30]]
    path.write_text("\n".join(lines) + "\n")
    [opened] = open_run_folders([str(tmp_path / "run")])
    assert opened.runs[0].series("reward/accuracy") == ([1, 2], [0.25, 0.5])
    problems = opened.problems
    assert len(problems) == 5
    assert f"{path}:2: not valid JSON" in problems[0]
    assert f"{path}:3: a log line must be a JSON object" in problems[1]
    assert f"{path}:4: no integer 'step' (got None)" in problems[2]
    assert f"{path}:5: no integer 'step' (got '4')" in problems[3]
    assert f"{path}:7: not valid JSON" in problems[4]  # a half-written last line
    summary = render_overview([opened]).summary
    [warning] = elements(summary, "echo-warning")
    assert "5 problem(s)" in warning["text"] and f"{path}:7: not valid JSON" in warning["text"]

    path.write_text("{oops\n")
    with pytest.raises(RunLogError, match=r"no training step logged \(1 unreadable line\(s\); the first: .*:1: not"):
        open_run_folder(tmp_path / "run")
    path.write_text("")
    with pytest.raises(RunLogError, match="experiment_log.jsonl: no training step logged$"):
        open_run_folder(tmp_path / "run")


def test_bad_csv_rows_are_named_and_skipped(tmp_path):
    folder = write_cpu_run(tmp_path / "run", cpu_rows(range(1, 3)), traces=False)
    path = folder / "metrics.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    lines.insert(2, "echo,1")  # too few fields
    lines.insert(3, lines[1].replace("baseline,1,", "baseline,one,"))
    cells = ["echo", "3"] + ["0.5"] * (len(header) - 2)
    cells[header.index("accuracy")] = "x"
    lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    runs, problems = read_cpu_metrics(path)
    assert [(r.label, r.steps) for r in runs] == [("baseline", [1, 2]), ("echo", [1, 2, 3])]
    assert problems == [
        f"{path}:3: 2 fields, the header has {len(COLUMNS)}; row skipped",
        f"{path}:4: step 'one' is not an integer; row skipped",
        f"{path}:8: column 'accuracy': 'x' is not a number; left out",
    ]
    assert math.isnan(runs[1].metrics["accuracy"][2]) and runs[1].metrics["clips"][2] == 0.5

    path.write_text("step,accuracy\n1,0.5\n")
    with pytest.raises(RunLogError, match=r"metrics.csv:1: the header has no column 'run'"):
        read_cpu_metrics(path)
    path.write_text("")
    with pytest.raises(RunLogError, match="metrics.csv: the file is empty"):
        read_cpu_metrics(path)
    path.write_text("run,step,accuracy\n")
    with pytest.raises(RunLogError, match="metrics.csv: no training step logged"):
        open_run_folder(folder)


def test_both_logs_in_one_folder(tmp_path):
    folder = write_cpu_run(tmp_path / "run", traces=False)
    write_easyr1_log(folder)
    [opened] = open_run_folders([str(folder)])
    assert opened.kind == "easyr1"
    assert opened.problems == [
        f"{folder / 'metrics.csv'}: not read (the folder also has experiment_log.jsonl, which is shown)"
    ]


def test_trace_folder_lookup(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert find_trace_folder(run) is None
    (run / "traces").mkdir()  # empty: not a trace folder
    assert find_trace_folder(run) is None
    shutil.copytree(EXAMPLE_TRACES, run / "echo_traces")
    assert find_trace_folder(run) == run / "echo_traces"
    shutil.copytree(EXAMPLE_TRACES, run / "elsewhere")
    (run / "experiment_config.json").write_text(json.dumps({"echo": {"trace_dir": "elsewhere"}}))
    assert find_trace_folder(run) == run / "elsewhere"
    (run / "experiment_config.json").write_text("{broken")
    assert find_trace_folder(run) == run / "echo_traces"
    assert find_trace_folder(EXAMPLE_TRACES) == EXAMPLE_TRACES  # a trace folder given as the run folder


# ------------------------------------------------------------------------------------------------ charts


def test_trailing_mean_and_ticks():
    assert trailing_mean([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    assert trailing_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert trailing_mean([3.0, 6.0, 0.0, 3.0], 3) == [3.0, 4.5, 3.0, 3.0]
    nan = math.nan
    assert trailing_mean([nan, 2.0, nan, 4.0], 2)[1:] == [2.0, 2.0, 4.0] and math.isnan(trailing_mean([nan], 3)[0])
    assert axis_ticks(0.0, 1.08) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert axis_ticks(0.0, 0.9) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert axis_ticks(0.45, 0.56) == pytest.approx([0.45, 0.475, 0.5, 0.525, 0.55])
    assert axis_ticks(-3.0, 7.0) == pytest.approx([-2.0, 0.0, 2.0, 4.0, 6.0])
    assert axis_ticks(2.0, 2.0) == [2.0]


def card_html(html: str, name: str) -> str:
    """The markup of one chart card."""
    return html.split(f'data-chart="{name}"')[1].split("data-chart=")[0]


def _points(series_element_html):
    return [tuple(map(float, p.split(","))) for p in series_element_html.split()]


def test_rendered_charts_show_every_value(tmp_path):
    folder = write_cpu_run(tmp_path / "run")
    folders = open_run_folders([str(folder)])
    html = render_charts(folders, smoothing=1)
    cards = {e["attrs"]["data-chart"]: e for e in elements(html, "echo-overview-chart")}
    assert list(cards) == [
        "degenerate_groups",
        "accuracy",
        "clip_step_entropy",
        "clip_length",
        "echo_loss",
        "coef",
        "clips",
        "all_wrong_groups",
    ]
    series = [e for e in elements(html, "echo-run-series")]
    assert [(e["attrs"]["data-run"], e["attrs"]["data-key"]) for e in series[:2]] == [
        ("baseline", "all_correct_groups"),
        ("echo", "all_correct_groups"),
    ]
    # every logged value is a point with its value in the hover title
    titles = re.findall(r"<title>(echo), step (\d+): ([^<]+)</title>", card_html(html, "echo_loss"))
    assert [int(s) for _, s, _ in titles] == [1, 2, 3, 4, 5, 6]
    assert [float(v) for _, _, v in titles] == pytest.approx([1.0 / s for s in range(1, 7)], rel=1e-3)
    assert "not logged by baseline" in cards["echo_loss"]["text"]
    # the traced steps are marked under the x axis of every chart
    marks = elements(html, "echo-trace-mark")
    assert {m["attrs"]["data-step"] for m in marks} == {"1", "2"} and len(marks) == 2 * len(cards)
    assert "bold: trailing mean" not in html and html.count("<polyline") == len(series)

    smoothed = render_charts(folders, smoothing=3)
    unsmoothed = [e for e in series if e["attrs"]["data-key"] == "coef"]  # λ is drawn as logged, never smoothed
    assert len(unsmoothed) == 1
    assert "bold: trailing mean over 3 steps" in smoothed
    assert smoothed.count("<polyline") == 2 * len(series) - len(unsmoothed)

    # points: a higher value is drawn higher (smaller y), steps left to right
    segment = card_html(html, "clip_length")
    points = _points(re.search(r'<polyline points="([^"]+)"', segment).group(1))
    assert [x for x, _ in points] == sorted(x for x, _ in points)
    assert [y for _, y in points] == sorted((y for _, y in points), reverse=True)  # 11 .. 16 tokens, rising


def test_summary_names_logs_runs_and_traces(tmp_path):
    folder = write_cpu_run(tmp_path / "run")
    summary = render_overview(open_run_folders([str(folder)])).summary
    [card] = elements(summary, "echo-run-summary")
    text = card["text"]
    assert f"CPU experiment metrics: {folder / 'metrics.csv'}" in text
    assert "baseline: steps 1–6 (6 logged)" in text
    # accuracy 0.41..0.43 -> 0.44..0.46 (baseline), degenerate groups (0.1, 0.2, 0) -> (0.1, 0.2, 0)
    assert "accuracy 0.420 → 0.450, degenerate groups 0.100 → 0.100" in text
    assert f"traces: {folder / 'traces'} (2 traced steps: 1, 2)" in text
    assert not elements(summary, "echo-warning")
    write_easyr1_log(tmp_path / "plain", validation=False)
    summary = render_overview(open_run_folders([str(tmp_path / "plain")])).summary
    assert "traces: none found" in summary and "EasyR1 experiment log" in summary


def test_shipped_example_run():
    if not EXAMPLE_RUN.exists():
        pytest.skip("no demo/example_run (python demo/make_example_run.py writes it)")
    [opened] = open_run_folders([str(EXAMPLE_RUN)])
    assert opened.kind == "cpu" and opened.problems == []
    assert [run.label for run in opened.runs] == ["baseline", "echo"]
    assert len(opened.runs[1].steps) >= 10 and len(opened.trace_steps) >= 2
    charts = build_charts([opened])
    assert [len(chart(charts, name).series) for name in ("degenerate_groups", "accuracy", "echo_loss")] == [2, 2, 1]
    from echovl.demo.render import check_record
    from echovl.demo.traces_view import load_group_image, load_step

    files = list_trace_files(opened.traces)
    records = [record for step, _ in files for record in load_step(files, step).records]
    assert len(records) == 4 * len(files) and any(r["degenerate"] for r in records)
    for record in records:
        check_record(record)
        assert load_group_image(opened.traces, record)[1] is None
    total = sum(path.stat().st_size for path in EXAMPLE_RUN.rglob("*") if path.is_file())
    assert total < 200_000  # kept small


def test_make_example_run_trims_a_run(tmp_path):
    module = load_script(ROOT / "demo" / "make_example_run.py", "make_example_run")
    assert module.spread([1, 2, 3, 4, 5, 6, 7], 3) == [1, 4, 7] and module.spread([1, 2], 5) == [1, 2]
    records = [{"degenerate": d, "group": i} for i, d in enumerate([False, True, True, False, True])]
    assert [r["group"] for r in module.pick_groups(records, 4)] == [0, 1, 2, 3]  # 2 degenerate of 4, file order
    assert [r["group"] for r in module.pick_groups(records, 2)] == [0, 1]

    source = write_cpu_run(tmp_path / "experiment")
    (source / "summary.json").write_text(json.dumps({"settings": {"seed": 0}, "files": {"metrics": "/tmp/x"}}))
    module.copy_example(source, tmp_path / "example", trace_steps=1, groups=2)
    out = tmp_path / "example"
    assert (out / "metrics.csv").read_bytes() == (source / "metrics.csv").read_bytes()
    assert json.loads((out / "summary.json").read_text()) == {"settings": {"seed": 0}}
    [opened] = open_run_folders([str(out)])
    assert opened.trace_steps == [2]  # the last traced step
    from echovl.demo.traces_view import load_group_image, load_step

    step = load_step(list_trace_files(out / "traces"), 2)
    assert step.error is None and len(step.records) == 2
    original = list(read_trace_file(source / "traces" / "step_000002.jsonl"))
    kept = module.pick_groups(original, 2)  # checked on a hand-made case above
    assert [r["rollouts"] for r in step.records] == [r["rollouts"] for r in kept]
    assert any(r["degenerate"] for r in kept) and any(r["degenerate"] for r in original)
    for record in step.records:
        image, note = load_group_image(out / "traces", record)
        assert note is None and image.size == (84, 84)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example", "experiment"]  # no temporary folder left
