"""The app's event handlers and layout, without a browser (tests/test_demo_e2e.py drives the real page)."""

from pathlib import Path

import pytest

from echovl.testing import tiny_image
from tests.demo_support import elements, load_script, write_cpu_run, write_easyr1_log

pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "demo" / "example_traces"
EXAMPLE_RUN = ROOT / "demo" / "example_run"


@pytest.fixture(scope="module")
def app_module():
    return load_script(ROOT / "demo" / "app.py", "echovl_demo_app")


def _no_progress(fraction, desc=None):
    pass


def _live(app_module, model, **changes):
    values = dict(
        image=None,
        question="Find x.",
        answer="3",
        model_path=str(model),
        num_rollouts=2,
        temperature=1.0,
        max_new_tokens=12,
        seed=0,
        instruction="",
        delimiters="\\n",
        min_step_tokens=1,
        scope="all",
    )
    values.update(changes)
    return app_module.live_group(**values, progress=_no_progress)


def test_cli_defaults(app_module):
    args = app_module.parse_args([])
    assert (args.model, args.host, args.port, args.share) == (None, "127.0.0.1", 7860, False)
    assert Path(args.traces) == EXAMPLE
    args = app_module.parse_args(["--model", "m", "--traces", "t", "--host", "0.0.0.0", "--port", "9", "--share"])
    assert (args.model, args.traces, args.host, args.port, args.share) == ("m", "t", "0.0.0.0", 9, True)
    assert [Path(run) for run in args.run] == [EXAMPLE_RUN]  # the shipped example run
    assert app_module.parse_args(["--run", "a", "--run", "b"]).run == ["a", "b"]
    with pytest.raises(SystemExit):
        app_module.parse_args(["--run", "a", "--run", "b", "--run", "c"])


def test_build_app(app_module, tiny_vl_dir):
    import gradio as gr

    app = app_module.build_app(str(tiny_vl_dir), str(EXAMPLE), ["run_a"])
    assert isinstance(app, gr.Blocks)
    blocks = {getattr(block, "elem_id", None): block for block in app.blocks.values()}
    assert {"live-run", "live-chart", "live-rollouts", "traces-chart", "traces-step", "traces-group"} <= set(blocks)
    assert {"overview-charts", "overview-summary", "overview-trace-step", "overview-show-traces"} <= set(blocks)
    assert (blocks["overview-run"].value, blocks["overview-run-b"].value) == ("run_a", "")


def test_live_handler_success_and_errors(app_module, tiny_vl_dir, tmp_path):
    summary, chart, rollouts = _live(app_module, tiny_vl_dir, image=str(_png(tmp_path)))
    assert elements(summary, "echo-summary") and elements(chart, "echo-chart", "svg")
    assert len(elements(rollouts, "echo-rollout")) == 2

    def error_of(**changes):
        summary, chart, rollouts = _live(app_module, tiny_vl_dir, **changes)
        assert chart == rollouts == ""
        [box] = elements(summary, "echo-error")
        return box["text"]

    assert "the question is empty" in error_of(question="")
    assert "reference answer is empty" in error_of(answer=" ")
    assert "does not exist" in error_of(model_path=str(tmp_path / "nope"))
    assert "no model path given" in error_of(model_path="")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert "cannot open the image bad.png" in error_of(image=str(tmp_path / "bad.png"))
    assert "temperature must be > 0" in error_of(temperature=0)
    assert "number of rollouts must be a whole number" in error_of(num_rollouts=None)
    assert "at least one step delimiter" in error_of(delimiters="")


def _png(tmp_path):
    path = tmp_path / "diagram.png"
    tiny_image(1).save(path)
    return path


