"""Shared helpers of the demo tests: the fitted tiny demo model, a small HTML reader, and run folders written
by the writers of real runs (EasyR1's ``FileLogger``, the CPU experiment's ``metrics_csv``)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

EXAMPLE_TRACES = Path(__file__).resolve().parent.parent / "demo" / "example_traces"

VOID = {"br", "img", "input", "meta", "link", "hr"}  # SVG elements are self-closed (<line/>) when empty


def demo_model_once(tmp_path_factory):
    """The demo's default model (tiny Qwen2.5-VL fitted on the example problems), built once per session.

    Built into a fixed folder of the session's temp dir, so every test module's fixture reuses the same build;
    with ``ECHOVL_CACHE_DIR`` set, the model cached there (as the app uses it) is reused across sessions.
    """
    import os

    from echovl.demo.examples import demo_model_dir

    if os.environ.get("ECHOVL_CACHE_DIR"):
        return demo_model_dir()
    return demo_model_dir(tmp_path_factory.getbasetemp() / "echovl-demo-cache")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[dict] = []
        self.elements: list[dict] = []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "classes": set(dict(attrs).get("class", "").split())}
        self.elements.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "classes": set(dict(attrs).get("class", "").split())}
        self.elements.append(element)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        for element in self.stack:
            element["text"] += data


def load_script(path: Path, name: str):
    """A script of demo/ imported as the module ``name`` (registered in ``sys.modules``, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def elements(html: str, cls: str | None = None, tag: str | None = None) -> list[dict]:
    """Elements of ``html`` (with their full text content), filtered by class and/or tag."""
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return [e for e in collector.elements if (cls is None or cls in e["classes"]) and (tag is None or e["tag"] == tag)]


# per step: (reward/accuracy, echo/degenerate_groups, echo/loss, echo/clip_length, echo/clip_step_entropy)
EASYR1_STEPS = {1: (0.25, 0.0, 0.9, 12.0, 1.5), 2: (0.5, 0.125, 0.8, 14.0, 1.25), 3: (0.75, 0.5, 0.7, 10.0, 1.0)}


def write_easyr1_log(folder: Path, steps=EASYR1_STEPS, *, validation=True, extra=None) -> Path:
    """An ``experiment_log.jsonl`` as EasyR1 writes it: its own FileLogger when installed, else the same layout
    (nested at '/', "step" first) written here."""
    folder.mkdir(parents=True, exist_ok=True)
    calls = []
    if validation:
        calls.append((0, {"val/reward_score": 0.2, "val/accuracy_reward": 0.2}))
    for step, (acc, degenerate, loss, length, entropy) in steps.items():
        metrics = {
            "reward/overall": 0.9 * acc + 0.1,
            "reward/accuracy": acc,
            "critic/score/mean": 0.9 * acc + 0.1,
            "echo/degenerate_groups": degenerate,
            "echo/loss": loss,
            "echo/clip_length": length,
            "echo/clip_step_entropy": entropy,
            "actor/pg_loss": -0.01,
            **(extra or {}).get(step, {}),
        }
        calls.append((step, metrics))
    if validation:
        calls.append((max(steps), {"val/reward_score": 0.6, "val/accuracy_reward": 0.6}))
    try:
        from verl.utils.logger.logger import FileLogger
    except ImportError:

        def nest(metrics):  # EasyR1's unflatten_dict: "a/b" -> {"a": {"b": ...}}
            root = {}
            for key, value in metrics.items():
                *parents, leaf = key.split("/")
                node = root
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = value
            return root

        lines = [json.dumps({"step": step, **nest(metrics)}) for step, metrics in calls]
        (folder / "experiment_log.jsonl").write_text("\n".join(lines) + "\n")
    else:
        logger = FileLogger({"trainer": {"save_checkpoint_path": str(folder)}})
        for step, metrics in calls:
            logger.log(metrics, step=step)
    return folder / "experiment_log.jsonl"


def cpu_rows(steps=range(1, 7)) -> list[dict]:
    """Rows as the CPU experiment records them: baseline without echo metrics (NaN), echo with them."""
    from echovl.experiments.tiny_cpu import COLUMNS

    rows = []
    for run in ("baseline", "echo"):
        for step in steps:
            row = {column: 0.0 for column in COLUMNS[2:]}
            row.update(run=run, step=step, accuracy=0.4 + 0.01 * step, all_correct_groups=0.1 * (step % 3))
            if run == "echo":
                row.update(accuracy=0.45 + 0.01 * step, echo_loss=1.0 / step, clip_length=10.0 + step, clips=2.0)
                row.update(clip_step_entropy=2.0 - 0.1 * step, coef=0.001)
                row.update(clips_per_group=math.nan, clip_weight_max=math.nan)  # one clip per group: no weights
            else:
                row.update(echo_loss=math.nan, clip_length=math.nan, clip_step_entropy=math.nan, clips=0.0)
                row.update(coef=math.nan, clips_per_group=math.nan, clip_weight_max=math.nan)
            rows.append(row)
    return rows


def write_cpu_run(folder: Path, rows=None, traces=True) -> Path:
    """A CPU-experiment output folder: ``metrics.csv`` (baseline and echo) and a copy of the example traces."""
    from echovl.experiments.tiny_cpu import metrics_csv

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.csv").write_text(metrics_csv(rows or cpu_rows()))
    if traces:
        shutil.copytree(EXAMPLE_TRACES, folder / "traces")
    return folder
