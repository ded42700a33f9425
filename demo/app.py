"""EchoRL demo: per-step entropy and the selected EchoClip.

    python demo/app.py [--model PATH] [--traces FOLDER] [--run FOLDER [--run FOLDER2]] [--host 127.0.0.1]
                       [--port 7860] [--share]

Live tab: sample a group of rollouts for a question (and image), grade them, compute token entropy, split
steps and mine the EchoClip, as training does. Training traces tab: browse a trace folder written by training
(``echo.trace_freq``) by step and group. Training overview tab: charts over the training steps of a run folder
(EasyR1's ``experiment_log.jsonl`` or the CPU experiment's ``metrics.csv``), or of two for an A/B. Without ``--model`` the app uses a tiny offline Qwen2.5-VL fitted on
the example problems, built into ``~/.cache/echovl`` (or ``$ECHOVL_CACHE_DIR``) on first start.

The logic lives in :mod:`echovl.demo`; this file only lays out the page and wires events.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if (REPO / "echovl").is_dir():  # run from a checkout: use its echovl
    sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry, no version check

import gradio as gr  # noqa: E402

from echovl.cli import OptionError, command_parser, option, parse_settings  # noqa: E402
from echovl.clip import SCOPES  # noqa: E402
from echovl.demo import overview, render, traces_view  # noqa: E402
from echovl.demo.examples import EXAMPLE_PROBLEMS, FORMAT_INSTRUCTION, demo_model_dir  # noqa: E402
from echovl.demo.live import DemoError, LiveRequest, ModelCache, open_image, parse_delimiters, run_live  # noqa: E402
from echovl.demo.run_logs import RunLogError, open_run_folders  # noqa: E402
from echovl.traces import TraceError  # noqa: E402

EXAMPLE_TRACES = Path(__file__).resolve().parent / "example_traces"
EXAMPLE_RUN = Path(__file__).resolve().parent / "example_run"
LOG = logging.getLogger("echovl.demo")
MODELS = ModelCache()

INTRO = """# EchoRL: per-step entropy and the EchoClip
In every group of rollouts, EchoRL splits each **verified** rollout into steps (at newlines), finds the step with
the **highest mean token entropy**, and trains on the prefix up to that step, the **EchoClip**, with a small NLL
term, which keeps a gradient when all rollouts are right and GRPO's advantages are all zero."""

PLACEHOLDER = (
    '<div class="echo-card" style="color: #5b5b66">Pick an example below the inputs (or type a question and '
    "its answer), then press <b>Sample and mine</b>.</div>"
)


def _failure(error: Exception) -> str:
    if isinstance(error, (DemoError, TraceError, RunLogError)):
        return render.render_error(str(error))
    LOG.exception("unexpected error")
    return render.render_error(f"unexpected error: {type(error).__name__}: {error} (details in the server log)")


# ------------------------------------------------------------------------------------------------ live tab


def live_group(
    image,
    question,
    answer,
    model_path,
    num_rollouts,
    temperature,
    max_new_tokens,
    seed,
    instruction,
    delimiters,
    min_step_tokens,
    scope,
    progress=gr.Progress(),  # noqa: B008 (gradio injects progress through this default)
):
    try:
        request = LiveRequest(
            question=question or "",
            answer=answer or "",
            image=open_image(image),  # a bad image fails before the model is loaded
            num_rollouts=num_rollouts,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            seed=seed,
            instruction=instruction or "",
            delimiters=parse_delimiters(delimiters),
            min_step_tokens=min_step_tokens,
            scope=scope,
        )
        request.validate()
        loaded = MODELS.get(model_path, progress)
        result = run_live(loaded, request, progress=progress)
    except Exception as error:  # shown in the page, never only a stack trace
        return _failure(error), "", ""
    return tuple(render.render_group(result.record, result.notes))


# ------------------------------------------------------------------------------------------------ traces tab


def _group_outputs(state: dict, index):
    """image, summary, chart, rollouts of group ``index`` of the loaded step."""
    records = state.get("records") or []
    banner = render.render_error(state["error"]) if state.get("error") else ""
    if index is None or not 0 <= int(index) < len(records):
        return None, banner, "", ""
    record = records[int(index)]
    image, note = traces_view.load_group_image(state["folder"], record)
    notes = [f"trace file: {state['path']}"] + ([note] if note else [])
    view = render.render_group(record, notes)
    return image, banner + view.summary, view.chart, view.rollouts


def _load_step(state: dict, train_step):
    step = traces_view.load_step(state["files"], int(train_step))
    state = {**state, "records": step.records, "error": step.error, "path": str(step.path)}
    choices = traces_view.group_choices(step)
    index = choices[0][1] if choices else None
    group = gr.update(choices=choices, value=index)
    return (state, group, *_group_outputs(state, index))