def test_unexpected_errors_are_shown_not_raised(app_module, tiny_vl_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("kaput")

    monkeypatch.setattr(app_module, "run_live", boom)
    summary, _, _ = _live(app_module, tiny_vl_dir)
    assert "unexpected error: RuntimeError: kaput" in elements(summary, "echo-error")[0]["text"]


def test_traces_handlers(app_module, tmp_path):
    steps, state, groups, image, summary, chart, rollouts = app_module.open_traces(str(EXAMPLE))
    assert steps["choices"] == [("step 1", 1), ("step 2", 2)] and steps["value"] == 1
    assert [index for _, index in groups["choices"]] == [0, 1, 2, 3] and groups["value"] == 0
    assert image.size == (84, 84)
    assert elements(summary, "echo-summary") and elements(chart, "echo-chart", "svg")
    assert elements(rollouts, "echo-clip")
    state, groups, image, summary, chart, rollouts = app_module.choose_step(state, 2)
    assert all(record["train_step"] == 2 for record in state["records"])
    image, summary, chart, rollouts = app_module.choose_group(state, 3)
    assert "problem-3" in summary and elements(chart, "echo-chart", "svg")

    # a missing folder, then a bad line: visible messages, never an exception
    steps, state, groups, image, summary, chart, rollouts = app_module.open_traces(str(tmp_path / "nope"))
    assert "not a trace folder" in elements(summary, "echo-error")[0]["text"] and steps["choices"] == []
    folder = tmp_path / "traces"
    folder.mkdir()
    (folder / "step_000003.jsonl").write_text("{oops\n")
    steps, state, groups, image, summary, chart, rollouts = app_module.open_traces(str(folder))
    assert "step_000003.jsonl:1: not valid JSON" in elements(summary, "echo-error")[0]["text"]
    assert groups["choices"] == [] and chart == rollouts == ""


def test_overview_handlers(app_module, tmp_path):
    folder = write_cpu_run(tmp_path / "tiny_cpu_echo")
    state, summary, charts, steps = app_module.open_overview(str(folder), "", 5)
    assert "baseline: steps 1–6" in elements(summary, "echo-run-summary")[0]["text"]
    cards = elements(charts, "echo-overview-chart")
    assert [c["attrs"]["data-chart"] for c in cards][:5] == [
        "degenerate_groups",
        "accuracy",
        "clip_step_entropy",
        "clip_length",
        "echo_loss",
    ]
    assert "trailing mean over 5 steps" in charts
    assert steps["choices"] == [("step 1", "0:1"), ("step 2", "0:2")] and steps["value"] == "0:1"
    assert state == {"traces": [str(folder / "traces")]}

    # the traced-step selector opens the traces tab at that step
    tabs, trace_folder, trace_steps, trace_state, groups, image, summary, chart, rollouts, message = (
        app_module.show_traces(state, "0:2")
    )
    assert tabs.selected == "traces" and trace_folder == str(folder / "traces") and message == ""
    assert trace_steps["value"] == 2 and all(r["train_step"] == 2 for r in trace_state["records"])
    assert elements(summary, "echo-summary") and elements(chart, "echo-chart", "svg")

    # an A/B of two EasyR1 runs
    write_easyr1_log(tmp_path / "grpo")
    write_easyr1_log(tmp_path / "grpo_echo")
    state, summary, charts, steps = app_module.open_overview(str(tmp_path / "grpo"), str(tmp_path / "grpo_echo"), 1)
    runs = {e["attrs"]["data-run"] for e in elements(charts, "echo-run-series")}
    assert runs == {"grpo", "grpo_echo"} and steps["choices"] == [] and steps["value"] is None

    # bad input: a message in the page, never an exception
    state, summary, charts, steps = app_module.open_overview(str(tmp_path / "nope"), "", 5)
    assert "nope: no such file or folder" in elements(summary, "echo-error")[0]["text"] and charts == ""
    state, summary, charts, steps = app_module.open_overview(str(tmp_path), None, None)
    assert "no run log in this folder" in elements(summary, "echo-error")[0]["text"]
    *unchanged, message = app_module.show_traces(state, None)
    assert "no traced step chosen" in elements(message, "echo-error")[0]["text"]
