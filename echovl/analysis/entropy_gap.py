"""Evidence 1: are expert traces higher-entropy under the model than its own verified rollouts?
``python -m echovl.analysis.entropy_gap --model M --data FILE --out DIR``.

For each problem of ``FILE`` (``problem``, ``answer``, ``solution``: ``data/openr1_math/train.parquet`` from
``data_prep/openr1_math.py``, or any parquet with those columns), the model samples ``--samples`` rollouts, graded
by the training reward's grader; then one teacher-forced forward each gives the token entropy (at the sampling
temperature) of the expert trace (``solution``) and of every verified rollout, split into steps at the training
delimiters (:mod:`echovl.analysis.common`).

The comparison is paired: on the problems with at least one verified rollout, each statistic of the expert trace
against the mean of the same statistic over that problem's verified rollouts, averaged over problems, with a
paired bootstrap interval over problems (:func:`echovl.eval.paired_bootstrap`). Statistics of a trace: its mean
token entropy (over text tokens), its mean step entropy, its largest step entropy (what EchoRL's clip picks).

Outputs in ``--out`` (all or none, once the analysis has finished: :mod:`echovl.outputs`):

- ``summary.md`` (also printed) and ``summary.json``: per source (expert traces of the paired problems, verified
  rollouts, expert traces of all problems) traces, text tokens, steps, token entropy (mean over tokens), step
  entropy (mean, median, 90th percentile over steps), largest step per trace (mean over traces); the paired gaps;
- ``steps.csv``: one row per step of every scored trace (``source`` expert or rollout, ``sample``, ``step``,
  ``text_tokens``, ``entropy``): every number of the summary can be recomputed from it;
- ``problems.csv``: one row per problem (rollouts, verified, the per-trace statistics, the gaps);
- ``rollouts.jsonl``: every rollout with its verdict (``--rollouts`` of either analysis reads it back);
- ``entropy_hist.png``: histograms of token and step entropy, expert traces against verified rollouts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..cli import option, progress_bar
from ..eval.stats import paired_bootstrap
from ..inference import Backend, ScoredResponse
from ..outputs import csv_text, figure_png, write_files
from ..reward.math import GRADER_VERSION
from .common import (
    AnalysisConfig,
    analysis_main,
    no_verified_rollout,
    pyplot,
    rollouts_jsonl,
    start_analysis,
)

__all__ = ["STEP_COLUMNS", "EntropyGapConfig", "main", "run", "trace_statistics"]

STEP_COLUMNS = ("problem_index", "problem_id", "row", "source", "sample", "step", "text_tokens", "entropy")
PROBLEM_COLUMNS = (
    "problem_index",
    "problem_id",
    "row",
    "rollouts",
    "verified",
    "expert_text_tokens",
    "expert_truncated",
    "expert_token_entropy",
    "expert_step_entropy",
    "expert_max_step_entropy",
    "rollout_token_entropy",
    "rollout_step_entropy",
    "rollout_max_step_entropy",
    "token_gap",
    "step_gap",
    "max_step_gap",
)
STATISTICS = ("token_entropy", "step_entropy", "max_step_entropy")


@dataclass(kw_only=True)
class EntropyGapConfig(AnalysisConfig):
    solution_key: str = option("solution", help="expert trace column")


def trace_statistics(steps: Sequence[tuple[int, float]]) -> dict[str, float]:
    """A trace's statistics from its steps' ``(text_tokens, entropy)``: mean token entropy (token-weighted),
    mean step entropy and largest step entropy over the steps with text tokens (NaN when it has none)."""
    counted = [(n, h) for n, h in steps if n > 0 and not math.isnan(h)]
    if not counted:
        return dict.fromkeys(STATISTICS, math.nan)
    tokens = sum(n for n, _ in counted)
    return {
        "token_entropy": sum(n * h for n, h in counted) / tokens,
        "step_entropy": sum(h for _, h in counted) / len(counted),
        "max_step_entropy": max(h for _, h in counted),
    }


def _pairs(scored: ScoredResponse) -> list[tuple[int, float]]:
    return [(s.tokens, s.entropy) for s in scored.steps]


def _source_summary(traces: list[list[tuple[int, float]]]) -> dict:
    """The summary row of a source from its traces' steps."""
    steps = [h for trace in traces for n, h in trace if n > 0 and not math.isnan(h)]
    weights = [(n, h) for trace in traces for n, h in trace if n > 0 and not math.isnan(h)]
    tokens = sum(n for n, _ in weights)
    maxima = [trace_statistics(t)["max_step_entropy"] for t in traces]
    maxima = [m for m in maxima if not math.isnan(m)]
    return {
        "traces": len(traces),
        "text_tokens": tokens,
        "steps": len(steps),
        "token_entropy": sum(n * h for n, h in weights) / tokens if tokens else math.nan,
        "step_entropy_mean": float(np.mean(steps)) if steps else math.nan,
        "step_entropy_median": float(np.median(steps)) if steps else math.nan,
        "step_entropy_p90": float(np.percentile(steps, 90)) if steps else math.nan,
        "max_step_entropy_mean": float(np.mean(maxima)) if maxima else math.nan,
    }


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _figure(expert_tokens, rollout_tokens, expert_steps, rollout_steps, title: str) -> bytes:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (expert, rollout), what in (
        (axes[0], (expert_tokens, rollout_tokens), "token entropy (nats)"),
        (axes[1], (expert_steps, rollout_steps), "step entropy (nats)"),
    ):
        top = max([float(np.max(v)) for v in (expert, rollout) if len(v)] + [1e-6])
        bins = np.linspace(0.0, top, 41)
        for values, label, color in ((rollout, "verified rollouts", "tab:blue"), (expert, "expert traces", "tab:red")):
            if len(values):
                mean = float(np.mean(values))
                ax.hist(values, bins=bins, density=True, alpha=0.45, color=color, label=f"{label} (mean {mean:.3f})")
                ax.axvline(mean, color=color, linestyle="--", linewidth=1)
        ax.set_xlabel(what)
        ax.set_ylabel("density")
        if what.startswith("token"):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure_png(figure)