def open_traces(folder, train_step=None):
    """Open a trace folder at ``train_step`` (default: its first traced step)."""
    empty = {"folder": "", "files": [], "records": []}
    try:
        files = traces_view.open_trace_folder(folder)
        state = {**empty, "folder": str(Path(folder.strip()).expanduser()), "files": files}
        train_step = files[0][0] if train_step is None else int(train_step)
        steps = gr.update(choices=[(f"step {s}", s) for s, _ in files], value=train_step)
        return (steps, *_load_step(state, train_step))
    except Exception as error:
        nothing = gr.update(choices=[], value=None)
        return nothing, empty, nothing, None, _failure(error), "", ""


def choose_step(state, train_step):
    try:
        return _load_step(state, train_step)
    except Exception as error:
        return state, gr.update(), None, _failure(error), "", ""


def choose_group(state, index):
    try:
        return _group_outputs(state, index)
    except Exception as error:
        return None, _failure(error), "", ""


# ------------------------------------------------------------------------------------------------ overview tab


def open_overview(run, second_run, smoothing):
    """Read the run folder(s) and chart them: state, summary, charts, traced-step choices."""
    try:
        folders = open_run_folders([run or "", second_run or ""])
        view = overview.render_overview(folders, int(smoothing or 1))
    except Exception as error:
        nothing = gr.update(choices=[], value=None)
        return {"traces": []}, _failure(error), "", nothing
    choices = overview.trace_choices(folders)
    state = {"traces": [str(f.traces) if f.traces else None for f in folders]}
    steps = gr.update(choices=choices, value=choices[0][1] if choices else None)
    return state, view.summary, view.charts, steps


def show_traces(state, value):
    """Open the traces tab at a traced step: the tabs, the trace folder box, :func:`open_traces`'s outputs, and
    a message for the overview tab (empty, or why nothing was opened)."""
    try:
        if not value:
            raise RunLogError("no traced step chosen (the opened runs have no trace folder)")
        folder, train_step = overview.trace_target((state or {}).get("traces") or [], value)
    except Exception as error:
        return (*[gr.update()] * 9, _failure(error))
    return (gr.Tabs(selected="traces"), folder, *open_traces(folder, train_step), "")


# ------------------------------------------------------------------------------------------------ layout


def _example_rows() -> list[list]:
    from echovl.testing import tiny_image

    folder = Path(tempfile.mkdtemp(prefix="echovl-demo-examples-"))  # gradio serves files from the temp dir
    rows = []
    for problem in EXAMPLE_PROBLEMS:
        path = folder / f"problem_{problem.image_seed}.png"
        tiny_image(problem.image_seed).save(path)  # the size the demo model was fitted on
        rows.append([str(path), problem.question, problem.answer])
    return rows


def build_app(model_path: str, traces: str, runs: Sequence[str] = ()) -> gr.Blocks:
    """The page; ``runs``: up to two run folders opened by the overview tab at start."""
    runs = [*runs, "", ""]
    with gr.Blocks(title="echovl: EchoRL demo", analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Live", id="live"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=330):
                        form = {}  # live_group's parameter name -> its input component
                        form["image"] = gr.Image(
                            label="Image (optional)", type="filepath", height=200, elem_id="live-image"
                        )
                        form["question"] = gr.Textbox(label="Question", lines=3, elem_id="live-question")
                        form["answer"] = gr.Textbox(label="Reference answer", elem_id="live-answer")
                        gr.Examples(
                            _example_rows(),
                            inputs=[form["image"], form["question"], form["answer"]],
                            label="Example problems",
                        )
                        form["model_path"] = gr.Textbox(
                            label="Model (local path or hub id)", value=model_path, elem_id="live-model"
                        )
                        with gr.Row():
                            form["num_rollouts"] = gr.Slider(1, 16, value=6, step=1, label="Rollouts")
                            form["temperature"] = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
                        with gr.Row():
                            form["max_new_tokens"] = gr.Slider(16, 2048, value=256, step=16, label="Max new tokens")
                            form["seed"] = gr.Number(value=0, precision=0, label="Seed")
                        with gr.Accordion("Advanced", open=False):
                            form["instruction"] = gr.Textbox(
                                label="Format instruction (appended to the question)",
                                value=FORMAT_INSTRUCTION,
                                lines=3,
                            )
                            form["delimiters"] = gr.Textbox(
                                label="Step delimiters (one per line, \\n = newline)", value="\\n"
                            )
                            form["min_step_tokens"] = gr.Number(
                                value=LiveRequest.min_step_tokens, precision=0, label="Min step tokens"
                            )
                            form["scope"] = gr.Radio(list(SCOPES), value=LiveRequest.scope, label="Mining scope")
                        run = gr.Button("Sample and mine", variant="primary", elem_id="live-run")
                    with gr.Column(scale=2, min_width=480):
                        live_summary = gr.HTML(PLACEHOLDER, elem_id="live-summary")
                        live_chart = gr.HTML(elem_id="live-chart")
                        live_rollouts = gr.HTML(elem_id="live-rollouts")

                def run_form(values: dict, progress=gr.Progress()):  # noqa: B008 (gradio's progress hook)
                    return live_group(**{name: values[box] for name, box in form.items()}, progress=progress)

                run.click(run_form, inputs=set(form.values()), outputs=[live_summary, live_chart, live_rollouts])
            with gr.Tab("Training traces", id="traces"):
                state = gr.State({})
                with gr.Row():
                    folder = gr.Textbox(value=traces, label="Trace folder", scale=5, elem_id="traces-folder")
                    open_button = gr.Button("Open", scale=0, min_width=120, elem_id="traces-open")
                with gr.Row():
                    step = gr.Dropdown(label="Training step", choices=[], elem_id="traces-step")
                    group = gr.Dropdown(label="Group", choices=[], scale=3, elem_id="traces-group")
                with gr.Row():
                    with gr.Column(scale=1, min_width=220):
                        trace_image = gr.Image(label="Problem image", type="pil", interactive=False, height=220)
                    with gr.Column(scale=3):
                        trace_summary = gr.HTML(elem_id="traces-summary")
                trace_chart = gr.HTML(elem_id="traces-chart")
                trace_rollouts = gr.HTML(elem_id="traces-rollouts")
                views = [trace_image, trace_summary, trace_chart, trace_rollouts]
                opened = [step, state, group, *views]
                open_button.click(open_traces, inputs=[folder], outputs=opened)
                folder.submit(open_traces, inputs=[folder], outputs=opened)
                step.input(choose_step, inputs=[state, step], outputs=[state, group, *views])
                group.input(choose_group, inputs=[state, group], outputs=views)
            with gr.Tab("Training overview", id="overview"):
                overview_state = gr.State({})
                with gr.Row():
                    run_a = gr.Textbox(
                        value=runs[0],
                        label="Run folder (EasyR1 experiment_log.jsonl or CPU-experiment metrics.csv, and its traces)",
                        scale=4,
                        elem_id="overview-run",
                    )
                    run_b = gr.Textbox(
                        value=runs[1],
                        label="Second run folder, for an A/B (optional)",
                        scale=4,
                        elem_id="overview-run-b",
                    )
                    smoothing = gr.Slider(1, 25, value=5, step=1, label="Smoothing (steps)", scale=2, min_width=160)
                    open_runs = gr.Button("Open", scale=0, min_width=120, elem_id="overview-open")
                overview_summary = gr.HTML(elem_id="overview-summary")
                with gr.Row(equal_height=True):
                    trace_step = gr.Dropdown(
                        label="Traced step (▲ on the charts)", choices=[], scale=2, elem_id="overview-trace-step"
                    )
                    show = gr.Button("Show its traces", scale=0, min_width=180, elem_id="overview-show-traces")
                    trace_message = gr.HTML(elem_id="overview-message", scale=3)
                overview_charts = gr.HTML(elem_id="overview-charts")
                run_inputs = [run_a, run_b, smoothing]
                run_outputs = [overview_state, overview_summary, overview_charts, trace_step]
                open_runs.click(open_overview, inputs=run_inputs, outputs=run_outputs)
                run_a.submit(open_overview, inputs=run_inputs, outputs=run_outputs)
                run_b.submit(open_overview, inputs=run_inputs, outputs=run_outputs)
                smoothing.input(open_overview, inputs=run_inputs, outputs=run_outputs, trigger_mode="always_last")
                show.click(
                    show_traces,
                    inputs=[overview_state, trace_step],
                    outputs=[tabs, folder, *opened, trace_message],
                )
        app.load(open_traces, inputs=[folder], outputs=opened)
        app.load(open_overview, inputs=run_inputs, outputs=run_outputs)
    return app


THEME_FONTS = dict(
    font=["ui-sans-serif", "system-ui", "sans-serif"],  # system fonts: nothing to fetch, works offline
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)


@dataclass
class DemoOptions:
    """``python demo/app.py``'s options."""

    model: str | None = option(None, help="model for the live tab (default: the tiny offline demo model)")
    traces: str = option(str(EXAMPLE_TRACES), help="trace folder opened by the traces tab")
    run: list[str] | None = option(
        None,
        action="append",
        metavar="FOLDER",
        help="run folder for the overview tab (experiment_log.jsonl or metrics.csv, and traces); twice for an A/B "
        "(default: the shipped example run)",
    )
    host: str = option("127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    port: int = option(7860, help="port to listen on")
    share: bool = option(False, help="also make a public gradio.live link")

    def __post_init__(self) -> None:
        self.run = self.run or [str(EXAMPLE_RUN)]
        if len(self.run) > 2:
            raise OptionError("--run at most twice (two run folders for an A/B)")


def parse_args(argv=None) -> DemoOptions:
    parser = command_parser(DemoOptions, prog="python demo/app.py", description=__doc__.split("\n\n")[0])
    return parse_settings(parser, argv)[0]


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model = args.model
    if model is None:
        LOG.info("preparing the tiny offline demo model (built once, in about a minute, then cached)")
        model = str(demo_model_dir())
    LOG.info("live model: %s; traces: %s; runs: %s", model, args.traces, ", ".join(args.run))
    app = build_app(model, args.traces, args.run)
    app.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        show_error=True,
        theme=gr.themes.Default(**THEME_FONTS),
        css=render.CSS + overview.CSS,
        footer_links=[],
    )


if __name__ == "__main__":
    main()