def _fmt(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _markdown(summary: dict) -> str:
    c = summary["counts"]
    lines = [
        f"Entropy under {summary['model']} at temperature {summary['settings']['temperature']} (nats, text tokens "
        f"only), on the {c['paired_problems']} of {c['problems']} problems with a verified rollout "
        f"({c['verified']} of {c['rollouts']} rollouts verified).",
        "",
        "| traces | n | text tokens | steps | token entropy | step entropy | median step | p90 step | "
        "max step per trace |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in (
        ("expert", "expert"),
        ("verified rollouts", "rollouts"),
        (f"expert, all {c['problems']} problems", "expert_all"),
    ):
        s = summary["sources"][key]
        lines.append(
            f"| {label} | {s['traces']} | {s['text_tokens']} | {s['steps']} | {_fmt(s['token_entropy'])} | "
            f"{_fmt(s['step_entropy_mean'])} | {_fmt(s['step_entropy_median'])} | {_fmt(s['step_entropy_p90'])} | "
            f"{_fmt(s['max_step_entropy_mean'])} |"
        )
    gaps = summary["gaps"]
    level = round(summary["settings"]["confidence"] * 100)
    lines += [
        "",
        f"Expert − rollouts, the mean over the {c['paired_problems']} problems of (expert trace − mean of the "
        f"problem's verified rollouts) [{level}% paired bootstrap interval over problems]:",
        "",
    ]
    for key, label in (
        ("token_entropy", "token entropy"),
        ("step_entropy", "step entropy"),
        ("max_step_entropy", "max step entropy"),
    ):
        g = gaps[key]
        mark = " *" if g["excludes_zero"] else ""
        lines.append(
            f"- {label}: {_fmt(g['difference'], True)} [{_fmt(g['low'], True)}, {_fmt(g['high'], True)}]{mark}"
        )
    lines.append("")
    lines.append("`*`: the interval excludes 0.")
    if c["expert_truncated"]:
        lines.append(f"{c['expert_truncated']} expert trace(s) were cut to the model's context.")
    return "\n".join(lines) + "\n"


def run(config: EntropyGapConfig, *, backend_factory: Callable[..., Backend] | None = None) -> dict:
    """The analysis of ``config``; returns ``summary.json``'s content (also written to ``config.out``).

    ``backend_factory(name, model_path, **options)`` builds the generation backend (default
    :func:`echovl.inference.load_backend`); tests pass fakes.
    """
    session, problems, prompts, rollouts = start_analysis(config, backend_factory, solution_key=config.solution_key)
    verified: dict[int, list] = {}
    sampled: dict[int, int] = {}
    for r in rollouts:
        sampled[r.problem.index] = sampled.get(r.problem.index, 0) + 1
        if r.correct:
            verified.setdefault(r.problem.index, []).append(r)
    if not verified:
        raise no_verified_rollout(config, rollouts)

    scorer = session.scorer()
    total = len(problems) + sum(map(len, verified.values()))
    bar = progress_bar(total=total, desc="entropy", unit="traces", enable=config.show_progress)
    step_rows, problem_rows = [], []
    expert_traces, expert_all, rollout_traces = [], [], []
    tokens = {"expert": [], "rollout": []}
    paired = {key: ([], []) for key in STATISTICS}  # per paired problem: (rollout mean, expert)
    truncated = 0
    for problem, prompt in zip(problems, prompts):
        base = {"problem_index": problem.index, "problem_id": problem.id, "row": problem.row}
        expert = scorer.score(prompt, problem.solution)
        bar.update(1)
        truncated += expert.truncated > 0
        expert_steps = _pairs(expert)
        expert_all.append(expert_steps)
        step_rows += [
            dict(base, source="expert", step=s.index, text_tokens=s.tokens, entropy=s.entropy) for s in expert.steps
        ]
        expert_stats = trace_statistics(expert_steps)
        rollout_stats = []
        for r in verified.get(problem.index, []):
            scored = scorer.score(prompt, r.response)
            bar.update(1)
            steps = _pairs(scored)
            rollout_stats.append(trace_statistics(steps))
            rollout_traces.append(steps)
            tokens["rollout"].append(scored.text_entropies())
            step_rows += [
                dict(base, source="rollout", sample=r.sample, step=s.index, text_tokens=s.tokens, entropy=s.entropy)
                for s in scored.steps
            ]
        row = dict(
            base,
            rollouts=sampled.get(problem.index, 0),
            verified=len(rollout_stats),
            expert_text_tokens=int(expert.text_mask.sum()),
            expert_truncated=expert.truncated,
        )
        for key in STATISTICS:
            mean = _mean([s[key] for s in rollout_stats])
            row[f"expert_{key}"] = expert_stats[key]
            row[f"rollout_{key}"] = mean
            gap = expert_stats[key] - mean
            row[key.replace("entropy", "gap")] = gap
            if rollout_stats and not math.isnan(gap):
                paired[key][0].append(mean)
                paired[key][1].append(expert_stats[key])
        if rollout_stats and not math.isnan(expert_stats["token_entropy"]):
            expert_traces.append(expert_steps)
            tokens["expert"].append(expert.text_entropies())
        problem_rows.append(row)
    bar.close()
    if not expert_traces:
        raise no_verified_rollout(config, rollouts)

    gaps = {}
    for key in STATISTICS:
        interval = paired_bootstrap(
            [np.array(paired[key][0])],
            [np.array(paired[key][1])],
            resamples=config.bootstrap,
            confidence=config.confidence,
            seed=config.seed,
        )
        gaps[key] = {**asdict(interval), "excludes_zero": interval.excludes_zero, "problems": len(paired[key][0])}
    sources = {
        "expert": _source_summary(expert_traces),
        "rollouts": _source_summary(rollout_traces),
        "expert_all": _source_summary(expert_all),
    }
    settings = dict(asdict(config), out=str(config.out), grader_version=GRADER_VERSION)
    summary = {
        "model": session.model_ref.name,
        "model_path": session.model_ref.path,
        "settings": settings,
        "counts": {
            "problems": len(problems),
            "paired_problems": len(expert_traces),
            "rollouts": len(rollouts),
            "verified": sum(map(len, verified.values())),
            "expert_truncated": truncated,
        },
        "sources": sources,
        "gaps": gaps,
    }
    markdown = _markdown(summary)
    figure = _figure(
        np.concatenate(tokens["expert"]) if tokens["expert"] else np.zeros(0),
        np.concatenate(tokens["rollout"]) if tokens["rollout"] else np.zeros(0),
        np.array([h for t in expert_traces for n, h in t if n > 0 and not math.isnan(h)]),
        np.array([h for t in rollout_traces for n, h in t if n > 0 and not math.isnan(h)]),
        f"{session.model_ref.name}: expert traces vs verified rollouts of {len(expert_traces)} problems "
        f"(T = {config.temperature})",
    )
    write_files(
        {
            config.out / "steps.csv": csv_text(step_rows, STEP_COLUMNS),
            config.out / "problems.csv": csv_text(problem_rows, PROBLEM_COLUMNS),
            config.out / "rollouts.jsonl": rollouts_jsonl(rollouts, prompts),
            config.out / "entropy_hist.png": figure,
            config.out / "summary.md": markdown,
            config.out / "summary.json": json.dumps(summary, indent=2, default=_json_default) + "\n",
        }
    )
    print(markdown, end="")
    return summary


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def main(argv: Sequence[str] | None = None) -> int:
    return analysis_main(
        "entropy_gap",
        EntropyGapConfig,
        run,
        argv,
        description="Token and step entropy of expert traces (the solution column) against the model's own verified "
        "rollouts of the same problems (the paper's Evidence 1). Writes summary.md/json, steps.csv, problems.csv, "
        "rollouts.jsonl and entropy_hist.png into --out.",
    )


if __name__ == "__main__":
    raise SystemExit(main())
